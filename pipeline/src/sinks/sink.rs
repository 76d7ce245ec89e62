//! What every sink is: [`Sink`], sending one stored batch to its destination, and what that
//! send can answer ([`Accepted`], or a [`SendError`] that says whether to retry).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::signal::Signal;

/// What the destination said about a batch it took.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// OTLP partial success: items it would not keep, and why.
    pub rejected_items: u64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later (unreachable; HTTP 429, 502, 503, 504; gRPC UNAVAILABLE and the other
    /// codes OTLP calls retryable), after `retry_after` if the destination said so.
    #[error("{reason}")]
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Sending the same batch again cannot succeed (HTTP 400, 401, 403, 404, 413, …; gRPC
    /// INVALID_ARGUMENT, UNAUTHENTICATED, …).
    #[error("{0}")]
    Permanent(String),
}

/// A destination's transport: sends one stored batch, the encoded OTLP export request of
/// `signal`, and says what became of it. The payload is shared, not copied: a retry sends the
/// same bytes again, and the transport holds them only while it writes them.
pub trait Sink: Send + Sync + 'static {
    fn send(
        &self,
        signal: Signal,
        payload: Bytes,
    ) -> impl Future<Output = Result<Accepted, SendError>> + Send;
}
