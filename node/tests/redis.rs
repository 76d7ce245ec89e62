//! The redis probe against a real redis-server (Debian `redis-server`, `redis-tools`) on a
//! private port: `redis-benchmark -n N` gives N server spans per command in RED, pipelined
//! commands pair with their replies in order (an INCR of a string always carries its error, a
//! GET never does), a client that peeks at each reply (MSG_PEEK) counts it once, and bad input
//! (garbage, a 1 MiB value, a connection closed mid-command) breaks nothing and counts as
//! unparsed in `/v1/probes`. Needs root; skipped with one message otherwise, or when
//! redis-server is not installed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::servers::redis_server;
use crate::common::{root, Cluster};

const BENCHMARK_REQUESTS: u64 = 2_000;
const PIPELINES: u64 = 20;
const PEEKED_PINGS: u64 = 10;

/// RED rows of redis-server's side, by command: (count, errors).
async fn server_red(cluster: &Cluster) -> Vec<(String, u64, u64)> {
    red_of(cluster, |r| {
        r["kind"] == "server" && r["service"] == "redis-server"
    })
    .await
}

/// RED rows of this test's own client side (not redis-benchmark's), by command.
async fn own_client_red(cluster: &Cluster) -> Vec<(String, u64, u64)> {
    red_of(cluster, |r| {
        r["kind"] == "client" && r["service"] != "redis-benchmark"
    })
    .await
}

async fn red_of(cluster: &Cluster, keep: impl Fn(&Value) -> bool) -> Vec<(String, u64, u64)> {
    let red = cluster.get(0, "/v1/red").await.unwrap();
    red["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["protocol"] == "redis" && keep(r))
        .map(|r| {
            (
                r["operation"].as_str().unwrap().to_string(),
                r["count"].as_u64().unwrap(),
                r["errors"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn count_of(rows: &[(String, u64, u64)], command: &str) -> (u64, u64) {
    rows.iter()
        .find(|(op, ..)| op == command)
        .map_or((0, 0), |(_, count, errors)| (*count, *errors))
}

/// Writes `bytes` in one write and reads until `replies` CRLF-terminated lines came back.
fn pipelined(stream: &mut TcpStream, bytes: &[u8], lines: usize) -> String {
    stream.write_all(bytes).unwrap();
    pipelined_read(stream, lines)
}

/// Reads until `lines` CRLF-terminated lines came.
fn pipelined_read(stream: &mut TcpStream, lines: usize) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.windows(2).filter(|w| w == b"\r\n").count() < lines {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "redis closed the connection");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_commands_give_spans_and_red_per_command() {
    if !root() {
        eprintln!("SKIPPED redis_commands_give_spans_and_red_per_command: needs root to load eBPF (CI runs it as root)");
        return;
    }
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED redis_commands_give_spans_and_red_per_command: redis-server is not installed (apt-get install redis-server redis-tools)");
        return;
    }
    let cluster = Cluster::start_with(1, &[]).await;
    cluster.unbind_budgets().await;
    let probes = cluster.get(0, "/v1/probes").await.unwrap();
    let redis = probes
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "redis")
        .cloned()
        .expect("a redis probe in /v1/probes");
    assert_eq!(redis["state"], "attached", "{redis}");
    let (_server, port) = redis_server();

    // redis-benchmark: N SETs and N GETs over 4 connections, one command at a time.
    let n = BENCHMARK_REQUESTS.to_string();
    let status = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-n",
            &n,
            "-c",
            "4",
            "-t",
            "set,get",
            "-q",
        ])
        .stdout(Stdio::null())
        .status()
        .expect("redis-benchmark");
    assert!(status.success());

    // A pipelined client: five commands per write, their replies in one read.
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut batch = Vec::new();
    for args in [
        &[&b"SET"[..], b"word", b"hello"][..],
        &[b"INCR", b"word"],
        &[b"GET", b"word"],
        &[b"LPUSH", b"word", b"x"],
        &[b"PING"],
    ] {
        batch.extend(resp(args));
    }
    for _ in 0..PIPELINES {
        let replies = pipelined(&mut client, &batch, 6);
        assert!(replies.contains("-WRONGTYPE"), "{replies}");
    }

    // A client that peeks at each reply before it reads it (std's peek: recvfrom with
    // MSG_PEEK): the peeked bytes are read again, and counted twice the error reply would pair
    // with the next command.
    let mut peeking = TcpStream::connect(("127.0.0.1", port)).unwrap();
    for args in std::iter::once(&[&b"INCR"[..], b"word"][..])
        .chain([&[&b"PING"[..]][..]; PEEKED_PINGS as usize])
    {
        peeking.write_all(&resp(args)).unwrap();
        let mut buf = [0u8; 256];
        let peeked = peeking.peek(&mut buf).unwrap();
        assert!(peeked > 0);
        pipelined_read(&mut peeking, 1);
    }

    // Bad input: a 1 MiB value (longer than any capture, its length known) then a GET on the
    // same connection; a connection closed in the middle of a command; garbage.
    let big = vec![b'v'; 1024 * 1024];
    let mut bytes = resp(&[b"SET", b"big", &big]);
    bytes.extend(resp(&[b"GET", b"word"]));
    pipelined(&mut client, &bytes, 3);
    let mut cut = TcpStream::connect(("127.0.0.1", port)).unwrap();
    cut.write_all(b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$10\r\nonly")
        .unwrap();
    drop(cut);
    let mut garbage = TcpStream::connect(("127.0.0.1", port)).unwrap();
    garbage
        .write_all(b"*2\r\n$3\r\nGET\r\n$zz\r\n\x00\x01\x02")
        .unwrap();
    let mut answer = String::new();
    let _ = garbage.read_to_string(&mut answer); // -ERR Protocol error, then closed
    assert!(answer.contains("Protocol error"), "{answer}");

    let sets = BENCHMARK_REQUESTS + PIPELINES + 1;
    let gets = BENCHMARK_REQUESTS + PIPELINES + 1;
    let rows = cluster
        .wait_for(
            Duration::from_secs(20),
            "RED counts of every command",
            |c| async move {
                let rows = server_red(c).await;
                (count_of(&rows, "SET").0 >= sets
                    && count_of(&rows, "GET").0 >= gets
                    && count_of(&rows, "PING").0 >= PIPELINES + PEEKED_PINGS)
                    .then_some(rows)
            },
        )
        .await;
    // Exact: each command once, errors only where redis answered one.
    assert_eq!(count_of(&rows, "SET"), (sets, 0), "{rows:?}");
    assert_eq!(count_of(&rows, "GET"), (gets, 0), "{rows:?}");
    assert_eq!(
        count_of(&rows, "INCR"),
        (PIPELINES + 1, PIPELINES + 1),
        "{rows:?}"
    );
    assert_eq!(count_of(&rows, "LPUSH"), (PIPELINES, PIPELINES), "{rows:?}");
    assert_eq!(
        count_of(&rows, "PING"),
        (PIPELINES + PEEKED_PINGS, 0),
        "{rows:?}"
    );
    // The client's side, peeks and all: each reply once, with its own command.
    let own = cluster
        .wait_for(
            Duration::from_secs(20),
            "the test's own client commands in RED",
            |c| async move {
                let rows = own_client_red(c).await;
                (count_of(&rows, "PING").0 >= PIPELINES + PEEKED_PINGS).then_some(rows)
            },
        )
        .await;
    assert_eq!(
        count_of(&own, "PING"),
        (PIPELINES + PEEKED_PINGS, 0),
        "{own:?}"
    );
    assert_eq!(
        count_of(&own, "INCR"),
        (PIPELINES + 1, PIPELINES + 1),
        "{own:?}"
    );

    // Spans: OTel attributes, the error's code, and no key unless asked for.
    let spans = cluster
        .get(0, "/v1/spans?limit=4096&service=redis-server")
        .await
        .unwrap();
    let spans: Vec<&Value> = spans
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["protocol"] == "redis" && s["kind"] == "server")
        .collect();
    let lpush = spans
        .iter()
        .find(|s| s["operation"] == "LPUSH")
        .expect("an LPUSH span");
    assert_eq!(lpush["status_code"], "WRONGTYPE", "{lpush}");
    assert_eq!(lpush["system"], "redis");
    assert!(
        lpush.get("key").is_none() && lpush.get("query_text").is_none(),
        "{lpush}"
    );
    assert!(spans
        .iter()
        .all(|s| s["local"] == format!("127.0.0.1:{port}")));

    // The bad input was counted, not paired.
    let probes = cluster.get(0, "/v1/probes").await.unwrap();
    let redis = probes
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "redis")
        .unwrap();
    assert!(redis["unparsed"].as_u64().unwrap() >= 1, "{redis}");
    assert!(redis["events"].as_u64().unwrap() > 0, "{redis}");

    // /metrics: the Redis histogram per command.
    let metrics = cluster.metrics(0).await;
    assert!(
        metrics.lines().any(|l| l.starts_with("apiary_redis")
            && l.contains("command=\"INCR\"")
            && l.contains("service=\"redis-server\"")),
        "no Redis RED in /metrics"
    );

    // Keys on request, live through the config; then the probe off through the maps.
    let (status, body) = cluster.set(0, "privacy.keep_redis_keys", json!(true)).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    pipelined(&mut client, &resp(&[b"GET", b"user:42"]), 1);
    let span = cluster
        .wait_for(
            Duration::from_secs(10),
            "a span with its key",
            |c| async move {
                let spans = c
                    .get(0, "/v1/spans?limit=200&service=redis-server")
                    .await
                    .ok()?;
                spans
                    .as_array()?
                    .iter()
                    .find(|s| s["key"] == "user:42")
                    .cloned()
            },
        )
        .await;
    assert_eq!(span["query_text"], "GET user:42");
    let (status, body) = cluster.set(0, "probe.redis.enabled", json!(false)).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = count_of(&server_red(&cluster).await, "PING").0;
    pipelined(&mut client, &resp(&[b"PING"]), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count_of(&server_red(&cluster).await, "PING").0, before);

    // On again: the connection that went on meanwhile has a hole, and is followed no more
    // (what was missed could have been half a pipeline); a new connection is.
    let (status, body) = cluster.set(0, "probe.redis.enabled", json!(true)).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        pipelined(&mut client, &resp(&[b"PING"]), 1);
    }
    let mut fresh = TcpStream::connect(("127.0.0.1", port)).unwrap();
    for _ in 0..4 {
        pipelined(&mut fresh, &resp(&[b"PING"]), 1);
    }
    cluster
        .wait_for(
            Duration::from_secs(10),
            "the new connection's PINGs",
            |c| async move {
                let rows = server_red(c).await;
                (count_of(&rows, "PING").0 >= before + 4).then_some(())
            },
        )
        .await;
    // Time for the old connection's PINGs to come, were they followed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rows = server_red(&cluster).await;
    assert_eq!(count_of(&rows, "PING").0, before + 4, "{rows:?}");
}
