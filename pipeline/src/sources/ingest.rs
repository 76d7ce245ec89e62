//! What the OTLP receivers hand a request to ([`Ingest`], the node's export), and the steps
//! every request goes through whichever receiver took it ([`ingest`]).

use std::future::Future;
use std::time::Duration;

use crate::otlp::request::OtlpRequest;
use crate::otlp::wire;
use crate::signal::Signal;
use crate::transforms::reparent::ServerSpanIndex;

/// Requests larger than this (after decompression) are refused: 413 over HTTP (the OTLP way to
/// say "split it"), RESOURCE_EXHAUSTED-style errors over gRPC.
pub const MAX_REQUEST_BYTES: usize = 8 << 20;

/// How long a receiver waits for the probes' ring to be drained (see
/// [`Ingest::sync_with_probes`]).
pub const SYNC_TIMEOUT: Duration = Duration::from_millis(100);

/// Why the [`Ingest`] did not take a request; both tell the app to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotTaken {
    /// Backpressure: a destination's buffer is full. HTTP 429 with `Retry-After`, gRPC
    /// UNAVAILABLE with RetryInfo, as the OTLP specification says.
    #[error("{reason}")]
    Backpressure {
        reason: String,
        retry_after: Duration,
    },
    /// Storing failed (the disk): HTTP 503, gRPC UNAVAILABLE.
    #[error("{0}")]
    NotStored(String),
}

impl From<crate::buffer::policy::EnqueueError> for NotTaken {
    fn from(error: crate::buffer::policy::EnqueueError) -> Self {
        if error.is_full() {
            NotTaken::Backpressure {
                retry_after: error.retry_after(),
                reason: error.to_string(),
            }
        } else {
            NotTaken::NotStored(error.to_string())
        }
    }
}

impl NotTaken {
    pub fn retry_after(&self) -> Duration {
        match self {
            NotTaken::Backpressure { retry_after, .. } => *retry_after,
            NotTaken::NotStored(_) => Duration::from_secs(1),
        }
    }
}

/// Where the receivers put what apps send: on the node, its export (every destination's disk
/// buffer, and the index of the probes' server spans).
pub trait Ingest: Send + Sync + 'static {
    /// The probes' server spans, to re-parent apps' spans under them.
    fn server_spans(&self) -> &ServerSpanIndex;

    /// The probes' reader drains on a timer; an app's span can arrive before the probe span of
    /// the same request was read from the ring. When an app span names a caller the index does
    /// not know, a drain on demand (well under a millisecond when the ring is quiet), waiting at
    /// most `timeout`, puts any such probe span in the index before a second look. False when
    /// there are no probes to sync with (the index cannot learn more by asking).
    fn sync_with_probes(&self, timeout: Duration) -> impl Future<Output = bool> + Send;

    /// Queues an encoded export request of `signal` holding `items` items for every
    /// destination. `Err` means not stored anywhere: the app should retry.
    fn accept(
        &self,
        signal: Signal,
        items: u32,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), NotTaken>> + Send;
}

/// Re-parents app spans under the probes' spans of the same requests, then queues the request
/// for every destination. `Err` means not stored: the app should retry.
pub async fn ingest<I: Ingest + ?Sized>(
    target: &I,
    mut request: OtlpRequest,
) -> Result<(), NotTaken> {
    if let OtlpRequest::Traces(traces) = &mut request {
        if target.server_spans().reparent(traces).unknown_callers > 0
            && target.sync_with_probes(SYNC_TIMEOUT).await
        {
            target.server_spans().reparent(traces);
        }
    }
    let items = request.items().min(u32::MAX as u64) as u32;
    target
        .accept(request.signal(), items, &request.encode())
        .await
}

/// Why a request was not taken.
pub enum Refusal {
    Invalid(String),
    NotTaken(NotTaken),
}

/// The protobuf fast path, for both receivers: the framing is checked and items counted at the wire level; only a
/// request holding an app span to re-parent is decoded and re-encoded.
pub async fn ingest_protobuf<I: Ingest + ?Sized>(
    target: &I,
    signal: Signal,
    bytes: &[u8],
) -> Result<(), Refusal> {
    let scan = |merge: &mut bool, unknown: &mut bool| {
        wire::scan(signal, bytes, |trace, parent| {
            let known = target.server_spans().contains(trace, parent);
            *merge |= known;
            *unknown |= !known;
        })
        .map_err(|e| Refusal::Invalid(e.to_string()))
    };
    let (mut merge, mut unknown) = (false, false);
    let items = scan(&mut merge, &mut unknown)?;
    // A caller not known yet may be a probe span still in the ring: drain, look again. Only a
    // request with a span to re-parent is decoded; the rest goes on as it came.
    if !merge && unknown && target.sync_with_probes(SYNC_TIMEOUT).await {
        scan(&mut merge, &mut unknown)?;
    }
    if merge {
        let request = OtlpRequest::decode_protobuf(signal, bytes)
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        return ingest(target, request).await.map_err(Refusal::NotTaken);
    }
    target
        .accept(signal, items.min(u32::MAX as u64) as u32, bytes)
        .await
        .map_err(Refusal::NotTaken)
}
