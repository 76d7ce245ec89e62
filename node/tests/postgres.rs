//! The postgres probe against a real PostgreSQL (Debian `postgresql`, `postgresql-contrib`),
//! started by the test in a temp dir on a private port: `pgbench -t N` in the simple, extended
//! and prepared query modes gives exactly the operations pgbench ran, per operation and table,
//! on the server's side and the client's, and at a sample rate of 0.01 too (RED counts before
//! sampling); a failing `psql -c` gives an error span with its SQLSTATE; no literal reaches a
//! span's text; garbage and truncated messages from a Python socket break nothing and count as
//! unparsed in `/v1/probes`. Needs root; skipped with one message otherwise, or when
//! PostgreSQL is not installed.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::postgres::{pgbench, postgres_bin, start_postgres};
use crate::common::{red_count, red_rows, root, Cluster, RedRows};

/// Transactions per client per pgbench run.
const TRANSACTIONS: u64 = 100;
const CLIENTS: u64 = 2;

/// What one pgbench transaction (TPC-B like) runs, per operation and table.
const TRANSACTION: [(&str, &str); 7] = [
    ("BEGIN", ""),
    ("UPDATE", "pgbench_accounts"),
    ("SELECT", "pgbench_accounts"),
    ("UPDATE", "pgbench_tellers"),
    ("UPDATE", "pgbench_branches"),
    ("INSERT", "pgbench_history"),
    ("END", ""),
];

/// Runs pgbench in every query mode and checks that both sides counted exactly what ran.
async fn every_mode_counts_exactly(cluster: &Cluster, port: u16, what: &str) {
    let before = red_rows(cluster, "postgres").await;
    let mut ran = 0;
    for mode in ["simple", "extended", "prepared"] {
        let t = TRANSACTIONS.to_string();
        let c = CLIENTS.to_string();
        ran += pgbench(port, &["-n", "-t", &t, "-c", &c, "-M", mode]);
    }
    assert_eq!(ran, 3 * TRANSACTIONS * CLIENTS, "pgbench's own count");
    let delta = |rows: &RedRows, kind: &str, service: &str, op: &str, table: &str| {
        red_count(rows, kind, service, op, table) - red_count(&before, kind, service, op, table)
    };
    let rows = cluster
        .wait_for(Duration::from_secs(30), what, |c| async move {
            let rows = red_rows(c, "postgres").await;
            TRANSACTION
                .iter()
                .all(|(op, table)| {
                    delta(&rows, "server", "postgres", op, table) >= ran
                        && delta(&rows, "client", "pgbench", op, table) >= ran
                })
                .then_some(rows)
        })
        .await;
    for (op, table) in TRANSACTION {
        for (kind, service) in [("server", "postgres"), ("client", "pgbench")] {
            assert_eq!(
                delta(&rows, kind, service, op, table),
                ran,
                "{what}: {kind} {op} {table}: {rows:?}"
            );
        }
    }
}

fn python(script: &str, port: u16) {
    let status = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .status()
        .expect("python3");
    assert!(status.success(), "python bad-input client failed");
}

/// Garbage, a truncated message and an absurd length, each on its own connection, after a
/// real startup (the kernel finds a connection from its startup packet: bytes with none are
/// never the probe's).
const BAD_INPUT: &str = r#"
import socket, struct, sys
port = int(sys.argv[1])
def startup():
    s = socket.create_connection(("127.0.0.1", port))
    body = b"user\0postgres\0database\0postgres\0\0"
    s.sendall(struct.pack("!ii", 8 + len(body), 196608) + body)
    got = b""
    while not got.endswith(b"Z\0\0\0\x05I"):
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("postgres closed the connection at startup")
        got += chunk
    return s
def drain(s):
    s.settimeout(5)
    try:
        while s.recv(4096):
            pass
    except OSError:
        pass
    s.close()
s = startup(); s.sendall(b"\x01\x02\x03 garbage that is no message \xff" * 4); drain(s)
s = startup(); s.sendall(b"Q\0\0\x01\0SELECT 1 FROM pgbench_acc"); s.close()
s = startup(); s.sendall(b"Q\x7f\xff\xff\xffSELECT"); drain(s)
s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"\0\0\0\x08\x04\xd2\x16/"); s.recv(1)
s.sendall(b"\0\0\0\x05\x00"); drain(s)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_statements_give_spans_and_red_per_operation() {
    const NAME: &str = "postgres_statements_give_spans_and_red_per_operation";
    if !root() {
        eprintln!("SKIPPED {NAME}: needs root to load eBPF (CI runs it as root)");
        return;
    }
    let Some(bin) = postgres_bin() else {
        eprintln!("SKIPPED {NAME}: PostgreSQL is not installed (apt-get install postgresql postgresql-contrib)");
        return;
    };
    // A connection older than the node: psql connected first, its queries come later.
    let server = start_postgres(&bin);
    let port = server.port;
    let mut old_psql = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-q",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("psql");
    let mut old_psql_input = old_psql.stdin.take().unwrap();
    old_psql_input.write_all(b"SELECT 1;\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let cluster = Cluster::start_with(1, &[]).await;
    cluster.unbind_budgets().await;
    let probes = cluster.get(0, "/v1/probes").await.unwrap();
    let probe = |probes: &Value| {
        probes
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "postgres")
            .cloned()
            .unwrap_or_else(|| panic!("no postgres probe in /v1/probes: {probes}"))
    };
    assert_eq!(probe(&probes)["state"], "attached", "{probes}");

    // Its server side resyncs on the first whole Query and its whole answer; its client side
    // (psql's) is counted as unparsed, never paired.
    for _ in 0..2 {
        old_psql_input
            .write_all(b"SELECT 'older than the node' AS answer;\n")
            .unwrap();
    }
    let resynced = cluster
        .wait_for(
            Duration::from_secs(10),
            "the old connection's spans",
            |c| async move {
                let spans = c.get(0, "/v1/spans?limit=4096").await.ok()?;
                let texts: Vec<Value> = spans
                    .as_array()?
                    .iter()
                    .filter(|s| s["query_text"] == "SELECT ? AS answer;")
                    .cloned()
                    .collect();
                (texts.len() >= 2).then_some(texts)
            },
        )
        .await;
    assert_eq!(resynced.len(), 2, "{resynced:?}");
    assert!(
        resynced
            .iter()
            .all(|s| s["kind"] == "server" && s["service"] == "postgres"),
        "{resynced:?}"
    );
    assert!(probe(&cluster.get(0, "/v1/probes").await.unwrap())["unparsed"].as_u64() >= Some(2));
    drop(old_psql_input);
    let _ = old_psql.wait();

    pgbench(port, &["-i", "-s", "1", "-q"]);

    every_mode_counts_exactly(&cluster, port, "every pgbench operation at rate 1").await;

    // A failing query: an error span with its SQLSTATE, and no literal in its text.
    let psql = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args([
            "-c",
            "SELECT * FROM no_such_table WHERE secret = 'hunter2' AND pin = 4242",
        ])
        .output()
        .expect("psql");
    assert!(!psql.status.success());
    let error = cluster
        .wait_for(
            Duration::from_secs(10),
            "the failing query's span",
            |c| async move {
                let spans = c
                    .get(0, "/v1/spans?limit=4096&service=postgres")
                    .await
                    .ok()?;
                spans
                    .as_array()?
                    .iter()
                    .find(|s| s["collection"] == "no_such_table")
                    .cloned()
            },
        )
        .await;
    assert_eq!(error["status_code"], "42P01", "{error}");
    assert_eq!(error["operation"], "SELECT", "{error}");
    assert_eq!(error["system"], "postgresql", "{error}");
    assert_eq!(
        error["query_text"], "SELECT * FROM no_such_table WHERE secret = ? AND pin = ?",
        "{error}"
    );
    let red = red_rows(&cluster, "postgres").await;
    let errors: u64 = red
        .iter()
        .filter(|((k, s, o, t), _)| {
            k == "server" && s == "postgres" && o == "SELECT" && t == "no_such_table"
        })
        .map(|(_, (_, e))| e)
        .sum();
    assert_eq!(errors, 1, "{red:?}");

    // No literal anywhere: pgbench's simple mode sends its values inline.
    let spans = cluster.get(0, "/v1/spans?limit=4096").await.unwrap();
    let texts: Vec<&str> = spans
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["protocol"] == "postgres")
        .filter_map(|s| s["query_text"].as_str())
        .collect();
    assert!(texts
        .iter()
        .any(|t| t.starts_with("UPDATE pgbench_accounts SET abalance = abalance + ")));
    for text in &texts {
        let without_params = text
            .split('$')
            .map(|p| p.trim_start_matches(|c: char| c.is_ascii_digit()));
        assert!(
            without_params
                .clone()
                .all(|p| !p.contains(|c: char| c.is_ascii_digit()))
                && !text.contains("hunter2")
                && !text.contains("pgbench_accounts'"),
            "a literal in {text:?}"
        );
    }

    // /metrics: the PostgreSQL histogram per operation and table.
    let metrics = cluster.metrics(0).await;
    assert!(
        metrics.lines().any(|l| l.starts_with("apiary_postgres")
            && l.contains("operation=\"UPDATE\"")
            && l.contains("collection=\"pgbench_tellers\"")
            && l.contains("service=\"postgres\"")),
        "no PostgreSQL RED in /metrics"
    );

    // Bad input from a Python socket: counted, nothing breaks, the server still answers.
    let unparsed_before = probe(&cluster.get(0, "/v1/probes").await.unwrap())["unparsed"]
        .as_u64()
        .unwrap();
    python(BAD_INPUT, port);
    cluster
        .wait_for(
            Duration::from_secs(10),
            "bad input counted as unparsed",
            |c| async move {
                let probes = c.get(0, "/v1/probes").await.ok()?;
                (probe(&probes)["unparsed"].as_u64()? >= unparsed_before + 3).then_some(())
            },
        )
        .await;

    // RED before sampling: at 0.01 every operation still counts, on both sides.
    let (status, body) = cluster
        .set(0, "probe.postgres.sample_rate", json!(0.01))
        .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    every_mode_counts_exactly(&cluster, port, "every pgbench operation at rate 0.01").await;

    // The probe off, live through the maps: nothing more is counted.
    let (status, body) = cluster.set(0, "probe.postgres.enabled", json!(false)).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = red_count(
        &red_rows(&cluster, "postgres").await,
        "server",
        "postgres",
        "BEGIN",
        "",
    );
    pgbench(port, &["-n", "-t", "10", "-c", "1"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        red_count(
            &red_rows(&cluster, "postgres").await,
            "server",
            "postgres",
            "BEGIN",
            ""
        ),
        before
    );
    drop(server);
}
