//! Rotating the cluster CA in place, as replicated steps.
//!
//! A rotation is three entries in the Raft log, so every member takes the same steps in the same
//! order: **stage** (trust the new CA besides the current one; each member issues itself a
//! certificate under it), **switch** (present the new certificates and admit joiners under the
//! new CA) and **finish** (stop trusting the old CA). Between two steps every member must have
//! applied the previous one, or some pair of members would not trust each other; the driver that
//! proposes the steps checks that (see the node's `ca` module). The state machine only checks
//! that the steps come in order, which is deterministic, so every member accepts or refuses the
//! same entries.

use apiary_config::ConfigError;
use serde::{Deserialize, Serialize};

/// One step of a rotation, as proposed and replicated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CaStep {
    Stage {
        epoch: u64,
        /// The CA in use until the switch (members trust both until the finish).
        previous_cert: Vec<u8>,
        cert: Vec<u8>,
    },
    Switch {
        epoch: u64,
    },
    Finish {
        epoch: u64,
    },
}

impl CaStep {
    pub fn epoch(&self) -> u64 {
        match self {
            CaStep::Stage { epoch, .. } | CaStep::Switch { epoch } | CaStep::Finish { epoch } => {
                *epoch
            }
        }
    }

    pub fn phase(&self) -> CaPhase {
        match self {
            CaStep::Stage { .. } => CaPhase::Staged,
            CaStep::Switch { .. } => CaPhase::Switched,
            CaStep::Finish { .. } => CaPhase::Finished,
        }
    }
}

/// Where a rotation stands; ordered as the steps are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaPhase {
    Staged,
    Switched,
    Finished,
}

impl std::fmt::Display for CaPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CaPhase::Staged => "staged",
            CaPhase::Switched => "switched",
            CaPhase::Finished => "finished",
        })
    }
}

/// The latest rotation, part of the applied state (and of snapshots). `None` in the state
/// machine means the CA the cluster was created with is still the only one.
///
/// It holds certificates only: the log reaches every member, learners included, and only the
/// CA holders (voters) keep the CA key, which they pass among themselves over mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaState {
    pub epoch: u64,
    pub phase: CaPhase,
    pub previous_cert: Vec<u8>,
    pub cert: Vec<u8>,
}

/// Applies `step` to the current rotation state, or says why it is out of order.
pub fn apply_step(current: Option<&CaState>, step: CaStep) -> Result<CaState, ConfigError> {
    let described = format!("{} of epoch {}", step.phase(), step.epoch());
    let out_of_order = |expected: String| Err(ConfigError::invalid("ca", &described, expected));
    let (epoch, phase) = current.map_or((0, CaPhase::Finished), |s| (s.epoch, s.phase));
    match step {
        CaStep::Stage {
            epoch: new_epoch,
            previous_cert,
            cert,
        } => {
            // A stage may also replace a stage no member switched to yet: the CA holder that
            // made it may be gone with the only copy of its key.
            let restage = phase == CaPhase::Staged
                && current.is_some_and(|c| c.previous_cert == previous_cert);
            if (phase != CaPhase::Finished && !restage) || new_epoch != epoch + 1 {
                return out_of_order(format!(
                    "a stage of epoch {} after a finished rotation (rotation {epoch} is {phase})",
                    epoch + 1
                ));
            }
            if let Some(current) = current.filter(|_| !restage) {
                if current.cert != previous_cert {
                    return out_of_order(
                        "a stage whose previous CA is the cluster's current CA".into(),
                    );
                }
            }
            Ok(CaState {
                epoch: new_epoch,
                phase: CaPhase::Staged,
                previous_cert,
                cert,
            })
        }
        CaStep::Switch { epoch: at } | CaStep::Finish { epoch: at } => {
            let next = step.phase();
            let Some(current) = current else {
                return out_of_order("a stage first: no rotation is in progress".into());
            };
            let wanted = match next {
                CaPhase::Switched => CaPhase::Staged,
                _ => CaPhase::Switched,
            };
            if at != epoch || phase != wanted {
                return out_of_order(format!(
                    "the step after {phase} of epoch {epoch} (rotation {epoch} is {phase})"
                ));
            }
            Ok(CaState {
                phase: next,
                ..current.clone()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(epoch: u64, previous: &[u8], cert: &[u8]) -> CaStep {
        CaStep::Stage {
            epoch,
            previous_cert: previous.to_vec(),
            cert: cert.to_vec(),
        }
    }

    #[test]
    fn steps_apply_in_order_only() {
        assert!(apply_step(None, CaStep::Switch { epoch: 1 }).is_err());
        assert!(apply_step(None, stage(2, b"a", b"b")).is_err());
        let staged = apply_step(None, stage(1, b"a", b"b")).unwrap();
        assert_eq!(staged.phase, CaPhase::Staged);
        assert!(apply_step(Some(&staged), CaStep::Finish { epoch: 1 }).is_err());
        assert!(apply_step(Some(&staged), stage(2, b"b", b"c")).is_err());
        let switched = apply_step(Some(&staged), CaStep::Switch { epoch: 1 }).unwrap();
        assert!(apply_step(Some(&switched), CaStep::Switch { epoch: 1 }).is_err());
        let finished = apply_step(Some(&switched), CaStep::Finish { epoch: 1 }).unwrap();
        assert_eq!((finished.epoch, finished.phase), (1, CaPhase::Finished));
        assert_eq!(finished.cert, b"b");
        // The next rotation must start from the CA now in use.
        let error = apply_step(Some(&finished), stage(2, b"a", b"c")).unwrap_err();
        assert!(error.to_string().contains("current CA"), "{error}");
        let next = apply_step(Some(&finished), stage(2, b"b", b"c")).unwrap();
        assert_eq!((next.epoch, next.phase), (2, CaPhase::Staged));
    }

    /// A stage whose key is lost with its driver is replaced by a new stage from the same CA;
    /// once a member switched, it cannot be.
    #[test]
    fn a_stage_is_replaced_before_the_switch_only() {
        let staged = apply_step(None, stage(1, b"a", b"b")).unwrap();
        let again = apply_step(Some(&staged), stage(2, b"a", b"c")).unwrap();
        assert_eq!(
            (again.epoch, again.phase, again.cert.as_slice()),
            (2, CaPhase::Staged, &b"c"[..])
        );
        assert!(
            apply_step(Some(&staged), stage(2, b"b", b"c")).is_err(),
            "from the staged CA"
        );
        assert!(
            apply_step(Some(&staged), stage(3, b"a", b"c")).is_err(),
            "skipping an epoch"
        );
        let switched = apply_step(Some(&again), CaStep::Switch { epoch: 2 }).unwrap();
        assert!(apply_step(Some(&switched), stage(3, b"a", b"d")).is_err());
    }
}
