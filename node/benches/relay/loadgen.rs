//! The load generator: pre-encoded OTLP/HTTP trace requests (built once, so that the generator
//! is not what limits the rate) posted in a closed loop over several connections, each with its
//! own client and so its own connection. A refusal (429 or 503) is retried after its
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
