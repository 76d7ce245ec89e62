//! Checks of the committed log itself, as every node reports it after the run: versions
//! strictly increasing without gaps, every node holding the same log, every acknowledged write
//! present exactly once at its acknowledged version, no write that certainly failed present,
//! and every read seeing a state the log really had.

use std::collections::HashMap;

use crate::history::{Action, Op, ReadOutcome, WriteOutcome};

/// One committed config event: its version and, if it changed the register's key, the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub version: u64,
    pub value: Option<u64>,
}

/// What the log checks found. `problems` lists each violation in words.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct LogReport {
    pub committed: usize,
    pub acknowledged: usize,
    /// Acknowledged writes missing from the log.
    pub lost: usize,
    /// Values committed more than once (a retried write applied twice).
    pub duplicates: usize,
    /// Writes with an unknown outcome that the log shows committed.
    pub unknown_committed: usize,
    pub unknown_not_committed: usize,
    /// Reads that saw a (version, value) the log never had, or a version not yet written.
    pub bad_reads: usize,
    pub problems: Vec<String>,
}

impl LogReport {
    fn problem(&mut self, text: String) {
        if self.problems.len() < 50 {
            self.problems.push(text);
        }
    }
}

/// `logs`: each node's name and its log; `default_value`: the register's value before any
/// event set it.
pub fn check(logs: &[(String, Vec<Entry>)], ops: &[Op], default_value: u64) -> LogReport {
    let mut report = LogReport::default();
    let Some((first_name, log)) = logs.first() else {
        report.problem("no node reported a log".into());
        return report;
    };
    for (name, other) in &logs[1..] {
        if other != log {
            let at = log
                .iter()
                .zip(other)
                .position(|(a, b)| a != b)
                .unwrap_or(log.len().min(other.len()));
            report.problem(format!(
                "{name}'s log ({} events) differs from {first_name}'s ({} events) at position {at}",
                other.len(),
                log.len()
            ));
        }
    }
    for (position, entry) in log.iter().enumerate() {
        if entry.version != position as u64 + 1 {
            report.problem(format!(
                "log position {position} holds version {} (versions must be 1, 2, … without gaps)",
                entry.version
            ));
            break;
        }
    }
    report.committed = log.len();

    let mut versions_of: HashMap<u64, Vec<u64>> = HashMap::new();
    for entry in log {
        if let Some(value) = entry.value {
            versions_of.entry(value).or_default().push(entry.version);
        }
    }
    for (value, versions) in &versions_of {
        if versions.len() > 1 {
            report.duplicates += 1;
            report.problem(format!(
                "value {value} committed {} times, at versions {versions:?}",
                versions.len()
            ));
        }
    }

    let mut invoked_at: HashMap<u64, u64> = HashMap::new();
    for op in ops {
        let Action::Write { value, outcome } = op.action else {
            continue;
        };
        invoked_at.insert(value, op.invoke);
        let found = versions_of.get(&value);
        match outcome {
            WriteOutcome::Ok { version } => {
                report.acknowledged += 1;
                match found {
                    None => {
                        report.lost += 1;
                        report.problem(format!(
                            "write of {value} was acknowledged at version {version} but is not in the log"
                        ));
                    }
                    Some(at) if !at.contains(&version) => report.problem(format!(
                        "write of {value} was acknowledged at version {version} but committed at {at:?}"
                    )),
                    Some(_) => {}
                }
            }
            WriteOutcome::Fail => {
                if let Some(at) = found {
                    report.problem(format!(
                        "write of {value} certainly failed, yet committed at {at:?}"
                    ));
                }
            }
            WriteOutcome::Unknown if found.is_some() => report.unknown_committed += 1,
            WriteOutcome::Unknown => report.unknown_not_committed += 1,
        }
    }

    // The register's value at each version, and when the write that made it was invoked.
    let mut value_at = Vec::with_capacity(log.len() + 1);
    value_at.push(default_value);
    for entry in log {
        let last = *value_at.last().unwrap_or(&default_value);
        value_at.push(entry.value.unwrap_or(last));
    }
    for op in ops {
        let Action::Read {
            outcome: ReadOutcome::Ok { version, value },
            ..
        } = op.action
        else {
            continue;
        };
        let Some(&expected) = value_at.get(version as usize) else {
            report.bad_reads += 1;
            report.problem(format!(
                "read on node {} saw version {version}, beyond the log's {}",
                op.node,
                log.len()
            ));
            continue;
        };
        if expected != value {
            report.bad_reads += 1;
            report.problem(format!(
                "read on node {} saw value {value} at version {version}; the log has {expected} there",
                op.node
            ));
            continue;
        }
        let written = log
            .get((version as usize).wrapping_sub(1))
            .and_then(|e| e.value)
            .and_then(|v| invoked_at.get(&v));
        if let (Some(&written), Some(complete)) = (written, op.complete) {
            if written > complete {
                report.bad_reads += 1;
                report.problem(format!(
                    "read on node {} saw version {version} before its write was even sent",
                    op.node
                ));
            }
        }
    }
    report
}
