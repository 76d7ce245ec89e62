//! The load generator: pre-encoded OTLP trace requests (built once, so that the generator is
//! not what limits the rate) sent in a closed loop over several connections, each with its own
//! client and so its own connection: OTLP/HTTP posts ([`run`]) or OTLP/gRPC calls
//! ([`run_grpc`], the same bytes through a pass-through codec, so nothing is re-encoded). A
//! refusal (HTTP 429/503, gRPC UNAVAILABLE/RESOURCE_EXHAUSTED) is retried after its
//! Retry-After, capped so that a round measures the relay rather than the wait.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

/// The longest wait for a retry, whatever Retry-After said.
const RETRY_WAIT_CAP: Duration = Duration::from_millis(200);

/// What the relay answered during a load.
#[derive(Default)]
pub struct Answers {
    pub accepted_spans: AtomicU64,
    pub refusals: AtomicU64,
    pub errors: AtomicU64,
}

/// `requests` different requests of `spans` spans each, encoded: HTTP-server-like spans with
/// the attributes an instrumented app sends.
pub fn encoded_requests(requests: usize, spans: usize) -> Vec<Vec<u8>> {
    let text = |key: &str, value: String| KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    };
    (0..requests)
        .map(|r| {
            let spans = (0..spans)
                .map(|i| {
                    let n = (r * spans + i) as u64;
                    Span {
                        trace_id: [n.to_be_bytes(), (!n).to_be_bytes()].concat(),
                        span_id: (n + 1).to_be_bytes().to_vec(),
                        name: "GET /api/items/{id}".into(),
                        kind: 2,
                        start_time_unix_nano: 1_700_000_000_000_000_000 + n * 1000,
                        end_time_unix_nano: 1_700_000_000_000_000_000 + n * 1000 + 420_000,
                        attributes: vec![
                            text("http.request.method", "GET".into()),
                            text("url.path", format!("/api/items/{}", n % 1000)),
                            text("http.route", "/api/items/{id}".into()),
                            text("server.address", "shop.internal".into()),
                        ],
                        ..Default::default()
                    }
                })
                .collect();
            ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![text("service.name", "shop".into())],
                        ..Default::default()
                    }),
                    scope_spans: vec![ScopeSpans {
                        spans,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
            .encode_to_vec()
        })
        .collect()
}

/// Posts `requests` round-robin to `url` over `connections` connections until `stop` is set.
pub async fn run(
    url: String,
    connections: usize,
    requests: Arc<Vec<Vec<u8>>>,
    spans_per_request: u64,
    stop: Arc<AtomicBool>,
    answers: Arc<Answers>,
) {
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (url, requests, stop, answers) =
            (url.clone(), requests.clone(), stop.clone(), answers.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client");
            let mut next = c;
            while !stop.load(Ordering::Relaxed) {
                let body = requests[next % requests.len()].clone();
                let sent = client
                    .post(&url)
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().is_success() => {
                        answers
                            .accepted_spans
                            .fetch_add(spans_per_request, Ordering::Relaxed);
                        next += connections;
                    }
                    Ok(response) if matches!(response.status().as_u16(), 429 | 503) => {
                        answers.refusals.fetch_add(1, Ordering::Relaxed);
                        let wait = response
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                            .map(Duration::from_secs)
                            .unwrap_or(RETRY_WAIT_CAP);
                        tokio::time::sleep(wait.min(RETRY_WAIT_CAP)).await;
                    }
                    _ => {
                        answers.errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// A gRPC codec for bytes already encoded as the request message; the answer is not decoded.
#[derive(Clone, Copy, Default)]
struct PreEncoded;

impl tonic::codec::Codec for PreEncoded {
    type Encode = prost::bytes::Bytes;
    type Decode = ();
    type Encoder = PreEncoded;
    type Decoder = PreEncoded;
    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }
    fn decoder(&mut self) -> Self::Decoder {
        PreEncoded
    }
}

impl tonic::codec::Encoder for PreEncoded {
    type Item = prost::bytes::Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Self::Item,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        prost::bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for PreEncoded {
    type Item = ();
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        let n = prost::bytes::Buf::remaining(src);
        prost::bytes::Buf::advance(src, n);
        Ok(Some(()))
    }
}

/// As [`run`], as OTLP/gRPC `TraceService/Export` calls to `endpoint` (`http://host:port`),
/// one HTTP/2 connection per task.
pub async fn run_grpc(
    endpoint: String,
    connections: usize,
    requests: Arc<Vec<Vec<u8>>>,
    spans_per_request: u64,
    stop: Arc<AtomicBool>,
    answers: Arc<Answers>,
) {
    let bodies: Arc<Vec<prost::bytes::Bytes>> = Arc::new(
        requests
            .iter()
            .map(|r| prost::bytes::Bytes::from(r.clone()))
            .collect(),
    );
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    );
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (endpoint, bodies, stop, answers, path) = (
            endpoint.clone(),
            bodies.clone(),
            stop.clone(),
            answers.clone(),
            path.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let channel = tonic::transport::Endpoint::from_shared(endpoint)
                .expect("a gRPC endpoint")
                .timeout(Duration::from_secs(30))
                .connect_lazy();
            let mut client = tonic::client::Grpc::new(channel);
            let mut next = c;
            while !stop.load(Ordering::Relaxed) {
                let body = bodies[next % bodies.len()].clone();
                if client.ready().await.is_err() {
                    answers.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let sent = client
                    .unary(tonic::Request::new(body), path.clone(), PreEncoded)
                    .await;
                match sent {
                    Ok(_) => {
                        answers
                            .accepted_spans
                            .fetch_add(spans_per_request, Ordering::Relaxed);
                        next += connections;
                    }
                    Err(status)
                        if matches!(
                            status.code(),
                            tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                        ) =>
                    {
                        answers.refusals.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(RETRY_WAIT_CAP).await;
                    }
                    Err(_) => {
                        answers.errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}
