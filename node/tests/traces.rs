//! Connected traces on one node: `curl → threaded Python server A → threaded Python server B`,
//! every request with its own id in its path, so that each of its four spans (curl's client
//! span, A's server span, A's client span to B, B's server span) can be found and every link
//! checked: A's server span is the child of curl's (joined through the connection), A's client
//! span the child of A's server span (through the thread), B's server span the child of A's
//! client span; one trace id; no wrong parent anywhere. Sequential and with 8 concurrent
//! clients. Then sampling per trace: at rate 0.5 every request's four spans are kept or dropped
//! together, and RED still counts every request. Last, a trace fetched whole from another
//! member's API (`GET /v1/traces/{id}`, `apiary trace`), and with the member that holds it
//! killed, an answer that names it. Needs root; skipped with one message otherwise.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{cli, curl, root, Cluster, Server};
use serde_json::{json, Value};

/// A threaded HTTP server (`ThreadingHTTPServer`: a thread per connection) on port argv[1]. With
/// a downstream port (argv[2]) it answers `/front/N` after fetching `/back/N` from it on the
/// handling thread; without one it answers everything itself.
const APP: &str = r#"
import sys, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

downstream = int(sys.argv[2]) if len(sys.argv) > 2 else None

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok"
        if downstream is not None:
            n = self.path.rsplit("/", 1)[-1]
            with urllib.request.urlopen(f"http://127.0.0.1:{downstream}/back/{n}") as answer:
                body = answer.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_app(port: u16, downstream: Option<u16>) -> Server {
    let mut command = Command::new("python3");
    command.args(["-c", APP, &port.to_string()]);
    if let Some(downstream) = downstream {
        command.arg(downstream.to_string());
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "app on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server(child)
}

/// curl → A → B on private ports: (A's port, the two servers).
fn start_chain() -> (u16, [Server; 2]) {
    let (front, back) = (free_port(), free_port());
    let b = start_app(back, None);
    let a = start_app(front, Some(back));
    (front, [a, b])
}

/// The four spans of request `n`, once all are there.
#[derive(Debug)]
struct Chain {
    curl: Value,
    a_server: Value,
    a_client: Value,
    b_server: Value,
}

fn index(spans: &[Value], front: u16) -> HashMap<(String, String), Value> {
    let mut by = HashMap::new();
    for span in spans {
        let (Some(target), Some(kind)) = (span["target"].as_str(), span["kind"].as_str()) else {
            continue;
        };
        // curl's and A's spans of /front/N are told apart by side; only this run's ports.
        let ours = span["local"]
            .as_str()
            .is_some_and(|l| l.ends_with(&format!(":{front}")))
            || span["peer"]
                .as_str()
                .is_some_and(|p| p.ends_with(&format!(":{front}")))
            || target.starts_with("/back/");
        if ours {
            by.insert((target.to_string(), kind.to_string()), span.clone());
        }
    }
    by
}

fn chain_of(by: &HashMap<(String, String), Value>, n: u32) -> Option<Chain> {
    let get = |target: &str, kind: &str| by.get(&(target.to_string(), kind.to_string())).cloned();
    let (front, back) = (format!("/front/{n}"), format!("/back/{n}"));
    Some(Chain {
        curl: get(&front, "client")?,
        a_server: get(&front, "server")?,
        a_client: get(&back, "client")?,
        b_server: get(&back, "server")?,
    })
}

async fn chains(cluster: &Cluster, front: u16, ids: &[u32]) -> Vec<Chain> {
    cluster
        .wait_for(
            Duration::from_secs(15),
            "the four spans of every request",
            |c| async move {
                let spans = c.get(0, "/v1/spans?limit=4096").await.ok()?;
                let by = index(spans.as_array()?, front);
                ids.iter()
                    .map(|n| chain_of(&by, *n))
                    .collect::<Option<Vec<_>>>()
            },
        )
        .await
}

/// (joined links, wrong links) of one request's chain; panics with the chain on a missing one.
fn check(chain: &Chain) -> (usize, usize) {
    let trace = |s: &Value| s["trace"].clone();
    let (curl, a_server, a_client, b_server) = (
        trace(&chain.curl),
        trace(&chain.a_server),
        trace(&chain.a_client),
        trace(&chain.b_server),
    );
    assert!(
        curl["parent_span_id"].is_null(),
        "curl's span is a root: {chain:#?}"
    );
    let mut joined = 0;
    let mut wrong = 0;
    for (child, parent, how) in [
        (&a_server, &curl, "connection"),
        (&a_client, &a_server, "thread"),
        (&b_server, &a_client, "connection"),
    ] {
        if child["parent_span_id"].is_null() {
            continue;
        }
        if child["parent_span_id"] == parent["span_id"]
            && child["trace_id"] == parent["trace_id"]
            && child["link"] == how
        {
            joined += 1;
        } else {
            wrong += 1;
            eprintln!("wrong link: {child} under {parent}");
        }
    }
    (joined, wrong)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_two_threaded_servers_is_one_trace() {
    if !root() {
        eprintln!("SKIPPED a_request_through_two_threaded_servers_is_one_trace: needs root to load eBPF (CI runs it as root)");
        return;
    }
    let cluster = Cluster::start_with(1, &[]).await;
    cluster.unbind_budgets().await;
    let (front, _servers) = start_chain();

    // Sequential, then 8 clients at once (a thread each, 5 requests apiece).
    let sequential: Vec<u32> = (1000..1010).collect();
    for n in &sequential {
        curl(&format!("http://127.0.0.1:{front}/front/{n}"));
    }
    let concurrent: Vec<u32> = (2000..2040).collect();
    let clients: Vec<_> = concurrent
        .chunks(5)
        .map(|ids| {
            let ids = ids.to_vec();
            std::thread::spawn(move || {
                for n in ids {
                    curl(&format!("http://127.0.0.1:{front}/front/{n}"));
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }

    let ids: Vec<u32> = sequential.iter().chain(&concurrent).copied().collect();
    let chains = chains(&cluster, front, &ids).await;
    let (mut joined, mut wrong) = (0, 0);
    for chain in &chains {
        let (j, w) = check(chain);
        joined += j;
        wrong += w;
    }
    assert_eq!(wrong, 0, "no span may have a wrong parent");
    assert_eq!(joined, 3 * ids.len(), "every link of every request joined");

    // /metrics counts them by how they were joined (curl's 50 are roots).
    let metrics = cluster.metrics(0).await;
    let count = |reason: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("apiary_trace_links_total{"))
            .filter(|l| l.contains(&format!("reason=\"{reason}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(count("connection") >= 2 * ids.len() as u64, "{metrics}");
    assert!(count("thread") >= ids.len() as u64, "{metrics}");
    assert!(count("no_parent") >= ids.len() as u64, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_is_sampled_whole() {
    if !root() {
        eprintln!("SKIPPED a_trace_is_sampled_whole: needs root to load eBPF (CI runs it as root)");
        return;
    }
    let cluster = Cluster::start_with(1, &[]).await;
    cluster.unbind_budgets().await;
    let (status, body) = cluster.set(0, "probe.http.sample_rate", json!(0.5)).await;
    assert_eq!(status, 200, "{body}");
    cluster
        .wait_for(
            Duration::from_secs(10),
            "the rate in the kernel",
            |c| async move {
                let probes = c.get(0, "/v1/probes").await.ok()?;
                let http = probes
                    .as_array()?
                    .iter()
                    .find(|p| p["name"] == "http")?
                    .clone();
                (http["sample_rate"].as_f64()? < 0.75).then_some(())
            },
        )
        .await;
    let (front, _servers) = start_chain();
    let ids: Vec<u32> = (3000..3040).collect();
    for n in &ids {
        curl(&format!("http://127.0.0.1:{front}/front/{n}"));
    }

    // RED counts every request, kept or not: wait for all of A's to be counted.
    let counted = |metrics: &str, route: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("apiary_http_requests_total{"))
            .filter(|l| l.contains(route) && l.contains("\"server\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let total = ids.len() as u64;
    cluster
        .wait_for(
            Duration::from_secs(15),
            "RED to count every request",
            |c| async move {
                let metrics = c.metrics(0).await;
                (counted(&metrics, "/front/{id}") >= total
                    && counted(&metrics, "/back/{id}") >= total)
                    .then_some(())
            },
        )
        .await;
    // Everything the reader had is published by now (RED and spans come from the same records).
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let spans = cluster.get(0, "/v1/spans?limit=4096").await.unwrap();
    let by = index(spans.as_array().unwrap(), front);
    let (mut kept, mut dropped) = (0, 0);
    for n in &ids {
        let present = [
            (format!("/front/{n}"), "client"),
            (format!("/front/{n}"), "server"),
            (format!("/back/{n}"), "client"),
            (format!("/back/{n}"), "server"),
        ]
        .iter()
        .filter(|(target, kind)| by.contains_key(&(target.clone(), kind.to_string())))
        .count();
        match present {
            4 => kept += 1,
            0 => dropped += 1,
            some => panic!("request {n}: {some} of its 4 spans kept; a trace is kept whole"),
        }
    }
    // At 0.5, 40 traces all on one side would be a 2^-39 chance.
    assert!(kept > 0 && dropped > 0, "kept {kept}, dropped {dropped}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_is_fetched_whole_from_any_member() {
    if !root() {
        eprintln!("SKIPPED a_trace_is_fetched_whole_from_any_member: needs root to load eBPF (CI runs it as root)");
        return;
    }
    // n0 sees the requests; n1 (no probes) holds none of their spans and gathers them.
    let mut cluster = Cluster::start_with(1, &[]).await;
    cluster.add_node("n1", &["--no-probes"]).await;
    cluster.unbind_budgets().await;
    let (front, _servers) = start_chain();
    curl(&format!("http://127.0.0.1:{front}/front/4000"));
    let chain = chains(&cluster, front, &[4000]).await.remove(0);
    let trace_id = chain.curl["trace"]["trace_id"]
        .as_str()
        .unwrap()
        .to_string();

    let view = cluster
        .get(1, &format!("/v1/traces/{trace_id}"))
        .await
        .unwrap();
    let spans = view["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 4, "{view:#}");
    assert!(spans
        .iter()
        .all(|s| s["node"] == "n0" && s["trace"]["trace_id"] == trace_id));
    assert_eq!(view["answered"], json!(["n1", "n0"]));
    assert_eq!(view["missing"], json!([]));

    let token = cluster.api_token();
    let peer = cluster.nodes[1].url("");
    let (ok, out, err) = cli(&["trace", &trace_id, "--peer", &peer, "--token", &token]);
    assert!(ok, "{err}");
    assert!(
        out.contains("4 spans") && out.contains("/back/4000"),
        "{out}"
    );
    let (ok, _, err) = cli(&["trace", "not-a-trace", "--peer", &peer, "--token", &token]);
    assert!(!ok && err.contains("32 hex digits"), "{err}");

    // The member that holds the spans is gone: the answer says so instead of failing.
    cluster.nodes[0].kill();
    let view = cluster
        .get(1, &format!("/v1/traces/{trace_id}"))
        .await
        .unwrap();
    assert_eq!(view["spans"], json!([]));
    assert_eq!(view["answered"], json!(["n1"]));
    assert_eq!(view["missing"][0]["node"], "n0", "{view:#}");
}
