//! A loopback HTTP/1.1 keep-alive server and a paced load generator, shared by the probe
//! overhead and the tuning benchmarks.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

pub const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello";

/// Serves `RESPONSE` to every request, one thread per connection; returns the port.
pub fn server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            stream.set_nodelay(true).ok();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut have = 0;
                loop {
                    match stream.read(&mut buf[have..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                    while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        if stream.write_all(RESPONSE).is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                    }
                }
            });
        }
    });
    port
}

/// `rate` requests per second for `duration` over `connections` keep-alive connections, each
/// request sent on schedule (or at once when behind); returns the sorted latencies.
pub fn paced(port: u16, rate: f64, duration: Duration, connections: usize) -> Vec<Duration> {
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let workers: Vec<_> = (0..connections)
        .map(|c| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                stream.set_nodelay(true).ok();
                let mut latencies = Vec::new();
                let mut response = vec![0u8; RESPONSE.len()];
                let start = Instant::now();
                let mut next = start + interval.mul_f64(c as f64 / connections as f64);
                let mut i = 0u64;
                while next < start + duration {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    let request = format!("GET /paced/{c}/{i} HTTP/1.1\r\nHost: bench\r\n\r\n");
                    let sent = Instant::now();
                    stream.write_all(request.as_bytes()).unwrap();
                    stream.read_exact(&mut response).unwrap();
                    latencies.push(sent.elapsed());
                    next += interval;
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    let mut all: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    all.sort();
    all
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
