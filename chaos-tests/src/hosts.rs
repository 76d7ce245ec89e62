//! The hosts: one network namespace per node, each joined by a veth pair to one bridge in the
//! root namespace (which the clients and the nemesis use), and the `apiary` process in it.
//!
//! Faults act on real packets: iptables rules inside a node's namespace drop what it sends to
//! or receives from its peers' addresses; the clients' address (the bridge's) is never cut, so
//! a client sees a partitioned node answer from its side of the cut.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// Runs a command, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The bridge and the namespaces, removed on drop.
pub struct Network {
    pub bridge: String,
    /// The root namespace's address on the bridge (the clients').
    pub client_ip: Ipv4Addr,
    pub namespaces: Vec<String>,
    pub ips: Vec<Ipv4Addr>,
}

impl Network {
    /// `size` namespaces on a fresh bridge; names and subnet derive from this process's id so
    /// that a leftover of an earlier run does not collide.
    pub fn create(size: usize) -> Result<Network> {
        let id = std::process::id();
        let subnet = 100 + (id % 150) as u8;
        let mut network = Network {
            bridge: format!("apcb{id}"),
            client_ip: Ipv4Addr::new(10, subnet, 0, 254),
            namespaces: Vec::new(),
            ips: Vec::new(),
        };
        let bridge = network.bridge.clone();
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{}/24", network.client_ip),
                "dev",
                &bridge,
            ],
        )?;
        run("ip", &["link", "set", &bridge, "up"])?;
        for i in 0..size {
            let ns = format!("apc{id}n{i}");
            let outer = format!("apc{id}v{i}");
            let ip = Ipv4Addr::new(10, subnet, 0, i as u8 + 1);
            run("ip", &["netns", "add", &ns])?;
            network.namespaces.push(ns.clone());
            network.ips.push(ip);
            run(
                "ip",
                &[
                    "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            run("ip", &["link", "set", &outer, "master", &bridge])?;
            run("ip", &["link", "set", &outer, "up"])?;
            let exec = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &ns];
                all.extend_from_slice(args);
                run("ip", &all)
            };
            exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
            exec(&["ip", "link", "set", "eth0", "up"])?;
            exec(&["ip", "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    /// Runs `iptables ARGS` inside node `i`'s namespace.
    pub fn iptables(&self, i: usize, args: &[&str]) -> Result<()> {
        let mut all = vec!["netns", "exec", &self.namespaces[i], "iptables", "-w"];
        all.extend_from_slice(args);
        run("ip", &all).map(drop)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = run("ip", &["netns", "del", ns]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

/// The ports every node uses on its own address (each namespace has its own).
pub const QUIC_PORT: u16 = 7701;
pub const API_PORT: u16 = 7700;

/// One `apiary node` process inside its namespace.
pub struct Node {
    pub name: String,
    pub namespace: String,
    pub ip: Ipv4Addr,
    pub data_dir: PathBuf,
    pub binary: PathBuf,
    /// `(address, token)` to join through on the first start.
    pub join: Option<(String, String)>,
    child: Option<Child>,
    /// Stopped by SIGSTOP and not continued yet.
    pub paused: bool,
    /// The file libfaketime reads this node's wall-clock offset from (`+0`, `+600`, `-600`),
    /// when libfaketime is installed: writing it makes the running node's clock jump.
    pub skew_file: Option<PathBuf>,
    /// eBPF probes on, scoped to the node's own namespace (`--scope netns:NAME`), for tests of
    /// what the probes see across hosts; off (`--no-probes`) unless set.
    pub probes: bool,
}

/// Debian's libfaketime (package `faketime`), the thread-safe build.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

impl Node {
    pub fn new(name: &str, namespace: &str, ip: Ipv4Addr, data_dir: &Path, binary: &Path) -> Node {
        Node {
            name: name.into(),
            namespace: namespace.into(),
            ip,
            data_dir: data_dir.into(),
            binary: binary.into(),
            join: None,
            child: None,
            paused: false,
            skew_file: Path::new(LIBFAKETIME)
                .exists()
                .then(|| data_dir.with_extension("faketime")),
            probes: false,
        }
    }

    /// Sets this node's wall clock `seconds` off the real one (it jumps there within 1 s, the
    /// library's cache); false when libfaketime is not installed.
    pub fn set_clock_offset(&self, seconds: i64) -> Result<bool> {
        let Some(file) = &self.skew_file else {
            return Ok(false);
        };
        std::fs::write(file, format!("{seconds:+}\n")).context("writing the clock offset")?;
        Ok(true)
    }

    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}:{API_PORT}{path}", self.ip)
    }

    pub fn quic(&self) -> String {
        format!("{}:{QUIC_PORT}", self.ip)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn spawn(&mut self) -> Result<()> {
        let log = |suffix: &str| -> Result<std::fs::File> {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.data_dir.with_extension(suffix))
                .context("opening the node's log")
        };
        let ip = self.ip;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace])
            .arg(&self.binary)
            .args(["node", "--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--listen",
                &format!("{ip}:{QUIC_PORT}"),
                "--api",
                &format!("{ip}:{API_PORT}"),
                "--otlp-http",
                &format!("{ip}:4318"),
                "--otlp-grpc",
                &format!("{ip}:4317"),
            ])
            .env("APIARY_LOG", "info,openraft=warn")
            .env_remove("APIARY_NICE")
            .stdin(Stdio::null())
            .stdout(log("out")?)
            .stderr(log("err")?);
        if self.probes {
            command.args(["--scope", &format!("netns:{}", self.namespace)]);
        } else {
            // The chaos suite tests consensus: probes would watch every node's and client's
            // traffic on this 2-core machine and slow the run without being checked.
            command.arg("--no-probes");
        }
        if let Some((via, token)) = &self.join {
            command.args(["--join", via, "--join-token", token]);
        }
        if let Some(file) = &self.skew_file {
            // Only the wall clock (certificates, token expiry, event times) is offset, as an
            // NTP step does; timers run on the monotonic clock, which stays true.
            if !file.exists() {
                std::fs::write(file, "+0\n").context("writing the clock offset")?;
            }
            command
                .env("LD_PRELOAD", LIBFAKETIME)
                .env("FAKETIME_TIMESTAMP_FILE", file)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        // `ip netns exec` execs the binary: the child's pid is the node's.
        self.child = Some(
            command
                .spawn()
                .context("spawning apiary in its namespace")?,
        );
        self.paused = false;
        Ok(())
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill takes plain integers; the pid is our own child's, not yet reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }

    /// SIGKILL, as in a crash (a paused node is killed as it is).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = self.child.is_some();
    }

    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    /// `/healthz`'s status and body (a failing node answers 503), if it answers within 2 s.
    pub async fn health(&self) -> Option<(u16, serde_json::Value)> {
        let response = reqwest::Client::new()
            .get(self.api_url("/healthz"))
            .timeout(std::time::Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.ok()?))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.data_dir.with_extension("err")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

/// True when this process runs as root (namespaces and iptables need it).
pub fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The `apiary` binary: $APIARY_BIN, else the one cargo built next to this test binary
/// (`cargo test --workspace` builds it; `cargo test -p apiary-chaos` alone does not).
pub fn apiary_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("APIARY_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("finding this test binary")?;
    // target/debug/deps/chaos-HASH → target/debug/apiary
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("apiary"))
        .context("no parent directory")?;
    if candidate.exists() {
        Ok(candidate)
    } else {
        bail!(
            "no apiary binary at {}: build it first (`cargo build -p apiary`) or set APIARY_BIN",
            candidate.display()
        )
    }
}

/// A small tmpfs mounted over one node's data dir, so that the nemesis can fill its disk;
/// unmounted (lazily, after the node) on drop.
pub struct SmallDisk {
    pub at: PathBuf,
}

impl SmallDisk {
    pub fn mount(at: &Path, size: &str) -> Result<SmallDisk> {
        std::fs::create_dir_all(at).context("creating the data dir")?;
        let at_text = at.to_string_lossy().into_owned();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                &at_text,
            ],
        )?;
        Ok(SmallDisk { at: at.into() })
    }

    fn filler(&self) -> PathBuf {
        self.at.join("chaos-filler")
    }

    /// Fills the file system: writes until it refuses. Returns the bytes written.
    pub fn fill(&self) -> Result<u64> {
        use std::io::Write;
        let mut file = std::fs::File::create(self.filler()).context("creating the filler")?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        while let Ok(n) = file.write(&chunk) {
            if n == 0 {
                break;
            }
            written += n as u64;
        }
        Ok(written)
    }

    /// What the node keeps on this disk, by top-level entry, largest first (e.g. `db 41 MiB,
    /// export 12 MiB`): a long run shows what grows.
    pub fn usage(&self) -> String {
        // Two levels: `db/blobs` (sled's large values) apart from `db/db`, each export queue apart.
        let entries = |dir: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .map(|entries| entries.flatten().map(|e| e.path()).collect())
                .unwrap_or_default()
        };
        let mut sizes: Vec<(String, u64)> = Vec::new();
        for top in entries(&self.at) {
            if top == self.filler() {
                continue;
            }
            let inner = if top.is_dir() {
                entries(&top)
            } else {
                vec![top]
            };
            for path in inner {
                let name = path.strip_prefix(&self.at).unwrap_or(&path);
                sizes.push((name.display().to_string(), bytes_under(&path)));
            }
        }
        sizes.sort_by_key(|entry| std::cmp::Reverse(entry.1));
        let shown: Vec<String> = sizes
            .iter()
            .take(5)
            .map(|(name, bytes)| format!("{name} {:.1} MiB", *bytes as f64 / (1 << 20) as f64))
            .collect();
        shown.join(", ")
    }

    pub fn full(&self) -> bool {
        self.filler().exists()
    }

    pub fn free(&self) -> Result<()> {
        match std::fs::remove_file(self.filler()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).context("removing the filler")
            }
            _ => Ok(()),
        }
    }
}

/// Bytes of the files under `path` (itself if a file).
fn bytes_under(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| bytes_under(&e.path())).sum())
            .unwrap_or(0),
        Ok(meta) => meta.len(),
        Err(_) => 0,
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", &self.at.to_string_lossy()]);
    }
}
