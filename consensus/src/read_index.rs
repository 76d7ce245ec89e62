//! Linearizable reads (Raft's ReadIndex): the leader confirms with a quorum's heartbeats that it
//! still leads and names the log index a read must see; the reading node waits until it has
//! applied that index, then reads its own state. Without it a node reads what it has applied,
//! which may be behind the leader (a partitioned or slow follower serves stale config).

use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};
use serde::{Deserialize, Serialize};

use crate::{Attempt, Caller, Consensus, WriteError};

/// The forwarded request: nothing but the caller (a unit struct would serialise as `null`, which
/// reads as "no request" to a reviewer; this names what it is).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ReadIndexRequest;

impl Consensus {
    /// Returns once this node has applied everything committed before the call, as the leader
    /// confirmed it with a quorum: a read of the local state after this is linearizable.
    /// Fails with [`WriteError::Unavailable`] when no leader can confirm in the write timeout.
    pub async fn read_barrier(&self, caller: &Caller) -> Result<(), WriteError> {
        let index: u64 = self
            .on_leader(
                apiary_wire::Service::ReadIndex,
                caller,
                ReadIndexRequest,
                |_| self.read_index_here(),
            )
            .await?;
        self.wait_applied(index, self.settings.write_timeout).await
    }

    /// The leader's half: confirm leadership with a quorum and name the read index.
    pub(crate) async fn read_index_here(&self) -> Attempt<u64> {
        let confirm = self.raft.get_read_log_id();
        match tokio::time::timeout(self.settings.write_timeout, confirm).await {
            Err(_) => Attempt::Failed(WriteError::Unavailable(format!(
                "the leader could not confirm its leadership with a majority of voters within {:?}",
                self.settings.write_timeout
            ))),
            Ok(Ok((read_log_id, _applied))) => Attempt::Done(read_log_id.map_or(0, |id| id.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                Attempt::Retry("leadership moved".into())
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Attempt::Retry(format!("no quorum confirmed the leader: {e}"))
            }
            Ok(Err(e)) => Attempt::Failed(WriteError::Internal(e.to_string())),
        }
    }

    async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), WriteError> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "a linearizable read")
            .await
            .map(drop)
            .map_err(|e| {
                WriteError::Unavailable(format!(
                    "this node did not apply the log up to the read index {index} in {timeout:?}: {e}"
                ))
            })
    }
}
