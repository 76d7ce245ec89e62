//! Commit latency of config changes sent to a follower, and the time until every node has
//! applied them, for 1 (baseline), 3 and 5 real nodes on loopback.
//!
//! `cargo bench -p apiary --bench commit_latency` (APIARY_BENCH_CHANGES overrides the 200
//! changes per cluster size).

// Each bench uses a part of the tests' harness.
#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use serde_json::json;

struct Row {
    nodes: usize,
    commit: Vec<Duration>,
    everywhere: Vec<Duration>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

async fn measure(nodes: usize, changes: usize) -> Row {
    let cluster = Cluster::start(nodes).await;
    let all: Vec<usize> = (0..nodes).collect();
    let leader = cluster.leader(&all).await;
    let target = if nodes > 1 {
        (leader + 1) % nodes
    } else {
        leader
    };
    let mut row = Row {
        nodes,
        commit: Vec::new(),
        everywhere: Vec::new(),
    };
    for i in 0..changes {
        let rate = ((i % 100) as f64) / 100.0;
        let start = Instant::now();
        let (status, body) = cluster
            .set(target, "probe.http.sample_rate", json!(rate))
            .await;
        let committed = start.elapsed();
        assert_eq!(status, 200, "change {i} failed: {body}");
        let version = body["version"].as_u64().expect("version");
        // Poll every node until all have applied it.
        loop {
            let mut behind = false;
            for &node in &all {
                if cluster.config_version(node).await.unwrap_or(0) < version {
                    behind = true;
                    break;
                }
            }
            if !behind {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        row.everywhere.push(start.elapsed());
        row.commit.push(committed);
        if (i + 1) % 50 == 0 {
            eprintln!("  {nodes} nodes: {}/{changes} changes", i + 1);
        }
    }
    row.commit.sort();
    row.everywhere.sort();
    row
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too: keep that quick.
    let quick = !std::env::args().any(|a| a == "--bench");
    let changes: usize = std::env::var("APIARY_BENCH_CHANGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 5 } else { 200 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rows: Vec<Row> = [1, 3, 5]
        .into_iter()
        .map(|nodes| {
            eprintln!("starting {nodes} node(s), {changes} changes sent to a follower…");
            runtime.block_on(measure(nodes, changes))
        })
        .collect();
    let baseline = percentile(&rows[0].everywhere, 0.99).as_secs_f64();
    println!();
    println!("config changes sent to a follower (1 node: to the leader), loopback, {changes} changes each");
    println!(
        "{:>5} | {:>11} | {:>11} | {:>13} | {:>13} | {:>14} | goal p99 < 50 ms",
        "nodes", "commit p50", "commit p99", "all-apply p50", "all-apply p99", "p99 vs 1 node",
    );
    for row in &rows {
        let p99 = percentile(&row.everywhere, 0.99);
        println!(
            "{:>5} | {:>8} ms | {:>8} ms | {:>10} ms | {:>10} ms | {:>13.2}x | {}",
            row.nodes,
            ms(percentile(&row.commit, 0.5)),
            ms(percentile(&row.commit, 0.99)),
            ms(percentile(&row.everywhere, 0.5)),
            ms(p99),
            p99.as_secs_f64() / baseline,
            if p99 < Duration::from_millis(50) {
                "met"
            } else {
                "MISSED"
            }
        );
    }
}
