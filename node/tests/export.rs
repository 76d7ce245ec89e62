//! A node exports its probes' spans as OTLP/HTTP to a destination set through the replicated
//! config; a receiver built on the official OTLP protobuf definitions checks what arrives, also
//! across an outage and a SIGKILL of the node. Needs root (probes); skipped with one message
//! otherwise.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::{curl, python_server, root, Cluster};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use serde_json::json;

#[derive(Debug, Clone)]
struct Received {
    name: String,
    resource: HashMap<String, String>,
    attributes: HashMap<String, String>,
}

fn flatten(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                Some(AnyValue::StringValue(s)) => s,
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
    unavailable: Arc<AtomicBool>,
}

impl Receiver {
    async fn start(self) -> u16 {
        let state = self.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let state = state.clone();
                async move {
                    if state.unavailable.load(Ordering::SeqCst) {
                        return (StatusCode::SERVICE_UNAVAILABLE, Vec::new()).into_response();
                    }
                    let request =
                        ExportTraceServiceRequest::decode(body.as_ref()).expect("valid OTLP");
                    let mut spans = state.spans.lock().unwrap();
                    for resource_spans in request.resource_spans {
                        let resource =
                            flatten(&resource_spans.resource.unwrap_or_default().attributes);
                        for scope in resource_spans.scope_spans {
                            for span in scope.spans {
                                spans.push(Received {
                                    name: span.name,
                                    resource: resource.clone(),
                                    attributes: flatten(&span.attributes),
                                });
                            }
                        }
                    }
                    (StatusCode::OK, Vec::new()).into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        port
    }

    fn with_target(&self, prefix: &str) -> Vec<Received> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| {
                s.attributes
                    .get("url.path")
                    .is_some_and(|p| p.starts_with(prefix))
            })
            .cloned()
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_across_an_outage_and_a_node_kill() {
    if !root() {
        eprintln!("SKIPPED spans_reach_an_otlp_receiver_across_an_outage_and_a_node_kill: needs root for the probes (CI runs it)");
        return;
    }
    let receiver = Receiver::default();
    let receiver_port = receiver.clone().start().await;
    let mut cluster = Cluster::start_with(1, &[]).await;
    let endpoint = format!("http://127.0.0.1:{receiver_port}");
    let (status, body) = cluster
        .set(0, "destination.main.endpoint", json!(endpoint))
        .await;
    assert_eq!(status, 200, "{body}");

    let (_server, port) = python_server();
    curl(&format!("http://127.0.0.1:{port}/shop/9"));
    let spans = cluster
        .wait_for(Duration::from_secs(15), "the span at the receiver", |_| {
            let found = receiver.with_target("/shop/9");
            async move { (found.len() >= 2).then_some(found) }
        })
        .await;
    let server = spans
        .iter()
        .find(|s| s.attributes.contains_key("client.address"))
        .expect("server span");
    assert_eq!(server.name, "GET /shop/{id}");
    assert_eq!(server.attributes["http.response.status_code"], "404");
    assert_eq!(server.attributes["http.route"], "/shop/{id}");
    assert_eq!(server.resource["apiary.node"], "n0");
    assert!(
        server.resource["service.name"].starts_with("python"),
        "{:?}",
        server.resource
    );
    assert!(server.resource.contains_key("host.name"));

    // Outage: the receiver answers 503; spans queue on disk.
    receiver.unavailable.store(true, Ordering::SeqCst);
    for i in 0..20 {
        curl(&format!("http://127.0.0.1:{port}/outage/{i}"));
    }
    // Spans live in memory until their batch is on disk (at most 200 ms): wait until the probes
    // built all 40 and a batch window has passed, so the kill hits only queued data.
    cluster
        .wait_for(
            Duration::from_secs(10),
            "the outage spans at the node",
            |c| async move {
                let spans = c.get(0, "/v1/spans?limit=4096").await.ok()?;
                let n = spans
                    .as_array()?
                    .iter()
                    .filter(|s| {
                        s["target"]
                            .as_str()
                            .is_some_and(|t| t.starts_with("/outage/"))
                    })
                    .count();
                (n == 40).then_some(())
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster
        .wait_for(
            Duration::from_secs(10),
            "batches queued during the outage",
            |c| async move {
                let export = c.get(0, "/v1/export").await.ok()?;
                let main = export
                    .as_array()?
                    .iter()
                    .find(|d| d["name"] == "main")?
                    .clone();
                (main["queued_batches"].as_u64()? > 0 && main["failed_attempts"].as_u64()? > 0)
                    .then_some(())
            },
        )
        .await;
    // The node is killed with spans still queued, and restarted.
    cluster.nodes[0].kill();
    cluster.nodes[0].restart();
    receiver.unavailable.store(false, Ordering::SeqCst);
    cluster
        .wait_for(
            Duration::from_secs(30),
            "every outage span after the restart",
            |_| {
                let got = receiver.with_target("/outage/");
                async move {
                    let servers: std::collections::BTreeSet<String> = got
                        .iter()
                        .filter(|s| s.attributes.contains_key("client.address"))
                        .map(|s| s.attributes["url.path"].clone())
                        .collect();
                    (servers.len() == 20).then_some(())
                }
            },
        )
        .await;
    let outage = receiver.with_target("/outage/");
    let unique: std::collections::BTreeSet<(String, String)> = outage
        .iter()
        .map(|s| {
            (
                s.attributes["url.path"].clone(),
                s.attributes.contains_key("client.address").to_string(),
            )
        })
        .collect();
    eprintln!(
        "outage spans received: {} ({} unique, {} duplicates from at-least-once retries)",
        outage.len(),
        unique.len(),
        outage.len() - unique.len()
    );
    assert_eq!(
        unique.len(),
        40,
        "server and client span for each of 20 requests"
    );
}
