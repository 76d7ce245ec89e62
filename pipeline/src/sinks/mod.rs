//! Sinks: where batches go, one file per kind of destination (OTLP/HTTP, OTLP/gRPC, JSON
//! lines), all behind the [`Sink`] trait of `sink`; [`AnySink`] is any one of them, so that one
//! delivery type serves every destination.

pub mod json_lines;
pub mod otlp_grpc;
pub mod otlp_http;
pub mod sink;

pub use json_lines::JsonLines;
pub use otlp_grpc::OtlpGrpc;
pub use otlp_http::OtlpHttp;
pub use sink::{Accepted, SendError, Sink};

use bytes::Bytes;

use crate::signal::Signal;

/// Any of the sinks, so one delivery type serves every destination.
pub enum AnySink {
    Http(OtlpHttp),
    Grpc(OtlpGrpc),
    JsonLines(JsonLines),
}

impl Sink for AnySink {
    async fn send(&self, signal: Signal, payload: Bytes) -> Result<Accepted, SendError> {
        match self {
            AnySink::Http(sink) => sink.send(signal, payload).await,
            AnySink::Grpc(sink) => sink.send(signal, payload).await,
            AnySink::JsonLines(sink) => sink.send(signal, payload).await,
        }
    }
}
