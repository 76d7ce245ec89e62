//! Cooperative tuning under a load step: a loopback HTTP server driven at 1x, 10x, then 1x
//! (paced requests on keep-alive connections), observed by a real node's probes. For each phase:
//! the agent's CPU (the node process plus the probes' BPF run time, in % of one core), the spans
//! it exported per second, and p99 latency against the same phase with no node running. Modes:
//! tuning on (export budget 1 000 spans/s), tuning off (a budget too large to bind: full
//! sampling, CPU budget 100 %). Needs root.
//!
//! `cargo bench -p apiary --bench tuning` (APIARY_BENCH_RATE: the 1x rate, default 300 req/s;
//! APIARY_BENCH_PHASE_SECONDS, default 6).

// Each bench uses a part of the tests' harness.
#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../probes/benches/support/loopback.rs"]
mod loopback;

use std::time::{Duration, Instant};

use apiary_tuning::process_cpu_seconds;
use common::{root, Cluster};
use loopback::{paced, percentile, server};
use serde_json::json;

const CONNECTIONS: usize = 4;
const TUNED_BUDGET: u64 = 1_000;

struct Phase {
    load: &'static str,
    rate: f64,
    p99: Duration,
    cpu_percent: Option<f64>,
    /// The BPF share of `cpu_percent`.
    bpf_percent: Option<f64>,
    exported: Option<f64>,
    sample_rate: Option<f64>,
}

/// (BPF run time ns, spans exported) from the node's API.
async fn node_counters(cluster: &Cluster) -> (f64, f64) {
    let probes = cluster.get(0, "/v1/probes").await.unwrap();
    let bpf: f64 = probes
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["run_time_ns"].as_f64().unwrap_or(0.0))
        .sum();
    let metrics = cluster.metrics(0).await;
    let spans = metrics
        .lines()
        .find(|l| l.starts_with("apiary_spans_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    (bpf, spans)
}

async fn run(port: u16, low: f64, seconds: u64, cluster: Option<&Cluster>) -> Vec<Phase> {
    let mut phases = Vec::new();
    for (load, rate) in [("1x", low), ("10x", low * 10.0), ("1x", low)] {
        let before = match cluster {
            Some(c) => Some((
                node_counters(c).await,
                process_cpu_seconds(&c.nodes[0].pid().unwrap().to_string()),
            )),
            None => None,
        };
        let started = Instant::now();
        let latencies = tokio::task::spawn_blocking(move || {
            paced(port, rate, Duration::from_secs(seconds), CONNECTIONS)
        })
        .await
        .unwrap();
        let elapsed = started.elapsed().as_secs_f64();
        let mut phase = Phase {
            load,
            rate: latencies.len() as f64 / elapsed,
            p99: percentile(&latencies, 0.99),
            cpu_percent: None,
            bpf_percent: None,
            exported: None,
            sample_rate: None,
        };
        if let (Some(c), Some(((bpf0, spans0), cpu0))) = (cluster, before) {
            let (bpf1, spans1) = node_counters(c).await;
            let cpu1 = process_cpu_seconds(&c.nodes[0].pid().unwrap().to_string());
            phase.cpu_percent = Some(((bpf1 - bpf0) / 1e9 + (cpu1 - cpu0)) / elapsed * 100.0);
            phase.bpf_percent = Some((bpf1 - bpf0) / 1e9 / elapsed * 100.0);
            phase.exported = Some((spans1 - spans0) / elapsed);
            phase.sample_rate = c.get(0, "/v1/intensity").await.unwrap()["rate"].as_f64();
        }
        phases.push(phase);
    }
    phases
}

/// One node with `export_budget` spans/s and `cpu` % per node.
async fn node(export_budget: u64, cpu: f64) -> Cluster {
    let cluster = Cluster::start_with(1, &[]).await;
    let changes = json!({"changes": [
        {"key": "budget.export_events_per_second", "value": export_budget},
        {"key": "budget.cpu_percent_per_node", "value": cpu},
    ]});
    let (status, body) = cluster
        .write(0, reqwest::Method::PATCH, "/v1/config", changes)
        .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !root() {
        eprintln!("SKIPPED the tuning benchmark: needs root for the probes");
        return;
    }
    let env = |name: &str, default: f64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    // `cargo bench` passes --bench; under `cargo test --all-targets` this is a short smoke run.
    let quick = !std::env::args().any(|a| a == "--bench");
    let low = env("APIARY_BENCH_RATE", 300.0);
    let seconds = env("APIARY_BENCH_PHASE_SECONDS", if quick { 1.0 } else { 6.0 }) as u64;
    let port = server();

    eprintln!("no node: 1x → 10x → 1x at {low} req/s…");
    let baseline = run(port, low, seconds, None).await;
    eprintln!("tuning on (export budget {TUNED_BUDGET} spans/s)…");
    let tuned = {
        let cluster = node(TUNED_BUDGET, 2.0).await;
        run(port, low, seconds, Some(&cluster)).await
    };
    eprintln!("tuning off (budgets too large to bind: full sampling)…");
    let fixed = {
        let cluster = node(1_000_000_000, 100.0).await;
        run(port, low, seconds, Some(&cluster)).await
    };

    println!();
    println!(
        "{:<11} {:<5} {:>8} {:>10} {:>9} {:>13} {:>7} {:>9} {:>12}",
        "mode",
        "load",
        "req/s",
        "agent CPU",
        "of it BPF",
        "exported/s",
        "rate",
        "p99 µs",
        "p99 vs none"
    );
    let show = |v: Option<f64>, digits: usize| {
        v.map(|v| format!("{v:.digits$}"))
            .unwrap_or_else(|| "-".into())
    };
    for (mode, phases) in [
        ("no node", &baseline),
        ("tuning on", &tuned),
        ("tuning off", &fixed),
    ] {
        for (phase, base) in phases.iter().zip(&baseline) {
            println!(
                "{:<11} {:<5} {:>8.0} {:>9}% {:>8}% {:>13} {:>7} {:>9.0} {:>11.3}x",
                mode,
                phase.load,
                phase.rate,
                show(phase.cpu_percent, 2),
                show(phase.bpf_percent, 2),
                show(phase.exported, 0),
                show(phase.sample_rate, 3),
                phase.p99.as_secs_f64() * 1e6,
                phase.p99.as_secs_f64() / base.p99.as_secs_f64().max(1e-9)
            );
        }
    }
    println!();
    println!(
        "goal: at 10x, agent CPU within budget.cpu_percent_per_node (2 %) and p99 within +2 % with tuning on, while tuning off is not"
    );
}
