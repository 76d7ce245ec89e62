//! The OTLP/HTTP receiver: apps' traces, metrics and logs go to the export destinations
//! unchanged; bad input gets the OTLP-specified status and the node goes on. No root needed.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use common::Cluster;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{Metric, ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::json;

/// (path, body) of every request the collector got.
type Requests = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

#[derive(Clone, Default)]
struct Collector {
    received: Requests,
}

impl Collector {
    async fn start(&self) -> u16 {
        let received = self.received.clone();
        let app = axum::Router::new().route(
            "/{*path}",
            axum::routing::post(move |uri: axum::http::Uri, body: Bytes| {
                let received = received.clone();
                async move {
                    received
                        .lock()
                        .unwrap()
                        .push((uri.path().to_string(), body.to_vec()));
                    ""
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        port
    }

    fn bodies(&self, path: &str) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

fn traces() -> ExportTraceServiceRequest {
    let spans = (0..3u8)
        .map(|i| Span {
            trace_id: vec![7; 16],
            span_id: vec![i + 1; 8],
            name: format!("app-span-{i}"),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_otlp_reaches_destinations_and_bad_input_is_refused() {
    let collector = Collector::default();
    let collector_port = collector.start().await;
    let cluster = Cluster::start(1).await;
    let (status, body) = cluster
        .set(
            0,
            "destination.collector.endpoint",
            json!(format!("http://127.0.0.1:{collector_port}")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Destinations start when the new config version is applied.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let otlp = format!("http://{}", cluster.nodes[0].otlp);
    let post = |path: &str, content_type: &str, body: Vec<u8>| {
        cluster
            .http
            .post(format!("{otlp}{path}"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let protobuf = "application/x-protobuf";
    let response = post("/v1/traces", protobuf, traces().encode_to_vec())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "app.requests".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    assert_eq!(
        post("/v1/metrics", protobuf, metrics.encode_to_vec())
            .await
            .unwrap()
            .status(),
        200
    );
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord::default(), LogRecord::default()],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    assert_eq!(
        post("/v1/logs", protobuf, logs.encode_to_vec())
            .await
            .unwrap()
            .status(),
        200
    );

    cluster
        .wait_for(
            Duration::from_secs(10),
            "all three signals at the collector",
            |_| {
                let done = !collector.bodies("/v1/traces").is_empty()
                    && !collector.bodies("/v1/metrics").is_empty()
                    && !collector.bodies("/v1/logs").is_empty();
                async move { done.then_some(()) }
            },
        )
        .await;
    let forwarded =
        ExportTraceServiceRequest::decode(collector.bodies("/v1/traces")[0].as_slice()).unwrap();
    assert_eq!(forwarded, traces(), "the app's spans arrive unchanged");
    let forwarded =
        ExportMetricsServiceRequest::decode(collector.bodies("/v1/metrics")[0].as_slice()).unwrap();
    assert_eq!(forwarded, metrics);
    let forwarded =
        ExportLogsServiceRequest::decode(collector.bodies("/v1/logs")[0].as_slice()).unwrap();
    assert_eq!(
        forwarded.resource_logs[0].scope_logs[0].log_records.len(),
        2
    );

    // Bad input.
    let garbage = post(
        "/v1/traces",
        protobuf,
        b"\xff\xff\xff not protobuf".to_vec(),
    )
    .await
    .unwrap();
    assert_eq!(garbage.status(), 400);
    assert!(garbage.text().await.unwrap().contains("not a valid OTLP"));
    let json_body = post("/v1/traces", "application/json", b"{}".to_vec())
        .await
        .unwrap();
    assert_eq!(json_body.status(), 415);
    assert!(json_body
        .text()
        .await
        .unwrap()
        .contains("application/x-protobuf"));
    let gzip = cluster
        .http
        .post(format!("{otlp}/v1/traces"))
        .header("content-type", protobuf)
        .header("content-encoding", "gzip")
        .body(vec![1, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(gzip.status(), 415);
    let huge = post("/v1/traces", protobuf, vec![0u8; 9 << 20])
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    let wrong_path = post("/v1/profiles", protobuf, vec![]).await.unwrap();
    assert_eq!(wrong_path.status(), 404);

    // Still serving.
    assert_eq!(
        post("/v1/traces", protobuf, traces().encode_to_vec())
            .await
            .unwrap()
            .status(),
        200
    );
    let export = cluster.get(0, "/v1/export").await.unwrap();
    let collector_row = export
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "collector")
        .unwrap()
        .clone();
    assert_eq!(collector_row["state"], "running");
    cluster
        .wait_for(Duration::from_secs(10), "the second trace request", |_| {
            let n = collector.bodies("/v1/traces").len();
            async move { (n >= 2).then_some(()) }
        })
        .await;
}
