//! The telemetry side: apps post spans to every node's OTLP/HTTP receiver, each span with an id
//! no other span has; every node exports to one counting receiver (a real HTTP server in this
//! process, decoding the official OTLP protobuf) that counts each span id it is sent. The
//! nemesis kills nodes and takes the receiver down; at the end every span a node acknowledged
//! (200) must have arrived, and the ids that arrived more than once are the duplicates.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

/// Span ids to the number of times the receiver was sent each.
#[derive(Clone, Default)]
pub struct Counts(Arc<Mutex<HashMap<u64, u32>>>);

impl Counts {
    fn add(&self, ids: impl IntoIterator<Item = u64>) {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            *counts.entry(id).or_default() += 1;
        }
    }

    pub fn snapshot(&self) -> HashMap<u64, u32> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The counting receiver. Each start runs it on a runtime and thread of its own, so that a stop
/// closes every socket (the listener and kept-alive connections), as a collector that went away.
pub struct Receiver {
    pub addr: SocketAddr,
    pub counts: Counts,
    /// Requests that did not decode as OTLP traces (answered 400; goal 0).
    pub malformed: Arc<AtomicU64>,
    running: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Receiver {
    /// Starts on a free port of `ip` (the bridge's address, which every namespace reaches).
    pub fn start(ip: Ipv4Addr) -> Result<Receiver> {
        let mut receiver = Receiver {
            addr: SocketAddr::from((ip, 0)),
            counts: Counts::default(),
            malformed: Arc::default(),
            running: None,
        };
        receiver.up()?;
        Ok(receiver)
    }

    pub fn is_up(&self) -> bool {
        self.running.is_some()
    }

    /// Starts it again on the same address (nodes keep sending there).
    pub fn up(&mut self) -> Result<()> {
        if self.running.is_some() {
            return Ok(());
        }
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel::<std::io::Result<SocketAddr>>();
        let (addr, counts, malformed) = (self.addr, self.counts.clone(), self.malformed.clone());
        let thread = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = bound_tx.send(Err(e));
                    return;
                }
            };
            runtime.spawn(serve(addr, counts, malformed, bound_tx));
            runtime.block_on(async {
                let _ = tokio::task::spawn_blocking(move || stopped.recv()).await;
            });
        });
        let bound = bound_rx
            .recv()
            .context("the receiver's thread ended before binding")?
            .with_context(|| format!("binding the counting receiver on {addr}"))?;
        self.addr = bound;
        self.running = Some((stop, thread));
        Ok(())
    }

    /// Stops it: connections are refused until [`Receiver::up`].
    pub fn down(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

async fn serve(
    addr: SocketAddr,
    counts: Counts,
    malformed: Arc<AtomicU64>,
    bound: std::sync::mpsc::Sender<std::io::Result<SocketAddr>>,
) {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let (counts, malformed) = (counts.clone(), malformed.clone());
            async move {
                match ExportTraceServiceRequest::decode(body.as_ref()) {
                    Ok(request) => {
                        counts.add(span_ids(&request));
                        StatusCode::OK
                    }
                    Err(_) => {
                        malformed.fetch_add(1, Ordering::Relaxed);
                        StatusCode::BAD_REQUEST
                    }
                }
            }
        }),
    );
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            let _ = bound.send(Err(e));
            return;
        }
    };
    let _ = bound.send(listener.local_addr());
    let _ = axum::serve(listener, app).await;
}

fn span_ids(request: &ExportTraceServiceRequest) -> Vec<u64> {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .filter_map(|span| <[u8; 8]>::try_from(span.span_id.as_slice()).ok())
        .map(u64::from_be_bytes)
        .collect()
}

/// What the apps were told: the span ids some node answered 200 for.
#[derive(Clone, Default)]
pub struct Acked(Arc<Mutex<Vec<u64>>>);

impl Acked {
    pub fn ids(&self) -> Vec<u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Spans per request an app posts.
pub const SPANS_PER_REQUEST: u64 = 20;

/// One app posting to one node's OTLP/HTTP receiver (`url`) every `pause`, each span's id
/// taken from `next_id`. A request answered anything but 200 (or not at all) is not acked; its
/// spans may still arrive, which is allowed.
pub async fn app(
    url: String,
    next_id: Arc<AtomicU64>,
    acked: Acked,
    posted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    pause: Duration,
) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(1))
        .build()
    {
        Ok(http) => http,
        Err(_) => return,
    };
    while !stop.load(Ordering::Relaxed) {
        let first = next_id.fetch_add(SPANS_PER_REQUEST, Ordering::Relaxed);
        let ids: Vec<u64> = (first..first + SPANS_PER_REQUEST).collect();
        posted.fetch_add(SPANS_PER_REQUEST, Ordering::Relaxed);
        let answer = http
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(request(&ids).encode_to_vec())
            .send()
            .await;
        if answer.is_ok_and(|r| r.status() == StatusCode::OK) {
            acked
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(ids);
        }
        tokio::time::sleep(pause).await;
    }
}

fn request(ids: &[u64]) -> ExportTraceServiceRequest {
    let spans = ids
        .iter()
        .map(|&id| Span {
            trace_id: [id.to_be_bytes(), 0xC4A05u64.to_be_bytes()].concat(),
            span_id: id.to_be_bytes().to_vec(),
            name: format!("chaos-{id}"),
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The telemetry findings.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SpanReport {
    pub posted: u64,
    pub acked: usize,
    /// Distinct span ids the receiver was sent.
    pub delivered: usize,
    /// Acked and never delivered (goal 0).
    pub lost: usize,
    /// Deliveries beyond the first of a span id (at-least-once delivery allows them).
    pub duplicates: u64,
    /// Delivered though no node acked them (a request cut off after it was stored).
    pub delivered_unacked: usize,
    /// A few lost ids, for the report.
    pub lost_sample: Vec<u64>,
}

pub fn compare(acked: &[u64], counts: &HashMap<u64, u32>, posted: u64) -> SpanReport {
    let acked_set: HashSet<u64> = acked.iter().copied().collect();
    let mut lost: Vec<u64> = acked_set
        .iter()
        .copied()
        .filter(|id| !counts.contains_key(id))
        .collect();
    lost.sort_unstable();
    SpanReport {
        posted,
        acked: acked_set.len(),
        delivered: counts.len(),
        lost: lost.len(),
        duplicates: counts
            .values()
            .map(|&n| u64::from(n.saturating_sub(1)))
            .sum(),
        delivered_unacked: counts.keys().filter(|id| !acked_set.contains(id)).count(),
        lost_sample: lost.into_iter().take(10).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_duplicates_and_unacked_are_told_apart() {
        let counts = HashMap::from([(1, 1), (2, 3), (5, 1)]);
        let report = compare(&[1, 2, 3, 4], &counts, 6);
        assert_eq!(report.acked, 4);
        assert_eq!(report.delivered, 3);
        assert_eq!(report.lost, 2);
        assert_eq!(report.lost_sample, vec![3, 4]);
        assert_eq!(report.duplicates, 2);
        assert_eq!(report.delivered_unacked, 1);
    }

    #[test]
    fn span_ids_round_trip_through_the_request() {
        let request = request(&[7, 1 << 40]);
        let decoded =
            ExportTraceServiceRequest::decode(request.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(span_ids(&decoded), vec![7, 1 << 40]);
    }
}
