//! A Wing–Gong search (with Lowe's memo of visited configurations, as Porcupine does) for a
//! linearization of a versioned register: writes set a new value and take the next version,
//! reads see a version and a value.
//!
//! An operation whose outcome is unknown (a write the client gave up on) never completes: it
//! may be linearized at any point after its invocation, including never (after everything).

use std::collections::HashSet;

use crate::history::{Action, Op, ReadOutcome, WriteOutcome};

/// The register as the checker models it: `(version, value)`, or not known yet (a window cut
/// out of the middle of a run starts from whatever its first operation implies).
pub type State = Option<(u64, u64)>;

/// One operation as the search sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Index in the history the caller gave.
    pub index: usize,
    pub invoke: u64,
    /// `u64::MAX` when unknown.
    pub complete: u64,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `version`: the version the write was acknowledged at, if it was.
    Write {
        value: u64,
        version: Option<u64>,
    },
    Read {
        version: u64,
        value: u64,
    },
}

/// The register's step: the state after `kind`, or `None` if `kind` cannot happen in `state`.
pub fn step(state: State, kind: Kind) -> Option<State> {
    match (state, kind) {
        (Some((v, _)), Kind::Write { value, version }) => {
            (version.is_none_or(|k| k == v + 1)).then_some(Some((v + 1, value)))
        }
        (None, Kind::Write { value, version }) => Some(version.map(|k| (k, value))),
        (Some(now), Kind::Read { version, value }) => (now == (version, value)).then_some(state),
        (None, Kind::Read { version, value }) => Some(Some((version, value))),
    }
}

/// Where the search got stuck: the longest linearization it found and the operations none of
/// which can come next. With the register's versions, this is the smallest window that holds
/// the violation: the state the history provably reached and the concurrent operations that
/// contradict it.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// The state after the longest linearizable prefix.
    pub state: State,
    /// The last few operations of that prefix (history indices), oldest first.
    pub before: Vec<usize>,
    /// The operations that could be next in real time, none of which the state allows.
    pub window: Vec<usize>,
    /// How many operations the longest linearization placed, of how many.
    pub placed: usize,
    pub total: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Linearizable,
    Violation(Violation),
    /// The search gave up after this many configurations (too concurrent to decide).
    Inconclusive(usize),
}

/// The events the search needs from a history: writes that certainly did not apply and reads
/// without an answer are left out (they have no effect on the register); so are unknown writes
/// whose value nobody ever saw and that `committed` (the values in the final log) lacks, which
/// can be linearized last without changing anything.
pub fn events(
    ops: &[Op],
    committed: Option<&HashSet<u64>>,
    linearizable_reads_only: bool,
) -> Vec<Event> {
    let seen: HashSet<u64> = ops
        .iter()
        .filter_map(|op| match op.action {
            Action::Read {
                outcome: ReadOutcome::Ok { value, .. },
                ..
            } => Some(value),
            _ => None,
        })
        .collect();
    let mut events: Vec<Event> = ops
        .iter()
        .enumerate()
        .filter_map(|(index, op)| {
            let kind = match op.action {
                Action::Write { value, outcome } => match outcome {
                    WriteOutcome::Ok { version } => Kind::Write {
                        value,
                        version: Some(version),
                    },
                    WriteOutcome::Fail => return None,
                    WriteOutcome::Unknown => {
                        let maybe =
                            seen.contains(&value) || committed.is_none_or(|c| c.contains(&value));
                        if !maybe {
                            return None;
                        }
                        Kind::Write {
                            value,
                            version: None,
                        }
                    }
                },
                Action::Read {
                    linearizable,
                    outcome: ReadOutcome::Ok { version, value },
                } if linearizable || !linearizable_reads_only => Kind::Read { version, value },
                Action::Read { .. } => return None,
            };
            let complete = match (kind, op.complete) {
                (Kind::Write { version: None, .. }, _) | (_, None) => u64::MAX,
                (_, Some(t)) => t,
            };
            Some(Event {
                index,
                invoke: op.invoke,
                complete,
                kind,
            })
        })
        .collect();
    events.sort_by_key(|e| (e.invoke, e.index));
    events
}

struct Frame {
    candidates: Vec<usize>,
    next: usize,
    /// The candidate this frame placed (to undo before trying the next), with what it replaced.
    placed: Option<(usize, State, usize)>,
}

/// Searches for a linearization of `events` (sorted by invocation, as [`events`] gives them)
/// from `initial`, visiting at most `budget` configurations.
pub fn check(events: &[Event], initial: State, budget: usize) -> Verdict {
    let n = events.len();
    // Zobrist keys: the set of placed events hashes to the XOR of theirs.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let keys: Vec<u64> = (0..n).map(|_| splitmix(&mut seed)).collect();
    let mut done = vec![false; n];
    let mut placed_count = 0usize;
    let mut first = 0usize; // every event before it is placed
    let mut zobrist = 0u64;
    let mut state = initial;
    let mut memo: HashSet<(u64, State)> = HashSet::new();
    let mut path: Vec<usize> = Vec::new();
    let mut deepest: (usize, State, Vec<usize>, Vec<usize>) = (0, initial, Vec::new(), Vec::new());

    let candidates = |done: &[bool], first: usize| -> Vec<usize> {
        let mut limit = u64::MAX;
        let mut out = Vec::new();
        for (i, event) in events.iter().enumerate().skip(first) {
            if event.invoke >= limit {
                break;
            }
            if !done[i] {
                out.push(i);
                limit = limit.min(event.complete);
            }
        }
        // Events that completed first, unknown writes last: the likely order first.
        out.sort_by_key(|&i| events[i].complete);
        out
    };

    let mut stack = vec![Frame {
        candidates: candidates(&done, first),
        next: 0,
        placed: None,
    }];
    while let Some(frame) = stack.last_mut() {
        if placed_count == n {
            return Verdict::Linearizable;
        }
        if let Some((i, previous, previous_first)) = frame.placed.take() {
            done[i] = false;
            placed_count -= 1;
            zobrist ^= keys[i];
            state = previous;
            first = previous_first;
            path.pop();
        }
        let Some(&i) = frame.candidates.get(frame.next) else {
            stack.pop();
            continue;
        };
        frame.next += 1;
        let Some(after) = step(state, events[i].kind) else {
            continue;
        };
        let key = (zobrist ^ keys[i], after);
        if !memo.insert(key) {
            continue;
        }
        if memo.len() > budget {
            return Verdict::Inconclusive(memo.len());
        }
        frame.placed = Some((i, state, first));
        done[i] = true;
        placed_count += 1;
        zobrist ^= keys[i];
        state = after;
        path.push(i);
        while first < n && done[first] {
            first += 1;
        }
        if placed_count == n {
            return Verdict::Linearizable;
        }
        let next = candidates(&done, first);
        if placed_count > deepest.0 {
            deepest = (placed_count, state, path.clone(), next.clone());
        }
        stack.push(Frame {
            candidates: next,
            next: 0,
            placed: None,
        });
    }
    let (placed, state, path, window) = deepest;
    let window = if placed == 0 {
        candidates(&vec![false; n], 0)
    } else {
        window
    };
    let mut window: Vec<usize> = window.iter().map(|&i| events[i].index).collect();
    window.sort_unstable();
    Verdict::Violation(Violation {
        state: if placed == 0 { initial } else { state },
        before: path[path.len().saturating_sub(3)..]
            .iter()
            .map(|&i| events[i].index)
            .collect(),
        window,
        placed,
        total: n,
    })
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
