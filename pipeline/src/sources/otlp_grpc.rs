//! The OTLP/gRPC receiver (default 127.0.0.1:4317): the three OTLP services, handing requests
//! to the [`Ingest`] (on a node, every export destination) and answering only once it stored
//! them (UNAVAILABLE, which OTLP clients retry, when it could not).

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

use crate::otlp::request::OtlpRequest;
use crate::otlp::retry_info::status_with_retry;
use crate::sources::ingest::{ingest, Ingest, MAX_REQUEST_BYTES};

struct Receiver<I> {
    target: Arc<I>,
}

// Not derived: that would ask `I: Clone`, and only the `Arc` is cloned.
impl<I> Clone for Receiver<I> {
    fn clone(&self) -> Self {
        Receiver {
            target: self.target.clone(),
        }
    }
}

impl<I: Ingest> Receiver<I> {
    /// OTLP/gRPC: backpressure is UNAVAILABLE with a RetryInfo saying when (RESOURCE_EXHAUSTED
    /// is retried only by some clients); a failure to store is UNAVAILABLE too.
    async fn take(&self, request: OtlpRequest) -> Result<(), Status> {
        ingest(&*self.target, request).await.map_err(|not_taken| {
            status_with_retry(
                tonic::Code::Unavailable,
                format!("not stored, retry: {not_taken}"),
                not_taken.retry_after(),
            )
        })
    }
}

#[tonic::async_trait]
impl<I: Ingest> TraceService for Receiver<I> {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.take(OtlpRequest::Traces(request.into_inner())).await?;
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl<I: Ingest> MetricsService for Receiver<I> {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.take(OtlpRequest::Metrics(request.into_inner()))
            .await?;
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl<I: Ingest> LogsService for Receiver<I> {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.take(OtlpRequest::Logs(request.into_inner())).await?;
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

/// The three OTLP services as [`serve`] runs them (gzip accepted, messages up to
/// [`MAX_REQUEST_BYTES`]), handing requests to `target`. Public so that the fuzz targets
/// (`fuzz/`) drive the receiver's decoding without a socket.
pub fn routes<I: Ingest>(target: Arc<I>) -> tonic::service::Routes {
    let receiver = Receiver { target };
    tonic::service::Routes::new(
        TraceServiceServer::new(receiver.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(
        MetricsServiceServer::new(receiver.clone())
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(
        LogsServiceServer::new(receiver)
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_REQUEST_BYTES),
    )
}

/// Serves the three OTLP services on `listener` until it fails (logged), handing requests to
/// `target`.
pub async fn serve<I: Ingest>(listener: tokio::net::TcpListener, target: Arc<I>) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let result = tonic::transport::Server::builder()
        .add_routes(routes(target))
        .serve_with_incoming(incoming)
        .await;
    if let Err(e) = result {
        tracing::error!("the OTLP/gRPC receiver stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind as OtlpKind;
    use prost::Message;

    use super::*;
    use crate::otlp::ids::probe_span_id;
    use crate::signal::Signal;
    use crate::sources::testing::{app_traces, probe_span, FakeIngest, TRACEPARENT};

    /// Serves the receiver for `target` on a free port; returns its endpoint.
    async fn start(target: Arc<FakeIngest>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, target));
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn requests_are_stored_reparented_and_gzip_is_accepted() {
        let target = Arc::new(FakeIngest::default());
        let probe = probe_span(TRACEPARENT);
        target.server_spans.remember(&probe);
        let endpoint = start(target.clone()).await;
        let mut traces = TraceServiceClient::connect(endpoint.clone())
            .await
            .unwrap()
            .send_compressed(CompressionEncoding::Gzip);
        traces
            .export(app_traces(OtlpKind::Server, vec![1; 8]))
            .await
            .unwrap();
        let logs = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord::default(), LogRecord::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        LogsServiceClient::connect(endpoint)
            .await
            .unwrap()
            .export(logs.clone())
            .await
            .unwrap();

        let accepted = target.accepted();
        assert_eq!(accepted.len(), 2);
        let (signal, items, payload) = &accepted[0];
        assert_eq!((*signal, *items), (Signal::Traces, 3));
        let stored = ExportTraceServiceRequest::decode(payload.as_slice()).unwrap();
        assert_eq!(
            stored.resource_spans[0].scope_spans[0].spans[0].parent_span_id,
            probe_span_id(&probe)
        );
        assert_eq!(
            accepted[1],
            (Signal::Logs, 2, logs.encode_to_vec()),
            "logs go on as they came"
        );
    }

    #[tokio::test]
    async fn backpressure_is_unavailable_with_retry_info() {
        let target = Arc::new(FakeIngest {
            refuse: Some(crate::sources::ingest::NotTaken::Backpressure {
                reason: "buffer full".into(),
                retry_after: std::time::Duration::from_secs(3),
            }),
            ..Default::default()
        });
        let endpoint = start(target).await;
        let status = TraceServiceClient::connect(endpoint)
            .await
            .unwrap()
            .export(app_traces(OtlpKind::Internal, vec![]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("buffer full"), "{status}");
        assert_eq!(
            crate::otlp::retry_info::retry_delay(status.details()),
            Some(std::time::Duration::from_secs(3)),
            "RetryInfo says when"
        );
    }
}
