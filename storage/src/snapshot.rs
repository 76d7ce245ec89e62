//! The current Raft snapshot, in a file of its own beside the database.
//!
//! A snapshot is the whole config history, megabytes on a busy cluster, replaced every thousand
//! entries. Kept in sled, every replacement left the old value behind as garbage that sled
//! reclaims late (a chaos soak filled a 112 MiB data dir in 8 minutes that way). As a file, the
//! old one is deleted the moment the new one is in place: the disk holds one snapshot.
//!
//! Crash safety: the data goes to a new file (written, synced, renamed, directory synced), then
//! the metadata naming it is written to the meta tree and flushed, then older files are deleted.
//! A crash at any point leaves the metadata naming a complete file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Result, StorageError, Store};

const META_KEY: &str = "snapshot-file";
const DIR: &str = "snapshot";

/// A snapshot as stored: the consensus crate's metadata bytes and its data.
pub struct StoredSnapshot {
    pub meta: Vec<u8>,
    pub data: Vec<u8>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Snapshot {
        path: path.to_path_buf(),
        source,
    }
}

/// The meta tree's record: which file holds the data, then the metadata.
fn encode_record(file: &str, meta: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(2 + file.len() + meta.len());
    record.extend_from_slice(&(file.len() as u16).to_be_bytes());
    record.extend_from_slice(file.as_bytes());
    record.extend_from_slice(meta);
    record
}

fn decode_record(record: &[u8]) -> Option<(&str, &[u8])> {
    let len = u16::from_be_bytes(record.get(..2)?.try_into().ok()?) as usize;
    let file = std::str::from_utf8(record.get(2..2 + len)?).ok()?;
    Some((file, record.get(2 + len..)?))
}

/// Writes `data` to `dir/name` so that the file is either absent or complete after a crash.
fn write_durably(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let path = dir.join(name);
    let partial = dir.join(format!("{name}.partial"));
    let write = |path: &Path| -> std::io::Result<()> {
        let mut file = std::fs::File::create(path)?;
        file.write_all(data)?;
        file.sync_all()
    };
    write(&partial).map_err(io_error(&partial))?;
    std::fs::rename(&partial, &path).map_err(io_error(&path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

impl Store {
    fn snapshot_dir(&self) -> PathBuf {
        self.dir.join(DIR)
    }

    /// Makes `data` (described by `meta`) the current snapshot, durably, and deletes the one
    /// before it.
    pub async fn save_snapshot(&self, meta: &[u8], data: &[u8]) -> Result<()> {
        let dir = self.snapshot_dir();
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        // Unique across restarts: sled's id generator is persistent and monotonic.
        let name = format!("{:020}.data", self.db.generate_id()?);
        // Megabytes and three syncs: off the async workers, which carry Raft's heartbeats.
        let (data, file_name) = (data.to_vec(), name.clone());
        tokio::task::spawn_blocking(move || write_durably(&dir, &file_name, &data)).await??;
        self.meta.insert(META_KEY, encode_record(&name, meta))?;
        self.flush().await?;
        self.delete_snapshot_files_but(&name);
        Ok(())
    }

    /// The current snapshot, if one was saved.
    pub fn load_snapshot(&self) -> Result<Option<StoredSnapshot>> {
        let Some(record) = self.meta.get(META_KEY)? else {
            return Ok(None);
        };
        let dir = self.snapshot_dir();
        let (name, meta) = decode_record(&record).ok_or_else(|| StorageError::Snapshot {
            path: dir.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the database's record of the current snapshot is damaged",
            ),
        })?;
        let path = dir.join(name);
        let data = std::fs::read(&path).map_err(io_error(&path))?;
        Ok(Some(StoredSnapshot {
            meta: meta.to_vec(),
            data,
        }))
    }

    /// Best effort: a file left behind (a crash between the rename and this) is deleted by the
    /// next save.
    fn delete_snapshot_files_but(&self, keep: &str) {
        let Ok(entries) = std::fs::read_dir(self.snapshot_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_str() != Some(keep) {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(
                        "cannot delete an old snapshot {}: {e}",
                        entry.path().display()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn one_snapshot_on_disk_and_it_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert!(store.load_snapshot().unwrap().is_none());
            store.save_snapshot(b"first", &[1u8; 4096]).await.unwrap();
            store.save_snapshot(b"second", &[2u8; 8192]).await.unwrap();
            assert_eq!(files(dir.path()).len(), 1, "{:?}", files(dir.path()));
        }
        let store = Store::open(dir.path()).unwrap();
        let loaded = store.load_snapshot().unwrap().unwrap();
        assert_eq!(loaded.meta, b"second");
        assert_eq!(loaded.data, vec![2u8; 8192]);
    }

    #[tokio::test]
    async fn a_file_a_crash_left_is_deleted_by_the_next_save_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save_snapshot(b"m", b"data").await.unwrap();
        std::fs::write(dir.path().join(DIR).join("left.data.partial"), b"torn").unwrap();
        store.save_snapshot(b"m2", b"data2").await.unwrap();
        assert_eq!(files(dir.path()).len(), 1, "{:?}", files(dir.path()));

        std::fs::remove_file(dir.path().join(DIR).join(&files(dir.path())[0])).unwrap();
        let error = store.load_snapshot().err().expect("the data file is gone");
        assert!(error.to_string().contains("snapshot"), "{error}");
    }
}
