//! Hybrid observability: an app instrumented with the OpenTelemetry Python SDK sends its spans
//! to the node's OTLP receiver, the probes see the same requests, and the destination gets both
//! in one trace. Needs root (probes) and a Python with `opentelemetry-sdk` and
//! `opentelemetry-exporter-otlp-proto-http`, named by APIARY_TEST_OTEL_PYTHON or in target/otel-venv (.ci/run makes it);
//! skipped with one message otherwise.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::Cluster;
use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::json;

const APP: &str = r#"
import sys, http.server
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

provider = TracerProvider(resource=Resource.create({"service.name": "shop-app"}))
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=sys.argv[2] + "/v1/traces")))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("shop")

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        context = TraceContextTextMapPropagator().extract({k.lower(): v for k, v in self.headers.items()})
        with tracer.start_as_current_span("handle " + self.path, context=context, kind=trace.SpanKind.SERVER):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";
const CALLER_SPAN: &str = "eee19b7ec3c1b174";

#[derive(Debug, Clone)]
struct Seen {
    name: String,
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_spans_and_probe_spans_meet_in_one_trace() {
    let python = crate::common::venv_tool("APIARY_TEST_OTEL_PYTHON", "bin/python");
    let (true, Some(python)) = (crate::common::root(), python) else {
        eprintln!(
            "SKIPPED app_spans_and_probe_spans_meet_in_one_trace: needs root and APIARY_TEST_OTEL_PYTHON \
             (a python with opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http; .ci/run sets it)"
        );
        return;
    };

    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let sink = seen.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body.as_ref()).expect("OTLP");
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .unwrap_or_default()
                        .attributes
                        .iter()
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.clone())
                        .map(|v| format!("{:?}", v.value))
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            sink.lock().unwrap().push(Seen {
                                name: span.name,
                                service: service.clone(),
                                trace_id: hex(&span.trace_id),
                                span_id: hex(&span.span_id),
                                parent: hex(&span.parent_span_id),
                            });
                        }
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let cluster = Cluster::start_with(1, &[]).await;
    cluster.unbind_budgets().await;
    let (status, body) = cluster
        .set(
            0,
            "destination.main.endpoint",
            json!(format!("http://127.0.0.1:{collector_port}")),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let app_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(&python)
        .args([
            "-c",
            APP,
            &app_port.to_string(),
            &format!("http://{}", cluster.nodes[0].otlp),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the instrumented app");
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", app_port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the app did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let traceparent = format!("traceparent: 00-{TRACE_ID}-{CALLER_SPAN}-01");
    let status = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-H",
            &traceparent,
            &format!("http://127.0.0.1:{app_port}/basket/42"),
        ])
        .status()
        .unwrap();
    assert!(status.success());

    let in_trace = cluster
        .wait_for(
            Duration::from_secs(20),
            "the app's span and the probe's span in the trace",
            |_| {
                let spans: Vec<Seen> = seen
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| s.trace_id == TRACE_ID)
                    .cloned()
                    .collect();
                async move {
                    let app = spans.iter().any(|s| s.name == "handle /basket/42");
                    let probes = spans
                        .iter()
                        .filter(|s| s.name == "GET /basket/{id}")
                        .count();
                    (app && probes >= 2).then_some(spans)
                }
            },
        )
        .await;
    let _ = child.kill();
    let _ = child.wait();
    let app = in_trace
        .iter()
        .find(|s| s.name == "handle /basket/42")
        .unwrap();
    assert!(app.service.contains("shop-app"), "{app:?}");
    // curl's request, seen by the probe, is the caller span the traceparent names; the probe's
    // server span hangs under it, and the app's own span under the probe's server span: one
    // trace with the request's real nesting, not unrelated or sibling spans.
    let probe_spans: Vec<&Seen> = in_trace
        .iter()
        .filter(|s| s.name == "GET /basket/{id}")
        .collect();
    let client = probe_spans
        .iter()
        .find(|s| s.span_id == CALLER_SPAN)
        .expect("the probe's client span");
    assert!(client.parent.is_empty(), "{client:?}");
    let server = probe_spans
        .iter()
        .find(|s| s.span_id != CALLER_SPAN)
        .expect("the probe's server span");
    assert_eq!(server.parent, CALLER_SPAN, "{server:?}");
    assert_eq!(app.parent, server.span_id, "{app:?}");
}
