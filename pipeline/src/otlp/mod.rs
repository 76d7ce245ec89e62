//! OTLP, the format of everything the pipeline exports: probe spans to export requests (the
//! fast protobuf `writer`, and `spans`, built from `opentelemetry-proto`'s structs, that it is
//! tested against), the resource they carry, their ids, and apps' requests read either in full
//! (`request`) or at the protobuf wire level (`wire`), and gRPC's retry hints (`retry_info`).

pub(crate) mod attributes;
pub mod ids;
pub mod request;
pub mod resource;
pub mod retry_info;
pub mod spans;
pub mod wire;
pub mod writer;

pub use ids::{exported_trace_id, probe_span_id, traceparent_ids};
pub use request::OtlpRequest;
pub use resource::{kubernetes_of, KubernetesCache, ResourceInfo};
pub use spans::export_request;
pub use writer::{encode, encode_spans};
