//! Connected traces across hosts: three network namespaces on one bridge, each with its own
//! `apiary` node (probes on, scoped to its namespace) in one cluster, and a threaded Python
//! service in each: a driver in A calls A's `/front/N`, which calls B's `/mid/N`, which calls
//! C's `/back/N`. Each request's six spans (the driver's client span, A's server and client
//! spans, B's, C's server span) must be one trace with the right parent at every link, the
//! two links between hosts carried by the TCP header option (`bpf/propagate.h`, link
//! `remote`), and the whole trace fetched from any node's API. Then sampling at 0.1 decided once
//! at the root: every request's spans kept on all three nodes or dropped on all three. Last,
//! with C's node killed, a trace fetched from A names C as missing and holds what is left.
//! Needs root; skipped with one message otherwise.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use apiary_chaos::hosts::root;
use apiary_chaos::mesh::{wait_until, Mesh};
use serde_json::{json, Value};

/// A `ThreadingHTTPServer` (a thread per connection) on argv[1]:argv[2]; with a downstream
/// (argv[3], host:port) it answers `/front/N` after fetching `/mid/N` there, and `/mid/N`
/// after fetching `/back/N`, on the handling thread.
const SERVICE: &str = r#"
import sys, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

host, port = sys.argv[1], int(sys.argv[2])
downstream = sys.argv[3] if len(sys.argv) > 3 else None
next_hop = {"front": "mid", "mid": "back"}

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok"
        if downstream is not None:
            _, hop, n = self.path.split("/")
            url = f"http://{downstream}/{next_hop[hop]}/{n}"
            with urllib.request.urlopen(url, timeout=10) as answer:
                body = answer.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer((host, port), Handler).serve_forever()
"#;

/// `/front/N` for N in [argv[2], argv[2] + argv[3]) against argv[1], from argv[4] threads
/// (one connection per request); exits 1 naming the requests that failed.
const DRIVER: &str = r#"
import sys, threading, urllib.request

base, first, count, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ids = list(range(first, first + count))
failed = []

def work(chunk):
    for n in chunk:
        try:
            with urllib.request.urlopen(f"{base}/front/{n}", timeout=20) as answer:
                answer.read()
        except Exception as e:
            failed.append((n, repr(e)))

workers = [threading.Thread(target=work, args=(ids[i::threads],)) for i in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
if failed:
    print(failed[:5], len(failed), "failed")
    sys.exit(1)
"#;

const PORT: u16 = 8080;

/// A process started in a namespace, killed (its whole group) when dropped.
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn in_namespace(ns: &str, args: &[&str]) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", ns]).args(args);
    command
}

fn start_service(mesh: &Mesh, i: usize, downstream: Option<usize>) -> App {
    let ip = mesh.network.ips[i].to_string();
    let next = downstream.map(|d| format!("{}:{PORT}", mesh.network.ips[d]));
    let port = PORT.to_string();
    let mut args = vec!["python3", "-c", SERVICE, &ip, &port];
    if let Some(next) = &next {
        args.push(next);
    }
    let child = in_namespace(&mesh.network.namespaces[i], &args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    App(child)
}

fn drive(mesh: &Mesh, first: u32, count: u32, threads: u32) {
    let base = format!("http://{}:{PORT}", mesh.network.ips[0]);
    let (first, count, threads) = (first.to_string(), count.to_string(), threads.to_string());
    let output = in_namespace(
        &mesh.network.namespaces[0],
        &["python3", "-c", DRIVER, &base, &first, &count, &threads],
    )
    .output()
    .expect("python3");
    assert!(
        output.status.success(),
        "driver: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// The six spans of one request, by (target, kind), and the node that must hold each.
fn expected(n: u32) -> [(String, &'static str, &'static str); 6] {
    [
        (format!("/front/{n}"), "client", "n0"),
        (format!("/front/{n}"), "server", "n0"),
        (format!("/mid/{n}"), "client", "n0"),
        (format!("/mid/{n}"), "server", "n1"),
        (format!("/back/{n}"), "client", "n1"),
        (format!("/back/{n}"), "server", "n2"),
    ]
}

/// Each child (by index in `expected`) with its parent and how the kernel must have joined it.
const LINKS: [(usize, usize, &str); 5] = [
    (1, 0, "connection"),
    (2, 1, "thread"),
    (3, 2, "remote"),
    (4, 3, "thread"),
    (5, 4, "remote"),
];

/// This run's spans of the service chain among `spans`, by (target, kind).
fn index(spans: &[Value]) -> HashMap<(String, String), Value> {
    let mut by = HashMap::new();
    for span in spans {
        let (Some(target), Some(kind)) = (span["target"].as_str(), span["kind"].as_str()) else {
            continue;
        };
        let ours = ["/front/", "/mid/", "/back/"]
            .iter()
            .any(|p| target.starts_with(p));
        if ours {
            by.insert((target.to_string(), kind.to_string()), span.clone());
        }
    }
    by
}

/// (whole and right, wrong links) of request `n` in a trace view (`GET /v1/traces/{id}`).
fn check_trace(view: &Value, n: u32) -> (bool, usize) {
    let by = index(view["spans"].as_array().map_or(&[][..], |s| s));
    let spans: Vec<Option<&Value>> = expected(n)
        .iter()
        .map(|(target, kind, _)| by.get(&(target.clone(), kind.to_string())))
        .collect();
    let mut whole = spans.iter().all(Option::is_some) && by.len() == 6;
    for ((target, _, node), span) in expected(n).iter().zip(&spans) {
        if span.is_some_and(|s| s["node"] != *node) {
            eprintln!("{target} on the wrong node: {}", span.unwrap());
            whole = false;
        }
    }
    let mut wrong = 0;
    for (child, parent, how) in LINKS {
        let (Some(child), Some(parent)) = (spans[child], spans[parent]) else {
            continue;
        };
        let (c, p) = (&child["trace"], &parent["trace"]);
        if c["parent_span_id"].is_null() {
            whole = false;
        } else if c["parent_span_id"] == p["span_id"]
            && c["trace_id"] == p["trace_id"]
            && c["link"] == how
        {
        } else {
            wrong += 1;
            whole = false;
            eprintln!("wrong link: {child} under {parent}");
        }
    }
    (whole, wrong)
}

/// Server requests RED counted on node `i` for a route, kept or not.
fn counted(metrics: &str, route: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("apiary_http_requests_total{"))
        .filter(|l| l.contains(&format!("route=\"{route}\"")) && l.contains("kind=\"server\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_across_three_hosts_is_one_trace() {
    if !root() {
        eprintln!(
            "SKIPPED a_request_across_three_hosts_is_one_trace: needs root (namespaces, eBPF)"
        );
        return;
    }
    let mut mesh = Mesh::start(3, true)
        .await
        .expect("three nodes in one cluster");
    let m = &mesh;
    wait_until(
        Duration::from_secs(120),
        "the http probe and propagation on every node",
        || async move {
            for i in 0..3 {
                let probes = m.get(i, "/v1/probes").await?;
                let http = probes
                    .as_array()?
                    .iter()
                    .find(|p| p["name"] == "http")?
                    .clone();
                if http["state"] != "attached" {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
    .unwrap();
    // Tuning off (it would lower sampling on its own), and no keep rule that keeps a slow
    // span of a dropped trace on its own (a whole trace is the point here).
    mesh.configure(json!([
        {"key": "budget.cpu_percent_per_node", "value": 100},
        {"key": "budget.export_events_per_second", "value": 1_000_000_000u64},
        {"key": "budget.always_keep.slower_than_ms", "value": 0},
        {"key": "budget.always_keep.errors", "value": false},
    ]))
    .await
    .unwrap();

    let _c = start_service(&mesh, 2, None);
    let _b = start_service(&mesh, 1, Some(2));
    let _a = start_service(&mesh, 0, Some(1));
    for ip in &mesh.network.ips {
        let addr = std::net::SocketAddr::from((*ip, PORT));
        wait_until(Duration::from_secs(10), "the services", || async move {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
        })
        .await
        .unwrap();
    }

    // 200 requests from 8 threads, each its own connection.
    let (first, count) = (1000u32, 200u32);
    drive(&mesh, first, count, 8);
    let m = &mesh;
    let roots: HashMap<u32, String> = wait_until(
        Duration::from_secs(30),
        "the driver's and C's spans",
        || async move {
            let a = index(m.get(0, "/v1/spans?limit=4096").await?.as_array()?);
            let c = index(m.get(2, "/v1/spans?limit=4096").await?.as_array()?);
            let mut roots = HashMap::new();
            for n in first..first + count {
                c.get(&(format!("/back/{n}"), "server".into()))?;
                let root = a.get(&(format!("/front/{n}"), "client".into()))?;
                roots.insert(n, root["trace"]["trace_id"].as_str()?.to_string());
            }
            Some(roots)
        },
    )
    .await
    .unwrap();
    // Fetched whole from each node's API in turn.
    let (mut whole, mut wrong) = (0, 0);
    for n in first..first + count {
        let view = mesh
            .get((n % 3) as usize, &format!("/v1/traces/{}", roots[&n]))
            .await
            .expect("a trace view");
        let (w, bad) = check_trace(&view, n);
        whole += w as u32;
        wrong += bad;
        if !w {
            eprintln!("request {n} not whole from n{}: {view:#}", n % 3);
        }
    }
    eprintln!("{whole} of {count} requests one whole trace, {wrong} wrong links");
    assert_eq!(wrong, 0, "no span may have a wrong parent");
    assert!(whole * 100 >= count * 99, "{whole} of {count} whole traces");
    let metrics = mesh.metrics(1).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("apiary_trace_links_total{") && l.contains("reason=\"remote\"")),
        "B counts its remote joins: {metrics}"
    );

    // Sampling at 0.1, decided by A's kernel at the root and followed by B's and C's.
    mesh.configure(json!([{"key": "probe.http.sample_rate", "value": 0.1}]))
        .await
        .unwrap();
    let m = &mesh;
    wait_until(
        Duration::from_secs(10),
        "the rate in every kernel",
        || async move {
            for i in 0..3 {
                let probes = m.get(i, "/v1/probes").await?;
                let http = probes
                    .as_array()?
                    .iter()
                    .find(|p| p["name"] == "http")?
                    .clone();
                if http["sample_rate"].as_f64()? > 0.11 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
    .unwrap();
    let (sampled_first, sampled_count) = (5000u32, 200u32);
    drive(&mesh, sampled_first, sampled_count, 8);
    let total = (count + sampled_count) as u64;
    wait_until(
        Duration::from_secs(30),
        "RED to count every request on every node",
        || async move {
            for (i, route) in ["/front/{id}", "/mid/{id}", "/back/{id}"]
                .iter()
                .enumerate()
            {
                if counted(&m.metrics(i).await, route) < total {
                    return None;
                }
            }
            Some(())
        },
    )
    .await
    .unwrap();
    // Everything the readers had is published by now (RED and spans come from the same records).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut all = HashMap::new();
    for i in 0..3 {
        let spans = mesh.get(i, "/v1/spans?limit=4096").await.expect("spans");
        all.extend(index(spans.as_array().unwrap()));
    }
    let (mut kept, mut dropped) = (0, 0);
    for n in sampled_first..sampled_first + sampled_count {
        let present = expected(n)
            .iter()
            .filter(|(target, kind, _)| all.contains_key(&(target.clone(), kind.to_string())))
            .count();
        match present {
            6 => kept += 1,
            0 => dropped += 1,
            some => {
                panic!("request {n}: {some} of its 6 spans kept; a trace is kept or dropped whole")
            }
        }
    }
    eprintln!("at 0.1: {kept} kept whole, {dropped} dropped whole");
    // At 0.1, 200 traces all dropped is a 7e-10 chance, all kept far less.
    assert!(kept > 0 && dropped > 0, "kept {kept}, dropped {dropped}");

    // C's node is gone: A answers with A's and B's spans and names it.
    mesh.nodes[2].kill();
    let view = mesh
        .get(0, &format!("/v1/traces/{}", roots[&first]))
        .await
        .expect("a partial trace view");
    assert_eq!(view["spans"].as_array().map(Vec::len), Some(5), "{view:#}");
    assert_eq!(view["missing"][0]["node"], "n2", "{view:#}");
    assert_eq!(view["answered"], json!(["n0", "n1"]), "{view:#}");
}
