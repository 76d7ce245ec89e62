//! HTTP/1.1 load for the versus bench: a closed loop (each keep-alive connection sends its next
//! GET when the answer arrives) for the saturation rate, and an open loop (requests at fixed
//! times, latency measured from the time each was due, so a stall is not hidden by the requests
//! it held back) for latency at a set rate.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A keep-alive connection that sends `GET path` and reads one answer at a time.
struct Connection {
    port: u16,
    stream: TcpStream,
    request: Vec<u8>,
    buffer: Vec<u8>,
    /// The server said it closes the connection after this answer (Werkzeug always does).
    closing: bool,
}

/// An answer that takes longer than this counts as failed (the connection is dropped).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

impl Connection {
    async fn open(port: u16, path: &str) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            port,
            stream,
            request: format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes(),
            buffer: Vec::with_capacity(4096),
            closing: false,
        })
    }

    /// One request and its answer (`Ok(false)`: not 200), on a new connection when the server
    /// closed this one, as keep-alive clients do: a server's keep-alive limit is not a failure.
    async fn get(&mut self) -> std::io::Result<bool> {
        if self.closing {
            self.reconnect().await?;
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, self.exchange()).await {
            Ok(Err(_)) if self.buffer.is_empty() => {
                // Closed before any answer: the server's idle or request limit. Once more.
                self.reconnect().await?;
                tokio::time::timeout(ANSWER_TIMEOUT, self.exchange())
                    .await
                    .map_err(|_| std::io::ErrorKind::TimedOut)?
            }
            Ok(answered) => answered,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }

    async fn reconnect(&mut self) -> std::io::Result<()> {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream.set_nodelay(true)?;
        self.stream = stream;
        self.closing = false;
        Ok(())
    }

    async fn exchange(&mut self) -> std::io::Result<bool> {
        self.buffer.clear();
        self.stream.write_all(&self.request).await?;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buffer[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| std::io::Error::other("an answer without content-length"))?;
                while self.buffer.len() < end + 4 + length {
                    let n = self.stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    self.buffer.extend_from_slice(&chunk[..n]);
                }
                self.closing = head.contains("connection: close") || head.starts_with("http/1.0");
                return Ok(head.starts_with("http/1.1 200") || head.starts_with("http/1.0 200"));
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What a load phase saw.
#[derive(Default)]
pub struct Outcome {
    pub ok: u64,
    pub failed: u64,
    /// Per request (open loop only), µs from when it was due to its answer.
    pub latencies_us: Vec<u64>,
    pub elapsed: Duration,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile of the latencies, in ms.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return f64::NAN;
        }
        let at = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
        sorted[at] as f64 / 1000.0
    }

    fn add(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.latencies_us.extend(other.latencies_us);
    }
}

/// `connections` connections sending back to back for `duration`.
pub async fn closed(port: u16, path: &str, connections: usize, duration: Duration) -> Outcome {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let mut outcome = Outcome::default();
            let mut connection = None;
            while started.elapsed() < duration {
                if connection.is_none() {
                    connection = Connection::open(port, &path).await.ok();
                }
                let Some(open) = connection.as_mut() else {
                    outcome.failed += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                match open.get().await {
                    Ok(true) => outcome.ok += 1,
                    Ok(false) => outcome.failed += 1,
                    Err(_) => {
                        outcome.failed += 1;
                        connection = None;
                    }
                }
            }
            outcome
        }));
    }
    gather(tasks, started).await
}

/// `rate` requests/s spread over `connections` connections for `duration`, each request due
/// at its fixed time whether or not the ones before it were answered.
pub async fn open(
    port: u16,
    path: &str,
    rate: f64,
    connections: usize,
    duration: Duration,
) -> Outcome {
    let started = Instant::now();
    let interval = Duration::from_secs_f64(connections as f64 / rate.max(1.0));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let mut outcome = Outcome::default();
            let mut connection = Connection::open(port, &path).await.ok();
            // Spread the connections' schedules over one interval.
            let mut due = started + interval.mul_f64(c as f64 / connections as f64);
            while due < started + duration {
                tokio::time::sleep_until(due.into()).await;
                if connection.is_none() {
                    connection = Connection::open(port, &path).await.ok();
                }
                let answered = match connection.as_mut() {
                    Some(open) => open.get().await,
                    None => Err(std::io::ErrorKind::NotConnected.into()),
                };
                match answered {
                    Ok(true) => {
                        outcome.ok += 1;
                        outcome.latencies_us.push(due.elapsed().as_micros() as u64);
                    }
                    Ok(false) => outcome.failed += 1,
                    Err(_) => {
                        outcome.failed += 1;
                        connection = None;
                    }
                }
                due += interval;
            }
            outcome
        }));
    }
    gather(tasks, started).await
}

async fn gather(tasks: Vec<tokio::task::JoinHandle<Outcome>>, started: Instant) -> Outcome {
    let mut total = Outcome::default();
    for task in tasks {
        if let Ok(outcome) = task.await {
            total.add(outcome);
        }
    }
    total.elapsed = started.elapsed();
    total
}
