//! A real nginx (Debian `nginx`, one worker, `return 200`) on a private port, and `wrk`
//! (Debian `wrk`) saturating it: the probe overhead bench's busy-server section.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Nginx {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a program is on PATH or in the usual sbin directories.
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| PathBuf::from(dir).join(program))
        .find(|p| p.is_file());
    found
}

/// What is missing to run this section, if anything.
pub fn missing() -> Option<String> {
    let absent: Vec<&str> = ["nginx", "wrk"]
        .into_iter()
        .filter(|p| find(p).is_none())
        .collect();
    (!absent.is_empty()).then(|| {
        format!(
            "{} not installed (apt-get install {})",
            absent.join(" and "),
            absent.join(" ")
        )
    })
}

/// nginx with one worker answering every request with a 6-byte body, access log off.
pub fn start() -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = dir.path().display();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello\\n\"; }} }}\n}}\n"
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(find("nginx").expect("nginx"))
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nginx did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Nginx {
        child,
        _dir: dir,
        port,
    }
}

/// One `wrk -t1 -c4 -dN --latency` run: (requests/s, p99, requests).
pub fn wrk(port: u16, seconds: f64) -> (f64, Duration, u64) {
    let output = Command::new(find("wrk").expect("wrk"))
        .args(["-t1", "-c4", &format!("-d{seconds}s"), "--latency"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("wrk");
    let text = String::from_utf8_lossy(&output.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| parse_duration(v.trim()))
        .unwrap_or_default();
    (rps, p99, requests)
}

/// wrk's `41.34ms`, `812.00us`, `1.20s`.
fn parse_duration(text: &str) -> Duration {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().unwrap_or(0.0);
    let seconds = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => 0.0,
    };
    Duration::from_secs_f64(seconds)
}
