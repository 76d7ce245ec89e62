//! One destination: a disk queue in front of a sink, and a worker that sends the oldest batch
//! until the destination acknowledges it. How a batch is stored is `buffer::frame`'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apiary_storage::Queue;
use serde::Serialize;
use tokio::sync::Notify;

use crate::buffer::frame::{frame, unframe};
use crate::signal::Signal;
use crate::sinks::sink::{SendError, Sink};

/// What to do when the disk buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// Make room by dropping the oldest batches (counted).
    DropOldest,
    /// Wait for room: the source slows down (and its own counters show what it could not take).
    Block,
}

impl std::str::FromStr for FullPolicy {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "drop-oldest" => Ok(FullPolicy::DropOldest),
            "block" => Ok(FullPolicy::Block),
            other => Err(format!(
                "{other:?} is not a buffer policy: use drop-oldest or block"
            )),
        }
    }
}

/// Counters of one destination, for `/v1/export` and `/metrics`.
#[derive(Debug, Default, Serialize)]
pub struct DeliveryStats {
    pub queued_batches: AtomicU64,
    pub queued_bytes: AtomicU64,
    pub delivered_batches: AtomicU64,
    pub delivered_items: AtomicU64,
    /// Items (spans, metrics, log records) the destination refused in a partial success.
    pub rejected_items: AtomicU64,
    /// Items dropped by the full-buffer policy or after a permanent error.
    pub dropped_items: AtomicU64,
    pub failed_attempts: AtomicU64,
    #[serde(skip)]
    pub last_error: Mutex<Option<String>>,
}

pub struct Delivery<S: Sink> {
    pub name: String,
    queue: Queue,
    sink: S,
    max_bytes: u64,
    policy: FullPolicy,
    pub stats: Arc<DeliveryStats>,
    wake: Notify,
    /// The batch the sender is sending right now. Drop-oldest skips it: dropping it would count
    /// it as dropped and then, when the send succeeds, as delivered too.
    in_flight: Mutex<Option<u64>>,
}

impl<S: Sink> Delivery<S> {
    pub fn new(
        name: &str,
        queue: Queue,
        sink: S,
        max_bytes: u64,
        policy: FullPolicy,
    ) -> Result<Arc<Self>, String> {
        let stats = Arc::new(DeliveryStats::default());
        stats
            .queued_batches
            .store(queue.len() as u64, Ordering::Relaxed);
        stats
            .queued_bytes
            .store(queue.bytes().map_err(|e| e.to_string())?, Ordering::Relaxed);
        Ok(Arc::new(Delivery {
            name: name.to_string(),
            queue,
            sink,
            max_bytes,
            policy,
            stats,
            wake: Notify::new(),
            in_flight: Mutex::new(None),
        }))
    }

    /// Stores a batch on disk; it is sent (and re-sent after a restart) until acknowledged.
    pub async fn enqueue(&self, signal: Signal, items: u32, payload: &[u8]) -> Result<(), String> {
        let item = frame(signal, items, payload);
        let size = item.len() as u64;
        loop {
            let queued = self.stats.queued_bytes.load(Ordering::Relaxed);
            if queued + size <= self.max_bytes || self.queue.is_empty() {
                break;
            }
            match self.policy {
                FullPolicy::Block => tokio::time::sleep(Duration::from_millis(50)).await,
                FullPolicy::DropOldest => {
                    // Under the lock the sender takes to pick its batch, so the two never meet
                    // on the same batch. With only the batch being sent queued, this one goes
                    // in over the limit (by at most a batch).
                    let dropped = {
                        let in_flight = self.lock_in_flight();
                        let oldest = self
                            .queue
                            .peek(2)
                            .map_err(|e| e.to_string())?
                            .into_iter()
                            .find(|(seq, _)| Some(*seq) != *in_flight);
                        match oldest {
                            None => break,
                            Some((seq, oldest)) => self.remove(seq, &oldest)?.then_some(oldest),
                        }
                    };
                    let Some(oldest) = dropped else {
                        // Dropped by another writer meanwhile: look again.
                        continue;
                    };
                    let items = unframe(&oldest).map(|(_, n, _)| n).unwrap_or(0);
                    self.stats
                        .dropped_items
                        .fetch_add(items as u64, Ordering::Relaxed);
                    tracing::warn!(destination = %self.name, items, "export buffer full: dropped the oldest batch");
                }
            }
        }
        // Counted before it is visible to the sender, so that a delivery cannot subtract it
        // first (the counters would wrap below zero and every later batch look "too big").
        self.stats.queued_batches.fetch_add(1, Ordering::Relaxed);
        self.stats.queued_bytes.fetch_add(size, Ordering::Relaxed);
        if let Err(e) = self.queue.push(&item).await {
            self.stats.queued_batches.fetch_sub(1, Ordering::Relaxed);
            self.stats.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            return Err(e.to_string());
        }
        self.wake.notify_one();
        Ok(())
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        // The guarded value is a plain seq, valid whatever a panicking holder did.
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a batch out of the queue. Only the caller that really removed it adjusts the
    /// counters, so a delivery and a drop-oldest racing for the same batch count it once.
    fn remove(&self, seq: u64, item: &[u8]) -> Result<bool, String> {
        let removed = self.queue.ack(seq).map_err(|e| e.to_string())?;
        if removed {
            self.stats.queued_batches.fetch_sub(1, Ordering::Relaxed);
            self.stats
                .queued_bytes
                .fetch_sub(item.len() as u64, Ordering::Relaxed);
        }
        Ok(removed)
    }

    /// Sends batches oldest first, forever. Retryable failures back off exponentially with
    /// jitter (or as long as the destination asked); permanent ones drop that batch, counted.
    pub async fn run(self: Arc<Self>) {
        let mut attempt: u32 = 0;
        loop {
            let picked = {
                let mut in_flight = self.lock_in_flight();
                let picked = self.queue.peek(1).map(|mut items| items.pop());
                *in_flight = picked
                    .as_ref()
                    .ok()
                    .and_then(|p| p.as_ref().map(|(seq, _)| *seq));
                picked
            };
            let next = match picked {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(destination = %self.name, "export queue unreadable: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Some((seq, item)) = next else {
                // Every enqueue notifies; the timeout is a safety net (a destination replaced while
                // an enqueue ran notifies the old delivery), long enough that an idle destination
                // costs few wakeups.
                let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
                continue;
            };
            let Some((signal, spans, payload)) = unframe(&item) else {
                tracing::error!(destination = %self.name, seq, "unreadable batch in the export queue, dropped");
                if let Err(e) = self.remove(seq, &item) {
                    tracing::error!(destination = %self.name, "cannot drop it: {e}");
                }
                continue;
            };
            let retry_in = match self.sink.send(signal, &payload).await {
                Ok(outcome) => {
                    attempt = 0;
                    if let Err(e) = self.remove(seq, &item) {
                        tracing::error!(destination = %self.name, "cannot ack a delivered batch: {e}");
                    }
                    self.stats.delivered_batches.fetch_add(1, Ordering::Relaxed);
                    self.stats.delivered_items.fetch_add(
                        spans as u64 - outcome.rejected_items.min(spans as u64),
                        Ordering::Relaxed,
                    );
                    if outcome.rejected_items > 0 {
                        self.stats
                            .rejected_items
                            .fetch_add(outcome.rejected_items, Ordering::Relaxed);
                        tracing::warn!(destination = %self.name, rejected = outcome.rejected_items,
                            "destination rejected part of a batch: {}", outcome.message);
                    }
                    None
                }
                Err(SendError::Retryable {
                    reason,
                    retry_after,
                }) => {
                    self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    let wait = retry_after.unwrap_or_else(|| backoff(attempt));
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(destination = %self.name, "export failed, retrying in {wait:?}: {reason}");
                    *self
                        .stats
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(reason);
                    Some(wait)
                }
                Err(SendError::Permanent(reason)) => {
                    self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .dropped_items
                        .fetch_add(spans as u64, Ordering::Relaxed);
                    tracing::error!(destination = %self.name, spans, "destination refused a batch for good, dropped: {reason}");
                    *self
                        .stats
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(reason);
                    if let Err(e) = self.remove(seq, &item) {
                        tracing::error!(destination = %self.name, "cannot drop a refused batch: {e}");
                    }
                    None
                }
            };
            // Only now, with a sent batch already removed: a drop-oldest may take a batch that
            // waits for its retry, never one whose send succeeded.
            *self.lock_in_flight() = None;
            if let Some(wait) = retry_in {
                tokio::time::sleep(wait).await;
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
