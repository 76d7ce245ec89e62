//! Against a real OpenTelemetry collector in separate processes: `rotel` (a Rust OTLP collector
//! from PyPI, named by APIARY_TEST_ROTEL; .ci/run installs it), once over OTLP/gRPC and once over
//! OTLP/HTTP. The probes see real HTTP requests; each collector prints the spans and the RED
//! histogram it received, and a receiver on the official protobuf definitions checks the
//! histogram counts. Needs root (probes); skipped with one message otherwise.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{curl, python_server, root, Cluster, Collector, Server};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message;
use serde_json::json;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A rotel collector printing what it receives; returns (process, gRPC port, HTTP port, log).
fn rotel(
    binary: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
) -> (Server, u16, u16, PathBuf) {
    let (grpc, http) = (free_port(), free_port());
    let log = dir.join(format!("{name}.log"));
    let child = Command::new(binary)
        .args([
            "start",
            "--otlp-grpc-endpoint",
            &format!("127.0.0.1:{grpc}"),
            "--otlp-http-endpoint",
            &format!("127.0.0.1:{http}"),
            "--exporter",
            "blackhole",
            "--debug-log",
            "traces",
            "--debug-log",
            "metrics",
            "--debug-log-verbosity",
            "detailed",
        ])
        .env("NO_COLOR", "1")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rotel");
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", grpc)).is_err()
        || std::net::TcpStream::connect(("127.0.0.1", http)).is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "rotel did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (Server(child), grpc, http, log)
}

/// Count of the server-side RED histogram for `route` in the newest metrics request.
fn histogram_count(collector: &Collector, route: &str) -> Option<u64> {
    let newest = collector.bodies("/v1/metrics").pop()?;
    let request = ExportMetricsServiceRequest::decode(newest.as_slice()).ok()?;
    let mut count = None;
    for metric in request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .filter(|m| m.name == "http.server.request.duration" && m.unit == "s")
    {
        let Some(Data::Histogram(histogram)) = &metric.data else {
            continue;
        };
        for point in &histogram.data_points {
            let on_route = point
                .attributes
                .iter()
                .any(|kv| kv.key == "http.route" && format!("{:?}", kv.value).contains(route));
            if on_route {
                assert_eq!(point.bucket_counts.iter().sum::<u64>(), point.count);
                *count.get_or_insert(0) += point.count;
            }
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_red_metrics_reach_rotel_over_grpc_and_http() {
    let Some(binary) = crate::common::venv_tool(
        "APIARY_TEST_ROTEL",
        "lib/python3*/site-packages/rotel/rotel-agent",
    ) else {
        eprintln!("SKIPPED spans_and_red_metrics_reach_rotel_over_grpc_and_http: set APIARY_TEST_ROTEL to a rotel-agent binary (pip install rotel; .ci/run puts it in target/otel-venv)");
        return;
    };
    if !root() {
        eprintln!("SKIPPED spans_and_red_metrics_reach_rotel_over_grpc_and_http: needs root for the probes (CI runs it)");
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let (_grpc_rotel, grpc_port, _, grpc_log) = rotel(&binary, logs.path(), "grpc");
    let (_http_rotel, _, http_port, http_log) = rotel(&binary, logs.path(), "http");
    let checker = Collector::default();
    let checker_port = checker.start().await;

    let cluster = Cluster::start_with(1, &["--metrics-interval", "1s"]).await;
    cluster.unbind_budgets().await;
    let settings = json!({"changes": [
        {"key": "destination.viagrpc.endpoint", "value": format!("http://127.0.0.1:{grpc_port}")},
        {"key": "destination.viagrpc.protocol", "value": "grpc"},
        {"key": "destination.viahttp.endpoint", "value": format!("http://127.0.0.1:{http_port}")},
        {"key": "destination.check.endpoint", "value": format!("http://127.0.0.1:{checker_port}")},
    ]});
    let (status, body) = cluster
        .write(0, reqwest::Method::PATCH, "/v1/config", settings)
        .await;
    assert_eq!(status, 200, "{body}");

    let (_server, port) = python_server();
    let requests = 7;
    for i in 0..requests {
        curl(&format!("http://127.0.0.1:{port}/rotel/{i}"));
    }

    for (protocol, log) in [("gRPC", &grpc_log), ("HTTP", &http_log)] {
        let text = cluster
            .wait_for(
                Duration::from_secs(30),
                &format!("spans and the RED histogram at rotel over {protocol}"),
                |_| {
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    async move {
                        (text.contains("GET /rotel/{id}")
                            && text.contains("http.server.request.duration"))
                        .then_some(text)
                    }
                },
            )
            .await;
        for expected in [
            "service.name: Str(python",
            "apiary.node: Str(n0)",
            "http.route: Str(/rotel/{id})",
            "http.response.status_code: Int(404)",
            "SPAN_KIND_SERVER",
            "SPAN_KIND_CLIENT",
        ] {
            assert!(
                text.contains(expected),
                "rotel over {protocol} lacks {expected:?}:\n{text}"
            );
        }
    }
    let count = cluster
        .wait_for(
            Duration::from_secs(20),
            "the histogram counting every request",
            |_| {
                let count = histogram_count(&checker, "/rotel/{id}");
                async move { (count == Some(requests)).then_some(count) }
            },
        )
        .await;
    assert_eq!(count, Some(requests));

    let export = cluster.get(0, "/v1/export").await.unwrap();
    for row in export.as_array().unwrap() {
        assert_eq!(row["state"], "running", "{row}");
        assert!(row["delivered_items"].as_u64().unwrap() > 0, "{row}");
    }
    let grpc_row = export
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "viagrpc")
        .unwrap();
    assert_eq!(grpc_row["protocol"], "grpc");
}
