//! A node exports its probes' spans as OTLP/HTTP to a destination set through the replicated
//! config; a receiver built on the official OTLP protobuf definitions checks what arrives, also
//! across an outage and a SIGKILL of the node. Needs root (probes); skipped with one message
//! otherwise.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{curl, python_server, root, Cluster};
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::IntoResponse;
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

/// A receiver running on its own runtime and thread, so that stopping it closes every socket
/// (listener and kept-alive connections), as a collector process that went away.
struct Running(
    Option<std::sync::mpsc::Sender<()>>,
    Option<std::thread::JoinHandle<()>>,
);

impl Running {
    fn stop(mut self) {
        drop(self.0.take());
        if let Some(thread) = self.1.take() {
            let _ = thread.join();
        }
    }
}

impl Receiver {
    fn start_on(self, port: u16) -> (u16, Running) {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (bound, port_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.spawn(self.serve(port, bound));
            // Runs the server until the test drops the sender; dropping the runtime then
            // cancels every task and closes every socket.
            runtime.block_on(async {
                let _ = tokio::task::spawn_blocking(move || stopped.recv()).await;
            });
        });
        let port = port_rx.recv().unwrap();
        (port, Running(Some(stop), Some(thread)))
    }

    async fn serve(self, port: u16, bound: std::sync::mpsc::Sender<u16>) {
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
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        bound.send(listener.local_addr().unwrap().port()).unwrap();
        let _ = axum::serve(listener, app).await;
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
    let (receiver_port, running) = receiver.clone().start_on(0);
    let mut cluster = Cluster::start_with(1, &[]).await;
    cluster.unbind_budgets().await;
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

    // The receiver is gone for 30 s while requests keep coming; then it is back on its port.
    running.stop();
    let load = std::thread::spawn(move || {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        let mut requests = 0;
        while std::time::Instant::now() < until {
            curl(&format!("http://127.0.0.1:{port}/down/{requests}"));
            requests += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        requests
    });
    let requests = tokio::task::spawn_blocking(move || load.join().unwrap())
        .await
        .unwrap();
    let export = cluster.get(0, "/v1/export").await.unwrap();
    assert!(
        export[0]["failed_attempts"].as_u64().unwrap() > 0,
        "delivery was tried while the receiver was down: {export}"
    );
    let (_, _running) = receiver.clone().start_on(receiver_port);
    let received = cluster
        .wait_for(
            Duration::from_secs(60),
            "every span of the 30 s outage",
            |_| {
                let got = receiver.with_target("/down/");
                async move {
                    let unique: std::collections::BTreeSet<(String, bool)> = got
                        .iter()
                        .map(|s| {
                            (
                                s.attributes["url.path"].clone(),
                                s.attributes.contains_key("client.address"),
                            )
                        })
                        .collect();
                    (unique.len() == 2 * requests).then_some(got)
                }
            },
        )
        .await;
    eprintln!(
        "30 s outage: {requests} requests, {} spans received for {} ({} duplicates from at-least-once retries)",
        received.len(),
        2 * requests,
        received.len() - 2 * requests
    );

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
