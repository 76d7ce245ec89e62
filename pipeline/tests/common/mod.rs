//! The parts the pipeline's integration tests share: a real OTLP/HTTP destination (axum,
//! decoding with the official protobuf definitions), spans, and waiting.

#![allow(dead_code)] // each test binary uses part of it

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiary_pipeline::{otlp, Delivery, FullPolicy, OtlpHttp, ResourceInfo, Signal};
use apiary_span::{Span, SpanKind};
use apiary_storage::SegmentQueue;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

#[derive(Clone, Copy)]
pub enum Mode {
    Accept,
    /// Answer 503 with Retry-After: 1 this many times, then accept.
    Unavailable(u32),
    BadRequest,
    RejectOne,
    /// Hold every request this long before accepting it: a slow collector.
    Slow(Duration),
    /// Answer 400 to a request holding span `GET /r{N}`, as a strict collector answers
    /// bytes it cannot decode.
    RefuseSpan(usize),
}

/// A destination: what it received, and how many requests it held at once.
#[derive(Clone)]
pub struct Receiver {
    pub spans: Arc<Mutex<Vec<String>>>,
    pub requests: Arc<AtomicU32>,
    pub concurrent: Arc<AtomicU32>,
    pub max_concurrent: Arc<AtomicU32>,
}

impl Receiver {
    pub fn span_names(&self) -> Vec<String> {
        self.spans.lock().unwrap().clone()
    }

    pub async fn start(addr: SocketAddr, mode: Mode) -> (Receiver, tokio::task::JoinHandle<()>) {
        let receiver = Receiver {
            spans: Arc::default(),
            requests: Arc::default(),
            concurrent: Arc::default(),
            max_concurrent: Arc::default(),
        };
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
                let state = state.clone();
                async move { state.receive(mode, headers, body).await }
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (receiver, task)
    }

    async fn receive(
        &self,
        mode: Mode,
        headers: axum::http::HeaderMap,
        body: Bytes,
    ) -> axum::response::Response {
        let n = self.requests.fetch_add(1, Ordering::SeqCst);
        let now = self.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_concurrent.fetch_max(now, Ordering::SeqCst);
        if let Mode::Slow(delay) = mode {
            tokio::time::sleep(delay).await;
        }
        self.concurrent.fetch_sub(1, Ordering::SeqCst);
        if let Mode::Unavailable(times) = mode {
            if n < times {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "1")],
                    Vec::new(),
                )
                    .into_response();
            }
        }
        if matches!(mode, Mode::BadRequest) {
            return (StatusCode::BAD_REQUEST, Vec::new()).into_response();
        }
        assert_eq!(headers["content-type"], "application/x-protobuf");
        assert_eq!(
            headers["x-tenant"], "t1",
            "the destination's headers are sent"
        );
        let request = ExportTraceServiceRequest::decode(body.as_ref()).expect("valid OTLP");
        if let Mode::RefuseSpan(refused) = mode {
            let name = format!("GET /r{refused}");
            let holds = request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .any(|s| s.name == name);
            if holds {
                return (StatusCode::BAD_REQUEST, Vec::new()).into_response();
            }
        }
        let mut spans = self.spans.lock().unwrap();
        for resource in &request.resource_spans {
            for scope in &resource.scope_spans {
                spans.extend(scope.spans.iter().map(|s| s.name.clone()));
            }
        }
        let response = ExportTraceServiceResponse {
            partial_success: matches!(mode, Mode::RejectOne).then(|| ExportTracePartialSuccess {
                rejected_spans: 1,
                error_message: "span too old".into(),
            }),
        };
        (StatusCode::OK, response.encode_to_vec()).into_response()
    }
}

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A probe-like span named `GET /r{i}` at the destination.
pub fn span(i: usize) -> Span {
    let mut span =
        apiary_span::testing::http_span(SpanKind::Server, "GET", &format!("/item/{i}"), 200);
    span.http_mut().route = format!("/r{i}");
    span.http_mut().host = None;
    span.pid = 1;
    span.start_unix_nanos = 1;
    span.duration_ns = 1;
    span.netns = 0;
    span.cgroup_id = 0;
    span
}

/// An encoded export request of spans `from..from + count`.
pub fn encoded(from: usize, count: usize) -> Vec<u8> {
    let spans: Vec<Span> = (from..from + count).map(span).collect();
    otlp::encode(&spans, &ResourceInfo::default())
}

pub fn expected(from: usize, count: usize) -> Vec<String> {
    (from..from + count).map(|i| format!("GET /r{i}")).collect()
}

pub fn http_delivery(
    dir: &std::path::Path,
    name: &str,
    addr: SocketAddr,
    max_bytes: u64,
    policy: FullPolicy,
) -> Arc<Delivery<OtlpHttp>> {
    let sink = OtlpHttp::new(
        &format!("http://{addr}"),
        vec![("x-tenant".into(), "t1".into())],
    )
    .unwrap();
    let queue = SegmentQueue::open_for_cap(&dir.join(name), max_bytes).unwrap();
    Delivery::new(name, queue, sink, max_bytes, policy).unwrap()
}

pub async fn enqueue_batches(
    delivery: &Delivery<OtlpHttp>,
    from: usize,
    batches: usize,
    per_batch: usize,
) {
    for b in 0..batches {
        let payload = encoded(from + b * per_batch, per_batch);
        delivery
            .enqueue(Signal::Traces, per_batch as u32, &payload)
            .await
            .unwrap();
    }
}

pub async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}
