//! The probes in the real kernel, with real servers and clients in other processes. Needs root;
//! elsewhere each test is skipped with one message.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{config, free_port, get, load, root, rust_server, spans_on_port, wait_spans};
use apiary_config::ClusterConfig;
use apiary_probes::{spawn_reader, Observer, ProbeSet, ProbeState, Span, SpanKind};
use serde_json::json;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_listening(port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "server on {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn python_server(port: u16, tls: Option<&std::path::Path>) -> Server {
    let script = match tls {
        None => format!(
            "import http.server as h\nh.ThreadingHTTPServer(('127.0.0.1', {port}), h.SimpleHTTPRequestHandler).serve_forever()"
        ),
        Some(dir) => format!(
            "import http.server as h, ssl\ns = h.HTTPServer(('127.0.0.1', {port}), h.SimpleHTTPRequestHandler)\n\
             c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\nc.load_cert_chain('{0}/cert.pem', '{0}/key.pem')\n\
             s.socket = c.wrap_socket(s.socket, server_side=True)\ns.serve_forever()",
            dir.display()
        ),
    };
    run_python(&script, port)
}

/// A Python script that serves on `port`, once it listens.
fn run_python(script: &str, port: u16) -> Server {
    let child = Command::new("python3")
        .args(["-c", script])
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    wait_listening(port);
    Server(child)
}

/// A directory holding a self-signed `cert.pem` and `key.pem` for localhost, for a TLS test
/// (which needs OpenSSL 3's libssl on the machine).
fn self_signed() -> tempfile::TempDir {
    if apiary_probes::find_libssl().is_none() {
        panic!("no libssl.so.3 on this machine; .ci/run installs libssl3");
    }
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(dir.path().join("cert.pem"))
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
    dir
}

/// The `tls` probe's spans that `keep` takes, once `enough` holds for them (or after 10 s).
async fn wait_tls_spans(
    observer: &Observer,
    keep: impl Fn(&Span) -> bool,
    enough: impl Fn(&[Span]) -> bool,
) -> Vec<Span> {
    let start = Instant::now();
    loop {
        let spans: Vec<Span> = observer
            .recent_spans()
            .into_iter()
            .filter(|s| s.probe == "tls" && keep(s))
            .map(|s| (*s).clone())
            .collect();
        if enough(&spans) || start.elapsed() > Duration::from_secs(10) {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs curl; returns (status, seconds curl measured).
fn curl(url: &str, extra: &[&str]) -> (u16, f64) {
    let output = Command::new("curl")
        .args([
            "-s",
            "-k",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{time_total}",
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let mut parts = text.split_whitespace();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let seconds = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    (status, seconds)
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_spans_from_python_server_and_curl() {
    require_root!("http_spans_from_python_server_and_curl");
    let probes = load(&ClusterConfig::default());
    let port = free_port();
    let _server = python_server(port, None);
    let (status, seconds) = curl(
        &format!("http://127.0.0.1:{port}/users/123?x=1"),
        &["-H", &format!("traceparent: {TRACEPARENT}")],
    );
    assert_eq!(status, 404);
    let (status, _) = curl(&format!("http://127.0.0.1:{port}/"), &[]);
    assert_eq!(status, 200);

    let spans = wait_spans(&probes.observer, port, 4).await;
    let server: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server)
        .collect();
    let client: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client)
        .collect();
    assert_eq!(server.len(), 2, "{spans:#?}");
    assert_eq!(client.len(), 2, "{spans:#?}");
    let users = server
        .iter()
        .find(|s| s.expect_http().target.starts_with("/users"))
        .expect("server span");
    assert_eq!(users.expect_http().method, "GET");
    assert_eq!(users.expect_http().route, "/users/{id}");
    assert_eq!(users.expect_http().status, 404);
    assert!(users.service.starts_with("python"), "{}", users.service);
    assert_eq!(users.traceparent.as_deref(), Some(TRACEPARENT));
    assert_eq!(users.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(users.sample_rate, 1.0);
    assert_eq!(
        users.local.unwrap().to_string(),
        format!("127.0.0.1:{port}")
    );
    assert_eq!(users.peer.unwrap().ip().to_string(), "127.0.0.1");
    let curl_span = client
        .iter()
        .find(|s| s.expect_http().target.starts_with("/users"))
        .expect("client span");
    assert_eq!(curl_span.service, "curl");
    assert_eq!(curl_span.peer.unwrap().port(), port);
    assert!(curl_span.duration_ns > 0);
    assert!(
        (curl_span.duration_ns as f64) / 1e9 <= seconds,
        "client span {} ns longer than curl's own {seconds} s",
        curl_span.duration_ns
    );
    assert!(users.duration_ns <= curl_span.duration_ns);
    let root = server
        .iter()
        .find(|s| s.expect_http().target == "/")
        .unwrap();
    assert_eq!(
        (root.expect_http().status, root.expect_http().route.as_str()),
        (200, "/")
    );

    let reports = probes.set.reports();
    let http = reports.iter().find(|r| r.name == "http").unwrap();
    assert_eq!(http.state, ProbeState::Attached);
    assert!(http.runs > 0 && http.run_time_ns > 0, "{http:?}");
    assert!(http.events >= 4, "{http:?}");
    for report in &reports {
        assert_ne!(report.state, ProbeState::Failed, "{report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_and_disabling_change_live_without_reload() {
    require_root!("sampling_and_disabling_change_live_without_reload");
    let port = rust_server();
    let mut probes = load(&config(&[(
        "probe.http.filters.include_ports",
        json!([port]),
    )]));
    // RED metrics see every request, sampled or not.
    let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tap = counted.clone();
    probes.observer.set_request_tap(Box::new(move |span| {
        if span.kind == SpanKind::Server
            && span.expect_http().route == "/items/{id}"
            && span.expect_http().status == 200
        {
            tap.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }));
    for _ in 0..20 {
        get(port, "/warmup");
    }
    // Full sampling sees every request (server and client side).
    let spans = wait_spans(&probes.observer, port, 40).await;
    assert_eq!(spans.len(), 40);

    probes
        .set
        .apply(&config(&[
            ("probe.http.filters.include_ports", json!([port])),
            ("probe.http.sample_rate", json!(0.1)),
        ]))
        .unwrap();
    let before = probes
        .observer
        .spans_total
        .load(std::sync::atomic::Ordering::Relaxed);
    let requests = 2000;
    let client = tokio::task::spawn_blocking(move || {
        for i in 0..requests {
            get(port, &format!("/items/{i}"));
        }
    });
    client.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server_spans = spans_on_port(&probes.observer, port)
        .into_iter()
        .filter(|s| s.kind == SpanKind::Server && s.expect_http().route == "/items/{id}")
        .collect::<Vec<_>>();
    let kept = server_spans.len() as f64 / requests as f64;
    assert!(
        (0.07..=0.13).contains(&kept),
        "kept {kept} of server requests at sample_rate 0.1"
    );
    assert!(server_spans
        .iter()
        .all(|s| (s.sample_rate - 0.1).abs() < 1e-6 && s.sampled));
    assert_eq!(
        counted.load(std::sync::atomic::Ordering::Relaxed),
        requests,
        "every request counts for RED metrics whatever the sampling"
    );
    let after = probes
        .observer
        .spans_total
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(after > before);

    probes
        .set
        .apply(&config(&[
            ("probe.http.filters.include_ports", json!([port])),
            ("probe.http.enabled", json!(false)),
        ]))
        .unwrap();
    let disabled_at = probes
        .observer
        .spans_total
        .load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..100 {
        get(port, "/off");
    }
    // Everything the kernel wrote for those requests is read before counting.
    probes.observer.sync(Duration::from_secs(5)).await;
    let new_spans = spans_on_port(&probes.observer, port)
        .into_iter()
        .filter(|s| s.expect_http().target == "/off")
        .count();
    assert_eq!(new_spans, 0, "http disabled but spans still came");
    let _ = disabled_at;
    let http = probes
        .set
        .reports()
        .into_iter()
        .find(|r| r.name == "http")
        .unwrap();
    assert_eq!(http.state, ProbeState::Disabled);

    // Enabled again: the same programs, never reloaded, deliver at once.
    probes
        .set
        .apply(&config(&[(
            "probe.http.filters.include_ports",
            json!([port]),
        )]))
        .unwrap();
    get(port, "/back");
    let back = wait_spans(&probes.observer, port, 0).await;
    let start = Instant::now();
    let mut seen = back.iter().any(|s| s.expect_http().target == "/back");
    while !seen && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = spans_on_port(&probes.observer, port)
            .iter()
            .any(|s| s.expect_http().target == "/back");
    }
    assert!(seen, "no span after re-enabling");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_and_pid_filters_keep_only_what_they_name() {
    require_root!("port_and_pid_filters_keep_only_what_they_name");
    let (kept_port, other_port) = (free_port(), free_port());
    let kept_server = python_server(kept_port, None);
    let _other_server = python_server(other_port, None);
    let probes = load(&config(&[
        ("probe.http.filters.include_ports", json!([kept_port])),
        (
            "probe.http.filters.include_pids",
            json!([kept_server.0.id()]),
        ),
    ]));
    curl(&format!("http://127.0.0.1:{kept_port}/a"), &[]);
    curl(&format!("http://127.0.0.1:{other_port}/b"), &[]);
    wait_spans(&probes.observer, kept_port, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Only the named server process on the named port: no curl (other pid), no other port.
    let kept: Vec<Span> = spans_on_port(&probes.observer, kept_port);
    assert_eq!(kept.len(), 1, "{kept:#?}");
    assert_eq!(kept[0].kind, SpanKind::Server);
    assert_eq!(kept[0].pid, kept_server.0.id());
    assert!(spans_on_port(&probes.observer, other_port).is_empty());
    let http = probes
        .set
        .reports()
        .into_iter()
        .find(|r| r.name == "http")
        .unwrap();
    assert!(http.filtered > 0, "{http:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_flow_bytes_match_what_was_sent() {
    require_root!("tcp_flow_bytes_match_what_was_sent");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let probes = load(&config(&[(
        "probe.tcp.filters.include_ports",
        json!([port]),
    )]));
    let (sent, answered) = (123_457usize, 4_321usize);
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut got = vec![0u8; sent];
        stream.read_exact(&mut got).unwrap();
        stream.write_all(&vec![7u8; answered]).unwrap();
    });
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.write_all(&vec![1u8; sent]).unwrap();
    let mut back = vec![0u8; answered];
    client.read_exact(&mut back).unwrap();
    drop(client);
    server.join().unwrap();

    let start = Instant::now();
    loop {
        let flows = probes.observer.recent_flows();
        let client_flow = flows
            .iter()
            .find(|f| f.remote.map(|a| a.port()) == Some(port));
        // Not the listener (which has no remote port) but the accepted connection.
        let server_flow = flows.iter().find(|f| {
            f.local.map(|a| a.port()) == Some(port) && f.remote.map(|a| a.port()) != Some(0)
        });
        if let (Some(client_flow), Some(server_flow)) = (client_flow, server_flow) {
            assert_eq!(client_flow.bytes_sent, sent as u64, "{client_flow:?}");
            assert_eq!(
                client_flow.bytes_received, answered as u64,
                "{client_flow:?}"
            );
            assert_eq!(server_flow.bytes_received, sent as u64, "{server_flow:?}");
            assert_eq!(server_flow.bytes_sent, answered as u64, "{server_flow:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no closed flow for port {port}: {flows:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_spans_through_the_tls_probe() {
    require_root!("https_spans_through_the_tls_probe");
    let dir = self_signed();
    let port = free_port();
    let probes = load(&config(&[("probe.http.enabled", json!(false))]));
    let _server = python_server(port, Some(dir.path()));
    let (status, seconds) = curl(
        &format!("https://127.0.0.1:{port}/secure/42"),
        &["-H", &format!("traceparent: {TRACEPARENT}")],
    );
    assert_eq!(status, 404);
    let tls_spans = wait_tls_spans(
        &probes.observer,
        |s| s.expect_http().target == "/secure/42",
        |spans| spans.len() >= 2,
    )
    .await;
    let server = tls_spans
        .iter()
        .find(|s| s.kind == SpanKind::Server)
        .expect("tls server span");
    let client = tls_spans
        .iter()
        .find(|s| s.kind == SpanKind::Client)
        .expect("tls client span");
    assert_eq!(
        (
            server.expect_http().method.as_str(),
            server.expect_http().status,
            server.expect_http().route.as_str()
        ),
        ("GET", 404, "/secure/{id}")
    );
    assert_eq!(server.traceparent.as_deref(), Some(TRACEPARENT));
    assert_eq!(client.service, "curl");
    assert!((client.duration_ns as f64) / 1e9 <= seconds);
    let tls = probes
        .set
        .reports()
        .into_iter()
        .find(|r| r.name == "tls")
        .unwrap();
    assert_eq!(tls.state, ProbeState::Attached, "{tls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_that_cannot_attach_is_reported_and_the_others_run() {
    require_root!("a_probe_that_cannot_attach_is_reported_and_the_others_run");
    let missing = std::path::Path::new("/nonexistent/apiary/libssl.so.3");
    let mut set = ProbeSet::load_with_libssl(&[], Some(missing), apiary_probes::DEFAULT_RING_BYTES)
        .expect("the other probes load");
    set.apply(&ClusterConfig::default()).unwrap();
    let observer = Arc::new(Observer::default());
    spawn_reader(set.take_events().unwrap(), observer.clone()).unwrap();
    let reports = set.reports();
    let tls = reports.iter().find(|r| r.name == "tls").unwrap();
    assert_eq!(tls.state, ProbeState::Failed);
    assert!(
        tls.reason
            .as_deref()
            .unwrap()
            .contains("/nonexistent/apiary/libssl.so.3"),
        "{tls:?}"
    );
    for name in [
        "http", "tcp", "process", "redis", "postgres", "mysql", "http2",
    ] {
        let report = reports.iter().find(|r| r.name == name).unwrap();
        assert_eq!(report.state, ProbeState::Attached, "{report:?}");
    }
    let port = free_port();
    let _server = python_server(port, None);
    curl(&format!("http://127.0.0.1:{port}/still/1"), &[]);
    let spans = wait_spans(&observer, port, 2).await;
    assert_eq!(spans.len(), 2, "http kept working: {spans:#?}");
}

/// The probes remember each connection (addresses, sampling) by process and fd. When an fd is
/// made to point at another connection without a close (`dup2`), its next request must carry
/// the new connection's addresses, not the remembered ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_fd_reports_its_new_connection() {
    require_root!("a_reused_fd_reports_its_new_connection");
    use std::os::fd::AsRawFd;
    let (first_port, second_port) = (rust_server(), rust_server());
    let probes = load(&config(&[]));
    let ask = |stream: &mut TcpStream, path: &str| {
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut response = [0u8; 256];
        let _ = stream.read(&mut response);
    };
    let mut first = TcpStream::connect(("127.0.0.1", first_port)).unwrap();
    ask(&mut first, "/before-dup2");
    wait_spans(&probes.observer, first_port, 2).await;

    let second = TcpStream::connect(("127.0.0.1", second_port)).unwrap();
    // SAFETY: both fds are open and owned by live streams; dup2 replaces `first`'s fd with
    // a copy of `second`'s, which `first` then owns (and closes on drop).
    assert!(unsafe { libc::dup2(second.as_raw_fd(), first.as_raw_fd()) } >= 0);
    ask(&mut first, "/after-dup2");
    let spans = wait_spans(&probes.observer, second_port, 2).await;
    let client = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client && s.expect_http().target == "/after-dup2")
        .unwrap_or_else(|| panic!("no client span for /after-dup2 on the second port: {spans:#?}"));
    assert_eq!(
        client.peer.map(|a| a.port()),
        Some(second_port),
        "{client:#?}"
    );
    assert!(
        spans_on_port(&probes.observer, first_port)
            .iter()
            .all(|s| s.expect_http().target != "/after-dup2"),
        "the request after dup2 was reported on the first connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_tls_connection_leaves_nothing_to_the_next() {
    require_root!("a_freed_tls_connection_leaves_nothing_to_the_next");
    let dir = self_signed();
    let port = free_port();
    // One connection at a time, so the next SSL object is likely to get the freed one's
    // address; /drop reads the request and closes without answering.
    let script = format!(
        "import http.server as h, ssl\n\
         class H(h.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       if self.path.startswith('/drop'):\n\
         \x20           self.close_connection = True\n\
         \x20           return\n\
         \x20       self.send_response(200)\n\
         \x20       self.send_header('Content-Length', '2')\n\
         \x20       self.end_headers()\n\
         \x20       self.wfile.write(b'ok')\n\
         \x20   def log_message(self, *args): pass\n\
         s = h.HTTPServer(('127.0.0.1', {port}), H)\n\
         c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
         c.load_cert_chain('{0}/cert.pem', '{0}/key.pem')\n\
         s.socket = c.wrap_socket(s.socket, server_side=True)\n\
         s.serve_forever()",
        dir.path().display()
    );
    let probes = load(&config(&[("probe.http.enabled", json!(false))]));
    let _server = run_python(&script, port);
    for round in 0..3 {
        curl(
            &format!("https://127.0.0.1:{port}/drop/{round}"),
            &["-m", "5"],
        );
        let (status, _) = curl(&format!("https://127.0.0.1:{port}/ok/{round}"), &[]);
        assert_eq!(status, 200);
    }
    let server_spans = wait_tls_spans(
        &probes.observer,
        |s| s.kind == SpanKind::Server,
        |spans| {
            spans
                .iter()
                .filter(|s| s.expect_http().target.starts_with("/ok/"))
                .count()
                >= 3
        },
    )
    .await;
    // Each answered request has its own response; no unanswered one took another's.
    for round in 0..3 {
        let target = format!("/ok/{round}");
        assert!(
            server_spans
                .iter()
                .any(|s| s.expect_http().target == target && s.expect_http().status == 200),
            "no server span for {target} with its 200: {server_spans:#?}"
        );
    }
    assert!(
        server_spans
            .iter()
            .all(|s| !s.expect_http().target.starts_with("/drop/")),
        "an unanswered request was paired with the next connection's response: {server_spans:#?}"
    );
}
