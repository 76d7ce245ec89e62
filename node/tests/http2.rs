//! The http2 probe against real servers and clients on private ports: nginx with `http2` on a
//! plaintext port and on TLS driven by h2load (Debian `nginx`, `nghttp2-client`; TLS through the
//! tls probe's OpenSSL uprobes on both), and a Python grpcio
//! server and client (PyPI `grpcio`, in the workspace's venv). h2load's requests give exactly
//! one span each, on both sides, with path and status; gRPC calls give their method and status
//! (a non-OK one too), unary and server-streaming, and 16 concurrent calls on one connection
//! pair by stream id. Bytes that are not HTTP/2 after a preface count as unparsed. Needs root;
//! skipped with one message otherwise, or when a server is not installed.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::servers::{free_port, nginx_h2};
use crate::common::{red_count, red_rows, root, venv_tool, Cluster};

const H2LOAD_REQUESTS: u64 = 200;
const H2LOAD_MISSING: u64 = 20;
const H2LOAD_TLS_REQUESTS: u64 = 100;

fn h2load(url: &str, requests: u64) {
    let out = Command::new("h2load")
        .args(["-n", &requests.to_string(), "-c", "2", "-m", "4", url])
        .output()
        .expect("h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{requests} done")),
        "h2load did not finish its requests: {text}"
    );
}

fn probe_unparsed(probes: &Value) -> u64 {
    probes
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http2")
        .and_then(|p| p["unparsed"].as_u64())
        .expect("the http2 probe in /v1/probes")
}

/// Waits until `count(rows)` reaches `want`, then checks it stays there (no span twice).
async fn red_reaches(
    cluster: &Cluster,
    protocol: &str,
    what: &str,
    want: u64,
    count: impl Fn(&crate::common::RedRows) -> u64,
) {
    let start = Instant::now();
    let mut got = 0;
    while start.elapsed() < Duration::from_secs(20) {
        got = count(&red_rows(cluster, protocol).await);
        if got >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    got = got.max(count(&red_rows(cluster, protocol).await));
    assert_eq!(got, want, "{what}: {:?}", red_rows(cluster, protocol).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_http2_requests_give_one_span_each_in_cleartext_and_tls() {
    let name = "nginx_http2_requests_give_one_span_each_in_cleartext_and_tls";
    if !root() {
        eprintln!("SKIPPED {name}: needs root to load eBPF (CI runs it as root)");
        return;
    }
    if Command::new("h2load").arg("--version").output().is_err()
        || Command::new("nginx").arg("-v").output().is_err()
    {
        eprintln!("SKIPPED {name}: nginx or h2load is not installed (apt-get install nginx nghttp2-client)");
        return;
    }
    let cluster = Cluster::start_with(1, &[]).await;
    cluster.unbind_budgets().await;
    let dir = tempfile::tempdir().unwrap();
    let (_nginx, port, tls_port) = nginx_h2(dir.path());

    h2load(
        &format!("http://127.0.0.1:{port}/api/items/42"),
        H2LOAD_REQUESTS,
    );
    h2load(&format!("http://127.0.0.1:{port}/missing"), H2LOAD_MISSING);
    for (kind, service) in [("server", "nginx"), ("client", "h2load")] {
        red_reaches(
            &cluster,
            "http2",
            &format!("{service}'s GETs of /api/items/{{id}}"),
            H2LOAD_REQUESTS,
            |rows| red_count(rows, kind, service, "GET", "/api/items/{id}"),
        )
        .await;
        red_reaches(
            &cluster,
            "http2",
            &format!("{service}'s 404s"),
            H2LOAD_MISSING,
            |rows| red_count(rows, kind, service, "GET", "/missing"),
        )
        .await;
    }
    let rows = red_rows(&cluster, "http2").await;
    let errors = |route: &str| {
        rows.iter()
            .filter(|((k, s, _, r), _)| k == "client" && s == "h2load" && r == route)
            .map(|(_, (_, errors))| errors)
            .sum::<u64>()
    };
    assert_eq!(
        (errors("/api/items/{id}"), errors("/missing")),
        (0, H2LOAD_MISSING)
    );

    // Over TLS (ALPN h2): the plaintext from the tls probe's OpenSSL uprobes, on both sides.
    h2load(
        &format!("https://127.0.0.1:{tls_port}/api/secure/7"),
        H2LOAD_TLS_REQUESTS,
    );
    for (kind, service) in [("server", "nginx"), ("client", "h2load")] {
        red_reaches(
            &cluster,
            "http2",
            &format!("{service}'s GETs of /api/secure/{{id}} over TLS"),
            H2LOAD_TLS_REQUESTS,
            |rows| red_count(rows, kind, service, "GET", "/api/secure/{id}"),
        )
        .await;
    }

    let spans = cluster
        .get(0, "/v1/spans?limit=4096&service=nginx")
        .await
        .unwrap();
    let span = spans
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["protocol"] == "http2" && s["status"] == 200)
        .cloned()
        .expect("an nginx HTTP/2 span");
    assert_eq!(span["target"], "/api/items/42", "{span}");
    assert_eq!(span["method"], "GET", "{span}");
    assert_eq!(span["kind"], "server", "{span}");
    let metrics = cluster.metrics(0).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("apiary_http2") && l.contains("route=\"/api/items/{id}\"")),
        "no HTTP/2 RED in /metrics"
    );

    // Not HTTP/2 after a preface (HEADERS on stream 0): counted, and nginx goes on serving.
    let before = probe_unparsed(&cluster.get(0, "/v1/probes").await.unwrap());
    let status = Command::new("python3")
        .args([
            "-c",
            "import socket,sys; s=socket.create_connection(('127.0.0.1',int(sys.argv[1]))); \
             s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n'+b'\\0\\0\\x07\\x01\\x05\\0\\0\\0\\0garbage'); \
             s.settimeout(5); s.recv(100); s.close()",
            &port.to_string(),
        ])
        .status()
        .expect("python3");
    assert!(status.success());
    cluster
        .wait_for(
            Duration::from_secs(10),
            "garbage counted as unparsed",
            |c| async move {
                let probes = c.get(0, "/v1/probes").await.ok()?;
                (probe_unparsed(&probes) > before).then_some(())
            },
        )
        .await;
    h2load(&format!("http://127.0.0.1:{port}/api/items/43"), 10);

    // The probe off, live through the maps: nothing more is counted.
    let (status, body) = cluster.set(0, "probe.http2.enabled", json!(false)).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let count = |rows: &crate::common::RedRows| {
        red_count(rows, "server", "nginx", "GET", "/api/items/{id}")
    };
    let before = count(&red_rows(&cluster, "http2").await);
    h2load(&format!("http://127.0.0.1:{port}/api/items/44"), 20);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count(&red_rows(&cluster, "http2").await), before);
}

/// A grpcio server with three methods on raw bytes (no generated code) and a client calling
/// them: `demo.Echo/Say` 20 times, then 16 at once on the same channel (one connection),
/// `Missing` 5 times (NOT_FOUND), the server-streaming `List` 4 times (3 messages each).
const GRPC: &str = r#"
import grpc, sys
from concurrent import futures
port = int(sys.argv[1])
def say(request, context):
    return request
def missing(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
def listing(request, context):
    for i in range(3):
        yield bytes([i])
handlers = grpc.method_handlers_generic_handler("demo.Echo", {
    "Say": grpc.unary_unary_rpc_method_handler(say),
    "Missing": grpc.unary_unary_rpc_method_handler(missing),
    "List": grpc.unary_stream_rpc_method_handler(listing),
})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
server.add_generic_rpc_handlers((handlers,))
server.add_insecure_port(f"127.0.0.1:{port}")
server.start()
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    say_call = channel.unary_unary("/demo.Echo/Say")
    for i in range(20):
        assert say_call(b"hello %d" % i, timeout=10) == b"hello %d" % i
    calls = [say_call.future(b"x" * 100, timeout=10) for _ in range(16)]
    assert all(c.result() == b"x" * 100 for c in calls)
    missing_call = channel.unary_unary("/demo.Echo/Missing")
    for _ in range(5):
        try:
            missing_call(b"?", timeout=10)
            raise SystemExit("Missing succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, e
    list_call = channel.unary_stream("/demo.Echo/List")
    for _ in range(4):
        assert list(list_call(b"", timeout=10)) == [b"\0", b"\1", b"\2"]
server.stop(1).wait()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_give_method_and_status() {
    let name = "grpc_calls_give_method_and_status";
    if !root() {
        eprintln!("SKIPPED {name}: needs root to load eBPF (CI runs it as root)");
        return;
    }
    let Some(python) = venv_tool("APIARY_TEST_OTEL_PYTHON", "bin/python") else {
        eprintln!(
            "SKIPPED {name}: no Python with grpcio (.ci/run installs it in target/otel-venv)"
        );
        return;
    };
    let has_grpc = Command::new(&python)
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_grpc {
        eprintln!(
            "SKIPPED {name}: {} cannot import grpc (pip install grpcio)",
            python.display()
        );
        return;
    }
    let cluster = Cluster::start_with(1, &[]).await;
    cluster.unbind_budgets().await;
    let port = free_port();
    let out = Command::new(&python)
        .args(["-c", GRPC, &port.to_string()])
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "the gRPC script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = |kind: &'static str, method: &'static str| {
        move |rows: &crate::common::RedRows| {
            rows.iter()
                .filter(|((k, _, o, r), _)| k == kind && o == "demo.Echo" && r == method)
                .map(|(_, (count, _))| count)
                .sum::<u64>()
        }
    };
    for kind in ["server", "client"] {
        red_reaches(
            &cluster,
            "grpc",
            &format!("{kind} Say"),
            36,
            calls(kind, "Say"),
        )
        .await;
        red_reaches(
            &cluster,
            "grpc",
            &format!("{kind} Missing"),
            5,
            calls(kind, "Missing"),
        )
        .await;
        red_reaches(
            &cluster,
            "grpc",
            &format!("{kind} List"),
            4,
            calls(kind, "List"),
        )
        .await;
    }
    // NOT_FOUND fails the client's call, not the server.
    let rows = red_rows(&cluster, "grpc").await;
    let errors = |kind: &str, method: &str| {
        rows.iter()
            .filter(|((k, _, _, r), _)| k == kind && r == method)
            .map(|(_, (_, errors))| errors)
            .sum::<u64>()
    };
    assert_eq!(
        (
            errors("client", "Missing"),
            errors("server", "Missing"),
            errors("client", "Say")
        ),
        (5, 0, 0)
    );
    let spans = cluster.get(0, "/v1/spans?limit=4096").await.unwrap();
    let missing = spans
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["protocol"] == "grpc" && s["rpc_method"] == "Missing")
        .cloned()
        .expect("a span of Missing");
    assert_eq!(missing["grpc_status"], 5, "{missing}");
    assert_eq!(missing["rpc_service"], "demo.Echo", "{missing}");
}
