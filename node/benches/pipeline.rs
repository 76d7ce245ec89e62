//! Pipeline throughput, in spans per second of CPU (one core fully busy = 1 s/s):
//!
//! 1. probe source → sink: kernel-format ring records (built in memory) → span assembly → RED
//!    metrics → OTLP encoding → the sled disk buffer → OTLP/HTTP → a local receiver (a child
//!    process that counts spans at the wire level). The CPU is this process's: the pipeline's.
//! 2. OTLP receiver source → sink: a real `apiary node --no-probes` takes OTLP/HTTP batches on
//!    4318, buffers them on disk and forwards them to a local receiver; the node's own CPU
//!    (from /proc) is the cost.
//! 3. Memory: the node's resident memory and disk buffer per 100 k spans buffered while the
//!    destination refuses them.
//!
//! Baseline, measured in the same run: OTLP-encoding the same spans and nothing else.
//! `cargo bench -p apiary --bench pipeline` (APIARY_BENCH_SPANS overrides 200 000).

// Each bench uses a part of the tests' harness.
#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary_pipeline::{
    otlp, otlp::wire, Delivery, FullPolicy, OtlpHttp, RedMetrics, ResourceInfo, Signal,
};
use apiary_probes::abi::{encode_data_event, encode_exchange_event, Direction};
use apiary_probes::{Assembler, Observer};
use apiary_span::testing::http_span;
use apiary_span::{Span, SpanKind};
use apiary_tuning::process_cpu_seconds;
use axum::body::Bytes;
use axum::http::StatusCode;
use common::Cluster;
use serde_json::json;

const BATCH: usize = 512;

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// A receiver that counts spans at the wire level; `refuse` makes it answer 503. It runs in a
/// child process (this bench binary again, with `RECEIVER_ENV` set), so that the pipeline's CPU
/// figures are the pipeline's alone, as a collector on another machine would leave them.
#[derive(Clone, Default)]
struct Counter {
    spans: Arc<AtomicU64>,
    refuse: Arc<AtomicBool>,
}

const RECEIVER_ENV: &str = "APIARY_BENCH_RECEIVER";

impl Counter {
    async fn serve(&self) -> u16 {
        let state = self.clone();
        let (count, refuse) = (self.clone(), self.clone());
        let app = axum::Router::new()
            .route(
                "/v1/traces",
                axum::routing::post(move |body: Bytes| {
                    let state = state.clone();
                    async move {
                        if state.refuse.load(Ordering::Relaxed) {
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                        let Ok(n) = wire::scan(Signal::Traces, &body, |_, _| {}) else {
                            return StatusCode::BAD_REQUEST;
                        };
                        state.spans.fetch_add(n, Ordering::Relaxed);
                        StatusCode::OK
                    }
                }),
            )
            .route(
                "/count",
                axum::routing::get(move || {
                    let count = count.clone();
                    async move { count.spans.load(Ordering::Relaxed).to_string() }
                }),
            )
            .route(
                "/refuse",
                axum::routing::post(move || {
                    let refuse = refuse.clone();
                    async move { refuse.refuse.store(true, Ordering::Relaxed) }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        port
    }
}

/// The counting receiver in its own process.
struct RemoteCounter {
    child: std::process::Child,
    port: u16,
    http: reqwest::Client,
}

impl Drop for RemoteCounter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RemoteCounter {
    fn start() -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .env(RECEIVER_ENV, "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the receiver process");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        RemoteCounter {
            child,
            port: line.trim().parse().expect("the receiver prints its port"),
            http: reqwest::Client::new(),
        }
    }

    async fn count(&self) -> u64 {
        let url = format!("http://127.0.0.1:{}/count", self.port);
        let text = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.parse().unwrap()
    }

    async fn wait_for(&self, total: u64) {
        while self.count().await < total {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn refuse(&self) {
        let url = format!("http://127.0.0.1:{}/refuse", self.port);
        self.http.post(url).send().await.unwrap();
    }
}

/// The receiver process: serves until killed, after printing its port.
async fn run_receiver() {
    let port = Counter::default().serve().await;
    println!("{port}");
    std::future::pending::<()>().await;
}

/// Request and response records of `n` server requests on a few connections.
/// How the kernel sends a request and its response: one exchange record (the usual path) or
/// one record per message (pipelined requests, captures above 256 bytes).
#[derive(Clone, Copy, PartialEq)]
enum Records {
    Exchange,
    /// Exchange records of requests sampling dropped: counted for RED, not exported.
    SampledOut,
    PerMessage,
}

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";

fn ring_records(n: usize, kind: Records) -> Vec<Vec<u8>> {
    let local = "10.0.0.1:8080".parse().unwrap();
    let mut records = Vec::with_capacity(n * 2);
    for i in 0..n {
        let remote = std::net::SocketAddrV4::new([10, 0, 0, 2].into(), 40000 + (i % 64) as u16);
        let request = format!(
            "GET /api/orders/{i}?page=2 HTTP/1.1\r\nHost: shop\r\nUser-Agent: bench\r\n\
             traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n"
        );
        let ts = 1_000_000 + i as u64 * 1000;
        let conn = (i % 64) as u64;
        let flow = Some((local, remote));
        if kind != Records::PerMessage {
            records.push(encode_exchange_event(
                100,
                conn,
                (ts, ts + 500),
                Direction::Ingress,
                flow,
                (request.as_bytes(), RESPONSE),
                kind == Records::SampledOut,
            ));
            continue;
        }
        records.push(encode_data_event(
            100,
            conn,
            ts,
            Direction::Ingress,
            flow,
            request.as_bytes(),
        ));
        records.push(encode_data_event(
            100,
            conn,
            ts + 500,
            Direction::Egress,
            flow,
            RESPONSE,
        ));
    }
    records
}

/// Records → spans with RED counting every request: the agent's work for each request the
/// probes see, sampled or not.
fn assembly(spans: u64, kind: Records) -> Row {
    let records = ring_records(spans as usize, kind);
    let red = Arc::new(RedMetrics::new());
    let mut source = ProbeSource::new(Some(red.clone()));
    let (start, cpu) = (Instant::now(), process_cpu_seconds("self"));
    let built = source.feed(&records).len() as u64;
    let row = Row {
        stage: match kind {
            Records::Exchange => "records → spans + RED: one record per exchange",
            Records::SampledOut => "records → RED: one record per exchange, sampled out",
            Records::PerMessage => "records → spans + RED: one record per message",
        },
        spans,
        wall: start.elapsed(),
        cpu: process_cpu_seconds("self") - cpu,
    };
    let expected = if kind == Records::SampledOut {
        0
    } else {
        spans
    };
    assert_eq!(built, expected, "spans published for export");
    row
}

fn resource() -> ResourceInfo {
    ResourceInfo {
        host_name: "bench".into(),
        node: "bench".into(),
        extra: Vec::new(),
        ..Default::default()
    }
}

struct Row {
    stage: &'static str,
    spans: u64,
    wall: Duration,
    cpu: f64,
}

impl Row {
    fn per_core(&self) -> f64 {
        self.spans as f64 / self.cpu.max(1e-9)
    }
}

/// The probe source as the node runs it: ring records → assembler → every request to RED (the
/// tap sees sampled and unsampled requests alike), spans out through the observer's channel (as
/// the export's batcher takes them).
struct ProbeSource {
    assembler: Assembler,
    spans: tokio::sync::broadcast::Receiver<Arc<Span>>,
}

impl ProbeSource {
    fn new(red: Option<Arc<RedMetrics>>) -> Self {
        let observer = Arc::new(Observer::default());
        if let Some(red) = red {
            observer.set_request_tap(Box::new(move |span| red.record(span)));
        }
        ProbeSource {
            spans: observer.subscribe(),
            assembler: Assembler::new(observer),
        }
    }

    /// Feeds at most a few thousand records at a time (the channel holds 8 192 spans).
    fn feed(&mut self, records: &[Vec<u8>]) -> Vec<Arc<Span>> {
        let mut out = Vec::with_capacity(records.len() / 2);
        for chunk in records.chunks(4096) {
            for record in chunk {
                self.assembler.handle(record);
            }
            while let Ok(span) = self.spans.try_recv() {
                out.push(span);
            }
        }
        out
    }
}

fn assemble(records: &[Vec<u8>], red: Option<Arc<RedMetrics>>) -> Vec<Arc<Span>> {
    ProbeSource::new(red).feed(records)
}

async fn probe_source(spans: u64) -> (Row, Row) {
    let records = ring_records(spans as usize, Records::Exchange);
    // Baseline: OTLP encoding only.
    let mut check = Vec::new();
    apiary_pipeline::otlp::encode_spans(
        &assemble(&records[..BATCH], None),
        &resource(),
        &mut check,
    );
    assert_eq!(
        wire::scan(Signal::Traces, &check, |_, _| {}),
        Ok(BATCH as u64),
        "the span counter reads the encoding"
    );
    let assembled = assemble(&records, None);
    let resource = resource();
    let (start, cpu) = (Instant::now(), process_cpu_seconds("self"));
    let mut bytes = 0;
    for batch in assembled.chunks(BATCH) {
        bytes += otlp::encode(batch, &resource).len();
    }
    let baseline = Row {
        stage: "baseline: OTLP encoding only",
        spans,
        wall: start.elapsed(),
        cpu: process_cpu_seconds("self") - cpu,
    };
    assert!(bytes > 0);

    let counter = RemoteCounter::start();
    let port = counter.port;
    let dir = tempfile::tempdir().unwrap();
    let store = apiary_storage::Store::open(dir.path()).unwrap();
    let sink = OtlpHttp::new(&format!("http://127.0.0.1:{port}"), Vec::new()).unwrap();
    let delivery = Delivery::new(
        "bench",
        store.segment_queue("bench", 4 << 30).unwrap(),
        sink,
        4 << 30,
        FullPolicy::Block,
    )
    .unwrap();
    tokio::spawn(delivery.clone().run());
    let mut source = ProbeSource::new(Some(Arc::new(RedMetrics::new())));
    let (start, cpu) = (Instant::now(), process_cpu_seconds("self"));
    for chunk in records.chunks(BATCH) {
        let spans = source.feed(chunk);
        let payload = otlp::encode(&spans, &resource);
        delivery
            .enqueue(Signal::Traces, spans.len() as u32, &payload)
            .await
            .unwrap();
    }
    counter.wait_for(spans).await;
    let row = Row {
        stage: "probe source → RED → OTLP → disk buffer → OTLP/HTTP (in process)",
        spans,
        wall: start.elapsed(),
        cpu: process_cpu_seconds("self") - cpu,
    };
    (baseline, row)
}

fn otlp_batch(first: usize, resource: &ResourceInfo) -> Vec<u8> {
    let spans: Vec<Span> = (first..first + BATCH)
        .map(|i| {
            let target = format!("/api/orders/{i}");
            let mut span = http_span(SpanKind::Server, "GET", &target, 200);
            span.http_mut().route = "/api/orders/{id}".into();
            span.http_mut().host = Some("shop".into());
            span.service = "shop".into();
            span.pid = 1;
            span.start_unix_nanos = 1_700_000_000_000_000_000 + i as u64;
            span.peer = Some("10.0.0.2:40000".parse().unwrap());
            span.local = Some("10.0.0.1:8080".parse().unwrap());
            span
        })
        .collect();
    otlp::encode(&spans, resource)
}

async fn receiver_source(spans: u64, rounds: usize, buffered: usize) -> (Vec<Row>, u64, u64) {
    let counter = RemoteCounter::start();
    let port = counter.port;
    let cluster = Cluster::start(1).await;
    let (status, body) = cluster
        .set(
            0,
            "destination.bench.endpoint",
            json!(format!("http://127.0.0.1:{port}")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = cluster.nodes[0].pid().unwrap();
    let url = format!("http://{}/v1/traces", cluster.nodes[0].otlp);
    let resource = resource();
    let batches: Vec<Vec<u8>> = (0..(spans as usize).div_ceil(BATCH))
        .map(|i| otlp_batch(i * BATCH, &resource))
        .collect();
    let send_all = |batches: Vec<Vec<u8>>| {
        let http = cluster.http.clone();
        let url = url.clone();
        async move {
            let batches = Arc::new(batches);
            let next = Arc::new(AtomicU64::new(0));
            let mut senders = Vec::new();
            for _ in 0..4 {
                let (http, url, batches, next) =
                    (http.clone(), url.clone(), batches.clone(), next.clone());
                senders.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(batch) = batches.get(i) else { return };
                        let response = http
                            .post(&url)
                            .header("content-type", "application/x-protobuf")
                            .body(batch.clone())
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(response.status(), 200);
                    }
                }));
            }
            for sender in senders {
                sender.await.unwrap();
            }
        }
    };
    let total = (batches.len() * BATCH) as u64;
    let mut rows = Vec::new();
    for round in 0..rounds {
        let (start, cpu) = (Instant::now(), process_cpu_seconds(&pid.to_string()));
        send_all(batches.clone()).await;
        counter.wait_for(total * (round as u64 + 1)).await;
        rows.push(Row {
            stage: "OTLP/HTTP receiver → disk buffer → OTLP/HTTP (node process)",
            spans: total,
            wall: start.elapsed(),
            cpu: process_cpu_seconds(&pid.to_string()) - cpu,
        });
    }

    // Memory: the destination refuses; 100 k spans wait in the buffer.
    counter.refuse().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hundred_k: Vec<Vec<u8>> = (0..buffered.div_ceil(BATCH))
        .map(|i| otlp_batch(i * BATCH, &resource))
        .collect();
    let rss_before = rss_bytes(pid);
    send_all(hundred_k).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Per 100 k spans.
    let scale = 100_000.0 / (buffered.div_ceil(BATCH) * BATCH) as f64;
    let rss_growth = (rss_bytes(pid).saturating_sub(rss_before) as f64 * scale) as u64;
    let export = cluster.get(0, "/v1/export").await.unwrap();
    let queued_bytes = (export[0]["queued_bytes"].as_u64().unwrap_or(0) as f64 * scale) as u64;
    (rows, rss_growth, queued_bytes)
}

/// The row with the median throughput.
fn median(mut rows: Vec<Row>) -> Row {
    rows.sort_by(|a, b| a.per_core().total_cmp(&b.per_core()));
    let middle = rows.len() / 2;
    rows.swap_remove(middle)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var_os(RECEIVER_ENV).is_some() {
        return run_receiver().await;
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this too: keep that a quick
    // smoke run of every stage.
    let quick = !std::env::args().any(|a| a == "--bench");
    let spans: u64 = std::env::var("APIARY_BENCH_SPANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 5_000 } else { 200_000 });
    let rounds: usize = std::env::var("APIARY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 });
    let (mut baselines, mut probes) = (Vec::new(), Vec::new());
    let (mut exchanges, mut messages, mut dropped) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        eprintln!("probe source, round {round}/{rounds}: {spans} spans…");
        let (baseline, probe) = probe_source(spans).await;
        baselines.push(baseline);
        probes.push(probe);
        exchanges.push(assembly(spans, Records::Exchange));
        messages.push(assembly(spans, Records::PerMessage));
        dropped.push(assembly(spans, Records::SampledOut));
    }
    eprintln!("receiver source: {rounds} rounds of {spans} spans through a node…");
    let (receivers, rss_growth, queued_bytes) =
        receiver_source(spans, rounds, if quick { 5_000 } else { 100_000 }).await;
    let (baseline, probe, receiver) = (median(baselines), median(probes), median(receivers));

    println!();
    println!(
        "median of {rounds} rounds (this machine's speed varies between runs: compare the ratios)"
    );
    println!(
        "{:<78} {:>9} {:>8} {:>7} {:>13} {:>9}",
        "stage", "spans", "wall s", "CPU s", "spans/s/core", "vs goal"
    );
    for row in [&baseline, &probe, &receiver] {
        println!(
            "{:<78} {:>9} {:>8.2} {:>7.2} {:>13.0} {:>8.2}x",
            row.stage,
            row.spans,
            row.wall.as_secs_f64(),
            row.cpu,
            row.per_core(),
            row.per_core() / 200_000.0
        );
    }
    println!();
    println!(
        "pipeline cost relative to encoding alone: probe source {:.1}x, receiver source {:.1}x",
        baseline.per_core() / probe.per_core(),
        baseline.per_core() / receiver.per_core()
    );
    println!(
        "100 k buffered spans: node resident memory +{:.1} MiB, disk buffer {:.1} MiB",
        rss_growth as f64 / (1 << 20) as f64,
        queued_bytes as f64 / (1 << 20) as f64
    );
    println!("goal: ≥ 200 000 spans/s per core through the pipeline");
    let (exchange, message, dropped) = (median(exchanges), median(messages), median(dropped));
    println!();
    println!(
        "{:<50} {:>13} {:>12}",
        "the agent's work per request seen", "requests/s/core", "vs per message"
    );
    for row in [&message, &exchange, &dropped] {
        println!(
            "{:<50} {:>13.0} {:>11.2}x",
            row.stage,
            row.per_core(),
            row.per_core() / message.per_core()
        );
    }
}
