//! Checks of this machine that `apiary init` and `apiary doctor` share: what the probes need
//! (privileges, kernel, BTF, tracepoints, libssl) and whether a port or a destination is usable.
//! Each failed check carries the fix, so the operator learns what to do, not just what is wrong.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, with something missing (e.g. no libssl: no HTTPS spans).
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: &str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Ok, detail, None)
    }
    pub fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Warn, detail, Some(fix.into()))
    }
    pub fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(name, Status::Fail, detail, Some(fix.into()))
    }
    fn new(name: &str, status: Status, detail: impl Into<String>, fix: Option<String>) -> Self {
        Check {
            name: name.to_string(),
            status,
            detail: detail.into(),
            fix,
        }
    }
}

/// Linux capability numbers (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// What the eBPF probes need from this machine, in the order an operator would fix them.
pub fn probe_prerequisites() -> Vec<Check> {
    vec![
        privileges(),
        kernel_version(),
        btf(),
        tracepoints(),
        libssl(),
    ]
}

fn privileges() -> Check {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    let euid = field("Uid:")
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u32>().ok());
    let caps = u64::from_str_radix(&field("CapEff:"), 16).unwrap_or(0);
    let has = |cap: u32| caps & (1 << cap) != 0;
    if euid == Some(0) {
        Check::ok("privileges", "running as root")
    } else if has(CAP_BPF) && has(CAP_PERFMON) || has(CAP_SYS_ADMIN) {
        Check::ok("privileges", "CAP_BPF and CAP_PERFMON")
    } else {
        Check::fail(
            "privileges",
            "not root and without CAP_BPF + CAP_PERFMON: the eBPF probes cannot load",
            "run the node as root (sudo, or the systemd unit in deploy/), or add --no-probes to run only the mesh",
        )
    }
}

fn kernel_version() -> Check {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    // The newest helper the probes use is bpf_task_pt_regs (5.15): socket reads find their
    // arguments with it. The ring buffer (5.8) and task storage (5.11) are older.
    if version >= (5, 15) {
        Check::ok("kernel", format!("Linux {release}"))
    } else {
        Check::fail(
            "kernel",
            format!(
                "Linux {release:?} is older than 5.15, which the http probe needs (bpf_task_pt_regs)"
            ),
            "run on a kernel 5.15 or newer (any current distribution kernel)",
        )
    }
}

fn btf() -> Check {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Check::ok("BTF", "/sys/kernel/btf/vmlinux")
    } else {
        Check::fail(
            "BTF",
            "the kernel exposes no BTF type information (/sys/kernel/btf/vmlinux is missing)",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian, Ubuntu, RHEL and Fedora kernels are)",
        )
    }
}

fn tracepoints() -> Check {
    let mounted = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find(|dir| Path::new(dir).join("events").exists());
    match mounted {
        Some(dir) if Path::new(dir).join("events/syscalls").exists() => {
            Check::ok("tracepoints", format!("{dir}/events/syscalls"))
        }
        Some(dir) => Check::fail(
            "tracepoints",
            format!("{dir} has no syscalls tracepoints"),
            "use a kernel built with CONFIG_FTRACE_SYSCALLS=y",
        ),
        None if Path::new("/sys/kernel/tracing").exists() => Check::warn(
            "tracepoints",
            "tracefs is not mounted yet",
            "nothing to do as root: the node mounts it at start (or: mount -t tracefs nodev /sys/kernel/tracing)",
        ),
        None => Check::fail(
            "tracepoints",
            "this kernel has no tracefs",
            "use a kernel built with CONFIG_TRACING (any distribution kernel)",
        ),
    }
}

fn libssl() -> Check {
    match apiary_probes::find_libssl() {
        Some(path) => Check::ok(
            "libssl",
            format!("{} (the tls probe sees HTTPS)", path.display()),
        ),
        None => Check::warn(
            "libssl",
            "no OpenSSL 3 libssl.so.3 found: the tls probe cannot see HTTPS",
            "install libssl3 (apt-get install libssl3), or give the node --libssl PATH",
        ),
    }
}

/// Whether this machine can listen on `addr` now.
pub fn port_free(what: &str, addr: SocketAddr) -> Check {
    match TcpListener::bind(addr) {
        Ok(_) => Check::ok(what, format!("{addr} is free")),
        Err(e) => Check::fail(
            what,
            format!("cannot listen on {addr}: {e}"),
            "pick another port, or stop what holds it (ss -ltnp shows who)",
        ),
    }
}

/// Whether an OTLP destination's host answers on its port (a TCP connection within 3 s).
pub fn destination_answers(endpoint: &str) -> Check {
    let name = "destination";
    let Ok(url) = url::Url::parse(endpoint) else {
        return Check::fail(
            name,
            format!("{endpoint:?} is not a URL"),
            "give e.g. http://collector:4318 (OTLP/HTTP) or http://collector:4317 (OTLP/gRPC)",
        );
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return Check::fail(
            name,
            format!("{endpoint:?} has no host"),
            "give e.g. http://collector:4318",
        );
    };
    let addrs: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(e) => {
            return Check::warn(
                name,
                format!("cannot resolve {host}: {e}"),
                "check the host name; until it answers, spans wait in the node's disk buffer",
            )
        }
    };
    for addr in &addrs {
        if std::net::TcpStream::connect_timeout(addr, Duration::from_secs(3)).is_ok() {
            return Check::ok(name, format!("{endpoint} answers ({addr})"));
        }
    }
    Check::warn(
        name,
        format!("{endpoint} does not answer on port {port}"),
        "start the collector or fix the address; until it answers, spans wait in the node's disk buffer",
    )
}

/// Whether `dir` exists or can be created, and takes files.
pub fn data_dir_writable(dir: &Path) -> Check {
    let name = "data dir";
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Check::fail(
            name,
            format!("cannot create {}: {e}", dir.display()),
            "choose a directory this user can write (e.g. /var/lib/apiary as root)",
        );
    }
    let probe = dir.join(".apiary-write-test");
    match std::fs::write(&probe, b"ok") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            Check::ok(name, format!("{} is writable", dir.display()))
        }
        Err(e) => Check::fail(
            name,
            format!("cannot write in {}: {e}", dir.display()),
            "fix its owner or permissions, or choose another --data-dir",
        ),
    }
}

/// A table of checks for a terminal: status, check, what was found, and the fix.
pub fn render(checks: &[Check]) -> String {
    let mut table = super::client::table(&["", "check", "found", "fix"]);
    for check in checks {
        let mark = match check.status {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        table.add_row([
            mark,
            check.name.as_str(),
            check.detail.as_str(),
            check.fix.as_deref().unwrap_or(""),
        ]);
    }
    table.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_fails_with_a_fix() {
        let holder = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = holder.local_addr().expect("addr");
        let check = port_free("api", addr);
        assert_eq!(check.status, Status::Fail);
        assert!(check.fix.is_some_and(|f| f.contains("another port")));
        drop(holder);
        assert_eq!(port_free("api", addr).status, Status::Ok);
    }

    #[test]
    fn a_silent_destination_warns_and_a_listening_one_passes() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let check = destination_answers(&format!("http://127.0.0.1:{port}"));
        assert_eq!(check.status, Status::Ok, "{check:?}");
        drop(listener);
        let check = destination_answers(&format!("http://127.0.0.1:{port}"));
        assert_eq!(check.status, Status::Warn, "{check:?}");
        assert_eq!(destination_answers("collector:4318").status, Status::Fail);
    }

    #[test]
    fn the_prerequisites_of_this_machine_are_named() {
        let checks = probe_prerequisites();
        let names: Vec<_> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["privileges", "kernel", "BTF", "tracepoints", "libssl"]
        );
        // This kernel (6.x with BTF) passes the kernel and BTF checks.
        assert_eq!(checks[1].status, Status::Ok, "{:?}", checks[1]);
        assert_eq!(checks[2].status, Status::Ok, "{:?}", checks[2]);
    }
}
