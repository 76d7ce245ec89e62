//! The counters of one destination ([`DeliveryStats`]), for `/v1/export`, `/metrics` and the
//! dashboard, and the rate its backlog drains at ([`DrainRate`]).
//!
//! Every item a destination took into its buffer ends as exactly one of: delivered, refused by
//! the destination, dropped (only under the opt-in `drop` policy), or still in the backlog:
//! `accepted = delivered + refused + dropped_after_accept + backlog`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct DeliveryStats {
    /// Items stored in the buffer (the OTLP receivers answered success for them).
    pub accepted_items: AtomicU64,
    /// Batches and their items stored and not yet acknowledged by the destination.
    pub queued_batches: AtomicU64,
    pub queued_items: AtomicU64,
    /// The buffer's segment files on disk, measured (acknowledged batches included until their
    /// segment file is deleted).
    pub queued_bytes: AtomicU64,
    pub delivered_batches: AtomicU64,
    pub delivered_items: AtomicU64,
    /// Items the destination would not keep: a partial success's rejections, or a batch it
    /// refused for good (HTTP 400, gRPC INVALID_ARGUMENT …).
    pub refused_items: AtomicU64,
    /// Items not taken because the buffer was full: apps were answered "retry later" for them,
    /// probe spans were shed. Nothing in here was acknowledged.
    pub pushed_back_items: AtomicU64,
    /// Items taken and then dropped for room: only under the opt-in `drop` policy.
    pub dropped_items: AtomicU64,
    pub failed_attempts: AtomicU64,
    /// Sends in flight now (at most the delivery window).
    pub in_flight: AtomicU64,
    #[serde(skip)]
    pub last_error: Mutex<Option<String>>,
    /// Bytes promised to writers that passed the room check and are writing now.
    #[serde(skip)]
    pub(crate) reserved_bytes: AtomicU64,
    #[serde(skip)]
    pub drain: DrainRate,
}

impl DeliveryStats {
    pub fn load(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn set_last_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Seconds until the backlog is delivered at the rate of the last few seconds; `None` when
    /// nothing drains (the destination is down or refusing) while there is a backlog.
    pub fn drain_seconds(&self) -> Option<f64> {
        let backlog = Self::load(&self.queued_items);
        if backlog == 0 {
            return Some(0.0);
        }
        let rate = self.drain.items_per_second();
        (rate > 0.0).then(|| backlog as f64 / rate)
    }
}

/// Items delivered per second, smoothed over samples of at least [`DrainRate::SAMPLE`]; it
/// reads zero once nothing was delivered for [`DrainRate::STALE`].
#[derive(Debug, Default)]
pub struct DrainRate {
    state: Mutex<RateState>,
}

#[derive(Debug, Default)]
struct RateState {
    since: Option<Instant>,
    items_since: u64,
    last_delivery: Option<Instant>,
    per_second: f64,
}

impl DrainRate {
    const SAMPLE: Duration = Duration::from_millis(500);
    const STALE: Duration = Duration::from_secs(5);

    pub fn record(&self, items: u64) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.last_delivery = Some(now);
        let since = *state.since.get_or_insert(now);
        state.items_since += items;
        let elapsed = now.duration_since(since);
        if elapsed >= Self::SAMPLE {
            let sample = state.items_since as f64 / elapsed.as_secs_f64();
            state.per_second = if state.per_second == 0.0 {
                sample
            } else {
                0.5 * state.per_second + 0.5 * sample
            };
            state.since = Some(now);
            state.items_since = 0;
        }
    }

    pub fn items_per_second(&self) -> f64 {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.last_delivery {
            Some(at) if at.elapsed() < Self::STALE => state.per_second,
            _ => 0.0,
        }
    }
}
