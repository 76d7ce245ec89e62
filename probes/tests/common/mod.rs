//! Helpers shared by the real-kernel probe tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary_config::{apply_settings, ClusterConfig, Setting};
use apiary_probes::{spawn_reader, Observer, ProbeSet, Span};

pub fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    ($name:literal) => {
        if !root() {
            eprintln!(concat!(
                "SKIPPED ",
                $name,
                ": loading eBPF needs root (CI runs these as root via .ci/run)"
            ));
            return;
        }
    };
}

pub fn config(settings: &[(&str, serde_json::Value)]) -> ClusterConfig {
    let settings: Vec<Setting> = settings
        .iter()
        .map(|(key, value)| Setting {
            key: key.to_string(),
            value: value.clone(),
        })
        .collect();
    apply_settings(&ClusterConfig::default(), &settings).expect("valid test config")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Probes {
    pub set: ProbeSet,
    pub observer: Arc<Observer>,
}

pub fn load(config: &ClusterConfig) -> Probes {
    let mut set = ProbeSet::load(&[]).expect("load probes");
    set.apply(config).expect("apply config");
    let observer = Arc::new(Observer::default());
    spawn_reader(set.take_events().unwrap(), observer.clone()).expect("reader");
    Probes { set, observer }
}

pub fn spans_on_port(observer: &Observer, port: u16) -> Vec<Span> {
    observer
        .recent_spans()
        .into_iter()
        .filter(|s| {
            s.local.map(|a| a.port()) == Some(port) || s.peer.map(|a| a.port()) == Some(port)
        })
        .map(|s| (*s).clone())
        .collect()
}

pub async fn wait_spans(observer: &Observer, port: u16, count: usize) -> Vec<Span> {
    let start = Instant::now();
    loop {
        let spans = spans_on_port(observer, port);
        if spans.len() >= count || start.elapsed() > Duration::from_secs(10) {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal HTTP/1.1 server in this process (one thread, one request per connection).
pub fn rust_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 1024];
            let mut read = 0;
            while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") && read < buf.len() {
                match stream.read(&mut buf[read..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read += n,
                }
            }
            let status = if buf.starts_with(b"GET /fail") {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = stream.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                    .as_bytes(),
            );
        }
    });
    port
}

pub fn get(port: u16, path: &str) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
}
