//! Sources of what apps send: the OTLP receivers, OTLP/HTTP (`otlp_http`, port 4318) and
//! OTLP/gRPC (`otlp_grpc`, port 4317). Each hands what it takes to an [`Ingest`] (on a node,
//! its export) and answers only once that stored it. (The probes' spans, the other source,
//! come from the probes crate through the node.)

pub mod ingest;
pub mod otlp_grpc;
pub mod otlp_http;
#[cfg(test)]
mod testing;

pub use ingest::{ingest, Ingest, NotTaken, MAX_REQUEST_BYTES};
