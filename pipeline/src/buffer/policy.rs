//! What a destination does when its disk buffer is full ([`FullPolicy`]), and the answer a
//! writer gets then ([`EnqueueError`]).

use std::time::Duration;

use serde::Serialize;

/// What to do when a destination's disk buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// The default: do not take it. The OTLP receivers answer a retryable status (HTTP 429
    /// with Retry-After, gRPC UNAVAILABLE with RetryInfo) and the app's SDK retries; the
    /// probes' spans, which nobody can retry, are shed and counted. Nothing acknowledged is
    /// ever lost for room.
    Refuse,
    /// Wait for room: the writer waits (a receiver holds the app's request open meanwhile).
    Block,
    /// Opt-in, for a destination that may lose data: take the request and drop the batch that
    /// does not fit, counted in `dropped_items`. Apps are told their spans were taken.
    Drop,
}

impl std::str::FromStr for FullPolicy {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "refuse" => Ok(FullPolicy::Refuse),
            "block" => Ok(FullPolicy::Block),
            "drop" => Ok(FullPolicy::Drop),
            "drop-oldest" => Err(
                "drop-oldest is gone (it dropped batches apps had been told \
                were taken): use refuse (the default; apps retry) or, to lose data knowingly, drop"
                    .into(),
            ),
            other => Err(format!(
                "{other:?} is not a buffer policy: use refuse (the default), block or drop"
            )),
        }
    }
}

/// Why a batch was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnqueueError {
    /// Backpressure: the buffer holds its cap; the writer should retry after `retry_after`.
    #[error(
        "destination {destination}: export buffer full ({backlog_bytes} of {max_bytes} bytes \
         on disk; the destination takes {draining}); retry in {}s",
        retry_after.as_secs()
    )]
    Full {
        destination: String,
        backlog_bytes: u64,
        max_bytes: u64,
        /// How fast it drains, in words (`"no batch now: it is down or refusing"` …).
        draining: String,
        retry_after: Duration,
    },
    /// Backpressure: the buffer's filesystem is down to the free space it must leave (the
    /// Raft log shares that disk).
    #[error(
        "destination {destination}: the data dir's disk is nearly full ({available} bytes free, \
         {reserve} kept free for the Raft log); free space there or move the data dir; retry in 5s"
    )]
    DiskLow {
        destination: String,
        available: u64,
        reserve: u64,
    },
    /// The disk failed the write (full disk, permissions).
    #[error("destination {destination}: {reason}")]
    Storage { destination: String, reason: String },
}

impl EnqueueError {
    /// How long the writer should wait before trying again.
    pub fn retry_after(&self) -> Duration {
        match self {
            EnqueueError::Full { retry_after, .. } => *retry_after,
            EnqueueError::DiskLow { .. } => Duration::from_secs(5),
            EnqueueError::Storage { .. } => Duration::from_secs(1),
        }
    }

    pub fn is_full(&self) -> bool {
        matches!(
            self,
            EnqueueError::Full { .. } | EnqueueError::DiskLow { .. }
        )
    }
}
