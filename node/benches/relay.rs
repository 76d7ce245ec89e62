//! Relay throughput: the same OTLP/HTTP load (`relay/loadgen.rs`: pre-encoded 500-span requests
//! over several connections, retried after Retry-After when refused) through (a) the `rotel`
//! collector relaying to a sink, and (b) an `apiary node --no-probes` relaying to the same sink,
//! in alternating rounds of one run. The sink counts spans at the protobuf wire level (in this
//! process; rotel's export is gzip, which it inflates first). Per round: spans delivered to the sink per second (from the first request until the
//! relay's backlog is delivered), the relay process's CPU per delivered span (/proc), its peak
//! RSS (VmHWM), and spans it acknowledged that never reached the sink. Medians, and ratios.
//!
//! `cargo bench -p apiary --bench relay`; APIARY_BENCH_ROUNDS (3), APIARY_BENCH_SECONDS (10),
//! APIARY_BENCH_CONNECTIONS (4); `rotel-agent` from APIARY_ROTEL or the workspace's
//! target/otel-venv (`pip install rotel`).

#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "relay/loadgen.rs"]
mod loadgen;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary_pipeline::otlp::wire;
use apiary_pipeline::Signal;
use apiary_tuning::process_cpu_seconds;
use axum::body::Bytes;
use axum::http::StatusCode;

const SPANS_PER_REQUEST: usize = 500;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The sink: OTLP/HTTP traces (gzip inflated), counted at the wire level, always 200.
async fn start_sink(spans: Arc<AtomicU64>) -> u16 {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let spans = spans.clone();
            async move {
                let gzip = headers
                    .get("content-encoding")
                    .is_some_and(|v| v.as_bytes() == b"gzip");
                let body = if gzip {
                    let mut inflated = Vec::new();
                    let mut decoder = flate2::read::GzDecoder::new(body.as_ref());
                    if std::io::Read::read_to_end(&mut decoder, &mut inflated).is_err() {
                        return StatusCode::BAD_REQUEST;
                    }
                    Bytes::from(inflated)
                } else {
                    body
                };
                match wire::scan(Signal::Traces, &body, |_, _| {}) {
                    Ok(n) => {
                        spans.fetch_add(n, Ordering::Relaxed);
                        StatusCode::OK
                    }
                    Err(_) => StatusCode::BAD_REQUEST,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

#[derive(Clone, Copy, PartialEq)]
enum Relay {
    Rotel,
    Node,
}

impl Relay {
    fn name(self) -> &'static str {
        match self {
            Relay::Rotel => "rotel (otlp in → otlp/http out)",
            Relay::Node => "apiary node --no-probes",
        }
    }
}

struct Running {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_relay(relay: Relay, sink_port: u16) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let (quic, api, http, grpc) = common::free_ports();
    let sink = format!("http://127.0.0.1:{sink_port}");
    let child = match relay {
        Relay::Rotel => {
            let binary = common::venv_tool(
                "APIARY_ROTEL",
                "lib/python3*/site-packages/rotel/rotel-agent",
            )
            .expect("rotel-agent: set APIARY_ROTEL or pip install rotel into target/otel-venv");
            Command::new(binary)
                .args([
                    "start",
                    "--otlp-http-endpoint",
                    &format!("127.0.0.1:{http}"),
                ])
                .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
                .args(["--exporter", "otlp", "--otlp-exporter-protocol", "http"])
                .args(["--otlp-exporter-endpoint", &sink])
                // The node sends uncompressed. Asked the same, this rotel (0.0.1a15 from PyPI) still
                // gzips its OTLP/HTTP export, so the sink inflates, and rotel's CPU includes gzip.
                .args(["--otlp-exporter-compression", "none"])
                .arg("--pid-file")
                .arg(dir.path().join("rotel.pid"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start rotel-agent")
        }
        Relay::Node => Command::new(common::BIN)
            .args(["node", "--no-probes", "--name", "relay"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", &format!("127.0.0.1:{quic}")])
            .args(["--api", &format!("127.0.0.1:{api}")])
            .args(["--otlp-http", &format!("127.0.0.1:{http}")])
            .args(["--otlp-grpc", "off"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &sink)
            .env("APIARY_LOG", "warn")
            .env_remove("APIARY_NICE")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start apiary node"),
    };
    Running {
        child,
        url: format!("http://127.0.0.1:{http}/v1/traces"),
        _dir: dir,
    }
}

fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

struct Row {
    accepted: u64,
    delivered: u64,
    seconds: f64,
    cpu: f64,
    rss_mib: f64,
    refusals: u64,
}

impl Row {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.seconds
    }
    fn cpu_us_per_span(&self) -> f64 {
        self.cpu / self.delivered.max(1) as f64 * 1e6
    }
}

async fn round(relay: Relay, requests: Arc<Vec<Vec<u8>>>, seconds: u64, connections: usize) -> Row {
    let sink_spans = Arc::new(AtomicU64::new(0));
    let sink_port = start_sink(sink_spans.clone()).await;
    let running = start_relay(relay, sink_port);
    let pid = running.child.id();
    // Ready once it answers a request (not counted: the round starts after it).
    let client = reqwest::Client::new();
    let ready = Instant::now();
    loop {
        let answer = client
            .post(&running.url)
            .header("content-type", "application/x-protobuf")
            .body(requests[0].clone())
            .send()
            .await;
        if answer.is_ok_and(|a| a.status().is_success()) {
            break;
        }
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "{} did not start",
            relay.name()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while sink_spans.load(Ordering::Relaxed) < SPANS_PER_REQUEST as u64 {
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "{} delivered nothing to the sink within 30 s: check its exporter settings",
            relay.name()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let base = sink_spans.load(Ordering::Relaxed);
    let answers = Arc::new(loadgen::Answers::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (start, cpu_start) = (Instant::now(), process_cpu_seconds(&pid.to_string()));
    let load = tokio::spawn(loadgen::run(
        running.url.clone(),
        connections,
        requests,
        SPANS_PER_REQUEST as u64,
        stop.clone(),
        answers.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let accepted = answers.accepted_spans.load(Ordering::Relaxed);
    // Until the relay delivered what it took, or made no progress for 5 s.
    let (mut last, mut last_change) = (0, Instant::now());
    let mut done = Instant::now();
    loop {
        let delivered = sink_spans.load(Ordering::Relaxed) - base;
        if delivered != last {
            (last, last_change, done) = (delivered, Instant::now(), Instant::now());
        }
        if delivered >= accepted || last_change.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Row {
        accepted,
        delivered: last,
        seconds: done.duration_since(start).as_secs_f64(),
        cpu: process_cpu_seconds(&pid.to_string()) - cpu_start,
        rss_mib: peak_rss_mib(pid),
        refusals: answers.refusals.load(Ordering::Relaxed),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this too: keep that a
    // quick smoke run (one short round).
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = if quick {
        1
    } else {
        setting("APIARY_BENCH_ROUNDS", 3) as usize
    };
    let seconds = if quick {
        1
    } else {
        setting("APIARY_BENCH_SECONDS", 10)
    };
    let rotel = common::venv_tool(
        "APIARY_ROTEL",
        "lib/python3*/site-packages/rotel/rotel-agent",
    );
    let relays: Vec<Relay> = if rotel.is_some() {
        vec![Relay::Rotel, Relay::Node]
    } else {
        println!("rotel-agent not found (APIARY_ROTEL, or pip install rotel into target/otel-venv): the node alone");
        vec![Relay::Node]
    };
    let connections = setting("APIARY_BENCH_CONNECTIONS", 4) as usize;
    let requests = Arc::new(loadgen::encoded_requests(64, SPANS_PER_REQUEST));
    println!(
        "relay bench: {rounds} alternating rounds of {seconds} s, {connections} connections, \
         {SPANS_PER_REQUEST}-span OTLP/HTTP requests ({} bytes each)",
        requests[0].len()
    );
    let mut rows: Vec<(Relay, Row)> = Vec::new();
    for r in 0..rounds {
        for &relay in &relays {
            let row = round(relay, requests.clone(), seconds, connections).await;
            println!(
                "round {r} {:<32} accepted {:>9} delivered {:>9} ({:>8.0}/s) cpu {:>5.2} µs/span \
                 rss {:>6.1} MiB refusals {}",
                relay.name(),
                row.accepted,
                row.delivered,
                row.rate(),
                row.cpu_us_per_span(),
                row.rss_mib,
                row.refusals
            );
            rows.push((relay, row));
        }
    }
    let of = |relay: Relay, f: fn(&Row) -> f64| {
        median(
            rows.iter()
                .filter(|(r, _)| *r == relay)
                .map(|(_, row)| f(row))
                .collect(),
        )
    };
    println!();
    println!("| relay | delivered spans/s | relay CPU per span | spans per relay CPU-second | peak RSS | acknowledged, not delivered |");
    println!("|---|---|---|---|---|---|");
    for &relay in &relays {
        println!(
            "| {} | {:.0} | {:.2} µs | {:.0} | {:.1} MiB | {:.0} |",
            relay.name(),
            of(relay, Row::rate),
            of(relay, Row::cpu_us_per_span),
            of(relay, |r| r.delivered as f64 / r.cpu.max(1e-9)),
            of(relay, |r| r.rss_mib),
            of(relay, |r| r.accepted.saturating_sub(r.delivered) as f64),
        );
    }
    if relays.len() < 2 {
        return;
    }
    println!(
        "\nnode / rotel (medians): delivered rate {:.2}x, spans per CPU-second {:.2}x, peak RSS {:.2}x",
        of(Relay::Node, Row::rate) / of(Relay::Rotel, Row::rate),
        of(Relay::Node, |r| r.delivered as f64 / r.cpu.max(1e-9))
            / of(Relay::Rotel, |r| r.delivered as f64 / r.cpu.max(1e-9)),
        of(Relay::Node, |r| r.rss_mib) / of(Relay::Rotel, |r| r.rss_mib),
    );
}
