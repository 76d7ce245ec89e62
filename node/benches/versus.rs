//! Apiary against traditional instrumentation, on the same real services under the same load:
//! a Flask app with one downstream call (PyPI), a Node.js `http` server, a Go `net/http` server
//! (Debian's golang-go, standard library only) and nginx (Debian),
//! each (a) bare, (b) with an Apiary node (default config, probes on, exporting to a sink),
//! (c) instrumented the traditional way: the OpenTelemetry SDK's auto-instrumentation in the
//! app (Python `opentelemetry-instrument`, Node `@opentelemetry/auto-instrumentations-node`)
//! exporting to a collector (`rotel`, PyPI) that exports to the sink, and (d) both (hybrid: the
//! SDK exports to the node's OTLP receiver). nginx has no SDK here (no OpenTelemetry module in
//! Debian), so it runs (a) and (b) only; nor has Go: its `otelhttp` needs Go modules this
//! machine cannot fetch (no Go module proxy among its registries).
//!
//! Per service, mode and round (modes alternate within a round): the saturation rate (closed
//! loop, keep-alive connections), p50/p99 at a fixed rate (open loop, latency from when each
//! request was due) set at 40 % of the bare saturation of the first round, CPU of the app and
//! of the agent or collector per 1 000 requests at that rate (/proc), their RSS, and spans
//! that reached the sink per request. Medians of the rounds; the added CPU is each mode's app +
//! agent/collector CPU minus bare's, and Apiary's is compared with the SDK's.
//!
//! `cargo bench -p apiary --bench versus`, as root for the Apiary modes. APIARY_BENCH_ROUNDS
//! (3), APIARY_BENCH_SECONDS (5, per phase), APIARY_BENCH_SERVICES (`flask,node,go,nginx`). It
//! installs what it lacks (Flask and the OpenTelemetry distro into target/otel-venv with pip,
//! the Node SDK into target/versus-node with npm) and says what it cannot run.

#[allow(dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "versus/load.rs"]
mod load;
#[path = "relay/sink.rs"]
mod sink;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary_tuning::process_cpu_seconds;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Service {
    Flask,
    Node,
    Go,
    Nginx,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Flask => "flask (+1 downstream call)",
            Service::Node => "node.js http",
            Service::Go => "go net/http",
            Service::Nginx => "nginx",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Bare,
    /// The node as installed: its cooperative budget samples down under load.
    Apiary,
    /// The node with its budget unbound, so that it keeps every span (the SDK's coverage).
    ApiaryAllSpans,
    Sdk,
    Hybrid,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Bare => "bare",
            Mode::Apiary => "apiary node",
            Mode::ApiaryAllSpans => "apiary, every span",
            Mode::Sdk => "OTel SDK + rotel",
            Mode::Hybrid => "apiary + OTel SDK",
        }
    }
}

/// What the bench found (or installed) to run with.
struct Tools {
    /// A Python with Flask, requests and the OpenTelemetry distro, and its
    /// `opentelemetry-instrument`.
    python: Option<(PathBuf, PathBuf)>,
    /// `node`, and a directory whose node_modules holds the OpenTelemetry Node SDK.
    node: Option<(PathBuf, PathBuf)>,
    nginx: Option<PathBuf>,
    /// The Go service, built here.
    go_app: Option<PathBuf>,
    rotel: Option<PathBuf>,
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(tool))
        .find(|path| path.is_file())
}

fn find_tools() -> Tools {
    let venv = workspace().join("target/otel-venv");
    let python = venv.join("bin/python");
    let has_python_sdk = |python: &Path| {
        succeeds(Command::new(python).args([
            "-c",
            "import flask, requests, opentelemetry.instrumentation.flask, \
             opentelemetry.instrumentation.requests, opentelemetry.exporter.otlp.proto.http",
        ]))
    };
    if python.exists() && !has_python_sdk(&python) {
        println!(
            "installing Flask and the OpenTelemetry distro into {}",
            venv.display()
        );
        succeeds(Command::new(venv.join("bin/pip")).args([
            "install",
            "-q",
            "flask",
            "requests",
            "opentelemetry-distro",
            "opentelemetry-exporter-otlp-proto-http",
            "opentelemetry-instrumentation-flask",
            "opentelemetry-instrumentation-requests",
        ]));
    }
    let python = if python.exists() && has_python_sdk(&python) {
        Some((python, venv.join("bin/opentelemetry-instrument")))
    } else {
        println!("no Flask rows: target/otel-venv (python3 -m venv target/otel-venv) is missing or pip failed");
        None
    };
    let node = which("node").and_then(|node| {
        let dir = workspace().join("target/versus-node");
        let sdk = dir.join("node_modules/@opentelemetry/auto-instrumentations-node");
        if !sdk.exists() {
            println!(
                "installing the OpenTelemetry Node SDK into {}",
                dir.display()
            );
            let _ = std::fs::create_dir_all(&dir);
            succeeds(Command::new("npm").current_dir(&dir).args([
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "@opentelemetry/sdk-node",
                "@opentelemetry/auto-instrumentations-node",
                "@opentelemetry/exporter-trace-otlp-proto",
            ]));
        }
        if sdk.exists() {
            Some((node, dir))
        } else {
            println!(
                "no Node.js rows: npm could not install @opentelemetry/auto-instrumentations-node"
            );
            None
        }
    });
    if node.is_none() && which("node").is_none() {
        println!("no Node.js rows: node is not installed");
    }
    let nginx =
        which("nginx").or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.exists()));
    if nginx.is_none() {
        println!("no nginx rows: nginx is not installed (apt-get install nginx)");
    }
    let go_app = build_go_app();
    let rotel = common::venv_tool(
        "APIARY_ROTEL",
        "lib/python3*/site-packages/rotel/rotel-agent",
    );
    if rotel.is_none() {
        println!("no SDK rows: rotel-agent not found (pip install rotel into target/otel-venv)");
    }
    Tools {
        python,
        node,
        nginx,
        go_app,
        rotel,
    }
}

/// Builds versus/app.go with Debian's `go` (standard library only) into target/versus-go.
fn build_go_app() -> Option<PathBuf> {
    let Some(go) = which("go") else {
        println!("no Go rows: go is not installed (apt-get install golang-go)");
        return None;
    };
    let dir = workspace().join("target/versus-go");
    let app = dir.join("app");
    let built = succeeds(
        Command::new(go)
            .args(["build", "-o"])
            .arg(&app)
            .arg(workspace().join("node/benches/versus/app.go"))
            .env("GO111MODULE", "off")
            .env("GOCACHE", dir.join("cache"))
            .env("GOPATH", dir.join("gopath")),
    );
    if built && app.exists() {
        Some(app)
    } else {
        println!("no Go rows: go build of node/benches/versus/app.go failed");
        None
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Processes started for one run; killed when dropped.
#[derive(Default)]
struct Started {
    app: Vec<Child>,
    agent: Option<Child>,
    dirs: Vec<tempfile::TempDir>,
}

impl Drop for Started {
    /// Ends every process under each child too: nginx's worker outlives a killed master, and
    /// an orphan would hold the port (and any descriptor this bench inherited).
    fn drop(&mut self) {
        for child in self.app.iter_mut().chain(self.agent.as_mut()) {
            let tree = process_tree(child.id());
            for &pid in &tree {
                // SAFETY: kill(2) on pids this bench started (or their children); no memory.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            for &pid in &tree {
                // SAFETY: as above.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            let _ = child.wait();
        }
    }
}

async fn wait_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {port} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node (probes on, default config; with `every_span`, budgets too large to bind),
/// exporting to `sink`; its OTLP/HTTP receiver's port.
async fn start_node(started: &mut Started, sink: &str, every_span: bool) -> u16 {
    let dir = tempfile::tempdir().unwrap();
    let (quic, api, http, grpc) = (free_port(), free_port(), free_port(), free_port());
    let child = Command::new(common::BIN)
        .args(["node", "--name", "versus"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", &format!("127.0.0.1:{quic}")])
        .args(["--api", &format!("127.0.0.1:{api}")])
        .args(["--otlp-http", &format!("127.0.0.1:{http}")])
        .args(["--otlp-grpc", &format!("127.0.0.1:{grpc}")])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("APIARY_LOG", "warn")
        .env_remove("APIARY_NICE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start apiary node");
    started.agent = Some(child);
    started.dirs.push(dir);
    wait_port(http, "the apiary node").await;
    if every_span {
        let token = std::fs::read_to_string(dir_of(started).join("data/api-token"))
            .expect("the node's api-token");
        let body = serde_json::json!({"changes": [
            {"key": "budget.cpu_percent_per_node", "value": 100},
            {"key": "budget.export_events_per_second", "value": 1_000_000_000u64},
        ], "comment": "versus bench: keep every span"});
        let answer = reqwest::Client::new()
            .patch(format!("http://127.0.0.1:{api}/v1/config"))
            .bearer_auth(token.trim())
            .json(&body)
            .send()
            .await
            .expect("the node's API");
        assert!(
            answer.status().is_success(),
            "unbinding the budget: {}",
            answer.status()
        );
    }
    // The probes attach after the receivers listen.
    tokio::time::sleep(Duration::from_secs(2)).await;
    http
}

fn dir_of(started: &Started) -> PathBuf {
    started
        .dirs
        .last()
        .expect("a data dir")
        .path()
        .to_path_buf()
}

/// rotel relaying OTLP/HTTP to `sink`; its receiver's port.
async fn start_rotel(started: &mut Started, rotel: &Path, sink: &str) -> u16 {
    let dir = tempfile::tempdir().unwrap();
    let (http, grpc) = (free_port(), free_port());
    let child = Command::new(rotel)
        .args([
            "start",
            "--otlp-http-endpoint",
            &format!("127.0.0.1:{http}"),
        ])
        .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
        .args(["--exporter", "otlp", "--otlp-exporter-protocol", "http"])
        .args(["--otlp-exporter-endpoint", sink])
        .arg("--pid-file")
        .arg(dir.path().join("rotel.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rotel-agent");
    started.agent = Some(child);
    started.dirs.push(dir);
    wait_port(http, "rotel").await;
    http
}

/// Starts `service` (instrumented with the SDK exporting to `otlp` when given); its port.
async fn start_service(
    started: &mut Started,
    service: Service,
    tools: &Tools,
    otlp: Option<u16>,
) -> u16 {
    let here = workspace().join("node/benches/versus");
    let port = free_port();
    let sdk_env = |command: &mut Command, name: &str| {
        if let Some(otlp) = otlp {
            command
                .env("OTEL_SERVICE_NAME", name)
                .env("OTEL_TRACES_EXPORTER", "otlp")
                .env("OTEL_METRICS_EXPORTER", "none")
                .env("OTEL_LOGS_EXPORTER", "none")
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
                .env(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("http://127.0.0.1:{otlp}"),
                );
        }
    };
    match service {
        Service::Flask => {
            let (python, instrument) = tools.python.as_ref().expect("checked");
            let downstream = free_port();
            let python_app = |args: &[String], name: &str| {
                let mut command = if otlp.is_some() {
                    let mut c = Command::new(instrument);
                    c.arg(python);
                    c
                } else {
                    Command::new(python)
                };
                command.arg(here.join("apps.py")).args(args);
                sdk_env(&mut command, name);
                command
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start the Flask app")
            };
            started.app.push(python_app(
                &["downstream".into(), downstream.to_string()],
                "downstream",
            ));
            started.app.push(python_app(
                &["front".into(), port.to_string(), downstream.to_string()],
                "front",
            ));
            wait_port(downstream, "the downstream Flask app").await;
        }
        Service::Node => {
            let (node, sdk_dir) = tools.node.as_ref().expect("checked");
            let mut command = Command::new(node);
            command.current_dir(sdk_dir);
            if otlp.is_some() {
                command.args([
                    "--require",
                    "@opentelemetry/auto-instrumentations-node/register",
                ]);
            }
            command.arg(here.join("app.js")).arg(port.to_string());
            sdk_env(&mut command, "node-app");
            started.app.push(
                command
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start the Node.js app"),
            );
        }
        Service::Go => {
            started.app.push(
                Command::new(tools.go_app.as_ref().expect("checked"))
                    .arg(port.to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start the Go app"),
            );
        }
        Service::Nginx => {
            let dir = tempfile::tempdir().unwrap();
            let conf = dir.path().join("nginx.conf");
            let root = dir.path().display();
            std::fs::write(
                &conf,
                format!(
                    "worker_processes 1; daemon off; pid {root}/nginx.pid; error_log {root}/error.log;\n\
                     events {{ worker_connections 1024; }}\n\
                     http {{ access_log off; client_body_temp_path {root}; proxy_temp_path {root};\n\
                     fastcgi_temp_path {root}; uwsgi_temp_path {root}; scgi_temp_path {root};\n\
                     server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello from nginx\\n\"; }} }} }}\n"
                ),
            )
            .unwrap();
            started.app.push(
                Command::new(tools.nginx.as_ref().expect("checked"))
                    .arg("-c")
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start nginx"),
            );
            started.dirs.push(dir);
        }
    }
    wait_port(port, service.name()).await;
    port
}

/// `pid` and every process under it.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", all[i]))
            .unwrap_or_default();
        all.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
        i += 1;
    }
    all
}

fn cpu_seconds(roots: &[u32]) -> f64 {
    roots
        .iter()
        .flat_map(|&pid| process_tree(pid))
        .map(|pid| process_cpu_seconds(&pid.to_string()))
        .sum()
}

fn rss_mib(roots: &[u32]) -> f64 {
    roots
        .iter()
        .flat_map(|&pid| process_tree(pid))
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        })
        .sum::<f64>()
        / 1024.0
}

/// One service in one mode.
struct Row {
    saturation: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU-ms per 1 000 requests at the fixed rate.
    app_cpu: f64,
    agent_cpu: f64,
    app_rss: f64,
    agent_rss: f64,
    spans_per_request: f64,
    failed: u64,
}

struct Settings {
    seconds: Duration,
    connections: usize,
}

async fn run(
    service: Service,
    mode: Mode,
    tools: &Tools,
    sink: &str,
    spans: &AtomicU64,
    fixed_rate: Option<f64>,
    settings: &Settings,
) -> Row {
    let mut started = Started::default();
    let otlp = match mode {
        Mode::Bare => None,
        Mode::Apiary | Mode::ApiaryAllSpans => {
            start_node(&mut started, sink, mode == Mode::ApiaryAllSpans).await;
            None
        }
        Mode::Sdk => {
            Some(start_rotel(&mut started, tools.rotel.as_ref().expect("checked"), sink).await)
        }
        Mode::Hybrid => Some(start_node(&mut started, sink, true).await),
    };
    let port = start_service(&mut started, service, tools, otlp).await;
    let path = "/";
    // Warm up (imports, JIT, connection pools) before anything is measured.
    load::closed(port, path, 2, Duration::from_millis(500)).await;
    let spans_before = spans.load(Ordering::Relaxed);
    let saturated = load::closed(port, path, settings.connections, settings.seconds).await;
    let rate = fixed_rate.unwrap_or(saturated.rate() * 0.4);
    let app_pids: Vec<u32> = started.app.iter().map(Child::id).collect();
    let agent_pids: Vec<u32> = started.agent.iter().map(Child::id).collect();
    let (app_before, agent_before) = (cpu_seconds(&app_pids), cpu_seconds(&agent_pids));
    let fixed = load::open(port, path, rate, settings.connections, settings.seconds).await;
    let (app_after, agent_after) = (cpu_seconds(&app_pids), cpu_seconds(&agent_pids));
    let (app_rss, agent_rss) = (rss_mib(&app_pids), rss_mib(&agent_pids));
    // Spans still on their way: the SDK batches for 5 s by default, the collector and the node
    // for less. Wait until the count has been still for 2 s (at most 15 s).
    let requests = saturated.ok + fixed.ok;
    if mode != Mode::Bare {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = (spans.load(Ordering::Relaxed), Instant::now());
        let still = Duration::from_secs(if matches!(mode, Mode::Sdk | Mode::Hybrid) {
            6
        } else {
            2
        });
        while Instant::now() < deadline && last.1.elapsed() < still {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = spans.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            }
        }
    }
    let delivered = spans.load(Ordering::Relaxed) - spans_before;
    let per_thousand = |cpu: f64| cpu * 1000.0 * 1000.0 / fixed.ok.max(1) as f64;
    Row {
        saturation: saturated.rate(),
        p50_ms: fixed.quantile_ms(0.5),
        p99_ms: fixed.quantile_ms(0.99),
        app_cpu: per_thousand(app_after - app_before),
        agent_cpu: per_thousand(agent_after - agent_before),
        app_rss,
        agent_rss,
        spans_per_request: delivered as f64 / requests.max(1) as f64,
        failed: saturated.failed + fixed.failed,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this too: a smoke run
    // (one round of 1 s phases).
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = if quick {
        1
    } else {
        setting("APIARY_BENCH_ROUNDS", 3) as usize
    };
    let settings = Settings {
        seconds: Duration::from_secs(if quick {
            1
        } else {
            setting("APIARY_BENCH_SECONDS", 5)
        }),
        connections: 4,
    };
    let tools = find_tools();
    let wanted =
        std::env::var("APIARY_BENCH_SERVICES").unwrap_or_else(|_| "flask,node,go,nginx".into());
    let mut services = Vec::new();
    for (name, service, available) in [
        ("flask", Service::Flask, tools.python.is_some()),
        ("node", Service::Node, tools.node.is_some()),
        ("go", Service::Go, tools.go_app.is_some()),
        ("nginx", Service::Nginx, tools.nginx.is_some()),
    ] {
        if wanted.split(',').any(|w| w == name) && available {
            services.push(service);
        }
    }
    let root = common::root();
    if !root {
        println!("not root: the Apiary modes (probes) are skipped");
    }
    let modes_of = |service: Service| -> Vec<Mode> {
        let sdk = !matches!(service, Service::Nginx | Service::Go) && tools.rotel.is_some();
        [
            Mode::Bare,
            Mode::Apiary,
            Mode::ApiaryAllSpans,
            Mode::Sdk,
            Mode::Hybrid,
        ]
        .into_iter()
        .filter(|&m| match m {
            Mode::Bare => true,
            Mode::Apiary | Mode::ApiaryAllSpans => root,
            Mode::Sdk => sdk,
            Mode::Hybrid => root && sdk,
        })
        .collect()
    };
    let spans = Arc::new(AtomicU64::new(0));
    let sink = format!("http://127.0.0.1:{}", sink::start_sink(spans.clone()).await);
    println!(
        "versus bench: {rounds} alternating rounds, {} s phases, {} connections",
        settings.seconds.as_secs(),
        settings.connections
    );
    let mut rows: Vec<(Service, Mode, Row)> = Vec::new();
    let mut fixed_rates: Vec<(Service, f64)> = Vec::new();
    for round in 0..rounds {
        for &service in &services {
            for mode in modes_of(service) {
                let fixed = fixed_rates
                    .iter()
                    .find(|(s, _)| *s == service)
                    .map(|(_, r)| *r);
                let row = run(service, mode, &tools, &sink, &spans, fixed, &settings).await;
                if fixed.is_none() {
                    fixed_rates.push((service, (row.saturation * 0.4).max(10.0)));
                }
                println!(
                    "round {round} {:<28} {:<18} max {:>8.0} req/s  p50 {:>7.2} ms p99 {:>7.2} ms  \
                     cpu/1k req app {:>7.1} ms agent {:>6.1} ms  rss app {:>6.1} agent {:>6.1} MiB  \
                     spans/req {:.2}  failed {}",
                    service.name(),
                    mode.name(),
                    row.saturation,
                    row.p50_ms,
                    row.p99_ms,
                    row.app_cpu,
                    row.agent_cpu,
                    row.app_rss,
                    row.agent_rss,
                    row.spans_per_request,
                    row.failed
                );
                rows.push((service, mode, row));
            }
        }
    }
    println!();
    println!("| service | mode | max req/s | vs bare | p50 ms | p99 ms | fixed rate | CPU-ms / 1k req: app | agent or collector | added vs bare | RSS app | RSS agent or collector | spans / request |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &service in &services {
        let pick = |mode: Mode, f: fn(&Row) -> f64| {
            median(
                rows.iter()
                    .filter(|(s, m, _)| *s == service && *m == mode)
                    .map(|(_, _, r)| f(r))
                    .collect(),
            )
        };
        let bare_rate = pick(Mode::Bare, |r| r.saturation);
        let bare_cpu = pick(Mode::Bare, |r| r.app_cpu + r.agent_cpu);
        let fixed = fixed_rates
            .iter()
            .find(|(s, _)| *s == service)
            .map_or(0.0, |(_, r)| *r);
        let mut added = Vec::new();
        for mode in modes_of(service) {
            let total = pick(mode, |r| r.app_cpu + r.agent_cpu);
            added.push((mode, total - bare_cpu));
            println!(
                "| {} | {} | {:.0} | {:.3}x | {:.2} | {:.2} | {:.0}/s | {:.1} | {:.1} | {:+.1} | {:.1} MiB | {:.1} MiB | {:.2} |",
                service.name(),
                mode.name(),
                pick(mode, |r| r.saturation),
                pick(mode, |r| r.saturation) / bare_rate,
                pick(mode, |r| r.p50_ms),
                pick(mode, |r| r.p99_ms),
                fixed,
                pick(mode, |r| r.app_cpu),
                pick(mode, |r| r.agent_cpu),
                total - bare_cpu,
                pick(mode, |r| r.app_rss),
                pick(mode, |r| r.agent_rss),
                pick(mode, |r| r.spans_per_request),
            );
        }
        let of = |mode| added.iter().find(|(m, _)| *m == mode).map(|(_, a)| *a);
        if let (Some(apiary), Some(every), Some(sdk)) =
            (of(Mode::Apiary), of(Mode::ApiaryAllSpans), of(Mode::Sdk))
        {
            println!(
                "{}: added CPU per request, Apiary / the SDK: {:.3} as installed, {:.3} keeping \
                 every span (goal ≤ 0.100)",
                service.name(),
                apiary / sdk,
                every / sdk
            );
        }
    }
    let failed: u64 = rows.iter().map(|(_, _, r)| r.failed).sum();
    if failed > 0 {
        println!("{failed} requests failed across all rounds");
    }
    // The smoke run (under `cargo test`) fails when a mode that keeps every span delivered
    // nothing, so that the bench cannot rot into measuring uninstrumented runs. (The node as
    // installed may sample a short, heavy run down to nothing: its budget's right answer.)
    for (service, mode, row) in &rows {
        assert!(
            matches!(mode, Mode::Bare | Mode::Apiary) || row.spans_per_request > 0.0,
            "{} {}: no span reached the sink",
            service.name(),
            mode.name()
        );
    }
}
