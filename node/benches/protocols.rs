//! What the probes of the protocols found per connection cost real servers: a load generator's
//! throughput with no node, with a node whose probe keeps every request (rate 1), and with it
//! sampling 0.01, in alternating
//! rounds (the order of the modes turns each round; the node is started for the traced modes
//! and stopped for the bare one). PostgreSQL (`probe.postgres`) under pgbench: select-only
//! (`pgbench -S`: one short query per transaction, the probe's worst case per unit of server
//! work) and TPC-B (pgbench's default: seven statements per transaction). MariaDB
//! (`probe.mysql`) under `mariadb-slap -c 4`: a point SELECT, and a SELECT and an UPDATE in
//! turn. Redis (`probe.redis`) under `redis-benchmark -c 4`: SET and GET, and GET pipelined 16
//! deep. nginx (`probe.http2`) under `h2load -c 4 -m 10`, in cleartext (h2c) and over TLS (the
//! tls probe's OpenSSL uprobes carry it). Per mode: the median operations (transactions,
//! statements or requests) per second, its ratio to no node, the kernel time of the socket and
//! OpenSSL programs per operation (BPF run-time statistics of the http and tls probes' programs,
//! which these probes ride; every traced syscall on the machine counts, so other work on it adds
//! noise) and the node's CPU per 10 000 operations (/proc).
//!
//! `cargo bench -p apiary --bench protocols`, as root, with Debian's `postgresql`,
//! `mariadb-server`, `redis-server` and `nginx` + `nghttp2-client` installed (a server that is
//! not is skipped with a message).
//! APIARY_BENCH_ROUNDS (5), APIARY_BENCH_SECONDS (5, per phase), APIARY_BENCH_ONLY (the parts
//! to run, of `postgres,mysql,redis,http2`; all when unset). Under `cargo test
//! --all-targets` it makes one short round of each as a smoke run.

#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use common::mariadb::{mariadb_ok, mariadbd_bin, start_mariadb};
use common::postgres::{pgbench_output, postgres_bin, start_postgres};
use common::servers::{nginx_h2, redis_server};
use common::{root, Cluster};
use serde_json::json;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Bare,
    Rate1,
    Rate001,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Bare => "no node",
            Mode::Rate1 => "probe at rate 1",
            Mode::Rate001 => "probe at rate 0.01",
        }
    }
}

const MODES: [Mode; 3] = [Mode::Bare, Mode::Rate1, Mode::Rate001];

/// One load on one server: run for about `seconds`, it gives (operations per second,
/// operations).
struct Workload<'a> {
    label: String,
    run: Box<dyn Fn(u64) -> (f64, f64) + 'a>,
}

#[derive(Default, Clone)]
struct Phase {
    tps: f64,
    transactions: f64,
    kernel_ns: f64,
    node_cpu_seconds: f64,
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// The http and tls probes' cumulative BPF run time (ns): their socket and OpenSSL programs
/// carry the protocols found per connection.
async fn socket_run_time_ns(cluster: &Cluster) -> f64 {
    let probes = cluster.get(0, "/v1/probes").await.unwrap_or_default();
    probes
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == "http" || p["name"] == "tls")
        .filter_map(|p| p["run_time_ns"].as_f64())
        .sum()
}

/// One pgbench phase: (tps without connection time, transactions).
fn run_pgbench(port: u16, workload: &[&str], seconds: u64) -> (f64, f64) {
    let t = seconds.to_string();
    let mut args = vec!["-n", "-c", "4", "-j", "2", "-T", &t];
    args.extend_from_slice(workload);
    let out = pgbench_output(port, &args);
    let number = |prefix: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split([' ', '/']).next()?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (
        number("tps = "),
        number("number of transactions actually processed: "),
    )
}

/// One mariadb-slap run of `queries` statements over 4 connections: its seconds.
fn mariadb_slap(port: u16, query: &str, queries: u64) -> f64 {
    let output = Command::new("mariadb-slap")
        .args(["--no-defaults", "-h", "127.0.0.1", "-u", "root"])
        .arg(format!("-P{port}"))
        .args([
            "--create-schema=t",
            "--no-drop",
            "--concurrency=4",
            "--iterations=1",
        ])
        .arg(format!("--number-of-queries={queries}"))
        .args(["--delimiter=;", "--query", query])
        .output()
        .expect("mariadb-slap (Debian mariadb-client)");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "mariadb-slap: {out}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    out.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Average number of seconds to run all queries: ")
        })
        .and_then(|rest| rest.split(' ').next()?.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// mariadb-slap counts statements, not time: a phase runs the statements that `rate` (a bare
/// run's, measured once before the rounds) does in `seconds`.
fn run_mariadb_slap(port: u16, query: &str, rate: f64, seconds: u64) -> (f64, f64) {
    let queries = ((rate * seconds as f64) as u64).max(1_000);
    let took = mariadb_slap(port, query, queries);
    (queries as f64 / took, queries as f64)
}

/// One redis-benchmark run of `requests` of each of `tests` over 4 connections (`-P`
/// `pipeline`): its requests and seconds.
fn redis_benchmark(port: u16, tests: &str, pipeline: u32, requests: u64) -> (f64, f64) {
    let output = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-c", "4", "-q"])
        .arg("-p")
        .arg(port.to_string())
        .arg("-n")
        .arg(requests.to_string())
        .arg("-P")
        .arg(pipeline.to_string())
        .args(["-t", tests])
        .output()
        .expect("redis-benchmark (Debian redis-tools)");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "redis-benchmark: {out}");
    // Its progress lines end in \r; each test's last line gives its rate.
    let rates: Vec<f64> = out
        .split(['\r', '\n'])
        .filter_map(|l| {
            l.trim()
                .split_once(" requests per second")?
                .0
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(
        rates.len(),
        tests.split(',').count(),
        "redis-benchmark: {out}"
    );
    let seconds = rates.iter().map(|rate| requests as f64 / rate).sum();
    (requests as f64 * rates.len() as f64, seconds)
}

/// redis-benchmark counts requests, not time: a phase runs the requests that `rate` (a bare
/// run's, measured once before the rounds) does in `seconds`.
fn run_redis_benchmark(
    port: u16,
    tests: &str,
    pipeline: u32,
    rate: f64,
    seconds: u64,
) -> (f64, f64) {
    let each = ((rate * seconds as f64) as u64 / tests.split(',').count() as u64).max(1_000);
    let (requests, took) = redis_benchmark(port, tests, pipeline, each);
    (requests / took, requests)
}

/// One h2load run of `requests` over 4 connections of 10 streams each: (requests/s,
/// requests done). (Its duration mode, `-D`, stopped at 1 000 requests a second here.)
fn h2load(url: &str, requests: u64) -> (f64, f64) {
    let output = Command::new("h2load")
        .args(["-c", "4", "-m", "10", "-n"])
        .arg(requests.to_string())
        .arg(url)
        .output()
        .expect("h2load (Debian nghttp2-client)");
    let out = String::from_utf8_lossy(&output.stdout);
    let rate = out
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .and_then(|rest| {
            rest.split(", ")
                .nth(1)?
                .strip_suffix(" req/s")?
                .parse::<f64>()
                .ok()
        });
    let done = out
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .and_then(|rest| {
            rest.split(", ")
                .find_map(|part| part.strip_suffix(" done"))?
                .parse::<f64>()
                .ok()
        });
    match (rate, done) {
        (Some(rate), Some(done)) => (rate, done),
        _ => panic!("h2load gave no rate: {out}"),
    }
}

/// h2load counts requests: a phase runs the requests that `rate` (a bare run's, measured once
/// before the rounds) does in `seconds`.
fn run_h2load(url: &str, rate: f64, seconds: u64) -> (f64, f64) {
    h2load(url, ((rate * seconds as f64) as u64).max(1_000))
}

async fn traced_phase(
    cluster: &Cluster,
    probe: &str,
    mode: Mode,
    workload: &Workload<'_>,
    seconds: u64,
) -> Phase {
    let rate = if mode == Mode::Rate1 { 1.0 } else { 0.01 };
    let key = format!("probe.{probe}.sample_rate");
    let (status, body) = cluster.set(0, &key, json!(rate)).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = cluster.nodes[0].pid().expect("the node runs");
    let (cpu, kernel) = (cpu_seconds(pid), socket_run_time_ns(cluster).await);
    let (tps, transactions) = tokio::task::block_in_place(|| (workload.run)(seconds));
    // What the node still has to read of the phase counts to the phase.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Phase {
        tps,
        transactions,
        kernel_ns: socket_run_time_ns(cluster).await - kernel,
        node_cpu_seconds: cpu_seconds(pid) - cpu,
    }
}

async fn start_node() -> Cluster {
    let cluster = Cluster::start_with(1, &[]).await;
    cluster.unbind_budgets().await;
    cluster
}

fn bare_phase(workload: &Workload, seconds: u64) -> Phase {
    let (tps, transactions) = (workload.run)(seconds);
    Phase {
        tps,
        transactions,
        ..Phase::default()
    }
}

/// Every mode of `workload` in `rounds` alternating rounds, and its table.
async fn measure(probe: &str, workload: &Workload<'_>, rounds: u64, seconds: u64, quick: bool) {
    (workload.run)(1); // warm-up
    let mut phases: Vec<Vec<Phase>> = vec![Vec::new(); MODES.len()];
    for round in 0..rounds {
        // Bare first in even rounds, last in odd ones; the traced two swap too.
        let traced = if round % 2 == 0 {
            [Mode::Rate1, Mode::Rate001]
        } else {
            [Mode::Rate001, Mode::Rate1]
        };
        if round % 2 == 0 {
            phases[0].push(bare_phase(workload, seconds));
        }
        let cluster = start_node().await;
        for mode in traced {
            let at = MODES.iter().position(|m| *m == mode).unwrap_or(0);
            phases[at].push(traced_phase(&cluster, probe, mode, workload, seconds).await);
        }
        drop(cluster);
        if round % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            phases[0].push(bare_phase(workload, seconds));
        }
    }
    println!(
        "\n{}, {seconds} s phases, {rounds} alternating rounds, medians (probe.{probe}):",
        workload.label
    );
    println!(
        "{:<28} {:>10} {:>8} {:>18} {:>22}",
        "mode", "ops/s", "ratio", "kernel ns / op", "node CPU ms / 10k ops"
    );
    let bare = median(phases[0].iter().map(|p| p.tps).collect());
    for (mode, phases) in MODES.iter().zip(&phases) {
        let tps = median(phases.iter().map(|p| p.tps).collect());
        let per = |f: fn(&Phase) -> f64| {
            median(
                phases
                    .iter()
                    .map(|p| f(p) / p.transactions.max(1.0))
                    .collect(),
            )
        };
        let (kernel, cpu) = if *mode == Mode::Bare {
            ("-".to_string(), "-".to_string())
        } else {
            (
                format!("{:.0}", per(|p| p.kernel_ns)),
                format!("{:.1}", per(|p| p.node_cpu_seconds) * 1e7),
            )
        };
        println!(
            "{:<28} {:>10.0} {:>8.3} {:>18} {:>22}",
            mode.name(),
            tps,
            tps / bare,
            kernel,
            cpu
        );
        if quick {
            assert!(tps > 0.0, "{}: the load ran nothing", mode.name());
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick = !std::env::args().any(|a| a == "--bench");
    if !root() {
        println!("SKIPPED the protocols bench: needs root to load eBPF");
        return;
    }
    let rounds = if quick {
        1
    } else {
        setting("APIARY_BENCH_ROUNDS", 5)
    };
    let seconds = if quick {
        1
    } else {
        setting("APIARY_BENCH_SECONDS", 5)
    };

    let only = std::env::var("APIARY_BENCH_ONLY").unwrap_or_default();
    let wanted = |part: &str| only.is_empty() || only.split(',').any(|p| p.trim() == part);

    match postgres_bin() {
        _ if !wanted("postgres") => {}
        None => println!("SKIPPED the bench's PostgreSQL part: PostgreSQL is not installed (apt-get install postgresql postgresql-contrib)"),
        Some(bin) => {
            let server = start_postgres(&bin);
            let port = server.port;
            pgbench_output(port, &["-i", "-s", "4", "-q"]);
            let workloads: [(&str, &[&str]); 2] =
                [("select-only (-S)", &["-S"]), ("TPC-B", &[])];
            for (label, args) in workloads {
                let workload = Workload {
                    label: format!("PostgreSQL, pgbench {label} -c 4 -j 2"),
                    run: Box::new(move |seconds| run_pgbench(port, args, seconds)),
                };
                measure("postgres", &workload, rounds, seconds, quick).await;
            }
            drop(server);
        }
    }

    match mariadbd_bin() {
        _ if !wanted("mysql") => {}
        None => println!("SKIPPED the bench's MariaDB part: MariaDB is not installed (apt-get install mariadb-server mariadb-client)"),
        Some(bin) => {
            let server = start_mariadb(&bin);
            let port = server.port;
            mariadb_ok(
                port,
                "",
                "CREATE DATABASE t; CREATE TABLE t.items (id INT PRIMARY KEY, v TEXT); \
                 INSERT INTO t.items VALUES (1, 'a'), (2, 'b');",
            );
            let workloads = [
                ("point SELECT", "SELECT v FROM items WHERE id = 1"),
                (
                    "SELECT and UPDATE in turn",
                    "SELECT v FROM items WHERE id = 1;UPDATE items SET v = 'c' WHERE id = 2",
                ),
            ];
            for (label, query) in workloads {
                let rate = 5_000.0 / mariadb_slap(port, query, 5_000).max(1e-3);
                let workload = Workload {
                    label: format!("MariaDB, mariadb-slap -c 4, {label}"),
                    run: Box::new(move |seconds| run_mariadb_slap(port, query, rate, seconds)),
                };
                measure("mysql", &workload, rounds, seconds, quick).await;
            }
            drop(server);
        }
    }

    // Whether a tool is installed (it ran, whatever it made of the flag).
    let has = |tool: &str| Command::new(tool).arg("--version").output().is_ok();
    if !wanted("redis") {
        // Not asked for.
    } else if !(has("redis-server") && has("redis-benchmark")) {
        println!("SKIPPED the bench's Redis part: redis is not installed (apt-get install redis-server redis-tools)");
    } else {
        let (server, port) = redis_server();
        let workloads = [
            ("SET and GET", "set,get", 1),
            ("GET pipelined 16 deep", "get", 16),
        ];
        for (label, tests, pipeline) in workloads {
            let (requests, took) = redis_benchmark(port, tests, pipeline, 20_000);
            let rate = requests / took.max(1e-3);
            let workload = Workload {
                label: format!("Redis, redis-benchmark -c 4, {label}"),
                run: Box::new(move |seconds| {
                    run_redis_benchmark(port, tests, pipeline, rate, seconds)
                }),
            };
            measure("redis", &workload, rounds, seconds, quick).await;
        }
        drop(server);
    }

    if !wanted("http2") {
        // Not asked for.
    } else if !(has("nginx") && has("h2load")) {
        println!("SKIPPED the bench's HTTP/2 part: nginx or h2load is not installed (apt-get install nginx nghttp2-client)");
    } else {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (server, port, tls_port) = nginx_h2(dir.path());
        let workloads = [
            ("h2c", format!("http://127.0.0.1:{port}/api/items/1")),
            ("TLS", format!("https://127.0.0.1:{tls_port}/api/items/1")),
        ];
        for (label, url) in workloads {
            let (rate, _) = h2load(&url, 20_000);
            let workload = Workload {
                label: format!("nginx HTTP/2 ({label}), h2load -c 4 -m 10"),
                run: Box::new(move |seconds| run_h2load(&url, rate, seconds)),
            };
            measure("http2", &workload, rounds, seconds, quick).await;
        }
        drop(server);
    }
}
