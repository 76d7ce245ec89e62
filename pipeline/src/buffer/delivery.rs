//! One destination: a disk buffer ([`SegmentQueue`]) in front of a sink. Writers ask for room
//! ([`Delivery::admit`]) and then store ([`Delivery::store`]); what happens when there is no
//! room is the [`FullPolicy`]'s. Sending is `buffer::window`'s.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apiary_storage::{SegmentQueue, RECORD_OVERHEAD};
use tokio::sync::Notify;

use crate::buffer::frame::frame;
use crate::buffer::policy::{EnqueueError, FullPolicy};
use crate::buffer::stats::DeliveryStats;
use crate::signal::Signal;
use crate::sinks::sink::Sink;

/// A batch framed for the buffer once, however many destinations store it.
pub struct Framed {
    pub(crate) bytes: Vec<u8>,
    pub(crate) items: u32,
}

impl Framed {
    pub fn new(signal: Signal, items: u32, payload: &[u8]) -> Self {
        Framed {
            bytes: frame(signal, items, payload),
            items,
        }
    }

    /// The record the buffer stores (for tools and tests that write a buffer directly).
    pub fn stored_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// What it takes on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.bytes.len() as u64 + RECORD_OVERHEAD
    }
}

/// Free space on a buffer's filesystem, and what the buffer leaves free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskRoom {
    pub available: u64,
    pub reserve: u64,
}

impl DiskRoom {
    /// Too close to the reserve for a large request (1 MiB) to be taken.
    pub fn is_low(&self) -> bool {
        self.available < self.reserve.saturating_add(1 << 20)
    }
}

/// Room promised to one writer; given back if the writer stores nothing.
pub struct Reservation {
    stats: Arc<DeliveryStats>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.stats
            .reserved_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// What [`Delivery::admit`] decided.
pub enum Admission {
    Room(Reservation),
    /// The `drop` policy: not stored, to be counted with [`Delivery::count_dropped`].
    Drop,
}

/// How a delivery sends: how many requests at once, and how large a merged request may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendLimits {
    /// Requests in flight at once.
    pub window: usize,
    /// A merged request stays under these (uncompressed bytes, items); one stored batch
    /// larger than that goes alone. gRPC servers refuse messages over 4 MiB by default.
    pub max_bytes: usize,
    pub max_items: u32,
}

impl Default for SendLimits {
    fn default() -> Self {
        SendLimits {
            window: 4,
            max_bytes: 1 << 20,
            max_items: 8192,
        }
    }
}

pub struct Delivery<S: Sink> {
    pub name: String,
    pub(crate) limits: SendLimits,
    pub(crate) queue: SegmentQueue,
    pub(crate) sink: S,
    max_bytes: u64,
    policy: FullPolicy,
    /// Free bytes the buffer leaves on its filesystem (0: no check): the disk is shared with
    /// the Raft log, which must never be the one to find it full.
    disk_reserve: AtomicU64,
    /// The filesystem would not say its free space (logged once): the reserve goes unchecked
    /// and only a failed write refuses.
    disk_unknown_logged: AtomicBool,
    pub stats: Arc<DeliveryStats>,
    pub(crate) wake: Notify,
}

impl<S: Sink> Delivery<S> {
    pub fn new(
        name: &str,
        queue: SegmentQueue,
        sink: S,
        max_bytes: u64,
        policy: FullPolicy,
    ) -> Result<Arc<Self>, String> {
        Self::with_limits(name, queue, sink, max_bytes, policy, SendLimits::default())
    }

    pub fn with_limits(
        name: &str,
        queue: SegmentQueue,
        sink: S,
        max_bytes: u64,
        policy: FullPolicy,
        limits: SendLimits,
    ) -> Result<Arc<Self>, String> {
        if limits.window == 0 {
            return Err("a delivery window of 0 would never send: use 1 or more".into());
        }
        let stats = Arc::new(DeliveryStats::default());
        stats.queued_batches.store(queue.len(), Ordering::Relaxed);
        stats
            .queued_bytes
            .store(queue.bytes_on_disk(), Ordering::Relaxed);
        Ok(Arc::new(Delivery {
            name: name.to_string(),
            limits,
            queue,
            sink,
            max_bytes,
            policy,
            disk_reserve: AtomicU64::new(0),
            disk_unknown_logged: AtomicBool::new(false),
            stats,
            wake: Notify::new(),
        }))
    }

    pub fn policy(&self) -> FullPolicy {
        self.policy
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Stop taking data (as when full) while the buffer's filesystem has less than `bytes`
    /// free.
    pub fn set_disk_reserve(&self, bytes: u64) {
        self.disk_reserve.store(bytes, Ordering::Relaxed);
    }

    /// The free space under the buffer and the reserve it keeps, when a reserve is set.
    pub fn disk_room(&self) -> Option<DiskRoom> {
        let reserve = self.disk_reserve.load(Ordering::Relaxed);
        if reserve == 0 {
            return None;
        }
        match self.queue.disk_available() {
            Ok(available) => Some(DiskRoom { available, reserve }),
            Err(e) => {
                if !self.disk_unknown_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(destination = %self.name,
                        "cannot read the export buffer's free disk space ({e}): the disk reserve \
                         is not checked, and a full disk shows only as failed writes");
                }
                None
            }
        }
    }

    /// Room for `batch` now, or why not. The cap is the segment files' size on disk plus
    /// what other writers reserved; an empty buffer takes any one batch, so that a batch
    /// larger than the cap is not refused forever.
    pub fn reserve(&self, batch: &Framed) -> Result<Reservation, EnqueueError> {
        let size = batch.disk_bytes();
        let reserved = self.stats.reserved_bytes.fetch_add(size, Ordering::Relaxed) + size;
        let reservation = Reservation {
            stats: self.stats.clone(),
            bytes: size,
        };
        let on_disk = self.queue.bytes_on_disk();
        let empty = self.queue.is_empty() && reserved == size;
        if on_disk + reserved <= self.max_bytes || empty {
            match self.disk_room() {
                Some(room) if room.available < room.reserve.saturating_add(reserved) => {
                    return Err(EnqueueError::DiskLow {
                        destination: self.name.clone(),
                        available: room.available,
                        reserve: room.reserve,
                    });
                }
                _ => return Ok(reservation),
            }
        }
        drop(reservation);
        let rate = self.stats.drain.items_per_second();
        let backlog_items = DeliveryStats::load(&self.stats.queued_items).max(1);
        // The time for the oldest batch's worth to drain, at the current rate: the room this
        // one needs (a down destination: a few seconds, and the app's own backoff grows).
        let retry_after = if rate > 0.0 {
            let per_item = on_disk as f64 / backlog_items as f64;
            let needed_items = size as f64 / per_item.max(1.0);
            Duration::from_secs_f64((needed_items / rate).clamp(1.0, 30.0)).as_secs()
        } else {
            5
        };
        Err(EnqueueError::Full {
            destination: self.name.clone(),
            backlog_bytes: on_disk,
            max_bytes: self.max_bytes,
            draining: if rate > 0.0 {
                format!("{rate:.0} items/s")
            } else {
                "nothing now: it is down, refusing or slow".into()
            },
            retry_after: Duration::from_secs(retry_after.max(1)),
        })
    }

    /// Room for `batch` as the policy says: `Err` (full, under `refuse`), a wait (`block`),
    /// or [`Admission::Drop`] (`drop`).
    pub async fn admit(&self, batch: &Framed) -> Result<Admission, EnqueueError> {
        loop {
            match self.reserve(batch) {
                Ok(reservation) => return Ok(Admission::Room(reservation)),
                Err(full) => match self.policy {
                    FullPolicy::Refuse => {
                        self.count_pushed_back(batch.items);
                        return Err(full);
                    }
                    FullPolicy::Drop => return Ok(Admission::Drop),
                    FullPolicy::Block => tokio::time::sleep(Duration::from_millis(20)).await,
                },
            }
        }
    }

    pub fn count_pushed_back(&self, items: u32) {
        self.stats
            .pushed_back_items
            .fetch_add(items as u64, Ordering::Relaxed);
    }

    pub fn count_dropped(&self, items: u32) {
        self.stats
            .dropped_items
            .fetch_add(items as u64, Ordering::Relaxed);
        tracing::warn!(destination = %self.name, items, "export buffer full: dropped a batch (policy drop)");
    }

    /// Stores `batch` in the room `reservation` holds and waits until it is on disk; it is
    /// then sent (and re-sent after a restart) until the destination acknowledges it.
    pub async fn store(
        &self,
        reservation: Reservation,
        batch: &Framed,
    ) -> Result<(), EnqueueError> {
        // Counted before the sender can see it, so that its delivery (which may come before
        // the push returns: the sender reads what is written, before the sync) finds it counted.
        let items = batch.items as u64;
        self.stats.queued_items.fetch_add(items, Ordering::Relaxed);
        self.stats.queued_batches.fetch_add(1, Ordering::Relaxed);
        let stored = self.queue.push(&batch.bytes).await;
        drop(reservation);
        self.stats
            .queued_bytes
            .store(self.queue.bytes_on_disk(), Ordering::Relaxed);
        if let Err(e) = stored {
            self.stats.queued_items.fetch_sub(items, Ordering::Relaxed);
            self.stats.queued_batches.fetch_sub(1, Ordering::Relaxed);
            return Err(EnqueueError::Storage {
                destination: self.name.clone(),
                reason: e.to_string(),
            });
        }
        self.stats
            .accepted_items
            .fetch_add(items, Ordering::Relaxed);
        self.wake.notify_one();
        Ok(())
    }

    /// Admits and stores one batch for this destination alone (the probes' spans, the RED
    /// metrics): `Err` when the buffer is full under `refuse` (counted as pushed back) or
    /// the disk failed; `Ok` when stored, or dropped and counted under `drop`.
    pub async fn enqueue(
        &self,
        signal: Signal,
        items: u32,
        payload: &[u8],
    ) -> Result<(), EnqueueError> {
        let batch = Framed::new(signal, items, payload);
        match self.admit(&batch).await? {
            Admission::Room(reservation) => self.store(reservation, &batch).await,
            Admission::Drop => {
                self.count_dropped(items);
                Ok(())
            }
        }
    }
}

/// 200 ms doubling to 30 s, with ±50 % jitter so that many nodes do not retry in step.
pub fn backoff(attempt: u32) -> Duration {
    let base = 200u64.saturating_mul(1u64 << attempt.min(8)).min(30_000);
    let jitter = rand::random_range(0.5..1.5);
    Duration::from_millis((base as f64 * jitter) as u64)
}
