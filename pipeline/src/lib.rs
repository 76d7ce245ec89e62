//! Apiary's telemetry pipeline, shaped like Vector: sources (the probes' spans, which the node
//! feeds in, and apps' OTLP through the receivers in `sources`) → transforms (RED metrics
//! counted from every exchange, app spans re-parented under the probes') → spans to OTLP, with
//! resource attributes (`otlp`) → per destination a disk buffer (`buffer`) → a sink (`sinks`).
//! A batch leaves its buffer only when the destination acknowledged it, so a destination that
//! is down, or a node that restarts, delays delivery but loses nothing acknowledged.
//!
//! RED metrics (`transforms::red`) are counted from every request, sampled or not.
//!
//! This file only declares the modules and re-exports what users name; each module imports
//! from the module that defines an item, never through a parent's re-export, so that the
//! module graph has no cycle.

pub mod buffer;
pub mod otlp;
pub mod prometheus;
pub mod signal;
pub mod sinks;
pub mod sources;
pub mod transforms;

pub use buffer::{
    store_everywhere, Admission, Delivery, DeliveryStats, DiskRoom, EnqueueError, Framed,
    FullPolicy, SendLimits,
};
pub use otlp::{OtlpRequest, ResourceInfo};
pub use signal::Signal;
pub use sinks::{Accepted, AnySink, JsonLines, OtlpGrpc, OtlpHttp, SendError, Sink};
pub use transforms::{RedMetrics, ServerSpanIndex};
