//! Removing a member: the operator's way to retire a machine or to drop a dead voter from the
//! quorum. A removed voter's place goes to the learner that has been reachable, so the cluster
//! keeps as many voters as it can (up to `max_voters`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use apiary_config::ConfigError;
use apiary_wire::Service;
use openraft::ChangeMembers;

use crate::types::NodeId;
use crate::{membership_error, Attempt, Caller, Consensus, WriteError};

/// Log entries a learner may trail the leader by and still count as caught up.
const CAUGHT_UP_SLACK: u64 = 16;

impl Consensus {
    /// Removes member `id` from the cluster through the leader, on `caller`'s authority.
    pub async fn remove(&self, caller: &Caller, id: NodeId) -> Result<(), WriteError> {
        self.on_leader(Service::RemoveMember, caller, id, |id| self.remove_here(id))
            .await
    }

    pub(crate) async fn remove_here(&self, id: NodeId) -> Attempt<()> {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let membership = membership.membership();
        if membership.get_node(&id).is_none() {
            return Attempt::Failed(WriteError::Rejected(ConfigError::invalid(
                "member",
                id,
                "the id of a current member (see `apiary status`)",
            )));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Attempt::Failed(WriteError::Rejected(ConfigError::invalid(
                    "member",
                    id,
                    "a member other than the only voter: a cluster needs one voter",
                )));
            }
            // A replacement first, so the quorum never shrinks below what it was.
            let replacement = self.live_learner(membership.learner_ids().collect());
            if let Some(learner) = replacement {
                let promote = ChangeMembers::AddVoterIds(BTreeSet::from([learner]));
                if let Err(attempt) = self.change(promote).await {
                    return attempt;
                }
                tracing::info!(node = learner, "promoted to voter in place of {id}");
            } else {
                tracing::info!(
                    node = id,
                    "no learner is caught up to take the vote now; the voter keeper will \
                     promote one when it is"
                );
            }
        }
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        match self.change(change).await {
            Ok(()) => {
                tracing::info!(node = id, "removed from the cluster");
                Attempt::Done(())
            }
            Err(attempt) => attempt,
        }
    }

    async fn change(
        &self,
        change: ChangeMembers<NodeId, crate::Member>,
    ) -> Result<(), Attempt<()>> {
        // `false`: a removed voter leaves the cluster rather than staying on as a learner.
        let write = self.raft.change_membership(change, false);
        match tokio::time::timeout(self.settings.write_timeout, write).await {
            Err(_) => Err(Attempt::Retry(
                "the membership change did not commit in time".into(),
            )),
            Ok(Err(e)) => Err(membership_error(e)),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// On the leader, every two seconds: while there are fewer voters than `max_voters`,
    /// promotes a learner that is caught up and answered a ping lately. This heals the voter
    /// count after a removal that found no learner ready at that moment (one that had just
    /// joined, or was briefly unreachable).
    pub fn spawn_voter_keeper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        self.spawn_every(Duration::from_secs(2), |consensus| async move {
            consensus.fill_voters().await
        })
    }

    async fn fill_voters(&self) {
        if !matches!(self.leader(), Some((leader, _)) if leader == self.id) {
            return;
        }
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let membership = membership.membership();
        if membership.get_joint_config().len() > 1
            || membership.voter_ids().count() >= self.settings.max_voters
        {
            return;
        }
        let learners: Vec<NodeId> = membership
            .learner_ids()
            .filter(|id| self.heard_lately(id))
            .collect();
        let Some(learner) = self.live_learner(learners) else {
            return;
        };
        match self
            .change(ChangeMembers::AddVoterIds(BTreeSet::from([learner])))
            .await
        {
            Ok(()) => tracing::info!(
                node = learner,
                "promoted to voter to restore the voter count"
            ),
            Err(_) => tracing::debug!(node = learner, "promotion will be retried"),
        }
    }

    /// A learner fit to vote: one the leader is replicating to and that is caught up (the
    /// leader's replication state, which is fresher than the once-a-second pings), preferring
    /// one that also answered a ping lately.
    fn live_learner(&self, learners: Vec<NodeId>) -> Option<NodeId> {
        let metrics = self.raft.metrics().borrow().clone();
        let last = metrics.last_log_index.unwrap_or(0);
        let replication = metrics.replication.unwrap_or_default();
        let caught_up = |id: &NodeId| {
            replication
                .get(id)
                .and_then(|matched| matched.as_ref())
                .is_some_and(|log_id| log_id.index + CAUGHT_UP_SLACK >= last)
        };
        let mut candidates: Vec<NodeId> = learners.into_iter().filter(caught_up).collect();
        candidates.sort_by_key(|id| !self.heard_lately(id));
        candidates.first().copied()
    }
}
