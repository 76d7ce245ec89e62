//! The replicated state machine: the config event log, persisted in the state tree.
//!
//! Layout: `e/<version, 8 bytes big-endian>` → a [`ConfigEvent`] as JSON, and `applied` → the last
//! applied log id with the membership. Both are written in one atomic batch per `apply`, so after
//! a crash the events and the applied id always agree.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use apiary_config::{ConfigEvent, History};
use apiary_storage::Store;
use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::ca::{apply_step, CaPhase, CaState};
use crate::join_tokens::{apply_join_token_step, JoinTokenRecord, JoinTokenStep};
use crate::log_store::{from_json, to_json};
use crate::tokens::{apply_token_step, token_hash, TokenRecord};
use crate::types::{
    Entry, LogId, NodeId, Request, Response, Snapshot, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};

const APPLIED: &[u8] = b"applied";
const EVENT_PREFIX: &[u8] = b"e/";
const LEGACY_SNAPSHOT: &str = "snapshot";

fn io(make: fn(AnyError) -> StorageIOError<NodeId>, error: impl std::fmt::Display) -> StorageError {
    make(AnyError::error(error.to_string())).into()
}

fn event_key(version: u64) -> Vec<u8> {
    [EVENT_PREFIX, &version.to_be_bytes()].concat()
}

#[derive(Default, Clone, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// The latest CA rotation (absent in data dirs from before rotations existed).
    #[serde(default)]
    ca: Option<CaState>,
    /// API tokens by id, as hashes (absent in data dirs from before tokens existed).
    #[serde(default)]
    tokens: BTreeMap<String, TokenRecord>,
    /// Join tokens by id, as hashes.
    #[serde(default)]
    join_tokens: BTreeMap<String, JoinTokenRecord>,
    /// Members removed from the cluster, by id, with their names: their certificates are
    /// refused at every handshake, and their ids are never admitted again.
    #[serde(default)]
    revoked: BTreeMap<NodeId, String>,
}

/// What a snapshot holds: everything needed to rebuild the state machine.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    applied: Applied,
    events: Vec<ConfigEvent>,
}

/// How a snapshot was kept before snapshot files: in the meta tree, its data as a JSON array.
#[derive(Deserialize)]
struct LegacySnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

struct State {
    applied: Applied,
    history: History,
}

/// Shared between Raft (which applies) and the node (which reads the config and history).
pub struct ConfigState {
    store: Store,
    state: RwLock<State>,
    version: watch::Sender<u64>,
    ca: watch::Sender<Option<CaState>>,
    revoked: watch::Sender<BTreeSet<NodeId>>,
    snapshots_built: std::sync::atomic::AtomicU64,
}

/// Read access to the applied config and its history.
pub struct HistoryRef<'a>(RwLockReadGuard<'a, State>);

impl std::ops::Deref for HistoryRef<'_> {
    type Target = History;
    fn deref(&self) -> &History {
        &self.0.history
    }
}

impl ConfigState {
    /// Loads the applied state from disk (empty on a new node).
    pub fn open(store: Store) -> Result<Arc<Self>, StorageError> {
        let applied = match store
            .state_get(APPLIED)
            .map_err(|e| io(StorageIOError::read_state_machine, e))?
        {
            Some(bytes) => from_json(&bytes)?,
            None => Applied::default(),
        };
        let events = store
            .state_scan(EVENT_PREFIX)
            .map_err(|e| io(StorageIOError::read_state_machine, e))?
            .iter()
            .map(|(_, bytes)| from_json::<ConfigEvent>(bytes))
            .collect::<Result<Vec<_>, _>>()?;
        let history =
            History::from_events(events).map_err(|e| io(StorageIOError::read_state_machine, e))?;
        let (version, _) = watch::channel(history.version());
        let (ca, _) = watch::channel(applied.ca.clone());
        let (revoked, _) = watch::channel(applied.revoked.keys().copied().collect());
        Ok(Arc::new(ConfigState {
            store,
            state: RwLock::new(State { applied, history }),
            version,
            ca,
            revoked,
            snapshots_built: Default::default(),
        }))
    }

    pub fn history(&self) -> HistoryRef<'_> {
        HistoryRef(self.read())
    }

    /// Notified with the new version after each applied change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The applied CA rotation state (`None`: the cluster's first CA is the only one).
    pub fn ca(&self) -> Option<CaState> {
        self.read().applied.ca.clone()
    }

    /// The applied CA rotation state; notified after each applied rotation step.
    pub fn subscribe_ca(&self) -> watch::Receiver<Option<CaState>> {
        self.ca.subscribe()
    }

    /// The API tokens (hashes, names, scopes), by id.
    pub fn tokens(&self) -> Vec<TokenRecord> {
        self.read().applied.tokens.values().cloned().collect()
    }

    /// The record of a presented token, if the cluster holds it.
    pub fn find_token(&self, presented: &str) -> Option<TokenRecord> {
        let hash = token_hash(presented);
        self.read()
            .applied
            .tokens
            .values()
            .find(|t| t.sha256 == hash)
            .cloned()
    }

    /// The join tokens (hashes, expiry, uses), by id.
    pub fn join_tokens(&self) -> Vec<JoinTokenRecord> {
        self.read().applied.join_tokens.values().cloned().collect()
    }

    /// The record of a presented join token's secret, if the cluster holds it.
    pub fn find_join_token(&self, secret: &[u8]) -> Option<JoinTokenRecord> {
        let hash = token_hash(&hex::encode(secret));
        self.read()
            .applied
            .join_tokens
            .values()
            .find(|t| t.sha256 == hash)
            .cloned()
    }

    /// Removed members' ids and names.
    pub fn revoked(&self) -> BTreeMap<NodeId, String> {
        self.read().applied.revoked.clone()
    }

    /// The removed members' ids; notified when a removal is applied.
    pub fn subscribe_revoked(&self) -> watch::Receiver<BTreeSet<NodeId>> {
        self.revoked.subscribe()
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // Writers replace whole fields; a poisoned lock still holds a consistent state.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot_data(&self) -> Result<(SnapshotMeta, Vec<u8>), StorageError> {
        let state = self.read();
        let data = SnapshotData {
            applied: state.applied.clone(),
            events: state.history.events().to_vec(),
        };
        let n = self
            .snapshots_built
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let snapshot_id = match state.applied.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id, id.index, n),
            None => format!("empty-{n}"),
        };
        let meta = SnapshotMeta {
            last_log_id: state.applied.last_applied,
            last_membership: state.applied.membership.clone(),
            snapshot_id,
        };
        Ok((meta, to_json(&data)?))
    }

    async fn save_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        self.store
            .save_snapshot(&to_json(meta)?, data)
            .await
            .map_err(|e| io(StorageIOError::write, e))?;
        // A data dir from before snapshot files kept it in the meta tree, as JSON numbers.
        self.store
            .meta_remove(LEGACY_SNAPSHOT)
            .map_err(|e| io(StorageIOError::write, e))
    }

    /// The current snapshot: from its file, or as data dirs from before snapshot files kept it.
    fn load_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        let read = |e| io(StorageIOError::read, e);
        if let Some(stored) = self.store.load_snapshot().map_err(read)? {
            return Ok(Some((from_json(&stored.meta)?, stored.data)));
        }
        let Some(bytes) = self.store.meta_get(LEGACY_SNAPSHOT).map_err(read)? else {
            return Ok(None);
        };
        let legacy: LegacySnapshot = from_json(&bytes)?;
        Ok(Some((legacy.meta, legacy.data)))
    }
}

/// The handle Raft owns; cheap to clone.
#[derive(Clone)]
pub struct StateMachine(pub Arc<ConfigState>);

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (meta, data) = self.0.snapshot_data()?;
        self.0.save_snapshot(&meta, &data).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.0.read();
        Ok((state.applied.last_applied, state.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut puts = Vec::new();
        let mut ca_changed = false;
        let mut revoked_changed = false;
        let version = {
            let mut state = self.0.write();
            for entry in entries {
                state.applied.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::Internal,
                    EntryPayload::Membership(membership) => {
                        let before = state.applied.membership.membership().clone();
                        for (id, member) in before.nodes() {
                            if membership.get_node(id).is_none() {
                                state.applied.revoked.insert(*id, member.name.clone());
                                revoked_changed = true;
                            }
                        }
                        state.applied.membership =
                            StoredMembership::new(Some(entry.log_id), membership);
                        Response::Internal
                    }
                    // Refusals are deterministic (same history, same proposal), so every node
                    // refuses the same entries and the histories stay identical.
                    EntryPayload::Normal(Request::Config(proposal)) => {
                        match state.history.commit(&proposal) {
                            Ok(event) => {
                                puts.push((event_key(event.version), to_json(event)?));
                                Response::Committed {
                                    version: event.version,
                                }
                            }
                            Err(error) => Response::Rejected { error },
                        }
                    }
                    EntryPayload::Normal(Request::Token(step)) => {
                        match apply_token_step(&mut state.applied.tokens, step) {
                            Ok(()) => Response::Internal,
                            Err(error) => Response::Rejected { error },
                        }
                    }
                    EntryPayload::Normal(Request::JoinToken(step)) => {
                        // A use may not name a member or a removed node: a forged step must
                        // not make an existing id look granted.
                        let taken = |id: &NodeId| {
                            state.applied.membership.membership().get_node(id).is_some()
                                || state.applied.revoked.contains_key(id)
                        };
                        let result = match &step {
                            JoinTokenStep::Use { node_id, .. } if taken(node_id) => {
                                Err(apiary_config::ConfigError::invalid(
                                    "join_token.node_id",
                                    node_id,
                                    "a new node id (this one is a member's or a removed node's)",
                                ))
                            }
                            _ => apply_join_token_step(&mut state.applied.join_tokens, step),
                        };
                        match result {
                            Ok(()) => Response::Internal,
                            Err(error) => Response::Rejected { error },
                        }
                    }
                    EntryPayload::Normal(Request::Ca(step)) => {
                        match apply_step(state.applied.ca.as_ref(), step) {
                            Ok(ca) => {
                                // The old join tokens pin the CA that is no longer trusted.
                                if ca.phase == CaPhase::Finished {
                                    state.applied.join_tokens.clear();
                                }
                                state.applied.ca = Some(ca);
                                ca_changed = true;
                                Response::Internal
                            }
                            Err(error) => Response::Rejected { error },
                        }
                    }
                };
                responses.push(response);
            }
            puts.push((APPLIED.to_vec(), to_json(&state.applied)?));
            state.history.version()
        };
        self.0
            .store
            .state_write(puts)
            .map_err(|e| io(StorageIOError::write_state_machine, e))?;
        self.0
            .store
            .flush()
            .await
            .map_err(|e| io(StorageIOError::write_state_machine, e))?;
        self.0.version.send_replace(version);
        if ca_changed {
            let ca = self.0.read().applied.ca.clone();
            self.0.ca.send_replace(ca);
        }
        if revoked_changed {
            let revoked = self.0.revoked().into_keys().collect();
            self.0.revoked.send_replace(revoked);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let bytes = snapshot.into_inner();
        let data: SnapshotData = from_json(&bytes)?;
        let history = History::from_events(data.events.clone())
            .map_err(|e| io(StorageIOError::read_state_machine, e))?;
        let mut puts = Vec::with_capacity(data.events.len() + 1);
        for event in &data.events {
            puts.push((event_key(event.version), to_json(event)?));
        }
        let applied = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            ..data.applied
        };
        puts.push((APPLIED.to_vec(), to_json(&applied)?));
        self.0
            .store
            .state_replace(puts)
            .map_err(|e| io(StorageIOError::write_state_machine, e))?;
        self.0.save_snapshot(meta, &bytes).await?;
        let version = history.version();
        let ca = applied.ca.clone();
        let revoked: BTreeSet<NodeId> = applied.revoked.keys().copied().collect();
        *self.0.write() = State { applied, history };
        self.0.revoked.send_if_modified(|current| {
            let changed = *current != revoked;
            *current = revoked;
            changed
        });
        self.0.version.send_replace(version);
        self.0.ca.send_if_modified(|current| {
            let changed = *current != ca;
            *current = ca;
            changed
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(self.0.load_snapshot()?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::{Scope, TokenStep};
    use apiary_config::{Intent, Proposal, Setting};
    use openraft::{CommittedLeaderId, Membership};
    use std::collections::{BTreeMap, BTreeSet};

    fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
            payload,
        }
    }

    fn set(rate: f64) -> EntryPayload<TypeConfig> {
        EntryPayload::Normal(Request::Config(Proposal {
            origin_node: "t".into(),
            request_id: None,
            author: "t".into(),
            comment: String::new(),
            at: "2026-11-25T00:00:00Z".into(),
            intent: Intent::Set {
                settings: vec![Setting {
                    key: "probe.http.sample_rate".into(),
                    value: serde_json::json!(rate),
                }],
            },
        }))
    }

    fn membership() -> EntryPayload<TypeConfig> {
        let nodes = BTreeMap::from([(0u64, crate::Member::default())]);
        EntryPayload::Membership(Membership::new(vec![BTreeSet::from([0u64])], nodes))
    }

    #[tokio::test]
    async fn applies_refuses_persists_and_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut machine = StateMachine(ConfigState::open(store.clone()).unwrap());
        let responses = machine
            .apply(vec![
                entry(1, EntryPayload::Blank),
                entry(2, membership()),
                entry(3, set(0.5)),
                entry(4, set(7.0)),
                entry(5, set(0.25)),
            ])
            .await
            .unwrap();
        assert_eq!(responses[2], Response::Committed { version: 1 });
        assert!(matches!(responses[3], Response::Rejected { .. }));
        assert_eq!(responses[4], Response::Committed { version: 2 });

        // Reopened from disk: same history, same applied id and membership.
        let reopened = ConfigState::open(store.clone()).unwrap();
        assert_eq!(reopened.history().events(), machine.0.history().events());
        let (applied, membership) = StateMachine(reopened).applied_state().await.unwrap();
        assert_eq!(applied.unwrap().index, 5);
        assert_eq!(membership.voter_ids().collect::<Vec<_>>(), vec![0]);

        // A snapshot installed on a fresh node reproduces the state.
        let snapshot = machine.build_snapshot().await.unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let mut other =
            StateMachine(ConfigState::open(Store::open(other_dir.path()).unwrap()).unwrap());
        other
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(other.0.history().events(), machine.0.history().events());
        assert_eq!(other.0.history().current().probes.http.sample_rate, 0.25);
        let current = other.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id.unwrap().index, 5);
        assert_eq!(*other.0.subscribe().borrow(), 2);
    }

    #[tokio::test]
    async fn a_snapshot_kept_the_old_way_still_loads_and_the_next_save_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut machine = StateMachine(ConfigState::open(store.clone()).unwrap());
        machine
            .apply(vec![entry(1, membership()), entry(2, set(0.5))])
            .await
            .unwrap();
        let built = machine.build_snapshot().await.unwrap();
        let data = built.snapshot.into_inner();
        // As data dirs from before snapshot files hold it: one JSON value in the meta tree.
        let legacy = serde_json::json!({ "meta": built.meta, "data": data });
        let fresh_dir = tempfile::tempdir().unwrap();
        let old = Store::open(fresh_dir.path()).unwrap();
        old.meta_put(LEGACY_SNAPSHOT, legacy.to_string().as_bytes())
            .unwrap();
        let mut reopened = StateMachine(ConfigState::open(old.clone()).unwrap());
        let loaded = reopened.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(loaded.meta.last_log_id, built.meta.last_log_id);
        assert_eq!(loaded.snapshot.into_inner(), data);

        reopened
            .apply(vec![entry(1, membership()), entry(2, set(0.25))])
            .await
            .unwrap();
        reopened.build_snapshot().await.unwrap();
        assert!(old.meta_get(LEGACY_SNAPSHOT).unwrap().is_none());
        assert!(
            fresh_dir
                .path()
                .join("snapshot")
                .read_dir()
                .unwrap()
                .count()
                == 1
        );
    }

    #[tokio::test]
    async fn tokens_survive_a_restart_and_a_snapshot_as_hashes_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut machine = StateMachine(ConfigState::open(store.clone()).unwrap());
        let record = TokenRecord {
            id: "t1".into(),
            name: "prometheus".into(),
            scope: Scope::Metrics,
            sha256: token_hash("apiary_t1_secret"),
            created_at: "2026-12-01T00:00:00Z".into(),
            created_by: "test".into(),
        };
        let token = |step| EntryPayload::Normal(Request::Token(step));
        let responses = machine
            .apply(vec![
                entry(1, token(TokenStep::Create(record.clone()))),
                entry(2, token(TokenStep::Revoke { id: "nope".into() })),
            ])
            .await
            .unwrap();
        assert_eq!(responses[0], Response::Internal);
        assert!(matches!(responses[1], Response::Rejected { .. }));
        let reopened = ConfigState::open(store.clone()).unwrap();
        assert_eq!(
            reopened.find_token("apiary_t1_secret"),
            Some(record.clone())
        );
        assert_eq!(reopened.find_token("apiary_t1_wrong"), None);
        let snapshot = machine.build_snapshot().await.unwrap();
        let bytes = snapshot.snapshot.get_ref().clone();
        assert!(!String::from_utf8_lossy(&bytes).contains("apiary_t1_secret"));
        let other_dir = tempfile::tempdir().unwrap();
        let mut other =
            StateMachine(ConfigState::open(Store::open(other_dir.path()).unwrap()).unwrap());
        other
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(other.0.tokens(), vec![record]);
    }
}
