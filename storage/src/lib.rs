//! Apiary's durable state, in one `sled` database in the node's data dir.
//!
//! Three trees for consensus, each with one job: the Raft log (entries keyed by index), small
//! metadata (vote, committed id, last purged id, which snapshot is current), and the applied
//! state machine; the current snapshot's data in a file of its own (`snapshot/`); and one
//! `queue/{name}` tree per export destination, the [`Queue`] that is that destination's disk
//! buffer. Values are opaque bytes: the consensus crate owns the format of
//! the first three, the pipeline crate that of the queues' batches; this crate owns atomicity
//! and durability. Writes that must survive a crash are followed by [`Store::flush`].

mod segments;
mod snapshot;

pub use segments::{SegmentQueue, RECORD_OVERHEAD, SEGMENT_BYTES};
pub use snapshot::StoredSnapshot;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot open the database in {path}: {source} ({})", open_hint(source))]
    Open { path: PathBuf, source: sled::Error },
    #[error("storage I/O failed: {0}")]
    Io(#[from] sled::Error),
    #[error("a flush to disk did not finish: {0}")]
    Flush(#[from] tokio::task::JoinError),
    #[error(
        "export buffer file {path}: {source} (is the disk full or the data dir not writable?)"
    )]
    Segment {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot file {path}: {source} (is the disk full or the data dir not writable?)")]
    Snapshot {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// What to do when the database will not open: sled gives a lock failure and a full disk the
/// same error type, and pointing at another node when the disk is full sends an operator the
/// wrong way.
fn open_hint(error: &sled::Error) -> &'static str {
    match error {
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            "the data dir's disk is full: free space on it, then start the node again"
        }
        _ => "is another node using this data dir?",
    }
}

#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    /// The export buffers open now, by directory: one instance per directory, so that a
    /// destination restarted with a new config shares its buffer with the old delivery that is
    /// still stopping, instead of two writers appending to the same files.
    segment_queues: Arc<std::sync::Mutex<std::collections::HashMap<PathBuf, SegmentQueue>>>,
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    state: sled::Tree,
    flusher: Arc<Flusher>,
}

/// One flush at a time for the whole database, shared by the Raft log, the state and every
/// export queue, with group commit: a writer whose data an already finished flush covered does
/// not flush again. sled 0.34 can hang when several `flush_async` calls run at once (seen with
/// eight writers: every sled-io thread parked in `make_stable`), and one flush for many writes
/// is also faster.
#[derive(Default)]
struct Flusher {
    lock: Arc<tokio::sync::Mutex<()>>,
    /// Writes made so far, and the count the last finished flush covered.
    written: AtomicU64,
    flushed: AtomicU64,
    slowest: std::sync::Mutex<SlowestFlush>,
}

/// The slowest flush of the current 30 s window and of the one before, so that a slow disk
/// shows for 30 to 60 s after its last slow flush (a node with nothing to write shows nothing).
#[derive(Default)]
struct SlowestFlush {
    window_start: Option<Instant>,
    current: Duration,
    previous: Duration,
}

const FLUSH_WINDOW: Duration = Duration::from_secs(30);

impl SlowestFlush {
    fn roll(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let age = now.saturating_duration_since(start);
        if age >= FLUSH_WINDOW * 2 {
            self.previous = Duration::ZERO;
            self.current = Duration::ZERO;
            self.window_start = Some(now);
        } else if age >= FLUSH_WINDOW {
            self.previous = self.current;
            self.current = Duration::ZERO;
            self.window_start = Some(start + FLUSH_WINDOW);
        }
    }

    fn record(&mut self, now: Instant, took: Duration) {
        self.roll(now);
        self.current = self.current.max(took);
    }

    fn recent(&mut self, now: Instant) -> Duration {
        self.roll(now);
        self.current.max(self.previous)
    }
}

impl Flusher {
    /// Call after a write: returns once that write is on disk.
    async fn flush(&self, db: &sled::Db) -> Result<()> {
        let mine = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let turn = self.lock.clone().lock_owned().await;
        if self.flushed.load(Ordering::SeqCst) >= mine {
            return Ok(());
        }
        // Every write counted up to here happened before this flush starts, so it covers them.
        let covered = self.written.load(Ordering::SeqCst);
        // On a blocking thread of the runtime rather than flush_async, which hands the flush to
        // sled's own pool and wakes every one of its threads for it (7 threads x 27 wakeups/s
        // each at 12 flushes/s, measured): a wakeup costs about 0.1 ms of CPU on small VMs.
        // The turn goes with the flush: a caller that stops waiting (a dropped request) must not
        // let the next flush start while this one still runs.
        let db = db.clone();
        let started = Instant::now();
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            db.flush()
        })
        .await??;
        let now = Instant::now();
        self.slowest_lock()
            .record(now, now.saturating_duration_since(started));
        self.flushed.fetch_max(covered, Ordering::SeqCst);
        Ok(())
    }

    fn slowest_lock(&self) -> std::sync::MutexGuard<'_, SlowestFlush> {
        self.slowest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store {
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("db");
        let db = sled::Config::new()
            .path(&path)
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|source| StorageError::Open {
                path: path.clone(),
                source,
            })?;
        Ok(Store {
            dir: dir.to_path_buf(),
            segment_queues: Arc::default(),
            log: db.open_tree("raft-log")?,
            meta: db.open_tree("meta")?,
            state: db.open_tree("state")?,
            db,
            flusher: Arc::default(),
        })
    }

    /// Waits until everything written so far is on disk.
    pub async fn flush(&self) -> Result<()> {
        self.flusher.flush(&self.db).await
    }

    /// The slowest flush to disk in the last 30 to 60 s (zero when none was made): what every
    /// Raft append and vote of this node waited for, at worst, lately.
    pub fn slowest_recent_flush(&self) -> Duration {
        self.flusher.slowest_lock().recent(Instant::now())
    }

    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    // --- Raft log -------------------------------------------------------------------------

    pub fn log_append(&self, entries: impl IntoIterator<Item = (u64, Vec<u8>)>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (index, bytes) in entries {
            batch.insert(&index.to_be_bytes(), bytes);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// Entries with `start <= index < end`, in order.
    pub fn log_range(&self, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        self.log
            .range(start.to_be_bytes()..end.to_be_bytes())
            .map(|item| {
                let (key, value) = item?;
                Ok((index_of(&key), value.to_vec()))
            })
            .collect()
    }

    pub fn log_last(&self) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self
            .log
            .last()?
            .map(|(key, value)| (index_of(&key), value.to_vec())))
    }

    /// The first index missing from the entries at `from` and after, if any is: `from` itself
    /// when `must_start` and the log does not hold it, else the first index after one held
    /// whose successor is absent while a later entry is present. `None` when they run without
    /// a break (or there are none).
    pub fn log_first_hole(&self, from: u64, must_start: bool) -> Result<Option<u64>> {
        let mut expected = must_start.then_some(from);
        for key in self.log.range(from.to_be_bytes()..).keys() {
            let index = index_of(&key?);
            match expected {
                Some(next) if index != next => return Ok(Some(next)),
                _ => expected = index.checked_add(1),
            }
        }
        Ok(None)
    }

    /// Removes entries with `index >= from` (a conflicting suffix).
    pub fn log_truncate_from(&self, from: u64) -> Result<()> {
        self.remove_log_keys(from.to_be_bytes().to_vec()..)
    }

    /// Removes entries with `index <= upto` (covered by a snapshot).
    pub fn log_purge_upto(&self, upto: u64) -> Result<()> {
        self.remove_log_keys(..=upto.to_be_bytes().to_vec())
    }

    fn remove_log_keys(&self, range: impl std::ops::RangeBounds<Vec<u8>>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for key in self.log.range(range).keys() {
            batch.remove(key?);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    // --- Metadata -------------------------------------------------------------------------

    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    pub fn meta_put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.meta.insert(key, value)?;
        Ok(())
    }

    pub fn meta_remove(&self, key: &str) -> Result<()> {
        self.meta.remove(key)?;
        Ok(())
    }

    // --- Applied state --------------------------------------------------------------------

    pub fn state_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.state.get(key)?.map(|v| v.to_vec()))
    }

    /// All state entries whose key starts with `prefix`, in key order.
    pub fn state_scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.state
            .scan_prefix(prefix)
            .map(|item| {
                let (key, value) = item?;
                Ok((key.to_vec(), value.to_vec()))
            })
            .collect()
    }

    /// Writes all `puts` atomically: after a crash either all of them or none are there.
    pub fn state_write(&self, puts: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (key, value) in puts {
            batch.insert(key, value);
        }
        self.state.apply_batch(batch)?;
        Ok(())
    }

    /// Replaces the whole state atomically (installing a snapshot).
    pub fn state_replace(&self, puts: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for key in self.state.iter().keys() {
            batch.remove(key?);
        }
        for (key, value) in puts {
            batch.insert(key, value);
        }
        self.state.apply_batch(batch)?;
        Ok(())
    }
}

/// A durable FIFO of opaque items (export batches) in its own tree. It keeps no limit itself:
/// [`Queue::bytes`] tells its user (the pipeline's delivery) how much it holds, to bound it.
///
/// Items leave only through [`Queue::ack`], after their destination acknowledged them, so a
/// crash or restart re-sends instead of losing. Sequence numbers keep increasing across restarts.
#[derive(Clone)]
pub struct Queue {
    tree: sled::Tree,
    db: sled::Db,
    flusher: Arc<Flusher>,
}

impl Store {
    /// Opens (or creates) the queue called `name`.
    pub fn queue(&self, name: &str) -> Result<Queue> {
        Ok(Queue {
            tree: self.db.open_tree(format!("queue/{name}"))?,
            db: self.db.clone(),
            flusher: self.flusher.clone(),
        })
    }

    /// Opens (or creates) the export buffer of destination `name`, to be capped at
    /// `max_bytes`: segment files in `export/{name}` beside the database, whose size on disk is
    /// the buffer's measure.
    ///
    /// A queue already open is shared, rewound to its first unacknowledged item: the new
    /// reader re-sends what the old one had in flight (at least once).
    pub fn segment_queue(&self, name: &str, max_bytes: u64) -> Result<SegmentQueue> {
        let dir = self.segment_dir(name);
        let mut open = self
            .segment_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = open.get(&dir) {
            queue.rewind()?;
            return Ok(queue.clone());
        }
        let queue = SegmentQueue::open_for_cap(&dir, max_bytes)?;
        open.insert(dir, queue.clone());
        Ok(queue)
    }

    /// Moves what destination `name`'s buffer held in sled (before the segment files) into
    /// `queue`, oldest first, then deletes the sled tree; returns the batches moved. On an
    /// error the sled tree stays, to be moved at the next start (some batches may then be
    /// sent twice, none lost).
    pub fn move_sled_queue(&self, name: &str, queue: &SegmentQueue) -> Result<usize> {
        let tree = format!("queue/{name}");
        if !self
            .db
            .tree_names()
            .iter()
            .any(|t| t.as_ref() == tree.as_bytes())
        {
            return Ok(0);
        }
        let old = self.queue(name)?;
        let items = old.peek(usize::MAX)?;
        for (_, item) in &items {
            queue.push_unsynced(item)?;
        }
        queue.sync()?;
        self.drop_queue(name)?;
        Ok(items.len())
    }

    /// Deletes the export buffer of destination `name` and everything in it.
    pub fn drop_segment_queue(&self, name: &str) -> Result<()> {
        let dir = self.segment_dir(name);
        self.segment_queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&dir);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::Segment {
                path: dir,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    fn segment_dir(&self, name: &str) -> PathBuf {
        // Destination names are config keys (letters, digits, `-`, `_`) or `@env`/`@file`;
        // anything else is hex-escaped so that a name can never leave the directory.
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '@' {
                    c.to_string()
                } else {
                    format!("%{:02x}", c as u32)
                }
            })
            .collect();
        self.dir.join("export").join(safe)
    }

    /// Deletes the queue called `name` and everything in it.
    pub fn drop_queue(&self, name: &str) -> Result<()> {
        self.db.drop_tree(format!("queue/{name}"))?;
        Ok(())
    }
}

impl Queue {
    /// Appends an item and waits until it is on disk; returns its sequence number.
    pub async fn push(&self, item: &[u8]) -> Result<u64> {
        // sled's id generator is persistent and monotonic, so order survives restarts and an
        // emptied queue.
        let next = self.db.generate_id()? + 1;
        self.tree.insert(next.to_be_bytes(), item)?;
        self.flusher.flush(&self.db).await?;
        Ok(next)
    }

    /// Up to `max` items from the front, oldest first.
    pub fn peek(&self, max: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.tree
            .iter()
            .take(max)
            .map(|item| {
                let (key, value) = item?;
                Ok((index_of(&key), value.to_vec()))
            })
            .collect()
    }

    /// Removes item `seq`; true if it was there (false: someone else removed it first, e.g. a
    /// delivery and a drop-oldest racing for the same batch).
    pub fn ack(&self, seq: u64) -> Result<bool> {
        Ok(self.tree.remove(seq.to_be_bytes())?.is_some())
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Bytes of all items (values only).
    pub fn bytes(&self) -> Result<u64> {
        self.tree
            .iter()
            .values()
            .try_fold(0u64, |sum, value| Ok(sum + value?.len() as u64))
    }
}

fn index_of(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_hole_of_the_log_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.log_first_hole(0, false).unwrap(), None, "empty");
        store.log_append(entries(3..6)).unwrap();
        store.log_append(entries(7..9)).unwrap();
        assert_eq!(store.log_first_hole(0, false).unwrap(), Some(6));
        assert_eq!(store.log_first_hole(3, true).unwrap(), Some(6));
        assert_eq!(
            store.log_first_hole(2, true).unwrap(),
            Some(2),
            "must start at 2"
        );
        assert_eq!(store.log_first_hole(7, true).unwrap(), None);
        assert_eq!(
            store.log_first_hole(9, true).unwrap(),
            None,
            "none from 9 on"
        );
    }

    fn entries(range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
        range
            .map(|i| (i, format!("entry {i}").into_bytes()))
            .collect()
    }

    #[tokio::test]
    async fn log_append_range_truncate_purge_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.log_append(entries(1..11)).unwrap();
            // 255 and 256 differ in their first byte only in big-endian order.
            store.log_append(entries(255..258)).unwrap();
            store.log_truncate_from(256).unwrap();
            store.log_purge_upto(3).unwrap();
            store.meta_put("vote", b"v1").unwrap();
            store.flush().await.unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let all: Vec<u64> = store
            .log_range(0, u64::MAX)
            .unwrap()
            .iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(all, (4..11).chain([255]).collect::<Vec<_>>());
        assert_eq!(store.log_range(5, 7).unwrap(), entries(5..7));
        assert_eq!(store.log_last().unwrap().unwrap().0, 255);
        assert_eq!(store.meta_get("vote").unwrap().unwrap(), b"v1");
        assert!(store.log_range(7, 7).unwrap().is_empty());
    }

    #[test]
    fn state_writes_are_atomic_batches_and_replace_clears() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .state_write([
                (b"e/1".to_vec(), b"a".to_vec()),
                (b"e/2".to_vec(), b"b".to_vec()),
            ])
            .unwrap();
        store
            .state_write([(b"applied".to_vec(), b"2".to_vec())])
            .unwrap();
        assert_eq!(store.state_scan(b"e/").unwrap().len(), 2);
        store
            .state_replace(vec![(b"e/9".to_vec(), b"z".to_vec())])
            .unwrap();
        assert_eq!(
            store.state_scan(b"e/").unwrap(),
            vec![(b"e/9".to_vec(), b"z".to_vec())]
        );
        assert!(store.state_get(b"applied").unwrap().is_none());
    }

    #[tokio::test]
    async fn queue_is_fifo_durable_and_keeps_counting_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let queue = store.queue("otlp").unwrap();
            let first = queue.push(b"a").await.unwrap();
            assert!(queue.push(b"bb").await.unwrap() > first);
            assert!(queue.push(b"ccc").await.unwrap() > first);
            queue.ack(first).unwrap();
            assert_eq!(queue.bytes().unwrap(), 5);
        }
        // sled's flusher thread may hold the file lock a moment after the drop.
        let reopen = || Store::open(dir.path());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let store = loop {
            match reopen() {
                Ok(store) => break store,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await
                }
                Err(e) => panic!("cannot reopen the store: {e}"),
            }
        };
        let queue = store.queue("otlp").unwrap();
        let items = queue.peek(10).unwrap();
        let values: Vec<&[u8]> = items.iter().map(|(_, v)| v.as_slice()).collect();
        assert_eq!(values, vec![&b"bb"[..], &b"ccc"[..]]);
        let last = queue.push(b"d").await.unwrap();
        assert!(last > items[1].0, "sequence went backwards after reopen");
        for (seq, _) in &items {
            queue.ack(*seq).unwrap();
        }
        queue.ack(last).unwrap();
        assert!(
            queue.push(b"e").await.unwrap() > last,
            "sequence restarted on an empty queue"
        );
        store.drop_queue("otlp").unwrap();
        assert!(store.queue("otlp").unwrap().is_empty());
    }

    #[test]
    fn second_open_of_same_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        match Store::open(dir.path()) {
            Err(error) => assert!(error.to_string().contains("another node"), "{error}"),
            Ok(_) => panic!("a second open of a locked database succeeded"),
        }
    }
}

#[cfg(test)]
mod slowest_flush_tests {
    use super::*;

    #[test]
    fn a_slow_flush_shows_for_one_to_two_windows_then_goes() {
        let start = Instant::now();
        let mut slowest = SlowestFlush::default();
        slowest.record(start, Duration::from_millis(5));
        slowest.record(start + Duration::from_secs(10), Duration::from_millis(900));
        slowest.record(start + Duration::from_secs(20), Duration::from_millis(7));
        assert_eq!(
            slowest.recent(start + Duration::from_secs(25)),
            Duration::from_millis(900)
        );
        // The next window still shows the one before.
        assert_eq!(
            slowest.recent(start + Duration::from_secs(45)),
            Duration::from_millis(900)
        );
        // Two windows on, only what came since.
        slowest.record(start + Duration::from_secs(65), Duration::from_millis(3));
        assert_eq!(
            slowest.recent(start + Duration::from_secs(66)),
            Duration::from_millis(3)
        );
        // And after a long quiet, nothing.
        assert_eq!(
            slowest.recent(start + Duration::from_secs(300)),
            Duration::ZERO
        );
    }
}
