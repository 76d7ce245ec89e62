//! The mysql probe against a real MariaDB (Debian `mariadb-server`, `mariadb-client`,
//! `libdbd-mariadb-perl`), started by the test in a temp dir on a private port: text statements
//! from the `mariadb` client and server-side prepared statements from Perl's DBD::MariaDB give
//! exactly the operations that ran, per operation and table, on the server's side and the
//! client's, and at a sample rate of 0.01 too (RED counts before sampling); a failing statement
//! gives an error span with its error number; no literal reaches a span's text; a packet out
//! of sequence, an unknown command and a 1 MiB statement from a Python socket break nothing,
//! and the command that cannot be read counts as unparsed in `/v1/probes`. Needs root; skipped with one message otherwise, or
//! when MariaDB is not installed.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::mariadb::{mariadb, mariadb_ok, mariadbd_bin, start_mariadb};
use crate::common::{red_count, red_rows, root, Cluster, RedRows};

/// Statements of each kind per run.
const ROWS: u64 = 40;

/// `ROWS` inserts, selects and updates of `items`, each its own COM_QUERY on one connection.
fn text_statements(port: u16, first_id: u64) {
    let mut sql = String::new();
    for id in first_id..first_id + ROWS {
        sql += &format!("INSERT INTO items (id, v) VALUES ({id}, 'value {id}');");
        sql += &format!("SELECT v FROM items WHERE id = {id};");
        sql += &format!("UPDATE items SET v = 'changed' WHERE id = {id};");
    }
    mariadb_ok(port, "t", &sql);
}

/// `ROWS` executes of one server-side prepared SELECT (COM_STMT_PREPARE, then
/// COM_STMT_EXECUTE by its id) from DBD::MariaDB.
const PREPARED: &str = r#"
use strict;
use DBI;
my ($port, $n) = @ARGV;
my $dbh = DBI->connect(
    "DBI:MariaDB:database=t;host=127.0.0.1;port=$port;mariadb_server_prepare=1",
    "root", "", { RaiseError => 1, PrintError => 0 });
my $sth = $dbh->prepare("SELECT v FROM items WHERE id = ? AND v <> 'secret'");
for my $i (1 .. $n) {
    $sth->execute($i);
    $sth->fetchall_arrayref;
}
$dbh->disconnect;
"#;

fn prepared_statements(port: u16) {
    let output = Command::new("perl")
        .args(["-e", PREPARED, &port.to_string(), &ROWS.to_string()])
        .output()
        .expect("perl");
    assert!(
        output.status.success(),
        "perl DBD::MariaDB (Debian libdbd-mariadb-perl): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// What one run of [`text_statements`] and [`prepared_statements`] gives, per client, kind of
/// statement and table.
const EXPECTED: [(&str, &str); 4] = [
    ("mariadb", "INSERT"),
    ("mariadb", "SELECT"),
    ("mariadb", "UPDATE"),
    ("perl", "SELECT"),
];

/// Runs both clients and checks that both sides counted exactly what ran.
async fn every_statement_counts_exactly(cluster: &Cluster, port: u16, first_id: u64, what: &str) {
    let before = red_rows(cluster, "mariadb").await;
    text_statements(port, first_id);
    prepared_statements(port);
    let delta = |rows: &RedRows, kind: &str, service: &str, op: &str| {
        red_count(rows, kind, service, op, "items") - red_count(&before, kind, service, op, "items")
    };
    // On the server's side the two clients' SELECTs are one row.
    let server_expected = |op: &str| if op == "SELECT" { 2 * ROWS } else { ROWS };
    let rows = cluster
        .wait_for(Duration::from_secs(30), what, |c| async move {
            let rows = red_rows(c, "mariadb").await;
            EXPECTED
                .iter()
                .all(|(client, op)| {
                    delta(&rows, "server", "mariadbd", op) >= server_expected(op)
                        && delta(&rows, "client", client, op) >= ROWS
                })
                .then_some(rows)
        })
        .await;
    for (client, op) in EXPECTED {
        assert_eq!(
            delta(&rows, "client", client, op),
            ROWS,
            "{what}: {client} {op} items: {rows:?}"
        );
        assert_eq!(
            delta(&rows, "server", "mariadbd", op),
            server_expected(op),
            "{what}: server {op} items: {rows:?}"
        );
    }
}

/// The first of mariadbd's spans that `matches`, waited for up to 10 s.
async fn server_span(cluster: &Cluster, what: &str, matches: fn(&Value) -> bool) -> Value {
    cluster
        .wait_for(Duration::from_secs(10), what, |c| async move {
            let spans = c
                .get(0, "/v1/spans?limit=4096&service=mariadbd")
                .await
                .ok()?;
            spans.as_array()?.iter().find(|s| matches(s)).cloned()
        })
        .await
}

/// Logs in as root over a raw socket (no password: the auth response is empty whatever the
/// salt), then sends bytes no client would: a packet out of sequence, a command byte that does
/// not exist, and a 1 MiB statement, each on its own connection.
const BAD_INPUT: &str = r#"
import socket, struct, sys
port = int(sys.argv[1])
def read_packet(s):
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            raise SystemExit("mariadbd closed the connection")
        head += chunk
    n = head[0] | head[1] << 8 | head[2] << 16
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            raise SystemExit("mariadbd closed the connection mid-packet")
        body += chunk
    return head[3], body
def packet(seq, body):
    return struct.pack("<I", len(body))[:3] + bytes([seq]) + body
def login():
    s = socket.create_connection(("127.0.0.1", port))
    seq, greeting = read_packet(s)
    assert greeting[0] == 10, greeting
    caps = 0x1 | 0x200 | 0x8000 | 0x80000  # LONG_PASSWORD PROTOCOL_41 SECURE_CONNECTION PLUGIN_AUTH
    body = struct.pack("<IIB23x", caps, 1 << 24, 33) + b"root\0" + b"\0" + b"mysql_native_password\0"
    s.sendall(packet(1, body))
    seq, reply = read_packet(s)
    if reply[0] == 0xFE:  # switch to another method: its response is empty too
        s.sendall(packet(seq + 1, b""))
        seq, reply = read_packet(s)
    assert reply[0] == 0, reply
    return s
def drain(s):
    s.settimeout(5)
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass
    s.close()
s = login(); s.sendall(packet(7, b"\x03SELECT 1")); drain(s)
s = login(); s.sendall(packet(0, b"\xee\x01\x02\x03 no such command")); s.recv(65536); s.close()
s = login()
s.sendall(packet(0, b"\x03SELECT id FROM t.items WHERE v = '" + b"x" * (1 << 20) + b"'"))
seq, reply = read_packet(s)
assert reply[0] == 1, reply  # one column, then its definition, EOF, no rows, EOF
s.sendall(packet(0, b"\x01")); drain(s)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_statements_give_spans_and_red_per_operation() {
    const NAME: &str = "mysql_statements_give_spans_and_red_per_operation";
    if !root() {
        eprintln!("SKIPPED {NAME}: needs root to load eBPF (CI runs it as root)");
        return;
    }
    let Some(bin) = mariadbd_bin() else {
        eprintln!("SKIPPED {NAME}: MariaDB is not installed (apt-get install mariadb-server mariadb-client libdbd-mariadb-perl)");
        return;
    };
    let server = start_mariadb(&bin);
    let port = server.port;
    mariadb_ok(
        port,
        "",
        "CREATE DATABASE t; CREATE TABLE t.items (id INT PRIMARY KEY, v TEXT);",
    );

    let cluster = Cluster::start_with(1, &[]).await;
    cluster.unbind_budgets().await;
    let probe = |probes: &Value| {
        probes
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "mysql")
            .cloned()
            .unwrap_or_else(|| panic!("no mysql probe in /v1/probes: {probes}"))
    };
    let probes = cluster.get(0, "/v1/probes").await.unwrap();
    assert_eq!(probe(&probes)["state"], "attached", "{probes}");

    every_statement_counts_exactly(&cluster, port, 1, "every statement at rate 1").await;

    // A failing statement: an error span with MariaDB's error number, no literal in its text.
    let failed = mariadb(
        port,
        "t",
        "SELECT nope FROM items WHERE secret = 'hunter2' AND pin = 4242",
    );
    assert!(!failed.status.success());
    let error = server_span(&cluster, "the failing statement's span", |s| {
        s["status_code"].is_string()
    })
    .await;
    assert_eq!(error["status_code"], "1054", "{error}");
    assert_eq!(error["operation"], "SELECT", "{error}");
    assert_eq!(error["collection"], "items", "{error}");
    assert_eq!(error["system"], "mariadb", "{error}");
    assert_eq!(error["kind"], "server", "{error}");
    assert_eq!(
        error["query_text"], "SELECT nope FROM items WHERE secret = ? AND pin = ?",
        "{error}"
    );
    let red = red_rows(&cluster, "mariadb").await;
    let errors: u64 = red
        .iter()
        .filter(|((k, s, o, t), _)| {
            k == "server" && s == "mariadbd" && o == "SELECT" && t == "items"
        })
        .map(|(_, (_, e))| e)
        .sum();
    assert_eq!(errors, 1, "{red:?}");

    // No literal anywhere; the prepared statement's executes carry its text.
    let spans = cluster.get(0, "/v1/spans?limit=4096").await.unwrap();
    let texts: Vec<&str> = spans
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["protocol"] == "mysql")
        .filter_map(|s| s["query_text"].as_str())
        .collect();
    assert!(
        texts.contains(&"SELECT v FROM items WHERE id = ? AND v <> ?"),
        "{texts:?}"
    );
    assert!(
        texts.contains(&"INSERT INTO items (id, v) VALUES (?, ?)"),
        "{texts:?}"
    );
    for text in &texts {
        assert!(
            !text.contains(|c: char| c.is_ascii_digit())
                && !text.contains("hunter2")
                && !text.contains("secret'")
                && !text.contains("value"),
            "a literal in {text:?}"
        );
    }

    // /metrics: the MariaDB histogram per operation and table.
    let metrics = cluster.metrics(0).await;
    assert!(
        metrics.lines().any(|l| l.starts_with("apiary_mariadb")
            && l.contains("operation=\"UPDATE\"")
            && l.contains("collection=\"items\"")
            && l.contains("service=\"mariadbd\"")),
        "no MariaDB RED in /metrics"
    );

    // Bad input from a Python socket: counted, nothing breaks, the 1 MiB statement is a span.
    let unparsed_before = probe(&cluster.get(0, "/v1/probes").await.unwrap())["unparsed"]
        .as_u64()
        .unwrap();
    let status = Command::new("python3")
        .args(["-c", BAD_INPUT, &port.to_string()])
        .status()
        .expect("python3");
    assert!(status.success(), "python bad-input client failed");
    let big = server_span(&cluster, "the 1 MiB statement's span", |s| {
        s["query_text"]
            .as_str()
            .is_some_and(|t| t.starts_with("SELECT id FROM t.items WHERE v = ?"))
    })
    .await;
    assert_eq!(
        big["query_text"], "SELECT id FROM t.items WHERE v = ?…",
        "{big}"
    );
    assert_eq!(big["collection"], "t.items", "{big}");
    // The unknown command, on the server's side (Python reads the greeting in two parts, so
    // its side is never found). Of the packet out of sequence the server reads the header
    // alone, refuses it and closes: nothing was asked, so nothing is paired or counted.
    cluster
        .wait_for(
            Duration::from_secs(10),
            "bad input counted as unparsed",
            |c| async move {
                let probes = c.get(0, "/v1/probes").await.ok()?;
                (probe(&probes)["unparsed"].as_u64()? > unparsed_before).then_some(())
            },
        )
        .await;
    mariadb_ok(port, "t", "SELECT COUNT(*) FROM items");

    // RED before sampling: at 0.01 every statement still counts, on both sides.
    let (status, body) = cluster.set(0, "probe.mysql.sample_rate", json!(0.01)).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    every_statement_counts_exactly(&cluster, port, 1 + ROWS, "every statement at rate 0.01").await;

    // The probe off, live through the maps: nothing more is counted.
    let (status, body) = cluster.set(0, "probe.mysql.enabled", json!(false)).await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = red_count(
        &red_rows(&cluster, "mariadb").await,
        "server",
        "mariadbd",
        "INSERT",
        "items",
    );
    text_statements(port, 1 + 2 * ROWS);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = red_count(
        &red_rows(&cluster, "mariadb").await,
        "server",
        "mariadbd",
        "INSERT",
        "items",
    );
    assert_eq!(after, before, "{}", server.log());
    drop(server);
}
