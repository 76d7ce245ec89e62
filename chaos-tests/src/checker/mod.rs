//! The checker: linearizability of the config register (a Wing–Gong search, [`linearizable`])
//! and checks of the committed log every node holds ([`log`]).

pub mod linearizable;
pub mod log;
#[cfg(test)]
mod tests;

use std::collections::HashSet;

use crate::history::Op;
use linearizable::{State, Verdict};
pub use log::{Entry, LogReport};

/// Configurations the search may visit before it calls a history inconclusive.
pub const SEARCH_BUDGET: usize = 20_000_000;

/// Everything the checker says about one run.
#[derive(Debug, Clone)]
pub struct Findings {
    pub log: LogReport,
    /// Writes, linearizable reads and the final read: what the API promises is linearizable.
    pub promised: Verdict,
    /// Every read included, local ones too: reads served from a node's own state are allowed to
    /// be stale, so a violation here is not a failure, only a measure.
    pub with_local_reads: Verdict,
}

impl Findings {
    /// Violations of what the API promises (goal: 0).
    pub fn violations(&self) -> usize {
        self.log.problems.len() + usize::from(!matches!(self.promised, Verdict::Linearizable))
    }
}

/// Checks `ops` against the final `logs`, from the register's state `initial` before the run.
pub fn check(ops: &[Op], logs: &[(String, Vec<Entry>)], initial: State) -> Findings {
    let default_value = initial.map(|(_, v)| v).unwrap_or_default();
    let log = log::check(logs, ops, default_value);
    let committed: HashSet<u64> = logs
        .first()
        .map(|(_, l)| l.iter().filter_map(|e| e.value).collect())
        .unwrap_or_default();
    let promised = linearizable::check(
        &linearizable::events(ops, Some(&committed), true),
        initial,
        SEARCH_BUDGET,
    );
    let with_local_reads = linearizable::check(
        &linearizable::events(ops, Some(&committed), false),
        initial,
        SEARCH_BUDGET,
    );
    Findings {
        log,
        promised,
        with_local_reads,
    }
}

/// The operations of a violation's window and the ones just before it, one a line.
pub fn describe(ops: &[Op], verdict: &Verdict) -> String {
    match verdict {
        Verdict::Linearizable => "linearizable".into(),
        Verdict::Inconclusive(visited) => {
            format!("inconclusive: gave up after {visited} configurations")
        }
        Verdict::Violation(v) => {
            let mut text = format!(
                "NOT linearizable: the longest linearization places {} of {} operations and \
                 reaches {:?} (version, value); the last it placed:\n",
                v.placed, v.total, v.state
            );
            for &i in &v.before {
                text.push_str(&format!("    #{i} {:?}\n", ops[i]));
            }
            text.push_str("  none of these can come next:\n");
            for &i in &v.window {
                text.push_str(&format!("    #{i} {:?}\n", ops[i]));
            }
            text
        }
    }
}
