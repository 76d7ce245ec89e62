//! Raft (openraft) for Apiary's replicated config.
//!
//! The parts are kept apart as in openraft's examples: [`log_store`] and [`state_machine`] store
//! through `apiary-storage`, [`network`] talks through `apiary-wire`, and [`Consensus`] is the
//! glue the node uses: propose a change from any member (followers forward to the leader), admit
//! new members (learners first, voters up to a small quorum), answer peers' Raft RPCs, and report
//! the cluster's status.

// openraft's traits fix the error type (`StorageError`, about 224 bytes); boxing it in our
// helpers would only add conversions at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod ca;
pub mod caller;
pub mod join_tokens;
pub mod leadership;
pub mod log_store;
mod membership;
pub mod network;
mod profile_ends;
pub mod read_index;
pub mod state_machine;
pub mod tokens;
pub mod types;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiary_config::{ConfigError, Proposal};
use apiary_storage::Store;
use apiary_wire::{Message, Service, Transport};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use caller::Caller;
pub use state_machine::{ConfigState, HistoryRef};
pub use types::{Member, NodeId, Raft, Request, Response};

use crate::caller::Forwarded;
use crate::log_store::LogStore;
use crate::network::{call_json, PeerNetwork};
use crate::state_machine::StateMachine;
use crate::tokens::Scope;

/// The largest config change, encoded, a node proposes. A leader replicates each request to a
/// follower within one heartbeat interval (100 ms): a change of 1.8 MB never committed (measured
/// with a debug build: every attempt timed out and was sent again).
pub const MAX_CHANGE_BYTES: usize = 256 * 1024;

/// Raft timing and cluster shape.
#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// How long a write may wait for a leader and a quorum before it is answered "unavailable".
    pub write_timeout: Duration,
    /// Members beyond this many stay learners, so a large fleet keeps a small quorum.
    pub max_voters: usize,
    /// Peers not heard from within this long are shown as unreachable.
    pub reachable_within: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            write_timeout: Duration::from_secs(5),
            max_voters: 5,
            reachable_within: Duration::from_secs(3),
        }
    }
}

/// Why a write did not commit. Serializable because followers relay the leader's answer.
#[derive(Debug, Clone, thiserror::Error, Serialize, Deserialize)]
pub enum WriteError {
    #[error("{0}")]
    Rejected(ConfigError),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// The leader refused a forwarded change: its caller's credential does not allow it.
    #[error("{0}")]
    Forbidden(String),
}

/// The outcome of trying a write on this node.
#[derive(Debug, Serialize, Deserialize)]
enum Attempt<T> {
    Done(T),
    Failed(WriteError),
    /// Not the leader (any more), or a membership change is in progress: try again.
    Retry(String),
    /// Ask the leader at this address yourself (a joining node's admission, which must come
    /// from the node itself so that no member can admit someone else's id at its own address).
    Redirect(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    #[error("invalid Raft settings: {0}")]
    Settings(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub name: String,
    pub address: String,
    pub role: Role,
    pub leader: bool,
    pub reachable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Voter,
    Learner,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node_id: NodeId,
    pub state: String,
    pub leader_id: Option<NodeId>,
    pub leader_name: Option<String>,
    pub term: u64,
    pub committed_version: u64,
    pub commit_index: u64,
    pub last_log_index: u64,
    pub last_applied_index: u64,
    /// The last log index this node's snapshot covers (0: none yet).
    #[serde(default)]
    pub snapshot_index: u64,
    /// The last log index this node has purged (0: none): a follower that needs an entry at or
    /// below the leader's is sent the leader's snapshot instead.
    #[serde(default)]
    pub purged_index: u64,
    /// The slowest flush of the data dir's database in the last 30 to 60 s, in ms.
    #[serde(default)]
    pub slowest_flush_ms: u64,
    pub members: Vec<MemberStatus>,
}

pub struct Consensus {
    id: NodeId,
    raft: Raft,
    state: Arc<ConfigState>,
    transport: Arc<Transport>,
    committed_index: Arc<AtomicU64>,
    last_heard: Mutex<HashMap<NodeId, Instant>>,
    settings: Settings,
    confirmations: leadership::Confirmations,
    /// The log store's last write failure (see [`Consensus::storage_problem`]).
    write_failure: Arc<Mutex<Option<String>>>,
    /// For the disk's recent flush times (see [`Consensus::slow_disk`]).
    store: Store,
}

impl Consensus {
    pub async fn start(
        id: NodeId,
        store: Store,
        transport: Arc<Transport>,
        settings: Settings,
    ) -> Result<Arc<Self>, ConsensusError> {
        let config = openraft::Config {
            cluster_name: "apiary".into(),
            heartbeat_interval: settings.heartbeat_interval.as_millis() as u64,
            election_timeout_min: settings.election_timeout_min.as_millis() as u64,
            election_timeout_max: settings.election_timeout_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 500,
            // A follower behind the purged log is sent the snapshot (the whole config history)
            // in chunks, each one RPC that must finish within the timeout; the last one also
            // installs it (a parse and a sled batch of every event). openraft's defaults (3 MiB
            // chunks, 200 ms) timed out on a 5 MB history here on every try, for ever, and the
            // follower never came back. Chunks as large as an AppendEntries request, 5 s each.
            snapshot_max_chunk_size: network::APPEND_BUDGET_BYTES as u64,
            install_snapshot_timeout: 5_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ConsensusError::Settings(e.to_string()))?;
        let log_store = LogStore::new(store.clone());
        let committed_index = log_store.committed_index();
        let write_failure = log_store.write_failure();
        let state =
            ConfigState::open(store.clone()).map_err(|e| ConsensusError::Storage(e.to_string()))?;
        let network = PeerNetwork {
            transport: transport.clone(),
            heartbeat_interval: settings.heartbeat_interval,
        };
        let raft = Raft::new(
            id,
            Arc::new(config),
            network,
            log_store,
            StateMachine(state.clone()),
        )
        .await
        .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        Ok(Arc::new(Consensus {
            id,
            raft,
            state,
            transport,
            committed_index,
            last_heard: Mutex::new(HashMap::new()),
            settings,
            confirmations: Default::default(),
            write_failure,
            store,
        }))
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    pub fn config_state(&self) -> &Arc<ConfigState> {
        &self.state
    }

    /// Makes this node a one-member cluster, unless it already belongs to one.
    pub async fn bootstrap(&self, me: Member) -> Result<(), ConsensusError> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        if !initialized {
            let members = std::collections::BTreeMap::from([(self.id, me)]);
            self.raft
                .initialize(members)
                .await
                .map_err(|e| ConsensusError::Raft(e.to_string()))?;
        }
        Ok(())
    }

    /// Commits a config change made by `caller` through the leader; returns the new version.
    /// A change larger than [`MAX_CHANGE_BYTES`] encoded is refused before it is proposed.
    pub async fn propose(&self, caller: &Caller, proposal: Proposal) -> Result<u64, WriteError> {
        let size = network::encoded_size(&proposal);
        if size > MAX_CHANGE_BYTES {
            return Err(WriteError::Rejected(ConfigError::invalid(
                "change",
                format!("of {} KiB", size / 1024),
                format!(
                    "a change of at most {} KiB (every member stores and replicates it within a \
                     heartbeat): split it into several changes",
                    MAX_CHANGE_BYTES / 1024
                ),
            )));
        }
        self.on_leader(Service::ForwardWrite, caller, proposal, |p| {
            self.write_here(p)
        })
        .await
    }

    /// Commits a step of a CA rotation through the leader.
    pub async fn ca_step(&self, step: ca::CaStep) -> Result<(), WriteError> {
        self.on_leader(Service::CaStep, &Caller::Node, step, |step| {
            self.ca_step_here(step)
        })
        .await
    }

    /// Commits an API token's creation or revocation through the leader.
    pub async fn token_step(
        &self,
        caller: &Caller,
        step: tokens::TokenStep,
    ) -> Result<(), WriteError> {
        self.on_leader(Service::TokenStep, caller, step, |step| {
            self.internal_write_here(Request::Token(step), "the token change")
        })
        .await
    }

    /// Commits a join token's creation, revocation or use through the leader.
    pub async fn join_token_step(
        &self,
        caller: &Caller,
        step: join_tokens::JoinTokenStep,
    ) -> Result<(), WriteError> {
        self.on_leader(Service::JoinTokenStep, caller, step, |step| {
            self.internal_write_here(Request::JoinToken(step), "the join token change")
        })
        .await
    }

    async fn ca_step_here(&self, step: ca::CaStep) -> Attempt<()> {
        self.internal_write_here(Request::Ca(step), "the CA step")
            .await
    }

    /// Commits an entry that answers no config version; `what` names it in a timeout.
    async fn internal_write_here(&self, request: Request, what: &str) -> Attempt<()> {
        let write = self.raft.client_write(request);
        match tokio::time::timeout(self.settings.write_timeout, write).await {
            Err(_) => Attempt::Retry(format!("{what} did not commit in time")),
            Ok(Ok(response)) => match response.data {
                Response::Rejected { error } => Attempt::Failed(WriteError::Rejected(error)),
                _ => Attempt::Done(()),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Attempt::Retry("leadership moved".into())
            }
            Ok(Err(e)) => Attempt::Failed(WriteError::Internal(e.to_string())),
        }
    }

    /// Asks to be admitted (as a learner, then a voter while there are fewer than
    /// `max_voters`): first the member at `via` (this node is not a member yet, so it cannot
    /// know the leader), which points it to the leader, which admits it.
    pub async fn request_admission(&self, via: &str, me: Member) -> Result<(), WriteError> {
        let mut target = via.to_string();
        for _ in 0..3 {
            let answer = call_json::<_, Attempt<()>>(
                &self.transport,
                &target,
                None,
                Service::Admit,
                &(self.id, me.clone()),
                self.settings.write_timeout * 2,
            )
            .await;
            match answer {
                Ok(Attempt::Done(())) => return Ok(()),
                Ok(Attempt::Failed(error)) => return Err(error),
                Ok(Attempt::Retry(reason)) => return Err(WriteError::Unavailable(reason)),
                Ok(Attempt::Redirect(leader)) => target = leader,
                Err(e) => {
                    return Err(WriteError::Unavailable(format!(
                        "cannot reach {target}: {e}"
                    )))
                }
            }
        }
        Err(WriteError::Unavailable(
            "the leader moved while this node asked to be admitted".into(),
        ))
    }

    /// Where the membership says peers dial this node, if it knows this node.
    pub fn recorded_member(&self) -> Option<Member> {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .get_node(&self.id)
            .cloned()
    }

    /// Commits `me` (this node's name and address now) to the membership when it records
    /// another address, through the leader: asked of the leader this node knows, else of each
    /// member it knows (any of them points it to the leader), else of `fallback` (the address
    /// it joined through). `Ok(false)`: nothing to change.
    pub async fn record_address(
        &self,
        me: &Member,
        fallback: Option<&str>,
    ) -> Result<bool, WriteError> {
        let recorded = self.recorded_member();
        if recorded.is_none() || recorded.as_ref() == Some(me) {
            return Ok(false);
        }
        let mut targets: Vec<String> = Vec::new();
        match self.leader() {
            // Elected at its new address already: peers answer it, but dial it at the old one.
            Some((leader, _)) if leader == self.id => {
                return match self.admit_here(self.id, me.clone()).await {
                    Attempt::Done(()) => Ok(true),
                    Attempt::Failed(error) => Err(error),
                    Attempt::Retry(reason) | Attempt::Redirect(reason) => {
                        Err(WriteError::Unavailable(reason))
                    }
                };
            }
            Some((_, member)) => targets.push(member.addr),
            None => {}
        }
        let metrics = self.raft.metrics().borrow().clone();
        for (id, member) in metrics.membership_config.membership().nodes() {
            if *id != self.id && !targets.contains(&member.addr) {
                targets.push(member.addr.clone());
            }
        }
        targets.extend(fallback.map(str::to_string));
        let mut last = WriteError::Unavailable("this node knows no other member".into());
        for target in targets {
            match self.request_admission(&target, me.clone()).await {
                Ok(()) => return Ok(true),
                Err(WriteError::Unavailable(reason)) => last = WriteError::Unavailable(reason),
                Err(other) => return Err(other),
            }
        }
        Err(last)
    }

    /// Runs `local` if this node leads, else forwards `request` with its `caller` to the
    /// leader's `service`; retries through elections until the write timeout.
    async fn on_leader<Req, T, F, Fut>(
        &self,
        service: Service,
        caller: &Caller,
        request: Req,
        local: F,
    ) -> Result<T, WriteError>
    where
        Req: Serialize + Clone,
        T: DeserializeOwned,
        F: Fn(Req) -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let deadline = Instant::now() + self.settings.write_timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = match self.leader() {
                Some((leader, _)) if leader == self.id => local(request.clone()).await,
                Some((leader, member)) => {
                    let forwarded = Forwarded {
                        caller: caller.clone(),
                        request: request.clone(),
                    };
                    match call_json::<_, Attempt<T>>(
                        &self.transport,
                        &member.addr,
                        Some(leader),
                        service,
                        &forwarded,
                        remaining,
                    )
                    .await
                    {
                        Ok(attempt) => attempt,
                        Err(e) => Attempt::Retry(format!(
                            "the leader {} ({}) is unreachable: {e}",
                            member.name, leader
                        )),
                    }
                }
                None => Attempt::Retry(
                    "no leader is elected: fewer than a majority of voters can reach each other"
                        .into(),
                ),
            };
            match attempt {
                Attempt::Done(value) => return Ok(value),
                Attempt::Failed(error) => return Err(error),
                Attempt::Retry(reason)
                    if Instant::now() + Duration::from_millis(100) >= deadline =>
                {
                    return Err(WriteError::Unavailable(format!(
                        "no quorum after {:?}: {reason}; retry when a majority of voters is reachable",
                        self.settings.write_timeout
                    )));
                }
                Attempt::Retry(reason) | Attempt::Redirect(reason) => {
                    tracing::debug!("write will be retried: {reason}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn write_here(&self, proposal: Proposal) -> Attempt<u64> {
        let write = self.raft.client_write(Request::Config(proposal));
        match tokio::time::timeout(self.settings.write_timeout, write).await {
            Err(_) => Attempt::Failed(WriteError::Unavailable(format!(
                "the change was not committed within {:?}: this leader cannot reach a majority of \
                 voters; it may still commit if they return (retry with the same Idempotency-Key header \
                 and it commits once; without one, check the history before retrying)",
                self.settings.write_timeout
            ))),
            Ok(Ok(response)) => match response.data {
                Response::Committed { version } => Attempt::Done(version),
                Response::Rejected { error } => Attempt::Failed(WriteError::Rejected(error)),
                Response::Internal => Attempt::Failed(WriteError::Internal(
                    "a config write applied as an internal entry".into(),
                )),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Attempt::Retry("leadership moved".into())
            }
            Ok(Err(e)) => Attempt::Failed(WriteError::Internal(e.to_string())),
        }
    }

    async fn admit_here(&self, id: NodeId, member: Member) -> Attempt<()> {
        if self.state.revoked().contains_key(&id) {
            return Attempt::Failed(WriteError::Rejected(ConfigError::invalid(
                "member",
                id,
                "a node that was not removed: a removed member joins again only with a new \
                 data dir and a new join token",
            )));
        }
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let known = membership.membership().get_node(&id).cloned();
        // Only a node a CA holder granted a certificate with a join token is admitted, so a
        // member cannot add members of its own making.
        let granted = self
            .state
            .join_tokens()
            .iter()
            .any(|t| t.uses.iter().any(|u| u.node_id == id));
        if known.is_none() && !granted {
            return Attempt::Failed(WriteError::Rejected(ConfigError::invalid(
                "member",
                id,
                "a node that was granted a certificate with a join token (this id was not \
                 granted one, or its token was revoked before it was admitted)",
            )));
        }
        match &known {
            None => {
                let add = self.raft.add_learner(id, member.clone(), true);
                match tokio::time::timeout(self.settings.write_timeout, add).await {
                    Err(_) => {
                        return Attempt::Retry("the new learner did not catch up in time".into())
                    }
                    Ok(Err(e)) => return membership_error(e),
                    Ok(Ok(_)) => {}
                }
            }
            // A member restarted with another address (`--advertise`, `--listen`): the
            // membership says where peers dial it, so the new address is committed there.
            // `add_learner` keeps a known node's old entry, so this sets it. Only the node
            // itself asks (its certificate names `id`), and every dial checks that the peer at
            // the new address holds that certificate.
            Some(old) if old != &member => {
                let set = ChangeMembers::SetNodes(std::collections::BTreeMap::from([(
                    id,
                    member.clone(),
                )]));
                let change = self.raft.change_membership(set, false);
                match tokio::time::timeout(self.settings.write_timeout, change).await {
                    Err(_) => {
                        return Attempt::Retry("the new address did not commit in time".into())
                    }
                    Ok(Err(e)) => return membership_error(e),
                    Ok(Ok(_)) => tracing::info!(
                        node = id,
                        "{} now listens at {} (was {})",
                        member.name,
                        member.addr,
                        old.addr
                    ),
                }
            }
            Some(_) => {}
        }
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
        if voters.contains(&id) || voters.len() >= self.settings.max_voters {
            return Attempt::Done(());
        }
        let promote = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false);
        match tokio::time::timeout(self.settings.write_timeout, promote).await {
            Err(_) => Attempt::Retry("promotion to voter did not commit in time".into()),
            Ok(Err(e)) => membership_error(e),
            Ok(Ok(_)) => {
                tracing::info!(node = %member, "promoted to voter ({} voters)", voters.len() + 1);
                Attempt::Done(())
            }
        }
    }

    /// The current leader and its address, as this node believes.
    pub fn leader(&self) -> Option<(NodeId, Member)> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        let member = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .clone();
        Some((leader, member))
    }

    /// Whether `id` is in this node's current membership (voter or learner).
    pub fn is_member(&self, id: NodeId) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .is_some()
    }

    fn knows_any_member(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        let known = metrics
            .membership_config
            .membership()
            .nodes()
            .next()
            .is_some();
        known
    }

    /// Whether `id` is a voter in this node's current membership: the voters hold the CA key.
    pub fn is_voter(&self, id: NodeId) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        voters.contains(&id)
    }

    /// Answers a request for one of the consensus services from `sender` (the node id its
    /// certificate names). Each service is open only to the senders that may use it: a Raft
    /// message only from the node it names as leader or candidate, an admission only for the
    /// sender itself (or forwarded by a member), forwarded writes and removals only from
    /// members, CA steps only from voters.
    pub async fn handle(&self, sender: NodeId, service: Service, payload: &[u8]) -> Message {
        let refuse = |why: String| Message::Refused {
            reason: format!("node {sender} may not send {service:?}: {why}"),
        };
        let member_only = matches!(
            service,
            Service::ForwardWrite
                | Service::ReadIndex
                | Service::RemoveMember
                | Service::TokenStep
                | Service::JoinTokenStep
        );
        if member_only && !self.is_member(sender) {
            return refuse("it is not a member of this node's cluster".into());
        }
        if service == Service::CaStep && !self.is_voter(sender) {
            return refuse("only voters (the CA holders) take a CA rotation's steps".into());
        }
        // A vote request from a node this one does not know as a voter is refused (a refused
        // vote costs nothing). Entries and snapshots come only from a leader, so from a voter
        // (see `leadership`).
        match service {
            Service::RaftVote if !self.is_voter(sender) => {
                return refuse("only voters stand for election".into())
            }
            Service::LeaderCheck if !self.is_member(sender) => {
                return refuse("it is not a member of this node's cluster".into())
            }
            _ => {}
        }
        let answer = match service {
            Service::RaftAppendEntries => {
                match decode::<openraft::raft::AppendEntriesRequest<types::TypeConfig>>(payload) {
                    Ok(rpc) if rpc.vote.leader_id().voted_for() != Some(sender) => {
                        return refuse("the entries name another leader".into())
                    }
                    Ok(rpc) => match self.may_lead(sender, rpc.vote.leader_id().get_term()).await {
                        Ok(()) => encode(&self.raft.append_entries(rpc).await),
                        Err(why) => return refuse(why),
                    },
                    Err(refusal) => return refusal,
                }
            }
            Service::RaftVote => match decode::<openraft::raft::VoteRequest<NodeId>>(payload) {
                Ok(rpc) if rpc.vote.leader_id().voted_for() != Some(sender) => {
                    return refuse("the vote request names another candidate".into())
                }
                Ok(rpc) => encode(&self.raft.vote(rpc).await),
                Err(refusal) => return refusal,
            },
            Service::RaftInstallSnapshot => {
                match decode::<openraft::raft::InstallSnapshotRequest<types::TypeConfig>>(payload) {
                    Ok(rpc) if rpc.vote.leader_id().voted_for() != Some(sender) => {
                        return refuse("the snapshot names another leader".into())
                    }
                    Ok(rpc) => match self.may_lead(sender, rpc.vote.leader_id().get_term()).await {
                        Ok(()) => encode(&self.raft.install_snapshot(rpc).await),
                        Err(why) => return refuse(why),
                    },
                    Err(refusal) => return refusal,
                }
            }
            Service::ForwardWrite => {
                match self.authorized(sender, payload, |proposal: &Proposal| {
                    caller::scope_for_change(&self.state.history(), proposal).0
                }) {
                    Ok(Ok(proposal)) => encode(&self.leader_only(self.write_here(proposal)).await),
                    Ok(Err(forbidden)) => encode(&Attempt::<u64>::Failed(forbidden)),
                    Err(refusal) => return refusal,
                }
            }
            Service::ReadIndex => {
                match self
                    .authorized::<read_index::ReadIndexRequest>(sender, payload, |_| Scope::Read)
                {
                    Ok(Ok(_)) => encode(&self.leader_only(self.read_index_here()).await),
                    Ok(Err(forbidden)) => encode(&Attempt::<u64>::Failed(forbidden)),
                    Err(refusal) => return refusal,
                }
            }
            // Joining nodes do not know the leader yet, so any member routes their admission.
            // A joined node asks for itself, and the leader admits it; any other member points
            // it to the leader rather than forwarding, so no member asks in another's name.
            Service::Admit => match decode::<(NodeId, Member)>(payload) {
                Ok((id, _)) if id != sender => {
                    return refuse(format!("a node asks admission only for itself, not {id}"))
                }
                Ok((id, member)) => encode(&match self.leader() {
                    Some((leader, _)) if leader == self.id => self.admit_here(id, member).await,
                    Some((_, leader)) => Attempt::Redirect(leader.addr),
                    None => Attempt::Retry("no leader is elected yet".into()),
                }),
                Err(refusal) => return refusal,
            },
            Service::RemoveMember => {
                match self.authorized::<NodeId>(sender, payload, |_| Scope::Admin) {
                    Ok(Ok(id)) => encode(&self.leader_only(self.remove_here(id)).await),
                    Ok(Err(forbidden)) => encode(&Attempt::<()>::Failed(forbidden)),
                    Err(refusal) => return refusal,
                }
            }
            Service::CaStep => {
                match self.authorized::<ca::CaStep>(sender, payload, |_| Scope::Admin) {
                    Ok(Ok(step)) => encode(&self.leader_only(self.ca_step_here(step)).await),
                    Ok(Err(forbidden)) => encode(&Attempt::<()>::Failed(forbidden)),
                    Err(refusal) => return refusal,
                }
            }
            Service::TokenStep => {
                match self.authorized::<tokens::TokenStep>(sender, payload, |_| Scope::Admin) {
                    Ok(Err(forbidden)) => encode(&Attempt::<()>::Failed(forbidden)),
                    Ok(Ok(step)) => encode(
                        &self
                            .leader_only(
                                self.internal_write_here(Request::Token(step), "the token change"),
                            )
                            .await,
                    ),
                    Err(refusal) => return refusal,
                }
            }
            Service::JoinTokenStep => {
                match self
                    .authorized::<join_tokens::JoinTokenStep>(sender, payload, |_| Scope::Admin)
                {
                    Ok(Err(forbidden)) => encode(&Attempt::<()>::Failed(forbidden)),
                    Ok(Ok(step)) => encode(
                        &self
                            .leader_only(self.internal_write_here(
                                Request::JoinToken(step),
                                "the join token change",
                            ))
                            .await,
                    ),
                    Err(refusal) => return refusal,
                }
            }
            Service::Ping => encode(&self.id),
            Service::LeaderCheck => encode(&self.leader_view()),
            Service::LoadReport
            | Service::CaStatus
            | Service::SignCsr
            | Service::SignJoin
            | Service::CaKey
            | Service::TraceSpans
            | Service::Predictions => {
                return Message::Refused {
                    reason: format!("{service:?} is answered by the node, not by consensus"),
                }
            }
        };
        answer.unwrap_or_else(|reason| Message::Refused { reason })
    }

    /// The request of a forwarded `payload` if its caller may make a change that needs
    /// `needed` (`Ok(Err)` says why not); `Err` refuses a payload that does not decode.
    fn authorized<R: DeserializeOwned>(
        &self,
        sender: NodeId,
        payload: &[u8],
        needed: impl FnOnce(&R) -> Scope,
    ) -> Result<Result<R, WriteError>, Message> {
        let forwarded = decode::<Forwarded<R>>(payload)?;
        let needed = needed(&forwarded.request);
        let voter = self.is_voter(sender);
        Ok(
            caller::authorize(&self.state, sender, voter, &forwarded.caller, needed)
                .map(|()| forwarded.request),
        )
    }

    /// A forwarded request is only served by the leader, so forwards never loop.
    async fn leader_only<T>(&self, attempt: impl Future<Output = Attempt<T>>) -> Attempt<T> {
        match self.leader() {
            Some((leader, _)) if leader == self.id => attempt.await,
            _ => Attempt::Retry("forwarded to a node that is no longer the leader".into()),
        }
    }

    /// Pings every other member once a second, for the `reachable` column of the status.
    pub fn spawn_reachability_probe(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        self.spawn_every(Duration::from_secs(1), |consensus| async move {
            let metrics = consensus.raft.metrics().borrow().clone();
            for (id, member) in metrics.membership_config.membership().nodes() {
                if *id == consensus.id {
                    continue;
                }
                let (id, addr, consensus) = (*id, member.addr.clone(), consensus.clone());
                tokio::spawn(async move {
                    let ping = call_json::<_, NodeId>(
                        &consensus.transport,
                        &addr,
                        Some(id),
                        Service::Ping,
                        &(),
                        Duration::from_secs(1),
                    );
                    if matches!(ping.await, Ok(answered) if answered == id) {
                        consensus.heard_from(id);
                    }
                });
            }
        })
    }

    /// Runs `task` every `period` for as long as the consensus is alive (the task holds only
    /// a weak reference between runs, so a shut-down node's tasks end).
    fn spawn_every<F, Fut>(
        self: &Arc<Self>,
        period: Duration,
        task: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Arc<Self>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(consensus) = this.upgrade() else {
                    return;
                };
                task(consensus).await;
            }
        })
    }

    /// Sends a one-way JSON message to every other member (gossip outside the Raft log);
    /// failures are left to the caller's next round.
    pub fn broadcast<T: Serialize + Sync>(self: &Arc<Self>, service: Service, message: &T) {
        let Ok(payload) = serde_json::to_vec(message) else {
            return;
        };
        let metrics = self.raft.metrics().borrow().clone();
        for (id, member) in metrics.membership_config.membership().nodes() {
            if *id == self.id {
                continue;
            }
            let (addr, transport, payload) =
                (member.addr.clone(), self.transport.clone(), payload.clone());
            tokio::spawn(async move {
                let Ok(socket) = network::resolve(&addr).await else {
                    return;
                };
                let message = Message::Request { service, payload };
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), transport.call(socket, &message))
                        .await;
            });
        }
    }

    /// Whether `id` answered a ping within `reachable_within`.
    fn heard_lately(&self, id: &NodeId) -> bool {
        self.last_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .is_some_and(|at| at.elapsed() < self.settings.reachable_within)
    }

    fn heard_from(&self, id: NodeId) {
        self.last_heard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Instant::now());
    }

    pub fn status(&self) -> ClusterStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, member)| MemberStatus {
                id: *id,
                name: member.name.clone(),
                address: member.addr.clone(),
                role: if voters.contains(id) {
                    Role::Voter
                } else {
                    Role::Learner
                },
                leader: metrics.current_leader == Some(*id),
                reachable: *id == self.id || self.heard_lately(id),
            })
            .collect();
        let leader_name = metrics
            .current_leader
            .and_then(|id| membership.get_node(&id))
            .map(|member| member.name.clone());
        ClusterStatus {
            node_id: self.id,
            // A Raft stopped on a fatal error keeps its last metrics: say it stopped.
            state: match metrics.state {
                _ if metrics.running_state.is_err() => "stopped",
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            }
            .into(),
            leader_id: metrics.current_leader,
            leader_name,
            term: metrics.current_term,
            committed_version: self.state.history().version(),
            commit_index: self.committed_index.load(Ordering::Relaxed),
            last_log_index: metrics.last_log_index.unwrap_or(0),
            last_applied_index: metrics.last_applied.map(|id| id.index).unwrap_or(0),
            snapshot_index: metrics.snapshot.map(|id| id.index).unwrap_or(0),
            purged_index: metrics.purged.map(|id| id.index).unwrap_or(0),
            slowest_flush_ms: self.slowest_recent_flush().as_millis() as u64,
            members,
        }
    }

    /// Why this node cannot take part in consensus, if it cannot: its last write of the Raft
    /// log or vote failed (a full or read-only disk), or Raft stopped on a fatal error (it
    /// stops on any storage error and takes no part until the node is restarted).
    pub fn storage_problem(&self) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        let failure = self
            .write_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match (metrics.running_state, failure) {
            (Err(openraft::error::Fatal::StorageError(e)), _) => Some(format!(
                "Raft stopped: cannot write the Raft log or state to the data dir ({e}); this \
                 node takes no part in consensus until it is restarted: free space on the data \
                 dir's disk (or make it writable), then restart the node"
            )),
            (Err(fatal), _) => Some(format!(
                "Raft stopped ({fatal}): this node takes no part in consensus; see its log, \
                 then restart it"
            )),
            (Ok(()), Some(failure)) => Some(failure),
            (Ok(()), None) => None,
        }
    }

    /// The slowest flush of the data dir lately (every Raft append and vote waits for one).
    pub fn slowest_recent_flush(&self) -> std::time::Duration {
        self.store.slowest_recent_flush()
    }

    /// What a slow disk does to this node, when a flush lately took longer than the shortest
    /// election timeout: a follower that cannot append in time answers late and a leader
    /// commits late, so elections and writes stall while it lasts. Not a failure (the node
    /// still takes part), a degradation to look into.
    pub fn slow_disk(&self) -> Option<String> {
        let slowest = self.slowest_recent_flush();
        (slowest >= self.settings.election_timeout_min).then(|| {
            format!(
                "the data dir's disk is slow: a flush of the Raft log took {:.1} s in the last \
                 minute (longer than the {} ms election timeout, so this node's votes and \
                 commits come late): move the data dir to a faster disk or find what else \
                 loads it",
                slowest.as_secs_f64(),
                self.settings.election_timeout_min.as_millis()
            )
        })
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        self.transport.close();
    }
}

fn membership_error<T>(error: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> Attempt<T> {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            Attempt::Retry("leadership moved".into())
        }
        // Another membership change is still in flight; it finishes within a round trip.
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Attempt::Retry(e.to_string())
        }
        other => Attempt::Failed(WriteError::Internal(other.to_string())),
    }
}

fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Message> {
    serde_json::from_slice(payload).map_err(|e| Message::Refused {
        reason: format!("undecodable request payload: {e}"),
    })
}

fn encode(value: &impl Serialize) -> Result<Message, String> {
    serde_json::to_vec(value)
        .map(|payload| Message::Response { payload })
        .map_err(|e| format!("cannot encode answer: {e}"))
}
