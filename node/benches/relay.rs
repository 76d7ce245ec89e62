//! Relay throughput: the same OTLP/HTTP load (`relay/loadgen.rs`: pre-encoded 500-span requests
//! over several connections, retried after Retry-After when refused) through (a) the `rotel`
//! collector relaying to a sink, and (b) an `apiary node --no-probes` relaying to the same sink,
//! in alternating rounds of one run. The sink counts spans at the protobuf wire level (in this
//! process; rotel's export is gzip, which it inflates first). Per round: spans delivered to the sink per second (from the first request until the
//! relay's backlog is delivered), the relay process's CPU per delivered span (/proc), its peak
//! RSS (VmHWM), and spans it acknowledged that never reached the sink. Medians, and ratios.
//! As root, (c) the node with its probes on as well. Then (over HTTP) drain rounds: the node
//! takes the load while the sink answers 503, and the rate at which it delivers that backlog
//! once the sink is back, sending one stored batch at a time (as delivery did before) and with
//! the default window, alternating.
//!
//! `cargo bench -p apiary --bench relay`; APIARY_BENCH_ROUNDS (3), APIARY_BENCH_SECONDS (10),
//! APIARY_BENCH_CONNECTIONS (4), APIARY_BENCH_EXPORT (`http`, or `grpc` for both relays),
//! APIARY_BENCH_INGEST (`http`, or `grpc`: the load generator's protocol); `rotel-agent` from APIARY_ROTEL or the workspace's
//! target/otel-venv (`pip install rotel`).

#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "relay/loadgen.rs"]
mod loadgen;
#[path = "relay/sink.rs"]
mod sink;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary_tuning::process_cpu_seconds;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use sink::{start_sink, COMPRESSED_SEEN, SINK_DOWN, SINK_LATENCY_MS};

const SPANS_PER_REQUEST: usize = 500;

/// How both relays export to the sink: `http` (OTLP/HTTP protobuf) or `grpc`
/// (APIARY_BENCH_EXPORT).
#[derive(Clone, Copy, PartialEq)]
enum Export {
    Http,
    Grpc,
}

impl Export {
    fn from_env() -> Export {
        match std::env::var("APIARY_BENCH_EXPORT").as_deref() {
            Ok("grpc") => Export::Grpc,
            _ => Export::Http,
        }
    }
}

/// How the load generator sends to the relay (APIARY_BENCH_INGEST): `http` or `grpc`.
fn grpc_ingest() -> bool {
    std::env::var("APIARY_BENCH_INGEST").as_deref() == Ok("grpc")
}

/// Starts the load generator against `running` until `stop`, over OTLP/HTTP or OTLP/gRPC.
fn load(
    running: &Running,
    connections: usize,
    requests: Arc<Vec<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    answers: Arc<loadgen::Answers>,
) -> tokio::task::JoinHandle<()> {
    let spans = SPANS_PER_REQUEST as u64;
    let (url, grpc) = (running.url.clone(), running.grpc.clone());
    tokio::spawn(async move {
        if grpc_ingest() {
            loadgen::run_grpc(grpc, connections, requests, spans, stop, answers).await
        } else {
            loadgen::run(url, connections, requests, spans, stop, answers).await
        }
    })
}

/// The sink's OTLP/gRPC trace service: counts spans (gzip accepted).
struct GrpcSink {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for GrpcSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if request
            .metadata()
            .get("grpc-encoding")
            .is_some_and(|v| v.as_bytes() != b"identity")
        {
            COMPRESSED_SEEN.store(true, Ordering::Relaxed);
        }
        let n: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn start_grpc_sink(spans: Arc<AtomicU64>) -> u16 {
    // A free port, served by tonic's own listener (the bench has no TcpListener stream).
    let (_, port, _, _) = common::free_ports();
    let service = TraceServiceServer::new(GrpcSink { spans })
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_decoding_message_size(64 << 20);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve(([127, 0, 0, 1], port).into())
            .await
            .unwrap()
    });
    port
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq)]
enum Relay {
    Rotel,
    Node,
    /// The node with its probes on (root): they also see the relayed HTTP traffic.
    NodeWithProbes,
}

impl Relay {
    fn name(self) -> &'static str {
        match self {
            Relay::Rotel => "rotel (otlp in → otlp out)",
            Relay::Node => "apiary node --no-probes",
            Relay::NodeWithProbes => "apiary node, probes on",
        }
    }
}

/// How the node sends its backlog (`--export-in-flight`, `--export-request-bytes`).
#[derive(Clone, Copy)]
struct Sending {
    name: &'static str,
    in_flight: u32,
    request_bytes: u32,
}

/// One stored batch per request, one request at a time: how delivery worked before.
const ONE_AT_A_TIME: Sending = Sending {
    name: "one batch at a time (--export-in-flight 1 --export-request-bytes 1)",
    in_flight: 1,
    request_bytes: 1,
};
const DEFAULT_SENDING: Sending = Sending {
    name: "default (4 in flight, merged to 1 MiB)",
    in_flight: 4,
    request_bytes: 1 << 20,
};

struct Running {
    child: Child,
    url: String,
    /// Its OTLP/gRPC receiver, `http://host:port`.
    grpc: String,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_relay(relay: Relay, sink_port: u16, export: Export, sending: Sending) -> Running {
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
                .args(["--exporter", "otlp", "--otlp-exporter-protocol"])
                .arg(if export == Export::Grpc {
                    "grpc"
                } else {
                    "http"
                })
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
        Relay::Node | Relay::NodeWithProbes => Command::new(common::BIN)
            .args(["node", "--name", "relay"])
            .args(if relay == Relay::Node {
                &["--no-probes"][..]
            } else {
                &[]
            })
            .args(["--export-in-flight", &sending.in_flight.to_string()])
            .args(["--export-request-bytes", &sending.request_bytes.to_string()])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen", &format!("127.0.0.1:{quic}")])
            .args(["--api", &format!("127.0.0.1:{api}")])
            .args(["--otlp-http", &format!("127.0.0.1:{http}")])
            .args(["--otlp-grpc", &format!("127.0.0.1:{grpc}")])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &sink)
            .env(
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                if export == Export::Grpc {
                    "grpc"
                } else {
                    "http/protobuf"
                },
            )
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
        grpc: format!("http://127.0.0.1:{grpc}"),
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

async fn round(
    relay: Relay,
    export: Export,
    requests: Arc<Vec<Vec<u8>>>,
    seconds: u64,
    connections: usize,
) -> Row {
    let sink_spans = Arc::new(AtomicU64::new(0));
    let sink_port = match export {
        Export::Http => start_sink(sink_spans.clone()).await,
        Export::Grpc => start_grpc_sink(sink_spans.clone()).await,
    };
    let running = start_relay(relay, sink_port, export, DEFAULT_SENDING);
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
    let load = load(
        &running,
        connections,
        requests,
        stop.clone(),
        answers.clone(),
    );
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

struct Drain {
    acknowledged: u64,
    delivered: u64,
    seconds: f64,
    cpu_us_per_span: f64,
    rss_mib: f64,
}

/// The node's backlog after an outage: the sink answers 503 while the load runs, then comes
/// back; the rate at which the node delivers what it acknowledged meanwhile, over at most
/// `DRAIN_CAP` (a slow mode does not finish a large backlog in a bench's time).
async fn drain_round(
    requests: Arc<Vec<Vec<u8>>>,
    seconds: u64,
    connections: usize,
    sending: Sending,
) -> Drain {
    const DRAIN_CAP: Duration = Duration::from_secs(15);
    let sink_spans = Arc::new(AtomicU64::new(0));
    let sink_port = start_sink(sink_spans.clone()).await;
    let running = start_relay(Relay::Node, sink_port, Export::Http, sending);
    let pid = running.child.id();
    let client = reqwest::Client::new();
    let ready = Instant::now();
    while !client
        .post(&running.url)
        .header("content-type", "application/x-protobuf")
        .body(requests[0].clone())
        .send()
        .await
        .is_ok_and(|a| a.status().is_success())
    {
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "the node did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while sink_spans.load(Ordering::Relaxed) < SPANS_PER_REQUEST as u64 {
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "the node delivered nothing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    SINK_DOWN.store(true, Ordering::Relaxed);
    let base = sink_spans.load(Ordering::Relaxed);
    let answers = Arc::new(loadgen::Answers::default());
    let stop = Arc::new(AtomicBool::new(false));
    let load = load(
        &running,
        connections,
        requests,
        stop.clone(),
        answers.clone(),
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    // The node's retry backoff grew during the outage; the drain is timed from its first
    // delivery after the sink came back.
    let accepted = answers.accepted_spans.load(Ordering::Relaxed);
    let cpu_start = process_cpu_seconds(&pid.to_string());
    SINK_DOWN.store(false, Ordering::Relaxed);
    let back = Instant::now();
    while sink_spans.load(Ordering::Relaxed) == base {
        assert!(
            back.elapsed() < Duration::from_secs(60),
            "no delivery after the outage"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = Instant::now();
    let (mut last, mut last_change) = (0, Instant::now());
    loop {
        let delivered = sink_spans.load(Ordering::Relaxed) - base;
        if delivered != last {
            (last, last_change) = (delivered, Instant::now());
        }
        if delivered >= accepted
            || last_change.elapsed() > Duration::from_secs(5)
            || first.elapsed() > DRAIN_CAP
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = last_change.duration_since(first).as_secs_f64().max(1e-3);
    let drain = Drain {
        acknowledged: accepted,
        delivered: last,
        seconds,
        cpu_us_per_span: (process_cpu_seconds(&pid.to_string()) - cpu_start) / last.max(1) as f64
            * 1e6,
        rss_mib: peak_rss_mib(pid),
    };
    println!(
        "drain {:<70} {accepted} spans acknowledged while the sink answered 503 ({} refusals), \
         {last} delivered in {seconds:.2} s: {:.0} spans/s; first delivery {:.2} s after it came \
         back; node CPU {:.2} µs/span; peak RSS {:.1} MiB",
        sending.name,
        answers.refusals.load(Ordering::Relaxed),
        last as f64 / seconds,
        first.duration_since(back).as_secs_f64(),
        drain.cpu_us_per_span,
        drain.rss_mib,
    );
    drain
}

/// Drains after an outage with one batch at a time and with the default sending, in
/// alternating rounds, and their ratio.
async fn drain_comparison(
    requests: Arc<Vec<Vec<u8>>>,
    seconds: u64,
    connections: usize,
    rounds: usize,
) {
    for latency in [0, 5] {
        SINK_LATENCY_MS.store(latency, Ordering::Relaxed);
        drain_at_latency(requests.clone(), seconds, connections, rounds, latency).await;
    }
    SINK_LATENCY_MS.store(0, Ordering::Relaxed);
}

async fn drain_at_latency(
    requests: Arc<Vec<Vec<u8>>>,
    seconds: u64,
    connections: usize,
    rounds: usize,
    latency_ms: u64,
) {
    println!(
        "\ndrain after an outage, the sink {latency_ms} ms away ({rounds} alternating rounds, at \
         most 15 s of draining each):"
    );
    let modes = [ONE_AT_A_TIME, DEFAULT_SENDING];
    let mut drains: Vec<Vec<Drain>> = vec![Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (i, sending) in modes.iter().enumerate() {
            drains[i].push(drain_round(requests.clone(), seconds, connections, *sending).await);
        }
    }
    println!();
    println!("| sink latency | node sending | acknowledged during the outage | delivered | drain spans/s | node CPU per span | peak RSS |");
    println!("|---|---|---|---|---|---|---|");
    let of = |i: usize, f: fn(&Drain) -> f64| median(drains[i].iter().map(f).collect());
    let rate = |d: &Drain| d.delivered as f64 / d.seconds;
    for (i, sending) in modes.iter().enumerate() {
        println!(
            "| {latency_ms} ms | {} | {:.0} | {:.0} | {:.0} | {:.2} µs | {:.1} MiB |",
            sending.name,
            of(i, |d| d.acknowledged as f64),
            of(i, |d| d.delivered as f64),
            of(i, rate),
            of(i, |d| d.cpu_us_per_span),
            of(i, |d| d.rss_mib),
        );
    }
    let ratios: Vec<f64> = drains[1]
        .iter()
        .zip(&drains[0])
        .map(|(new, old)| rate(new) / rate(old).max(1e-9))
        .collect();
    println!(
        "\nsink {latency_ms} ms away: default / one at a time, drain rate: median {:.1}x (per round: {})",
        median(ratios.clone()),
        ratios
            .iter()
            .map(|r| format!("{r:.1}x"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// The median of `f` over `relay`'s rounds.
fn median_of(rows: &[(Relay, Row)], relay: Relay, f: fn(&Row) -> f64) -> f64 {
    median(
        rows.iter()
            .filter(|(r, _)| *r == relay)
            .map(|(_, row)| f(row))
            .collect(),
    )
}

fn relay_table(relays: &[Relay], rows: &[(Relay, Row)]) {
    let of = |relay: Relay, f: fn(&Row) -> f64| median_of(rows, relay, f);
    println!("| relay | delivered spans/s | relay CPU per span | spans per relay CPU-second | peak RSS | acknowledged, not delivered |");
    println!("|---|---|---|---|---|---|");
    for &relay in relays {
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
    let mut relays: Vec<Relay> = if rotel.is_some() {
        vec![Relay::Rotel, Relay::Node]
    } else {
        println!("rotel-agent not found (APIARY_ROTEL, or pip install rotel into target/otel-venv): the node alone");
        vec![Relay::Node]
    };
    if common::root() {
        relays.push(Relay::NodeWithProbes);
    } else {
        println!("not root: no round with the node's probes on");
    }
    let connections = setting("APIARY_BENCH_CONNECTIONS", 4) as usize;
    let export = Export::from_env();
    let requests = Arc::new(loadgen::encoded_requests(64, SPANS_PER_REQUEST));
    println!(
        "relay bench: {rounds} alternating rounds of {seconds} s, {connections} connections, \
         {SPANS_PER_REQUEST}-span OTLP/{} requests ({} bytes each), export over {}",
        if grpc_ingest() { "gRPC" } else { "HTTP" },
        requests[0].len(),
        if export == Export::Grpc {
            "OTLP/gRPC"
        } else {
            "OTLP/HTTP"
        }
    );
    // APIARY_BENCH_PARTS: `relay`, `drain` or both (the default), comma-separated.
    let parts = std::env::var("APIARY_BENCH_PARTS").unwrap_or_else(|_| "relay,drain".into());
    let relay_rounds = if parts.contains("relay") { rounds } else { 0 };
    let mut rows: Vec<(Relay, Row)> = Vec::new();
    for r in 0..relay_rounds {
        for &relay in &relays {
            COMPRESSED_SEEN.store(false, Ordering::Relaxed);
            let row = round(relay, export, requests.clone(), seconds, connections).await;
            println!(
                "round {r} {:<32} accepted {:>9} delivered {:>9} ({:>8.0}/s) cpu {:>5.2} µs/span \
                 rss {:>6.1} MiB refusals {} export compressed: {}",
                relay.name(),
                row.accepted,
                row.delivered,
                row.rate(),
                row.cpu_us_per_span(),
                row.rss_mib,
                row.refusals,
                COMPRESSED_SEEN.load(Ordering::Relaxed)
            );
            rows.push((relay, row));
        }
    }
    let of = |relay: Relay, f: fn(&Row) -> f64| median_of(&rows, relay, f);
    println!();
    if !rows.is_empty() {
        relay_table(&relays, &rows);
    }
    if !quick && export == Export::Http && parts.contains("drain") {
        drain_comparison(requests.clone(), seconds, connections, rounds).await;
    }
    if !relays.contains(&Relay::Rotel) || rows.is_empty() {
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
