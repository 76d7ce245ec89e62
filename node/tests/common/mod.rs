//! A harness that runs real `apiary node` processes on loopback, each with its own data dir and
//! ports, and talks to them over their HTTP API. Shared by the tests and the benchmarks.

use std::cell::Cell;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod mariadb;
pub mod postgres;
pub mod servers;

pub const BIN: &str = env!("CARGO_BIN_EXE_apiary");

/// A UDP port (QUIC) and three TCP ports (API, OTLP/HTTP, OTLP/gRPC), free when asked.
pub fn free_ports() -> (u16, u16, u16, u16) {
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let tcp = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    let otlp = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    let grpc = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    (
        udp.local_addr().unwrap().port(),
        tcp.local_addr().unwrap().port(),
        otlp.local_addr().unwrap().port(),
        grpc.local_addr().unwrap().port(),
    )
}

pub struct Node {
    pub name: String,
    pub quic: SocketAddr,
    pub api: SocketAddr,
    pub otlp: SocketAddr,
    pub otlp_grpc: SocketAddr,
    pub data_dir: PathBuf,
    join: Option<(SocketAddr, String)>,
    /// Extra flags; mesh tests run without probes so that many nodes fit one machine.
    pub extra: Vec<String>,
    /// Extra environment (a failpoint, say) for the next starts.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Node {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub fn spawn(&mut self) {
        let log = |suffix: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.data_dir.with_extension(suffix))
                .expect("open log")
        };
        let mut command = Command::new(BIN);
        command
            .args(["node", "--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--listen",
                &self.quic.to_string(),
                "--api",
                &self.api.to_string(),
                "--otlp-http",
                &self.otlp.to_string(),
                "--otlp-grpc",
                &self.otlp_grpc.to_string(),
            ])
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("APIARY_LOG", "info,openraft=warn")
            // The tests' nodes run at the default niceness whatever the runner exports.
            .env_remove("APIARY_NICE")
            .stdin(Stdio::null())
            .stdout(log("out"))
            .stderr(log("err"));
        if let Some((via, token)) = &self.join {
            command.args(["--join", &via.to_string(), "--join-token", token]);
        }
        self.child = Some(command.spawn().expect("spawn apiary node"));
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no goodbye, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as systemd or Kubernetes stop a node, and waits for it to exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill takes plain integers; the pid is our own child's, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// Starts the node again from its data dir, with the same flags.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.data_dir.with_extension("err")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// Which tests run at the same time. Every test is in one binary, and a node with probes sees
/// the traffic of every process on this machine: a test that floods the machine with requests
/// and measures rates (the intensity test) runs [`alone`], while the tests that start nodes hold
/// a [`shared`] part of the machine: every [`Cluster`] does, and the tests that start nodes of
/// their own (the quickstart's, setup's from a file) take one.
struct Machine {
    shared: usize,
    alone: bool,
    waiting_alone: usize,
}

static MACHINE: Mutex<Machine> = Mutex::new(Machine {
    shared: 0,
    alone: false,
    waiting_alone: 0,
});
static MACHINE_CHANGED: Condvar = Condvar::new();

thread_local! {
    /// Shares this test's thread holds: a test that holds one may take more (two clusters)
    /// even while a test waits to run alone, so that neither waits for the other.
    static SHARES: Cell<usize> = const { Cell::new(0) };
    /// This thread's test runs alone: its own clusters need no share.
    static ALONE: Cell<bool> = const { Cell::new(false) };
}

fn machine() -> MutexGuard<'static, Machine> {
    // A test that panicked while holding the lock left the counts consistent.
    MACHINE.lock().unwrap_or_else(|p| p.into_inner())
}

fn wait(guard: MutexGuard<'static, Machine>) -> MutexGuard<'static, Machine> {
    MACHINE_CHANGED
        .wait(guard)
        .unwrap_or_else(|p| p.into_inner())
}

/// A part of the machine, shared with other tests but not with one that runs [`alone`].
pub struct Share {
    counted: bool,
}

pub fn shared() -> Share {
    if ALONE.get() {
        return Share { counted: false };
    }
    let mut machine = machine();
    if SHARES.get() == 0 {
        while machine.alone || machine.waiting_alone > 0 {
            machine = wait(machine);
        }
    }
    machine.shared += 1;
    SHARES.set(SHARES.get() + 1);
    Share { counted: true }
}

impl Drop for Share {
    fn drop(&mut self) {
        if self.counted {
            machine().shared -= 1;
            SHARES.set(SHARES.get().saturating_sub(1));
            MACHINE_CHANGED.notify_all();
        }
    }
}

/// The whole machine: no other test runs nodes until this is dropped.
pub struct Alone(());

pub fn alone() -> Alone {
    let mut machine = machine();
    machine.waiting_alone += 1;
    while machine.alone || machine.shared > 0 {
        machine = wait(machine);
    }
    machine.waiting_alone -= 1;
    machine.alone = true;
    ALONE.set(true);
    Alone(())
}

impl Drop for Alone {
    fn drop(&mut self) {
        machine().alone = false;
        ALONE.set(false);
        MACHINE_CHANGED.notify_all();
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub http: reqwest::Client,
    pub token: String,
    /// Released after `drop` has killed the nodes.
    _machine: Share,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!("--- log of {} ---\n{}", node.name, node.log_tail());
            }
        }
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

impl Cluster {
    /// Starts `size` nodes: the first creates the cluster, the others join through it, one at a
    /// time, each waiting until it is a member.
    pub async fn start(size: usize) -> Cluster {
        Self::start_with(size, &["--no-probes"]).await
    }

    /// Like [`Cluster::start`], with `extra` flags for every node.
    pub async fn start_with(size: usize, extra: &[&str]) -> Cluster {
        let machine = shared();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cluster = Cluster {
            _machine: machine,
            dir,
            nodes: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            token: String::new(),
        };
        for i in 0..size {
            cluster.add_node(&format!("n{i}"), extra).await;
        }
        cluster
    }

    pub async fn add_node(&mut self, name: &str, extra: &[&str]) {
        let (quic, api, otlp, grpc) = free_ports();
        let join = self.nodes.first().map(|first| {
            let token = std::fs::read_to_string(first.data_dir.join("join-token")).unwrap();
            (first.quic, token.trim().to_string())
        });
        let mut node = Node {
            name: name.to_string(),
            quic: SocketAddr::from(([127, 0, 0, 1], quic)),
            api: SocketAddr::from(([127, 0, 0, 1], api)),
            otlp: SocketAddr::from(([127, 0, 0, 1], otlp)),
            otlp_grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
            data_dir: self.dir.path().join(name),
            join,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            child: None,
        };
        node.spawn();
        self.nodes.push(node);
        let index = self.nodes.len() - 1;
        let expected = self.nodes.len();
        self.wait_for(
            Duration::from_secs(30),
            &format!("{name} to become a member"),
            |c| async move {
                let cluster = c.get(index, "/v1/cluster").await.ok()?;
                (cluster["members"].as_array()?.len() == expected).then_some(())
            },
        )
        .await;
        if self.token.is_empty() {
            let text = std::fs::read_to_string(self.nodes[0].data_dir.join("api-token")).unwrap();
            self.token = text.trim().to_string();
        }
    }

    /// The cluster's admin token (DATA_DIR/api-token of the first node), which reads need too.
    pub fn api_token(&self) -> String {
        if !self.token.is_empty() {
            return self.token.clone();
        }
        self.nodes
            .first()
            .and_then(|first| std::fs::read_to_string(first.data_dir.join("api-token")).ok())
            .map(|text| text.trim().to_string())
            .unwrap_or_default()
    }

    pub async fn get(&self, node: usize, path: &str) -> Result<Value, String> {
        let response = self
            .http
            .get(self.nodes[node].url(path))
            .bearer_auth(self.api_token())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    }

    /// Sends a write; returns the HTTP status and the JSON body.
    pub async fn write(
        &self,
        node: usize,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> (u16, Value) {
        let response = self
            .http
            .request(method, self.nodes[node].url(path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("request failed to send");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn set(&self, node: usize, key: &str, value: Value) -> (u16, Value) {
        let body = json!({ "changes": [{ "key": key, "value": value }], "comment": "test" });
        self.write(node, reqwest::Method::PATCH, "/v1/config", body)
            .await
    }

    /// The node's Prometheus text (`GET /metrics`).
    pub async fn metrics(&self, node: usize) -> String {
        self.http
            .get(self.nodes[node].url("/metrics"))
            .bearer_auth(self.api_token())
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the /metrics body")
    }

    /// Budgets too large to bind, so that cooperative tuning leaves sampling alone in tests that
    /// count every span (the tuning test sets its own).
    pub async fn unbind_budgets(&self) {
        let body = json!({"changes": [
            {"key": "budget.cpu_percent_per_node", "value": 100},
            {"key": "budget.export_events_per_second", "value": 1_000_000_000u64},
        ], "comment": "test: tuning off"});
        let (status, answer) = self
            .write(0, reqwest::Method::PATCH, "/v1/config", body)
            .await;
        assert_eq!(status, 200, "{answer}");
    }

    /// Index of the node every live node agrees is the leader.
    pub async fn leader(&self, live: &[usize]) -> usize {
        self.wait_for(
            Duration::from_secs(20),
            "an agreed leader",
            |c| async move {
                let mut leader = None;
                for &i in live {
                    let status = c.get(i, "/v1/cluster").await.ok()?;
                    let name = status["leader_name"].as_str()?.to_string();
                    if leader.get_or_insert(name.clone()) != &name {
                        return None;
                    }
                }
                let name = leader?;
                live.iter().copied().find(|&i| c.nodes[i].name == name)
            },
        )
        .await
    }

    pub async fn config_version(&self, node: usize) -> Option<u64> {
        self.get(node, "/v1/config").await.ok()?["version"].as_u64()
    }

    /// Waits until every node in `nodes` has applied `version`.
    pub async fn wait_version(&self, nodes: &[usize], version: u64) {
        self.wait_for(
            Duration::from_secs(20),
            &format!("version {version} everywhere"),
            |c| async move {
                for &i in nodes {
                    if c.config_version(i).await? < version {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
    }

    /// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
    pub async fn wait_for<'a, T, F, Fut>(&'a self, timeout: Duration, what: &str, check: F) -> T
    where
        F: Fn(&'a Cluster) -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let start = Instant::now();
        loop {
            if let Some(value) = check(self).await {
                return value;
            }
            if start.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs the `apiary` CLI and returns (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BIN)
        .args(args)
        .env_remove("APIARY_TOKEN")
        .output()
        .expect("run apiary");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// True when the tests run as root (the probes need it).
pub fn root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

/// A child process killed when dropped.
pub struct Server(pub Child);

/// Sends `signal` to a server the test started (its clean shutdown), then waits up to 10 s for
/// it to exit, and kills it if it has not.
pub fn stop_gracefully(child: &mut Child, signal: libc::c_int) {
    // SAFETY: kill takes plain integers; the pid is our own child's, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// RED rows of one protocol in a node's `/v1/red`, by (kind, service, operation, route):
/// (count, errors).
pub type RedRows = Vec<((String, String, String, String), (u64, u64))>;

pub async fn red_rows(cluster: &Cluster, protocol: &str) -> RedRows {
    let red = cluster.get(0, "/v1/red").await.unwrap();
    red["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["protocol"] == protocol)
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (
                (
                    text("kind"),
                    text("service"),
                    text("operation"),
                    text("route"),
                ),
                (r["count"].as_u64().unwrap(), r["errors"].as_u64().unwrap()),
            )
        })
        .collect()
}

/// The count of one (kind, service, operation, route) in `rows`.
pub fn red_count(rows: &RedRows, kind: &str, service: &str, operation: &str, route: &str) -> u64 {
    rows.iter()
        .filter(|((k, s, o, r), _)| k == kind && s == service && o == operation && r == route)
        .map(|(_, (count, _))| count)
        .sum()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Python's `http.server` on a free loopback port (404 for every path but `/`).
pub fn python_server() -> (Server, u16) {
    python_server_in(&std::env::temp_dir())
}

/// Python's `http.server` serving the files of `dir` on a free loopback port, once it answers.
pub fn python_server_in(dir: &Path) -> (Server, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }
    (Server(child), port)
}

/// One GET with curl, body discarded.
pub fn curl(url: &str) {
    let status = Command::new("curl")
        .args(["-s", "-o", "/dev/null", url])
        .status()
        .unwrap();
    assert!(status.success());
}

/// (path, body) of every request the collector got.
pub type Requests = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// An OTLP/HTTP receiver that records every request, for checking fields with the official
/// protobuf definitions.
#[derive(Clone, Default)]
pub struct Collector {
    received: Requests,
}

impl Collector {
    pub async fn start(&self) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.serve(listener)
    }

    /// On `port`, chosen before (a collector that comes up where a node already sends).
    pub async fn start_on(&self, port: u16) -> u16 {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        self.serve(listener)
    }

    fn serve(&self, listener: tokio::net::TcpListener) -> u16 {
        let received = self.received.clone();
        let app = axum::Router::new().route(
            "/{*path}",
            axum::routing::post(move |uri: axum::http::Uri, body: axum::body::Bytes| {
                let received = received.clone();
                async move {
                    received
                        .lock()
                        .unwrap()
                        .push((uri.path().to_string(), body.to_vec()));
                    ""
                }
            }),
        );
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        port
    }

    pub fn bodies(&self, path: &str) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }
}

/// A tool from the environment variable `var`, else from the workspace's `target/otel-venv`
/// (which .ci/run builds: the OpenTelemetry Python SDK and the rotel collector).
pub fn venv_tool(var: &str, relative: &str) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(var) {
        return Some(PathBuf::from(path));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/otel-venv");
    if relative.contains('*') {
        // lib/python3*/site-packages/…: the one Python version the venv has.
        let (before, after) = relative.split_once('*')?;
        let parent = venv.join(before);
        let parent_dir = parent.parent()?;
        let prefix = parent.file_name()?.to_str()?.to_string();
        std::fs::read_dir(parent_dir)
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path().join(after.trim_start_matches('/')))
            .find(|p| p.exists())
    } else {
        Some(venv.join(relative)).filter(|p| p.exists())
    }
}

/// A QUIC transport presenting the identity stored in `tls` (a copy of a node's `tls/`
/// directory), trusting the CA a member (whose data dir is `member_dir`) uses now.
pub fn transport_with(tls: &Path, member_dir: &Path) -> std::sync::Arc<apiary_wire::Transport> {
    let read = |name: &str| std::fs::read(tls.join(name)).unwrap();
    let member_ca = std::fs::read(member_dir.join("tls/ca.der")).unwrap();
    let identity = apiary_wire::Identity::new(read("node.der"), read("node.key"), read("ca.der"))
        .trusting([member_ca]);
    apiary_wire::Transport::bind("127.0.0.1:0".parse().unwrap(), &identity).unwrap()
}

/// Calls a member's `Ping` over QUIC with the identity stored in `tls` (a copy of a node's
/// `tls/` directory). The caller trusts the member's current CA (read from `member_dir`), so
/// only the member's trust decides.
pub async fn ping_with(
    tls: &Path,
    member_dir: &Path,
    member: std::net::SocketAddr,
) -> Result<apiary_wire::Message, String> {
    let transport = transport_with(tls, member_dir);
    let ping = apiary_wire::Message::Request {
        service: apiary_wire::Service::Ping,
        payload: b"null".to_vec(),
    };
    let answer = tokio::time::timeout(Duration::from_secs(5), transport.call(member, &ping)).await;
    transport.close();
    match answer {
        Ok(Ok(message @ apiary_wire::Message::Response { .. })) => Ok(message),
        Ok(Ok(other)) => Err(format!("{other:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

pub fn copy_tls(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for name in ["ca.der", "node.der", "node.key"] {
        std::fs::copy(from.join("tls").join(name), to.join(name)).unwrap();
    }
}
