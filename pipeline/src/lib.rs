//! Apiary's telemetry pipeline, shaped like Vector: a source (the probes' spans) → a transform
//! (spans to OTLP, with resource attributes) → per destination a disk buffer → a sink. A batch
//! leaves its buffer only when the destination acknowledged it, so a destination that is down,
//! or a node that restarts, delays delivery but loses nothing acknowledged.
//!
//! RED metrics (`red`) are counted from every request, sampled or not.

pub mod delivery;
pub mod encode;
pub mod grpc;
pub mod merge;
pub mod otlp;
pub mod red;
pub mod request;
pub mod sink;
pub mod wire;

pub use delivery::{Delivery, DeliveryStats, FullPolicy};

use serde::Serialize;

/// The three OTLP signals; each has its own path (`/v1/traces` …) and message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    /// The OTLP/HTTP path of the signal.
    pub fn path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
            Signal::Logs => "/v1/logs",
        }
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.code() == code)
    }
}
pub use grpc::OtlpGrpc;
pub use merge::ServerSpanIndex;
pub use otlp::ResourceInfo;
pub use red::RedMetrics;
pub use request::OtlpRequest;
pub use sink::{Accepted, AnySink, JsonLines, OtlpHttp, SendError, Sink};
