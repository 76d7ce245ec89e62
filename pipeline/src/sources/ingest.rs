//! What the OTLP receivers hand a request to ([`Ingest`], the node's export), and the steps
//! every request goes through whichever receiver took it ([`ingest`]).

use std::future::Future;
use std::time::Duration;

use crate::otlp::request::OtlpRequest;
use crate::signal::Signal;
use crate::transforms::reparent::ServerSpanIndex;

/// Requests larger than this (after decompression) are refused: 413 over HTTP (the OTLP way to
/// say "split it"), RESOURCE_EXHAUSTED-style errors over gRPC.
pub const MAX_REQUEST_BYTES: usize = 8 << 20;

/// How long a receiver waits for the probes' ring to be drained (see
/// [`Ingest::sync_with_probes`]).
pub const SYNC_TIMEOUT: Duration = Duration::from_millis(100);

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
    /// destination. `Err` means not stored: the app should retry.
    fn accept(
        &self,
        signal: Signal,
        items: u32,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// Re-parents app spans under the probes' spans of the same requests, then queues the request
/// for every destination. `Err` means not stored: the app should retry.
pub async fn ingest<I: Ingest + ?Sized>(
    target: &I,
    mut request: OtlpRequest,
) -> Result<(), String> {
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
