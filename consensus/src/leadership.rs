//! Who may send this node Raft entries: the leader, and a leader is always a voter.
//!
//! A member's certificate proves its id, not its role: a learner (or a compromised one) could
//! otherwise send entries under a higher term naming itself leader, and every node would follow
//! it. So entries and snapshots come only from a voter of this node's membership. One case is
//! legitimate and must not strand a node: a learner promoted while this node was away (its
//! membership still says learner) that has since been elected. Then this node asks its voters
//! who leads in that term, and follows the sender once a majority of them confirm it.

use std::time::Duration;

use apiary_wire::Service;
use serde::{Deserialize, Serialize};

use crate::network::call_json;
use crate::types::NodeId;
use crate::Consensus;

/// How long each voter has to answer a leader check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// What a member believes about the leadership, as a [`Service::LeaderCheck`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderView {
    pub leader: Option<NodeId>,
    pub term: u64,
    /// Whether the leader is a voter in the answering member's membership.
    pub leader_is_voter: bool,
}

/// The sender last confirmed as leader by this node's voters, and the term.
#[derive(Default)]
pub(crate) struct Confirmations {
    confirmed: std::sync::Mutex<Option<(NodeId, u64)>>,
    /// One check at a time: entries arrive many times a second.
    checking: tokio::sync::Mutex<()>,
}

impl Consensus {
    /// This node's view of the leadership.
    pub fn leader_view(&self) -> LeaderView {
        let metrics = self.raft.metrics().borrow().clone();
        LeaderView {
            leader: metrics.current_leader,
            term: metrics.current_term,
            leader_is_voter: metrics
                .current_leader
                .is_some_and(|leader| self.is_voter(leader)),
        }
    }

    /// `Ok` if entries or a snapshot from `sender` under `term` may be applied here, else why
    /// not.
    pub(crate) async fn may_lead(&self, sender: NodeId, term: u64) -> Result<(), String> {
        // A node that knows no member yet is a new learner taking its first entries.
        if self.is_voter(sender) || !self.knows_any_member() {
            return Ok(());
        }
        if !self.is_member(sender) {
            return Err("it is not a member of this node's cluster".into());
        }
        let confirmed = || {
            *self
                .confirmations
                .confirmed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                == Some((sender, term))
        };
        if confirmed() {
            return Ok(());
        }
        let _one_at_a_time = self.confirmations.checking.lock().await;
        if confirmed() {
            return Ok(());
        }
        let voters: Vec<(NodeId, String)> = {
            let metrics = self.raft.metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            membership
                .voter_ids()
                .filter_map(|id| Some((id, membership.get_node(&id)?.addr.clone())))
                .collect()
        };
        let mut agree = 0;
        for (id, addr) in &voters {
            let view = if *id == self.id {
                self.leader_view()
            } else {
                let asked = call_json::<_, LeaderView>(
                    &self.transport,
                    addr,
                    Some(*id),
                    Service::LeaderCheck,
                    &(),
                    CHECK_TIMEOUT,
                );
                match asked.await {
                    Ok(view) => view,
                    Err(_) => continue,
                }
            };
            if view.leader == Some(sender) && view.term == term && view.leader_is_voter {
                agree += 1;
            }
        }
        if agree * 2 > voters.len() {
            tracing::info!(
                leader = sender,
                term,
                "{agree} of {} voters confirm this node's learner {sender} leads: it was \
                 promoted while this node was away",
                voters.len()
            );
            *self
                .confirmations
                .confirmed
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some((sender, term));
            return Ok(());
        }
        Err(format!(
            "it is a learner in this node's membership, and {agree} of its {} voters confirm it \
             leads in term {term}",
            voters.len()
        ))
    }
}
