//! The OTLP/gRPC receiver (default 127.0.0.1:4317): the three OTLP services, answering only
//! once a request is in every destination's disk buffer (UNAVAILABLE, which OTLP clients
//! retry, when it could not be stored).

use std::sync::Arc;

use apiary_pipeline::OtlpRequest;
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

use crate::agent::export::Export;
use crate::receiver::{ingest, MAX_REQUEST_BYTES};

#[derive(Clone)]
struct Receiver {
    export: Arc<Export>,
}

impl Receiver {
    async fn take(&self, request: OtlpRequest) -> Result<(), Status> {
        ingest(&self.export, request)
            .await
            .map_err(|reason| Status::unavailable(format!("not stored, retry: {reason}")))
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.take(OtlpRequest::Traces(request.into_inner())).await?;
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Receiver {
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
impl LogsService for Receiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.take(OtlpRequest::Logs(request.into_inner())).await?;
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

pub async fn serve(listener: tokio::net::TcpListener, export: Arc<Export>) {
    let receiver = Receiver { export };
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let result = tonic::transport::Server::builder()
        .add_service(
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
        .serve_with_incoming(incoming)
        .await;
    if let Err(e) = result {
        tracing::error!("the OTLP/gRPC receiver stopped: {e}");
    }
}
