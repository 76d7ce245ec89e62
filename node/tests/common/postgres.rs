//! A real PostgreSQL for the tests and benchmarks: Debian's `postgresql`, initialised and run
//! as `nobody` (initdb and postgres refuse root) in a temp dir, on a private loopback port.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's `nobody`: initdb and postgres refuse to run as root.
const NOBODY: u32 = 65534;

/// The newest installed PostgreSQL's bin directory (Debian: /usr/lib/postgresql/N/bin).
pub fn postgres_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists() && bin.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

/// A postmaster; stopped with a fast shutdown (SIGINT), which also ends its backends.
pub struct Postgres {
    pub child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        super::stop_gracefully(&mut self.child, libc::SIGINT);
    }
}

fn as_nobody(command: &mut Command) -> &mut Command {
    command.uid(NOBODY).gid(NOBODY)
}

pub fn start_postgres(bin: &Path) -> Postgres {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let data = dir.path().join("data");
    let initdb = as_nobody(Command::new(bin.join("initdb")).arg("-D").arg(&data))
        .args(["-A", "trust", "-U", "postgres", "--no-sync"])
        .output()
        .expect("initdb");
    assert!(
        initdb.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&initdb.stderr)
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(dir.path().join("postgres.log")).unwrap();
    let child = as_nobody(Command::new(bin.join("postgres")).arg("-D").arg(&data))
        .args(["-p", &port.to_string(), "-k"])
        .arg(dir.path())
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("postgres");
    let server = Postgres {
        child,
        port,
        _dir: dir,
    };
    let start = Instant::now();
    while !pg_isready(bin, port) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "postgres did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

fn pg_isready(bin: &Path, port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
        && Command::new(bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success())
}

/// Runs pgbench against the server; returns the transactions it reports processed.
pub fn pgbench(port: u16, args: &[&str]) -> u64 {
    let stdout = pgbench_output(port, args);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split('/').next()?.parse().ok())
        .unwrap_or(0)
}

/// pgbench's report (stdout); panics with its words when it fails.
pub fn pgbench_output(port: u16, args: &[&str]) -> String {
    let output = Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(args)
        .arg("postgres")
        .output()
        .expect("pgbench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "pgbench {args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.into_owned()
}
