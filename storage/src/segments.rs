//! [`SegmentQueue`]: a destination's disk buffer as append-only segment files in a directory of
//! its own, so that what it holds on disk is known exactly (the files' sizes) and comes back
//! to the file system as soon as a segment's batches are all acknowledged.
//!
//! sled held the buffers before: its log-structured files grew to about 2.5 times the values
//! in them (629 MB on disk for a 256 MB cap, measured in issue 19) and did not shrink when the
//! backlog drained, so a cap counted in values was not a cap on disk.
//!
//! Layout: `{first_seq:020}.seg` files of records `[len u32 LE][crc32 u32 LE][bytes]`, and an
//! `acked` file holding the first sequence number not yet acknowledged (u64 LE). Writes are
//! group-committed: one `fdatasync` covers every push made before it started. The ack mark is
//! written without a sync: after a crash a few acknowledged batches may be sent again (at least
//! once), never lost.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Result, StorageError};

/// A segment is closed (and a new one started) past this size.
pub const SEGMENT_BYTES: u64 = 8 << 20;
/// What a record takes on disk beside its item: its length and checksum.
pub const RECORD_OVERHEAD: u64 = HEADER;
const HEADER: u64 = 8;
const ACKED_FILE: &str = "acked";

struct Segment {
    first_seq: u64,
    records: u64,
    bytes: u64,
    path: PathBuf,
    file: Arc<File>,
}

/// Where the reader is: the next record to hand out.
#[derive(Clone, Copy)]
struct Cursor {
    seq: u64,
    offset: u64,
}

struct State {
    segments: VecDeque<Segment>,
    next_seq: u64,
    /// The first sequence number not acknowledged; everything before it may be deleted.
    acked: u64,
    read: Cursor,
    bytes_on_disk: u64,
    acked_file: File,
}

struct Inner {
    dir: PathBuf,
    segment_bytes: u64,
    state: Mutex<State>,
    /// Group commit: pushes made, and how many the last finished sync covered.
    written: AtomicU64,
    synced: AtomicU64,
    sync_turn: Arc<tokio::sync::Mutex<()>>,
}

/// A durable FIFO of opaque items, read in order by one consumer and acknowledged in order.
#[derive(Clone)]
pub struct SegmentQueue {
    inner: Arc<Inner>,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Segment {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

/// Reads the records of a segment file: their count and the length of the valid prefix.
/// A torn or corrupt tail (a crash mid-write) ends the segment there.
fn scan(file: &File) -> std::io::Result<(u64, u64)> {
    let len = file.metadata()?.len();
    let (mut offset, mut records) = (0u64, 0u64);
    let mut header = [0u8; HEADER as usize];
    while offset + HEADER <= len {
        file.read_exact_at(&mut header, offset)?;
        let size = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as u64;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if offset + HEADER + size > len {
            break;
        }
        let mut body = vec![0u8; size as usize];
        file.read_exact_at(&mut body, offset + HEADER)?;
        if crc32fast::hash(&body) != crc {
            break;
        }
        offset += HEADER + size;
        records += 1;
    }
    Ok((records, offset))
}

impl SegmentQueue {
    /// Opens (or creates) the queue in `dir`, with segments of [`SEGMENT_BYTES`].
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    /// As [`SegmentQueue::open`], for a buffer capped at `max_bytes`: segments of an eighth of
    /// the cap (64 KiB to [`SEGMENT_BYTES`]), so that acknowledged batches waiting for their
    /// segment to be deleted never hold more than a small part of the cap.
    pub fn open_for_cap(dir: &Path, max_bytes: u64) -> Result<Self> {
        Self::open_with(dir, (max_bytes / 8).clamp(64 << 10, SEGMENT_BYTES))
    }

    /// As [`SegmentQueue::open`], closing segments past `segment_bytes` (small in tests).
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                name.strip_suffix(".seg")?.parse::<u64>().ok()
            })
            .collect();
        firsts.sort_unstable();
        let acked_path = dir.join(ACKED_FILE);
        let acked_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&acked_path)
            .map_err(io(&acked_path))?;
        let mut mark = [0u8; 8];
        let acked_mark = match acked_file.read_exact_at(&mut mark, 0) {
            Ok(()) => u64::from_le_bytes(mark),
            Err(_) => 0,
        };
        let mut segments = VecDeque::new();
        for first_seq in firsts {
            let path = segment_path(dir, first_seq);
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?;
            let (records, valid) = scan(&file).map_err(io(&path))?;
            if valid < file.metadata().map_err(io(&path))?.len() {
                tracing::warn!(path = %path.display(), valid,
                    "export buffer: a torn record (a crash mid-write) was cut off");
                file.set_len(valid).map_err(io(&path))?;
            }
            // A segment after a torn one would leave a gap in the numbering: keep the order by
            // starting the rest where the previous one ended.
            if let Some(previous) = segments.back() {
                let previous: &Segment = previous;
                if first_seq != previous.first_seq + previous.records {
                    break;
                }
            }
            segments.push_back(Segment {
                first_seq,
                records,
                bytes: valid,
                path,
                file: Arc::new(file),
            });
        }
        let first = segments.front().map_or(acked_mark, |s| s.first_seq);
        let next_seq = segments
            .back()
            .map_or(acked_mark, |s| s.first_seq + s.records);
        let acked = acked_mark.clamp(first, next_seq);
        let queue = SegmentQueue {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                segment_bytes,
                state: Mutex::new(State {
                    segments,
                    next_seq,
                    acked,
                    read: Cursor {
                        seq: first,
                        offset: 0,
                    },
                    bytes_on_disk: 0,
                    acked_file,
                }),
                written: AtomicU64::new(0),
                synced: AtomicU64::new(0),
                sync_turn: Arc::default(),
            }),
        };
        {
            let mut state = queue.lock();
            queue.release_acked(&mut state)?;
            if state.segments.is_empty() {
                queue.start_segment(&mut state)?;
            }
            // Skip what was acknowledged before the restart.
            queue.seek_to_acked(&mut state)?;
            state.bytes_on_disk = state.segments.iter().map(|s| s.bytes).sum();
        }
        Ok(queue)
    }

    /// Points the reader at the first item not acknowledged.
    fn seek_to_acked(&self, state: &mut State) -> Result<()> {
        state.read = Cursor {
            seq: state
                .segments
                .front()
                .map_or(state.next_seq, |s| s.first_seq),
            offset: 0,
        };
        while state.read.seq < state.acked {
            let Some((_, next)) = self.record_at(state, state.read)? else {
                break;
            };
            state.read = next;
        }
        Ok(())
    }

    /// Hands out again, from the first item not acknowledged, what was handed out before: for
    /// a new reader taking over from one that stopped with sends unfinished.
    pub fn rewind(&self) -> Result<()> {
        let mut state = self.lock();
        self.seek_to_acked(&mut state)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is only changed in steps that leave it consistent before any I/O can fail.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start_segment(&self, state: &mut State) -> Result<()> {
        let path = segment_path(&self.inner.dir, state.next_seq);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        // The new file's name must survive a crash, as its contents will.
        File::open(&self.inner.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io(&self.inner.dir))?;
        state.segments.push_back(Segment {
            first_seq: state.next_seq,
            records: 0,
            bytes: 0,
            path,
            file: Arc::new(file),
        });
        Ok(())
    }

    /// Appends an item and waits until it is on disk (a sync shared with concurrent pushes);
    /// returns its sequence number.
    pub async fn push(&self, item: &[u8]) -> Result<u64> {
        let (seq, file) = self.append(item)?;
        let mine = self.inner.written.fetch_add(1, Ordering::SeqCst) + 1;
        let turn = self.inner.sync_turn.clone().lock_owned().await;
        if self.inner.synced.load(Ordering::SeqCst) >= mine {
            return Ok(seq);
        }
        // Every push counted so far wrote before this sync starts, into this file or into one
        // that was synced when it was closed.
        let covered = self.inner.written.load(Ordering::SeqCst);
        let active = self.lock().segments.back().map(|s| s.file.clone());
        let active = active.unwrap_or(file);
        let path = self.inner.dir.clone();
        // The turn goes with the sync: a caller that stops waiting (a dropped request) must not
        // let the next sync start while this one runs.
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            active.sync_data()
        })
        .await?
        .map_err(io(&path))?;
        self.inner.synced.fetch_max(covered, Ordering::SeqCst);
        Ok(seq)
    }

    /// Appends an item without waiting for the disk (moving many at once); [`Self::sync`]
    /// then makes them durable.
    pub fn push_unsynced(&self, item: &[u8]) -> Result<u64> {
        self.append(item).map(|(seq, _)| seq)
    }

    /// Waits (blocking) until every item appended so far is on disk.
    pub fn sync(&self) -> Result<()> {
        let state = self.lock();
        let segment = state.segments.back().expect("a segment is always open");
        segment.file.sync_data().map_err(io(&segment.path))
    }

    fn append(&self, item: &[u8]) -> Result<(u64, Arc<File>)> {
        let mut state = self.lock();
        let size = HEADER + item.len() as u64;
        let full = state
            .segments
            .back()
            .is_some_and(|s| s.bytes > 0 && s.bytes + size > self.inner.segment_bytes);
        if full {
            let closing = state.segments.back().expect("checked above");
            closing.file.sync_data().map_err(io(&closing.path))?;
            self.start_segment(&mut state)?;
        }
        let segment = state.segments.back_mut().expect("a segment is always open");
        let length = u32::try_from(item.len()).map_err(|_| StorageError::Segment {
            path: segment.path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "item over 4 GiB"),
        })?;
        let mut record = Vec::with_capacity(size as usize);
        record.extend_from_slice(&length.to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(item).to_le_bytes());
        record.extend_from_slice(item);
        if let Err(e) = (&*segment.file).write_all(&record) {
            // A partial record (a full disk) must not stay in front of the next one.
            let _ = segment.file.set_len(segment.bytes);
            return Err(io(&segment.path)(e));
        }
        segment.bytes += size;
        segment.records += 1;
        let file = segment.file.clone();
        state.next_seq += 1;
        state.bytes_on_disk += size;
        Ok((state.next_seq - 1, file))
    }

    /// The record at `at` and the cursor after it; `None` past the end. A cursor whose
    /// sequence number opens a segment reads from that segment's start (the reader may have
    /// been at the end of the previous one when it was closed).
    fn record_at(&self, state: &State, at: Cursor) -> Result<Option<(Vec<u8>, Cursor)>> {
        let Some(segment) = state
            .segments
            .iter()
            .find(|s| at.seq >= s.first_seq && at.seq < s.first_seq + s.records)
        else {
            return Ok(None);
        };
        let offset = if at.seq == segment.first_seq {
            0
        } else {
            at.offset
        };
        let mut header = [0u8; HEADER as usize];
        segment
            .file
            .read_exact_at(&mut header, offset)
            .map_err(io(&segment.path))?;
        let size = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let mut body = vec![0u8; size as usize];
        segment
            .file
            .read_exact_at(&mut body, offset + HEADER)
            .map_err(io(&segment.path))?;
        let next = Cursor {
            seq: at.seq + 1,
            offset: offset + HEADER + size as u64,
        };
        Ok(Some((body, next)))
    }

    /// Hands out up to `max_items` items (at most `max_bytes` of them, but at least one) after
    /// the last ones handed out, oldest first. Each is handed out once, until a reopen starts
    /// again from the first one not acknowledged.
    pub fn read_next(&self, max_items: usize, max_bytes: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        self.read_next_weighed(max_items, max_bytes, |item| item.len() as u64)
    }

    /// As [`read_next`](Self::read_next), with `max_weight` counted in `weight` of each item
    /// instead of its stored bytes: a caller that expands what it reads (decompresses it) bounds
    /// what it will hold, not what the disk holds.
    pub fn read_next_weighed(
        &self,
        max_items: usize,
        max_weight: u64,
        weight: impl Fn(&[u8]) -> u64,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut state = self.lock();
        let mut out = Vec::new();
        let mut total = 0u64;
        while out.len() < max_items {
            let Some((item, next)) = self.record_at(&state, state.read)? else {
                break;
            };
            let this = weight(&item);
            if !out.is_empty() && total.saturating_add(this) > max_weight {
                break;
            }
            total = total.saturating_add(this);
            out.push((state.read.seq, item));
            state.read = next;
        }
        Ok(out)
    }

    /// Acknowledges every item up to and including `seq`: whole segments behind it are deleted.
    pub fn ack_through(&self, seq: u64) -> Result<()> {
        let mut state = self.lock();
        let acked = (seq + 1).min(state.next_seq);
        if acked <= state.acked {
            return Ok(());
        }
        state.acked = acked;
        let path = self.inner.dir.join(ACKED_FILE);
        state
            .acked_file
            .write_all_at(&acked.to_le_bytes(), 0)
            .map_err(io(&path))?;
        self.release_acked(&mut state)
    }

    /// Deletes the segments whose items are all acknowledged. The open one goes too once it
    /// is large enough that starting a new file is cheap beside what it gives back.
    fn release_acked(&self, state: &mut State) -> Result<()> {
        while let Some(oldest) = state.segments.front() {
            let done = oldest.first_seq + oldest.records <= state.acked;
            let last = state.segments.len() == 1;
            if !done || (last && oldest.bytes < self.inner.segment_bytes / 8) {
                break;
            }
            let oldest = state.segments.pop_front().expect("checked above");
            std::fs::remove_file(&oldest.path).map_err(io(&oldest.path))?;
            state.bytes_on_disk -= oldest.bytes;
            if state.segments.is_empty() {
                self.start_segment(state)?;
                state.read = Cursor {
                    seq: state.next_seq,
                    offset: 0,
                };
            }
        }
        Ok(())
    }

    /// Items stored and not acknowledged.
    pub fn len(&self) -> u64 {
        let state = self.lock();
        state.next_seq - state.acked
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the queue's segment files take on disk now (acknowledged items included until
    /// their segment goes).
    pub fn bytes_on_disk(&self) -> u64 {
        self.lock().bytes_on_disk
    }

    /// Bytes an unprivileged writer may still add to the filesystem the queue lives on.
    pub fn disk_available(&self) -> Result<u64> {
        let dir = &self.inner.dir;
        let stats = rustix::fs::statvfs(dir.as_path()).map_err(|e| io(dir)(e.into()))?;
        Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
    }

    /// Deletes the queue's directory and everything in it.
    pub fn destroy(self) -> Result<()> {
        let dir = self.inner.dir.clone();
        drop(self);
        std::fs::remove_dir_all(&dir).map_err(io(&dir))
    }
}

#[cfg(test)]
mod tests;
