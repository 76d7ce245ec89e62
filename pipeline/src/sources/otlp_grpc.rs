//! The OTLP/gRPC receiver (default 127.0.0.1:4317): the three OTLP services, handing requests
//! to the [`Ingest`] (on a node, every export destination) and answering only once it stored
//! them (UNAVAILABLE, which OTLP clients retry, when it could not).
//!
//! The services take the request message as the bytes that came (a pass-through codec), so a
//! request goes the same fast path as OTLP/HTTP protobuf ([`ingest_protobuf`]): framing checked
//! and items counted at the wire level, decoded only when an app span is to be re-parented.
//! Decoding every request into prost types and encoding it again cost about four times the CPU.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::bytes::{Buf, BufMut, Bytes};
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::codegen::{http, Body, BoxFuture, StdError};
use tonic::server::NamedService;
use tonic::Status;

use crate::otlp::retry_info::status_with_retry;
use crate::signal::Signal;
use crate::sources::ingest::{ingest_protobuf, Ingest, Refusal, MAX_REQUEST_BYTES};

/// One OTLP service: its gRPC name and the signal it carries.
trait OtlpService: Send + Sync + 'static {
    const NAME: &'static str;
    const SIGNAL: Signal;
}

struct TraceService;
impl OtlpService for TraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const SIGNAL: Signal = Signal::Traces;
}

struct MetricsService;
impl OtlpService for MetricsService {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const SIGNAL: Signal = Signal::Metrics;
}

struct LogsService;
impl OtlpService for LogsService {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const SIGNAL: Signal = Signal::Logs;
}

/// A message as bytes: requests are not decoded by the codec, answers are already encoded (an
/// empty `Export*ServiceResponse` is zero bytes).
#[derive(Debug, Clone, Copy, Default)]
struct PassThrough;

impl Codec for PassThrough {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = PassThrough;
    type Decoder = PassThrough;
    fn encoder(&mut self) -> Self::Encoder {
        PassThrough
    }
    fn decoder(&mut self) -> Self::Decoder {
        PassThrough
    }
}

impl Encoder for PassThrough {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for PassThrough {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let size = src.remaining();
        Ok(Some(src.copy_to_bytes(size)))
    }
}

/// The `Export` method of service `S`.
struct Export<I> {
    target: Arc<I>,
    signal: Signal,
}

impl<I: Ingest> tonic::server::UnaryService<Bytes> for Export<I> {
    type Response = Bytes;
    type Future = BoxFuture<tonic::Response<Bytes>, Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let (target, signal) = (self.target.clone(), self.signal);
        Box::pin(async move {
            let body = request.into_inner();
            match ingest_protobuf(&*target, signal, &body).await {
                Ok(()) => Ok(tonic::Response::new(Bytes::new())),
                Err(Refusal::Invalid(e)) => Err(Status::invalid_argument(format!(
                    "not a valid OTLP {} export request: {e}",
                    signal.path()
                ))),
                // Backpressure is UNAVAILABLE with a RetryInfo saying when (RESOURCE_EXHAUSTED
                // is retried only by some clients); a failure to store is UNAVAILABLE too.
                Err(Refusal::NotTaken(not_taken)) => Err(status_with_retry(
                    tonic::Code::Unavailable,
                    format!("not stored, retry: {not_taken}"),
                    not_taken.retry_after(),
                )),
            }
        })
    }
}

/// Service `S` of the receiver, as tonic's router serves it.
struct Receiver<I, S> {
    target: Arc<I>,
    service: PhantomData<fn() -> S>,
}

// Not derived: that would ask `I: Clone`, and only the `Arc` is cloned.
impl<I, S> Clone for Receiver<I, S> {
    fn clone(&self) -> Self {
        Receiver {
            target: self.target.clone(),
            service: PhantomData,
        }
    }
}

impl<I, S: OtlpService> NamedService for Receiver<I, S> {
    const NAME: &'static str = S::NAME;
}

impl<I, S, B> tonic::codegen::Service<http::Request<B>> for Receiver<I, S>
where
    I: Ingest,
    S: OtlpService,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|path| path.strip_prefix(S::NAME));
        if method != Some("/Export") {
            return Box::pin(async {
                Ok(Status::unimplemented("OTLP services have one method, Export").into_http())
            });
        }
        let export = Export {
            target: self.target.clone(),
            signal: S::SIGNAL,
        };
        Box::pin(async move {
            let mut accept = EnabledCompressionEncodings::default();
            accept.enable(CompressionEncoding::Gzip);
            let mut grpc = tonic::server::Grpc::new(PassThrough)
                .apply_compression_config(accept, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(MAX_REQUEST_BYTES), None);
            Ok(grpc.unary(export, request).await)
        })
    }
}

/// The three OTLP services as [`serve`] runs them (gzip accepted, messages up to
/// [`MAX_REQUEST_BYTES`]), handing requests to `target`. Public so that the fuzz targets
/// (`fuzz/`) drive the receiver's decoding without a socket.
pub fn routes<I: Ingest>(target: Arc<I>) -> tonic::service::Routes {
    tonic::service::Routes::new(Receiver::<I, TraceService> {
        target: target.clone(),
        service: PhantomData,
    })
    .add_service(Receiver::<I, MetricsService> {
        target: target.clone(),
        service: PhantomData,
    })
    .add_service(Receiver::<I, LogsService> {
        target,
        service: PhantomData,
    })
}

/// Serves the three OTLP services on `listener` until it fails (logged), handing requests to
/// `target`.
pub async fn serve<I: Ingest>(listener: tokio::net::TcpListener, target: Arc<I>) {
    // Without TCP_NODELAY an answer's small frames (headers, message, trailers) wait for the
    // client's delayed ACK: tens of milliseconds per request, the rate of a closed loop capped.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |accepted| {
            accepted.inspect(|stream| {
                let _ = stream.set_nodelay(true);
            })
        },
    );
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
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
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

    /// What is not an OTLP request is INVALID_ARGUMENT and nothing is stored; a method the
    /// services do not have is UNIMPLEMENTED; an empty metrics request is taken.
    #[tokio::test]
    async fn bad_requests_are_refused_by_name_and_nothing_is_stored() {
        let target = Arc::new(FakeIngest::default());
        let endpoint = start(target.clone()).await;
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut raw = tonic::client::Grpc::new(channel);
        let call = |path: &'static str, body: &'static [u8]| {
            let mut raw = raw.clone();
            async move {
                raw.ready().await.unwrap();
                raw.unary(
                    tonic::Request::new(Bytes::from_static(body)),
                    http::uri::PathAndQuery::from_static(path),
                    PassThrough,
                )
                .await
            }
        };
        // Field 1 as a length-delimited value longer than the message.
        let garbage = call(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            &[0x0a, 0x7f, 0x01],
        )
        .await
        .unwrap_err();
        assert_eq!(garbage.code(), tonic::Code::InvalidArgument, "{garbage}");
        assert!(garbage.message().contains("traces"), "{garbage}");
        let unknown = call(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Other",
            &[],
        )
        .await
        .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::Unimplemented, "{unknown}");
        assert!(target.accepted().is_empty());
        raw.ready().await.unwrap();
        MetricsServiceClient::connect(endpoint)
            .await
            .unwrap()
            .export(ExportMetricsServiceRequest::default())
            .await
            .unwrap();
        assert_eq!(target.accepted().len(), 1);
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
