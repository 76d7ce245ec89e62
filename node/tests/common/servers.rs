//! Third-party servers the tests and benches start on private loopback ports: nginx speaking
//! HTTP/2 (h2c and TLS) and redis-server. Each is killed when its [`Server`] drops.

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Server;

/// A loopback TCP port free when asked.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to 15 s for something to accept on loopback `port`.
pub fn wait_listening(port: u16, what: &str) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// nginx answering HTTP/2 on two free ports, h2c (prior knowledge) and TLS (ALPN, a
/// self-signed certificate): `/api/` with 200, any other path from an empty root (404).
pub fn nginx_h2(dir: &Path) -> (Server, u16, u16) {
    let (port, tls_port) = (free_port(), free_port());
    let d = dir.display();
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(made.success(), "openssl could not make a certificate");
    let config = format!(
        "daemon off; master_process off; worker_processes 1; error_log {d}/error.log; \
         pid {d}/nginx.pid; events {{ worker_connections 256; }} \
         http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; \
         fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi; \
         server {{ listen 127.0.0.1:{port} http2; root {d}/html; \
         location /api/ {{ return 200 \"ok\\n\"; }} }} \
         server {{ listen 127.0.0.1:{tls_port} ssl http2; root {d}/html; \
         ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem; \
         location /api/ {{ return 200 \"ok\\n\"; }} }} }}"
    );
    std::fs::create_dir_all(dir.join("html")).unwrap();
    std::fs::write(dir.join("nginx.conf"), config).unwrap();
    let child = Command::new("nginx")
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx");
    let server = Server(child);
    wait_listening(port, "nginx");
    wait_listening(tls_port, "nginx on TLS");
    (server, port, tls_port)
}

/// redis-server on a free loopback port, persisting nothing, once it answers.
pub fn redis_server() -> (Server, u16) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let server = Server(child);
    wait_listening(port, "redis-server");
    std::mem::forget(dir); // removed with the machine's temp files; redis writes nothing there
    (server, port)
}
