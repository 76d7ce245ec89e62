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
pub use otlp::ResourceInfo;
pub use sink::{Accepted, OtlpHttp, SendError, Sink};
