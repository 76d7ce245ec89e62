//! Ends time-limited profiles when their time is up, on whichever node leads.
//!
//! The expiry is part of the applied profile's event, so it survives the node that applied it:
//! the leader of the moment checks once a second and commits the end through the log. Two
//! leaders in a row proposing the same end is harmless: the second is refused when applied
//! (a profile ends once), deterministically on every node.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apiary_config::{Intent, Proposal};

use crate::{Caller, Consensus, WriteError};

impl Consensus {
    /// Checks every second, while this node leads, for time-limited profiles that are due.
    pub fn spawn_profile_ender(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        self.spawn_every(Duration::from_secs(1), |consensus| async move {
            consensus.end_due_profiles().await
        })
    }

    async fn end_due_profiles(&self) {
        let Some((leader, member)) = self.leader() else {
            return;
        };
        if leader != self.id {
            return;
        }
        let now = SystemTime::now();
        let now_unix = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let due: Vec<_> = self
            .state
            .history()
            .pending_profile_ends()
            .into_iter()
            .filter(|p| p.expires_at_unix <= now_unix)
            .collect();
        for profile in due {
            let proposal = Proposal {
                origin_node: member.name.clone(),
                request_id: None,
                author: "apiary (time limit)".into(),
                comment: format!(
                    "the time limit of profile {} v{} (applied at version {}) is up",
                    profile.name, profile.profile_version, profile.version
                ),
                at: humantime::format_rfc3339_millis(now).to_string(),
                intent: Intent::EndProfile {
                    version: profile.version,
                },
            };
            match self.propose(&Caller::Node, proposal).await {
                Ok(version) => tracing::info!(
                    profile = %profile.name,
                    applied_at = profile.version,
                    version,
                    "time-limited profile ended"
                ),
                Err(WriteError::Rejected(e)) => {
                    tracing::debug!(profile = %profile.name, "profile end refused: {e}")
                }
                Err(e) => tracing::warn!(
                    profile = %profile.name,
                    "ending the profile will be retried: {e}"
                ),
            }
        }
    }
}
