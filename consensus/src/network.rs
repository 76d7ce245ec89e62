//! Raft's network over `apiary-wire`: each RPC is one request frame whose payload is the
//! openraft message as JSON, answered by `Result<response, RaftError>` as JSON.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use apiary_wire::{Message, Service, Transport, WireError};
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::snapshot_transport::{Chunked, SnapshotTransport};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{Member, NodeId, TypeConfig};

/// Resolves `host:port` (a literal address or a DNS name).
pub async fn resolve(addr: &str) -> Result<SocketAddr, WireError> {
    if let Ok(parsed) = addr.parse() {
        return Ok(parsed);
    }
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| WireError::Connection(format!("cannot resolve {addr}: {e}")))?
        .next()
        .ok_or_else(|| WireError::Connection(format!("{addr} resolves to no address")))
}

/// Calls `service` on the peer at `addr` (which must be node `expected`, when given: see
/// [`Transport::call_node`]) and decodes its JSON answer.
pub async fn call_json<Req: Serialize, Resp: DeserializeOwned>(
    transport: &Transport,
    addr: &str,
    expected: Option<NodeId>,
    service: Service,
    request: &Req,
    timeout: Duration,
) -> Result<Resp, WireError> {
    let payload = serde_json::to_vec(request)
        .map_err(|e| WireError::Malformed(format!("cannot encode request: {e}")))?;
    let socket = resolve(addr).await?;
    let message = Message::Request { service, payload };
    let answer = tokio::time::timeout(timeout, transport.call_node(socket, expected, &message))
        .await
        .map_err(|_| {
            WireError::Connection(format!("{addr} did not answer within {timeout:?}"))
        })??;
    match answer {
        Message::Response { payload } => serde_json::from_slice(&payload)
            .map_err(|e| WireError::Malformed(format!("bad answer from {addr}: {e}"))),
        Message::Refused { reason } => Err(WireError::Refused(reason)),
        other => Err(WireError::Malformed(format!(
            "unexpected answer from {addr}: {other:?}"
        ))),
    }
}

pub struct PeerNetwork {
    pub transport: Arc<Transport>,
    /// How often the leader tells a follower it is alive (Raft's heartbeat interval).
    pub heartbeat_interval: Duration,
}

pub struct PeerConnection {
    transport: Arc<Transport>,
    target: NodeId,
    member: Member,
    heartbeat_interval: Duration,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerConnection {
        PeerConnection {
            transport: self.transport.clone(),
            target,
            member: node.clone(),
            heartbeat_interval: self.heartbeat_interval,
        }
    }
}

impl PeerConnection {
    async fn rpc<Req, Resp, E>(
        &self,
        service: Service,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<NodeId, E>> = call_json(
            &self.transport,
            &self.member.addr,
            Some(self.target),
            service,
            request,
            option.hard_ttl(),
        )
        .await
        .map_err(|e| match e {
            // Openraft backs off from unreachable peers instead of hammering them.
            WireError::Connection(_) => RPCError::Unreachable(Unreachable::new(&e)),
            _ => RPCError::Network(NetworkError::new(&e)),
        })?;
        answer.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.member.clone(),
                e,
            ))
        })
    }
}

/// Entries one AppendEntries request carries at most, in encoded bytes (but always one entry).
/// Openraft sends up to `max_payload_entries` (300) at once and gives each request one
/// heartbeat interval (100 ms): a follower far behind on large entries would be sent more than
/// a frame holds (16 MiB) or than arrives in time, be refused or time out, and be sent the same
/// again for ever. A request cut here answers a partial success, and openraft sends the rest.
pub const APPEND_BUDGET_BYTES: usize = 512 * 1024;

/// Counts what serde writes, to size an entry without keeping its encoding.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of `value` encoded as JSON (what the log and the frames hold).
pub fn encoded_size<T: Serialize>(value: &T) -> usize {
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// How many of `entries`, from the first, fit `budget` encoded bytes (at least one).
pub fn entries_within<T: Serialize>(entries: &[T], budget: usize) -> usize {
    let mut used = 0usize;
    for (i, entry) in entries.iter().enumerate() {
        let size = encoded_size(entry);
        if i > 0 && used.saturating_add(size) > budget {
            return i;
        }
        used = used.saturating_add(size);
    }
    entries.len()
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let fits = entries_within(&rpc.entries, APPEND_BUDGET_BYTES);
        if fits == rpc.entries.len() {
            return self.rpc(Service::RaftAppendEntries, &rpc, &option).await;
        }
        rpc.entries.truncate(fits);
        let last = rpc.entries.last().map(|entry| entry.log_id);
        tracing::debug!(
            target = self.target,
            "sending {fits} entries of a larger batch (the rest follows)"
        );
        let answer: AppendEntriesResponse<NodeId> =
            self.rpc(Service::RaftAppendEntries, &rpc, &option).await?;
        // The follower matched everything sent: tell openraft how far, so it sends on from there.
        Ok(match answer {
            AppendEntriesResponse::Success => AppendEntriesResponse::PartialSuccess(last),
            other => other,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(Service::RaftInstallSnapshot, &rpc, &option).await
    }

    /// The snapshot in chunks (openraft's own transfer), while the follower is told every
    /// heartbeat interval that the leader is alive. Openraft 0.9 sends a follower nothing else
    /// while its snapshot is in flight, and the chunks do not reach the part of the follower
    /// that holds its election timer: a transfer longer than the election timeout (a history
    /// of a few MB, in a debug build) made the follower stand for election, its higher term
    /// deposed the leader, and the transfer began again under the next leader, for ever (the
    /// soak's election storm).
    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: crate::types::Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let keepalive = keep_alive(
            self.transport.clone(),
            self.member.addr.clone(),
            self.target,
            vote,
            self.heartbeat_interval,
        );
        tokio::select! {
            sent = Chunked::send_snapshot(self, vote, snapshot, cancel, option) => sent,
            never = keepalive => match never {},
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.rpc(Service::RaftVote, &rpc, &option).await
    }
}

/// Sends `target` an empty AppendEntries under the leader's `vote` every `interval`, until
/// dropped. It names no previous entry and no commit index, so it matches any follower's log
/// and changes nothing in it: it only renews the follower's view of the leader (its election
/// timer), as a heartbeat does. Answers are not needed: the snapshot's own answers carry a
/// higher vote back to openraft.
async fn keep_alive(
    transport: Arc<Transport>,
    addr: String,
    target: NodeId,
    vote: Vote<NodeId>,
    interval: Duration,
) -> std::convert::Infallible {
    let heartbeat = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: None,
        leader_commit: None,
        entries: Vec::new(),
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let sent = call_json::<_, Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(
            &transport,
            &addr,
            Some(target),
            Service::RaftAppendEntries,
            &heartbeat,
            interval.max(Duration::from_millis(500)),
        )
        .await;
        if let Err(e) = sent {
            tracing::debug!(target, "keepalive during the snapshot: {e}");
        }
    }
}
