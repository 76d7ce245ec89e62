//! What the clients did: every operation with the time it was invoked, the time it completed
//! (none when the client gave up waiting) and what it saw.

use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How a write ended, as the client knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Acknowledged: committed at this config version.
    Ok { version: u64 },
    /// Certainly not applied: the request never reached a node (connection refused) or the
    /// node refused it before proposing (a 4xx answer).
    Fail,
    /// Maybe applied: a timeout, a reset, a 5xx. It may commit later, or never.
    Unknown,
}

/// How a read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The node answered: its config version and the register's value at that version.
    Ok { version: u64, value: u64 },
    /// No answer (a read has no effect, so the checker drops these).
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Write {
        value: u64,
        outcome: WriteOutcome,
    },
    /// `linearizable`: asked with `?consistency=linearizable` (a ReadIndex on the leader);
    /// otherwise served from the node's own applied state.
    Read {
        linearizable: bool,
        outcome: ReadOutcome,
    },
}

/// One operation. Times are nanoseconds since the run began, from one monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    pub client: usize,
    pub node: usize,
    pub invoke: u64,
    /// `None`: the outcome is unknown (the client timed out).
    pub complete: Option<u64>,
    pub action: Action,
}

/// The shared record the clients append to.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            start: Instant::now(),
            ops: Arc::default(),
        }
    }
}

impl Recorder {
    /// Nanoseconds since the run began.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
