//! Node scope: `--scope netns:NAME` and `--scope cgroup:PATH` limit the probes, in the kernel,
//! to the processes there. Needs root, `ip netns` and cgroup v2; skipped with one message
//! otherwise.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary_config::ClusterConfig;
use apiary_probes::{spawn_reader, Observer, ProbeSet, Scope, Span};

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn run(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect(args[0]);
    assert!(status.success(), "{args:?} failed");
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Child {
    Child(
        Command::new(args[0])
            .args(&args[1..])
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(args[0]),
    )
}

fn curl_until_ok(prefix: &[&str], url: &str) {
    let start = Instant::now();
    loop {
        let mut command = Command::new(prefix.first().copied().unwrap_or("curl"));
        command
            .args(prefix.iter().skip(1))
            .args(if prefix.is_empty() {
                vec![]
            } else {
                vec!["curl"]
            });
        let ok = command
            .args(["-s", "-o", "/dev/null", "--max-time", "2", url])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{url} never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn load(scopes: &[Scope]) -> (ProbeSet, Arc<Observer>) {
    let mut set = ProbeSet::load(scopes).expect("load probes");
    set.apply(&ClusterConfig::default()).unwrap();
    let observer = Arc::new(Observer::default());
    spawn_reader(set.take_events().unwrap(), observer.clone()).unwrap();
    (set, observer)
}

fn spans_with(observer: &Observer, target: &str) -> Vec<Span> {
    observer
        .recent_spans()
        .into_iter()
        .filter(|s| s.expect_http().target == target)
        .map(|s| (*s).clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_scope_sees_only_that_namespace() {
    if !root() || Command::new("ip").arg("-V").output().is_err() {
        eprintln!(
            "SKIPPED netns_scope_sees_only_that_namespace: needs root and iproute2 (CI runs it)"
        );
        return;
    }
    let name = format!("apiary-scope-{}", std::process::id());
    run(&["ip", "netns", "add", &name]);
    let netns = Netns(name.clone());
    run(&["ip", "-n", &netns.0, "link", "set", "lo", "up"]);
    let (_probes, observer) = load(&[Scope::Netns(name.clone())]);

    let _inside = spawn(&[
        "ip",
        "netns",
        "exec",
        &name,
        "python3",
        "-m",
        "http.server",
        "18080",
        "--bind",
        "127.0.0.1",
    ]);
    let host_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _outside = spawn(&[
        "python3",
        "-m",
        "http.server",
        &host_port.to_string(),
        "--bind",
        "127.0.0.1",
    ]);
    curl_until_ok(
        &["ip", "netns", "exec", &name],
        "http://127.0.0.1:18080/inside/1",
    );
    curl_until_ok(&[], &format!("http://127.0.0.1:{host_port}/outside/1"));

    let start = Instant::now();
    while spans_with(&observer, "/inside/1").len() < 2 && start.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let inside = spans_with(&observer, "/inside/1");
    assert!(
        inside.len() >= 2,
        "server and client spans from the namespace: {inside:#?}"
    );
    let inode = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(format!("/run/netns/{name}")).unwrap(),
    );
    assert!(inside.iter().all(|s| s.netns as u64 == inode));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        spans_with(&observer, "/outside/1").is_empty(),
        "host traffic leaked into a netns scope"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_scope_sees_only_that_cgroup() {
    let Some(root_dir) = cgroup2_root() else {
        eprintln!("SKIPPED cgroup_scope_sees_only_that_cgroup: no cgroup v2 hierarchy mounted");
        return;
    };
    if !root() {
        eprintln!("SKIPPED cgroup_scope_sees_only_that_cgroup: needs root (CI runs it)");
        return;
    }
    let name = format!("apiary-scope-{}", std::process::id());
    let dir = root_dir.join(&name);
    std::fs::create_dir_all(&dir).expect("create cgroup");
    let (_probes, observer) = load(&[Scope::Cgroup(format!("/{name}").into())]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = spawn(&[
        "python3",
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ]);
    curl_until_ok(&[], &format!("http://127.0.0.1:{port}/warmup"));

    // curl inside the cgroup (it moves itself there before exec), and outside it.
    let procs = dir.join("cgroup.procs");
    let script = format!(
        "echo $$ > {} && exec curl -s -o /dev/null http://127.0.0.1:{port}/in-cgroup/1",
        procs.display()
    );
    run(&["sh", "-c", &script]);
    run(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{port}/out-of-cgroup/1"),
    ]);

    let start = Instant::now();
    while spans_with(&observer, "/in-cgroup/1").is_empty()
        && start.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let inside = spans_with(&observer, "/in-cgroup/1");
    // Only curl is in the cgroup: its client span, not the server's.
    assert_eq!(inside.len(), 1, "{inside:#?}");
    assert_eq!(inside[0].service, "curl");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(spans_with(&observer, "/out-of-cgroup/1").is_empty());
    assert!(spans_with(&observer, "/warmup").is_empty());
    let _ = std::fs::remove_dir(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_filter_keeps_only_that_cgroup() {
    let Some(root_dir) = cgroup2_root() else {
        eprintln!("SKIPPED cgroup_filter_keeps_only_that_cgroup: no cgroup v2 hierarchy mounted");
        return;
    };
    if !root() {
        eprintln!("SKIPPED cgroup_filter_keeps_only_that_cgroup: needs root (CI runs it)");
        return;
    }
    let name = format!("apiary-filter-{}", std::process::id());
    let dir = root_dir.join(&name);
    std::fs::create_dir_all(&dir).expect("create cgroup");
    let settings = [apiary_config::Setting {
        key: "probe.http.filters.include_cgroups".into(),
        value: serde_json::json!([format!("/{name}")]),
    }];
    let config = apiary_config::apply_settings(&ClusterConfig::default(), &settings).unwrap();
    let mut set = ProbeSet::load(&[]).expect("load probes");
    set.apply(&config).unwrap();
    let observer = Arc::new(Observer::default());
    spawn_reader(set.take_events().unwrap(), observer.clone()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = spawn(&[
        "python3",
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
    ]);
    curl_until_ok(&[], &format!("http://127.0.0.1:{port}/warmup"));
    let script = format!(
        "echo $$ > {} && exec curl -s -o /dev/null http://127.0.0.1:{port}/filtered-in/1",
        dir.join("cgroup.procs").display()
    );
    run(&["sh", "-c", &script]);
    let start = Instant::now();
    while spans_with(&observer, "/filtered-in/1").is_empty()
        && start.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kept = spans_with(&observer, "/filtered-in/1");
    assert_eq!(kept.len(), 1, "{kept:#?}");
    assert_eq!(kept[0].service, "curl");
    assert!(spans_with(&observer, "/warmup").is_empty());
    let http = set
        .reports()
        .into_iter()
        .find(|r| r.name == "http")
        .unwrap();
    assert!(http.filtered > 0, "{http:?}");
    let _ = std::fs::remove_dir(&dir);
}

fn cgroup2_root() -> Option<std::path::PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount_point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| mount_point.into())
    })
}
