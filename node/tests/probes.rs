//! A node with real eBPF probes: the replicated config reaches the kernel maps, `/v1/probes`,
//! `/v1/spans` and `/metrics` show what the probes do. Needs root; skipped with one message
//! otherwise.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{cli, curl, python_server, root, Cluster, BIN};
use serde_json::{json, Value};

async fn spans_for(cluster: &Cluster, target: &str) -> Vec<Value> {
    let spans = cluster.get(0, "/v1/spans?limit=4096").await.unwrap();
    spans
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["target"] == target)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_config_drives_the_probes_of_a_node() {
    if !root() {
        eprintln!("SKIPPED replicated_config_drives_the_probes_of_a_node: needs root to load eBPF (CI runs it as root)");
        return;
    }
    let cluster = Cluster::start_with(1, &[]).await;
    cluster.unbind_budgets().await;
    let probes = cluster.get(0, "/v1/probes").await.unwrap();
    let probes = probes.as_array().unwrap();
    let mut names: Vec<&str> = probes.iter().filter_map(|p| p["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["http", "http2", "mysql", "postgres", "process", "redis", "tcp", "tls"],
        "{probes:?}"
    );
    for probe in probes {
        assert_eq!(probe["state"], "attached", "{probe}");
    }

    let (_server, port) = python_server();
    curl(&format!("http://127.0.0.1:{port}/orders/77"));
    let spans = cluster
        .wait_for(
            Duration::from_secs(10),
            "the server and client spans",
            |c| async move {
                let spans = spans_for(c, "/orders/77").await;
                (spans.len() >= 2).then_some(spans)
            },
        )
        .await;
    let server = spans.iter().find(|s| s["kind"] == "server").unwrap();
    assert_eq!(server["route"], "/orders/{id}");
    assert_eq!(server["status"], 404);
    assert_eq!(server["local"], format!("127.0.0.1:{port}"));

    // Off through the API (the mesh), applied to the kernel maps without a reload.
    let (status, body) = cluster.set(0, "probe.http.enabled", json!(false)).await;
    assert_eq!(status, 200, "{body}");
    let http = cluster
        .wait_for(
            Duration::from_secs(5),
            "http to show disabled",
            |c| async move {
                let probes = c.get(0, "/v1/probes").await.ok()?;
                let http = probes
                    .as_array()?
                    .iter()
                    .find(|p| p["name"] == "http")?
                    .clone();
                (http["state"] == "disabled").then_some(http)
            },
        )
        .await;
    let runs_before = http["runs"].as_u64().unwrap();
    curl(&format!("http://127.0.0.1:{port}/quiet/1"));
    // Longer than the reader's idle drain interval (500 ms) and its timer's slack: a span that
    // leaked through would be exported by then.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(spans_for(&cluster, "/quiet/1").await.is_empty());

    let (status, _) = cluster.set(0, "probe.http.enabled", json!(true)).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    curl(&format!("http://127.0.0.1:{port}/loud/2"));
    cluster
        .wait_for(
            Duration::from_secs(10),
            "spans again after re-enabling",
            |c| async move { (spans_for(c, "/loud/2").await.len() >= 2).then_some(()) },
        )
        .await;
    let probes = cluster.get(0, "/v1/probes").await.unwrap();
    let http = probes
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http")
        .unwrap()
        .clone();
    // The same programs kept running (and counting) the whole time.
    assert!(http["runs"].as_u64().unwrap() > runs_before);
    assert!(http["ns_per_run"].as_f64().unwrap() > 0.0);

    let metrics = cluster.metrics(0).await;
    assert!(
        metrics.contains("apiary_probe_runs_total{node=\"n0\",probe=\"http\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("apiary_probe_attached{node=\"n0\",probe=\"tcp\"} 1"),
        "{metrics}"
    );

    let token = cluster.api_token();
    let (ok, out, _) = cli(&[
        "status",
        "--peer",
        &cluster.nodes[0].url(""),
        "--json",
        "--token",
        &token,
    ]);
    assert!(ok, "{out}");
}

#[test]
fn without_root_the_node_says_so_once_and_exits() {
    if !root() {
        eprintln!("SKIPPED without_root_the_node_says_so_once_and_exits: needs root to drop to another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let output = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "node",
            "--data-dir",
        ])
        .arg(dir.path().join("d"))
        .output()
        .expect("setpriv");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("needs root") && stderr.contains("--no-probes"),
        "{stderr}"
    );
    assert_eq!(
        stderr.lines().filter(|l| l.contains("error")).count(),
        1,
        "{stderr}"
    );
    assert!(
        !dir.path().join("d").exists(),
        "a refused start left files behind"
    );
}

/// Reads `apiary tail` output until a line contains `needle` (or panics after 15 s).
fn tail_until(args: &[&str], needle: &str, trigger: impl Fn()) -> String {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .arg("tail")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("apiary tail");
    let stdout = child.stdout.take().unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500)); // subscribed before the request
    trigger();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => break line,
            Ok(_) => continue,
            Err(_) => {
                let _ = child.kill();
                panic!("apiary tail never printed {needle}");
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_live_spans_as_lines_and_json() {
    if !root() {
        eprintln!("SKIPPED tail_follows_live_spans_as_lines_and_json: needs root to load eBPF (CI runs it as root)");
        return;
    }
    let cluster = Cluster::start_with(1, &[]).await;
    cluster.unbind_budgets().await;
    let (_server, port) = python_server();
    let peer = cluster.nodes[0].url("");
    let token = cluster.api_token();
    let line = tail_until(&["--peer", &peer, "--token", &token], "/tail/{id}", || {
        curl(&format!("http://127.0.0.1:{port}/tail/5"))
    });
    assert!(
        line.contains("GET") && line.contains("404") && line.contains(" ms"),
        "{line}"
    );
    let json_line = tail_until(
        &["--peer", &peer, "--json", "--token", &token],
        "/json/{id}",
        || curl(&format!("http://127.0.0.1:{port}/json/6")),
    );
    let span: Value = serde_json::from_str(&json_line).expect("one JSON span per line");
    assert_eq!(span["route"], "/json/{id}");

    let without = Cluster::start(1).await;
    let without_token = without.api_token();
    let (ok, _, err) = cli(&[
        "tail",
        "--peer",
        &without.nodes[0].url(""),
        "--token",
        &without_token,
    ]);
    assert!(!ok && err.contains("--no-probes"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_the_last_requests_before_a_stop_are_exported_after_the_restart() {
    if !root() {
        eprintln!("SKIPPED spans_of_the_last_requests_before_a_stop_are_exported_after_the_restart: needs root to load eBPF (CI runs it as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("telemetry.jsonl");
    let mut cluster = Cluster::start_with(1, &["--export-file", file.to_str().unwrap()]).await;
    cluster.unbind_budgets().await;
    let (_server, port) = python_server();
    curl(&format!("http://127.0.0.1:{port}/warm/0"));
    cluster
        .wait_for(Duration::from_secs(10), "spans flowing", |c| async move {
            (!spans_for(c, "/warm/0").await.is_empty()).then_some(())
        })
        .await;
    // Stopped right after the requests: their records are still in the ring or the batcher.
    for i in 0..5 {
        curl(&format!("http://127.0.0.1:{port}/last/{i}"));
    }
    cluster.nodes[0].terminate();
    cluster.nodes[0].spawn();
    let start = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let missing: Vec<usize> = (0..5)
            .filter(|i| !text.contains(&format!("/last/{i}")))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "spans of /last/{missing:?} were lost in the stop; node log:\n{}",
            cluster.nodes[0].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `/v1/red`'s count of server requests to `route` on `port`'s server (python3).
async fn red_count(cluster: &Cluster, route: &str) -> u64 {
    let red = cluster.get(0, "/v1/red").await.unwrap();
    red["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "server" && r["route"] == route && r["service"] == "python3")
        .map(|r| r["count"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_counts_every_request_at_one_percent_sampling() {
    if !root() {
        eprintln!("SKIPPED red_counts_every_request_at_one_percent_sampling: needs root to load eBPF (CI runs it as root)");
        return;
    }
    let cluster = Cluster::start_with(1, &[]).await;
    cluster.unbind_budgets().await;
    let (status, body) = cluster.set(0, "probe.http.sample_rate", json!(0.01)).await;
    assert_eq!(status, 200, "{body}");
    let (_server, port) = python_server();
    // Applied once the probes report the new rate.
    cluster
        .wait_for(
            Duration::from_secs(5),
            "sample_rate 0.01 in the maps",
            |c| async move {
                let probes = c.get(0, "/v1/probes").await.ok()?;
                let http = probes
                    .as_array()?
                    .iter()
                    .find(|p| p["name"] == "http")?
                    .clone();
                (http["sample_rate"].as_f64()? < 0.02).then_some(())
            },
        )
        .await;
    let requests = 2000u64;
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        for i in 0..requests {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            // A few paths of one route, as a service's clients send them.
            let request = format!("GET /items/{} HTTP/1.1\r\nHost: x\r\n\r\n", i % 3);
            stream.write_all(request.as_bytes()).unwrap();
            let mut response = Vec::new();
            let _ = stream.read_to_end(&mut response);
        }
    })
    .await
    .unwrap();
    let counted = cluster
        .wait_for(
            Duration::from_secs(15),
            "RED to count every request",
            |c| async move {
                let n = red_count(c, "/items/{id}").await;
                (n >= requests).then_some(n)
            },
        )
        .await;
    assert_eq!(
        counted, requests,
        "RED counts every request whatever the sampling"
    );
    let probes = cluster.get(0, "/v1/probes").await.unwrap();
    let http = probes
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http")
        .unwrap()
        .clone();
    // Most of them never left the kernel as a record.
    assert!(http["counted"].as_u64().unwrap() > requests / 2, "{http}");
    let spans = cluster.get(0, "/v1/spans?limit=4096").await.unwrap();
    let kept = spans
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "server" && s["route"] == "/items/{id}")
        .count();
    assert!(
        (5..=50).contains(&kept),
        "{kept} server spans of {requests} requests at sample_rate 0.01"
    );
    // And it stays exact: nothing counted twice once everything is read.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(red_count(&cluster, "/items/{id}").await, requests);
}
