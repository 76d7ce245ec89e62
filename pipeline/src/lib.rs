//! Apiary's telemetry pipeline, shaped like Vector: a source (the probes' spans) → a transform
//! (spans to OTLP, with resource attributes) → per destination a disk buffer → a sink. A batch
//! leaves its buffer only when the destination acknowledged it, so a destination that is down,
//! or a node that restarts, delays delivery but loses nothing acknowledged.
//!
//! Today: the OTLP/HTTP (protobuf) sink. Next (see the pipeline issue): the OTLP gRPC sink, the
//! OTLP receiver source, RED metrics and merging with apps' own spans.

pub mod delivery;
pub mod otlp;
pub mod sink;

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

    /// Validates an OTLP protobuf export request of this signal; returns how many items
    /// (spans, metrics, log records) it carries.
    pub fn count_items(self, payload: &[u8]) -> Result<u64, prost::DecodeError> {
        use opentelemetry_proto::tonic::collector::{logs, metrics, trace};
        use prost::Message;
        Ok(match self {
            Signal::Traces => trace::v1::ExportTraceServiceRequest::decode(payload)?
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len() as u64)
                .sum(),
            Signal::Metrics => metrics::v1::ExportMetricsServiceRequest::decode(payload)?
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .map(|s| s.metrics.len() as u64)
                .sum(),
            Signal::Logs => logs::v1::ExportLogsServiceRequest::decode(payload)?
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len() as u64)
                .sum(),
        })
    }
}
pub use otlp::ResourceInfo;
pub use sink::{Accepted, OtlpHttp, SendError, Sink};
