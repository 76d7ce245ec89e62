//! A real MariaDB for the tests: Debian's `mariadb-server`, its data dir made by
//! `mariadb-install-db` and the server run as `nobody` in a temp dir, on a private loopback
//! port, with `root` allowed in without a password over TCP.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where Debian puts the server; `None` when mariadb-server is not installed.
pub fn mariadbd_bin() -> Option<PathBuf> {
    ["/usr/sbin/mariadbd", "/usr/bin/mariadbd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A running mariadbd; stopped with SIGTERM (a clean shutdown), killed if it takes too long.
pub struct MariaDb {
    pub child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        super::stop_gracefully(&mut self.child, libc::SIGTERM);
    }
}

impl MariaDb {
    /// The server's error log, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("err.log")).unwrap_or_default()
    }
}

/// Debian's `nobody`: the server drops to it (`--user`), and owns its files.
const NOBODY: u32 = 65534;

pub fn start_mariadb(bin: &Path) -> MariaDb {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let data = dir.path().join("data");
    let install = Command::new("mariadb-install-db")
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args([
            "--user=nobody",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ])
        .output()
        .expect("mariadb-install-db (Debian mariadb-server)");
    assert!(
        install.status.success(),
        "mariadb-install-db: {}{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let child = Command::new(bin)
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args(["--user=nobody", "--bind-address=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--socket={}", path("sock")))
        .arg(format!("--pid-file={}", path("pid")))
        .arg(format!("--log-error={}", path("err.log")))
        // No fsync per commit (as PostgreSQL's fsync=off): the disk is not what is measured.
        .args(["--innodb-buffer-pool-size=16M", "--skip-log-bin"])
        .arg("--innodb-flush-log-at-trx-commit=0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mariadbd");
    let mut server = MariaDb { child, port, dir };
    let start = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok()
            && mariadb(port, "", "SELECT 1").status.success()
        {
            return server;
        }
        let exited = server.child.try_wait().ok().flatten();
        assert!(
            exited.is_none() && start.elapsed() < Duration::from_secs(30),
            "mariadbd did not start ({exited:?}): {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `sql` with the `mariadb` client as root over TCP, in `database` ("" for none).
pub fn mariadb(port: u16, database: &str, sql: &str) -> Output {
    let mut command = Command::new("mariadb");
    command
        .args(["--no-defaults", "-h", "127.0.0.1", "-u", "root"])
        .arg(format!("-P{port}"))
        .args(["--batch", "-e", sql]);
    if !database.is_empty() {
        command.arg(database);
    }
    command.output().expect("mariadb (Debian mariadb-client)")
}

/// [`mariadb`], which must succeed.
pub fn mariadb_ok(port: u16, database: &str, sql: &str) -> String {
    let output = mariadb(port, database, sql);
    assert!(
        output.status.success(),
        "mariadb -e {sql:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
