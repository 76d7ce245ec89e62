//! The Raft log and vote, stored through `apiary-storage`.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use apiary_storage::Store;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last-purged";

fn io(make: fn(AnyError) -> StorageIOError<NodeId>, error: impl std::fmt::Display) -> StorageError {
    make(AnyError::error(error.to_string())).into()
}

pub(crate) fn to_json(value: &impl Serialize) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(value).map_err(|e| io(StorageIOError::write, e))
}

pub(crate) fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| io(StorageIOError::read, e))
}

#[derive(Clone)]
pub struct LogStore {
    store: Store,
    /// Highest committed index this node knows of, for `/metrics`.
    committed_index: Arc<AtomicU64>,
    /// The last failed write of the log or the vote, cleared by the next that succeeds.
    write_failure: Arc<std::sync::Mutex<Option<String>>>,
}

impl LogStore {
    pub fn new(store: Store) -> Self {
        LogStore {
            store,
            committed_index: Arc::new(AtomicU64::new(0)),
            write_failure: Arc::default(),
        }
    }

    /// Why the last write of the Raft log or vote failed, if it did (`None` once one succeeds).
    pub fn write_failure(&self) -> Arc<std::sync::Mutex<Option<String>>> {
        self.write_failure.clone()
    }

    /// Notes how a write of the log or the vote ended, and passes its result on.
    fn noted<T>(&self, what: &str, result: Result<T, StorageError>) -> Result<T, StorageError> {
        let mut failure = self.write_failure.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => *failure = None,
            Err(e) => {
                tracing::error!("cannot write the Raft {what}: {e}");
                *failure = Some(format!("cannot write the Raft {what} to the data dir: {e}"));
            }
        }
        result
    }

    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed_index.clone()
    }

    fn meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        match self
            .store
            .meta_get(key)
            .map_err(|e| io(StorageIOError::read, e))?
        {
            Some(bytes) => Ok(Some(from_json(&bytes)?)),
            None => Ok(None),
        }
    }

    async fn put_meta(
        &self,
        key: &str,
        value: &impl Serialize,
        make: fn(AnyError) -> StorageIOError<NodeId>,
    ) -> Result<(), StorageError> {
        self.store
            .meta_put(key, &to_json(value)?)
            .map_err(|e| io(make, e))?;
        self.store.flush().await.map_err(|e| io(make, e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        self.store
            .log_range(start, end)
            .map_err(|e| io(StorageIOError::read_logs, e))?
            .iter()
            .map(|(_, bytes)| from_json(bytes))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.meta(LAST_PURGED)?;
        let last = self
            .store
            .log_last()
            .map_err(|e| io(StorageIOError::read_logs, e))?;
        let last_log_id = match last {
            Some((_, bytes)) => Some(from_json::<Entry>(&bytes)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let result = self.put_meta(VOTE, vote, StorageIOError::write_vote).await;
        self.noted("vote", result)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(log_id) = committed {
            self.committed_index.store(log_id.index, Ordering::Relaxed);
        }
        // Not flushed: a lost committed id is recomputed by Raft after restart.
        self.store
            .meta_put(COMMITTED, &to_json(&committed)?)
            .map_err(|e| io(StorageIOError::write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<LogId> = self.meta(COMMITTED)?.flatten();
        if let Some(log_id) = committed {
            self.committed_index.store(log_id.index, Ordering::Relaxed);
        }
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded = entries
            .into_iter()
            .map(|entry| Ok((entry.log_id.index, to_json(&entry)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        let appended = self
            .store
            .log_append(encoded)
            .map_err(|e| io(StorageIOError::write_logs, e));
        self.noted("log", appended)?;
        let flushed = self.store.flush().await;
        let result = flushed
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(result);
        let flushed = flushed.map_err(|e| io(StorageIOError::write_logs, e));
        self.noted("log", flushed)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.store
            .log_truncate_from(log_id.index)
            .map_err(|e| io(StorageIOError::write_logs, e))?;
        self.store
            .flush()
            .await
            .map_err(|e| io(StorageIOError::write_logs, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves entries that are simply
        // purged again, never a hole that Raft does not know about.
        self.put_meta(LAST_PURGED, &Some(log_id), StorageIOError::write_logs)
            .await?;
        self.store
            .log_purge_upto(log_id.index)
            .map_err(|e| io(StorageIOError::write_logs, e))
    }
}
