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
    /// Set once the log on disk has been checked for holes, before Raft first reads it.
    checked: Arc<tokio::sync::OnceCell<()>>,
}

impl LogStore {
    pub fn new(store: Store) -> Self {
        LogStore {
            store,
            committed_index: Arc::new(AtomicU64::new(0)),
            write_failure: Arc::default(),
            checked: Arc::default(),
        }
    }

    /// Cuts the log at its first hole, once, before Raft reads its state (openraft reads the
    /// committed id first, then the log state; both come here).
    ///
    /// Raft needs the entries after the purge point without a break, and openraft refuses to
    /// start on a log with a hole ("try to get log at index N but got None"), for ever. One was
    /// left by a full disk in the soak: a write the disk refused, a later one kept. The entries
    /// from the hole on are dropped and fetched again from the leader. That is safe for those
    /// whose write failed (never acknowledged); an entry after the hole may have been
    /// acknowledged, and losing it is what losing this node's disk would be, which Raft survives
    /// while a majority keeps its logs. Said in the log, loudly, with the indexes.
    async fn cut_at_first_hole(&self) -> Result<(), StorageError> {
        self.checked
            .get_or_try_init(|| async {
                let read = |e| io(StorageIOError::read_logs, e);
                let last_purged: Option<LogId> = self.meta(LAST_PURGED)?;
                let (from, must_start) = match last_purged {
                    Some(purged) => (purged.index.saturating_add(1), true),
                    // Unpurged, an openraft log starts at 0 (the first membership).
                    None => (0, true),
                };
                let Some(hole) = self.store.log_first_hole(from, must_start).map_err(read)? else {
                    return Ok(());
                };
                let last = self.store.log_last().map_err(read)?.map(|(index, _)| index);
                tracing::warn!(
                    hole,
                    last = ?last,
                    "the Raft log on disk misses entry {hole} (after a failed write?): entries \
                     {hole} and later are dropped and will be fetched again from the leader"
                );
                self.store
                    .log_truncate_from(hole)
                    .map_err(|e| io(StorageIOError::write_logs, e))?;
                self.store
                    .flush()
                    .await
                    .map_err(|e| io(StorageIOError::write_logs, e))
            })
            .await
            .map(|_| ())
    }

    /// The id of the last entry in the log, or the purge point when none is after it.
    fn last_log_id(&self) -> Result<Option<LogId>, StorageError> {
        match self
            .store
            .log_last()
            .map_err(|e| io(StorageIOError::read_logs, e))?
        {
            Some((_, bytes)) => Ok(Some(from_json::<Entry>(&bytes)?.log_id)),
            None => self.meta(LAST_PURGED),
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
        self.cut_at_first_hole().await?;
        Ok(LogState {
            last_purged_log_id: self.meta(LAST_PURGED)?,
            last_log_id: self.last_log_id()?,
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
        self.cut_at_first_hole().await?;
        let mut committed: Option<LogId> = self.meta(COMMITTED)?.flatten();
        // Entries cut at a hole may have been committed: openraft would re-apply up to the
        // committed index and fail on the first missing one. Raft learns it again from the
        // leader. (Below the state machine's last applied entry, openraft takes that instead.)
        let last = self.last_log_id()?;
        if committed.as_ref().map(|c| c.index) > last.as_ref().map(|l| l.index) {
            committed = last;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 7), index)
    }

    fn put(store: &Store, indexes: impl IntoIterator<Item = u64>) {
        let entries = indexes.into_iter().map(|index| {
            let entry = Entry {
                log_id: log_id(index),
                payload: EntryPayload::Blank,
            };
            (index, to_json(&entry).unwrap())
        });
        store.log_append(entries).unwrap();
    }

    #[tokio::test]
    async fn a_log_with_a_hole_is_cut_at_the_hole_before_raft_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Purged up to 2; 3 and 4 kept, 5 lost, 6 to 9 kept (the soak's disk-full left this).
        put(&store, [1, 3, 4, 6, 7, 8, 9]);
        store
            .meta_put(LAST_PURGED, &to_json(&Some(log_id(2))).unwrap())
            .unwrap();
        store
            .meta_put(COMMITTED, &to_json(&Some(log_id(8))).unwrap())
            .unwrap();
        let mut log = LogStore::new(store.clone());
        // openraft reads the committed id first.
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(4)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2)));
        assert_eq!(state.last_log_id, Some(log_id(4)));
        let kept = log.try_get_log_entries(3..=4).await.unwrap();
        assert_eq!(
            kept.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            [3, 4]
        );
        assert_eq!(
            store.log_range(5, u64::MAX).unwrap(),
            vec![],
            "cut on disk too"
        );
    }

    #[tokio::test]
    async fn a_hole_right_after_the_purge_point_leaves_no_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put(&store, [5, 6]);
        store
            .meta_put(LAST_PURGED, &to_json(&Some(log_id(3))).unwrap())
            .unwrap();
        let mut log = LogStore::new(store);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(3)), "the purge point");
    }

    #[tokio::test]
    async fn a_whole_log_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put(&store, 0..10);
        store
            .meta_put(COMMITTED, &to_json(&Some(log_id(9))).unwrap())
            .unwrap();
        let mut log = LogStore::new(store);
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(9)));
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id,
            Some(log_id(9))
        );
    }
}
