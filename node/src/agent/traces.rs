//! The spans this node exported, kept by trace for a while (`--trace-store-spans`,
//! `--trace-store-age`), and `GET /v1/traces/{id}`'s gathering of one trace from every member
//! over the mesh (`Service::TraceSpans`), with a bounded fan-out and a timeout per member; an
//! answer without some members names them.
//!
//! The store is in memory and bounded by a span count; its default (4096) is the size of the
//! observer's recent list, whose spans it shares, so that it adds little to the agent's memory
//! goal. It holds only spans whose trace id is decided before export (the kernel's or a
//! `traceparent`'s).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiary_api_types::{MissingMember, TraceView};
use apiary_consensus::network::call_json;
use apiary_consensus::Consensus;
use apiary_pipeline::otlp::exported_trace_id;
use apiary_probes::Observer;
use apiary_span::trace::to_hex;
use apiary_span::Span;
use apiary_wire::{Message, Service};
use futures_util::StreamExt;
use serde_json::Value;

/// How many members are asked at once, and how long each may take.
const FAN_OUT: usize = 8;
const MEMBER_TIMEOUT: Duration = Duration::from_secs(2);

pub type TraceId = [u8; 16];

/// Exported spans by trace id, the oldest forgotten first (past the count or the age).
pub struct TraceStore {
    max_spans: usize,
    max_age: Duration,
    inner: Mutex<Inner>,
    /// Spans the store missed because it fell behind the live span channel.
    pub missed: AtomicU64,
}

#[derive(Default)]
struct Inner {
    by_trace: HashMap<TraceId, VecDeque<Arc<Span>>>,
    /// Every held span's trace, in the order they came.
    order: VecDeque<(Instant, TraceId)>,
}

impl TraceStore {
    pub fn new(max_spans: usize, max_age: Duration) -> Arc<Self> {
        Arc::new(TraceStore {
            max_spans,
            max_age,
            inner: Mutex::default(),
            missed: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn remember(&self, span: Arc<Span>) {
        let Some(trace) = exported_trace_id(&span) else {
            return;
        };
        if self.max_spans == 0 {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        self.forget_old(&mut inner, now, 1);
        inner.order.push_back((now, trace));
        inner.by_trace.entry(trace).or_default().push_back(span);
    }

    /// The spans held of one trace, in the order they were exported.
    pub fn spans(&self, trace: &TraceId) -> Vec<Arc<Span>> {
        let mut inner = self.lock();
        self.forget_old(&mut inner, Instant::now(), 0);
        inner
            .by_trace
            .get(trace)
            .map(|spans| spans.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Spans held now.
    pub fn held(&self) -> usize {
        self.lock().order.len()
    }

    /// Forgets the oldest spans until `room` more fit and none is older than the age.
    fn forget_old(&self, inner: &mut Inner, now: Instant, room: usize) {
        while let Some(&(at, trace)) = inner.order.front() {
            if inner.order.len() + room <= self.max_spans && now.duration_since(at) <= self.max_age
            {
                break;
            }
            inner.order.pop_front();
            if let Some(spans) = inner.by_trace.get_mut(&trace) {
                spans.pop_front();
                if spans.is_empty() {
                    inner.by_trace.remove(&trace);
                }
            }
        }
    }

    /// Keeps every span the observer publishes for export, until the observer goes away.
    pub fn follow(self: &Arc<Self>, observer: &Observer) {
        let mut spans = observer.subscribe();
        let store = self.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match spans.recv().await {
                    Ok(span) => store.remember(span),
                    Err(RecvError::Lagged(n)) => {
                        store.missed.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
    }

    /// This node's spans of `trace` as JSON, each naming `node`.
    pub fn spans_json(&self, trace: &TraceId, node: &str) -> Vec<Value> {
        self.spans(trace)
            .iter()
            .filter_map(|span| {
                let mut json = serde_json::to_value(span.as_ref()).ok()?;
                json["node"] = Value::String(node.to_string());
                Some(json)
            })
            .collect()
    }

    /// Answers a member's `TraceSpans` request: the payload is the trace id in hex.
    pub fn answer(&self, node: &str, payload: &[u8]) -> Message {
        let parsed = serde_json::from_slice::<String>(payload)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_trace_id(&text));
        let trace = match parsed {
            Ok(trace) => trace,
            Err(reason) => {
                return Message::Refused {
                    reason: format!("not a trace id: {reason}"),
                }
            }
        };
        match serde_json::to_vec(&self.spans_json(&trace, node)) {
            // Past a frame the answer would be cut off at the caller: say so instead.
            Ok(payload) if payload.len() > MAX_ANSWER_BYTES => Message::Refused {
                reason: format!(
                    "this node holds {} bytes of that trace's spans, more than one answer carries ({MAX_ANSWER_BYTES}); lower --trace-store-spans",
                    payload.len()
                ),
            },
            Ok(payload) => Message::Response { payload },
            Err(e) => Message::Refused {
                reason: format!("cannot encode the spans: {e}"),
            },
        }
    }
}

/// The most bytes of spans one member answers with, under the wire's 16 MiB frame.
const MAX_ANSWER_BYTES: usize = 8 << 20;

/// A W3C trace id: 32 lowercase or uppercase hex digits, not all zero.
pub fn parse_trace_id(text: &str) -> Result<TraceId, String> {
    let bytes = text.as_bytes();
    if bytes.len() != 32 {
        // Not echoed whole: it may be anything a caller put in the path.
        let shown: String = text.chars().take(40).collect();
        return Err(format!(
            "{shown:?}{} has {} characters; a trace id is 32 hex digits",
            if shown.len() < text.len() { "…" } else { "" },
            bytes.len()
        ));
    }
    let mut out = [0u8; 16];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => out[i] = h << 4 | l,
            _ => return Err(format!("{text:?} is not hex")),
        }
    }
    if out == [0; 16] {
        return Err("the all-zero trace id is invalid".into());
    }
    Ok(out)
}

/// The trace's spans from every member: this node's own, and each other member's over QUIC
/// (at most `FAN_OUT` at once, `MEMBER_TIMEOUT` each).
pub async fn gather(
    consensus: &Consensus,
    store: &TraceStore,
    node_name: &str,
    trace: TraceId,
) -> TraceView {
    let hex = to_hex(&trace);
    let me = consensus.id();
    let others: Vec<_> = consensus
        .status()
        .members
        .into_iter()
        .filter(|m| m.id != me)
        .collect();
    let mut spans = store.spans_json(&trace, node_name);
    let mut answered = vec![node_name.to_string()];
    let mut missing = Vec::new();
    let hex_ref = &hex;
    let mut asks = futures_util::stream::iter(others)
        .map(|member| async move {
            let answer: Result<Vec<Value>, _> = call_json(
                consensus.transport(),
                &member.address,
                Some(member.id),
                Service::TraceSpans,
                hex_ref,
                MEMBER_TIMEOUT,
            )
            .await;
            (member.name, answer)
        })
        .buffer_unordered(FAN_OUT);
    while let Some((name, answer)) = asks.next().await {
        match answer {
            Ok(theirs) => {
                spans.extend(theirs);
                answered.push(name);
            }
            Err(e) => missing.push(MissingMember {
                node: name,
                error: e.to_string(),
            }),
        }
    }
    spans.sort_by_key(|s| s["start_unix_nanos"].as_u64().unwrap_or(0));
    TraceView {
        trace_id: hex.clone(),
        spans,
        answered,
        missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_span::{testing::http_span, Link, SpanKind, TraceLink};

    fn span_in(trace: u8) -> Arc<Span> {
        let mut span = http_span(SpanKind::Server, "GET", "/", 200);
        span.trace = Some(TraceLink {
            trace_id: [trace; 16],
            span_id: [trace; 8],
            parent_span_id: None,
            link: Link::Root,
        });
        Arc::new(span)
    }

    #[test]
    fn keeps_the_newest_spans_up_to_the_count() {
        let store = TraceStore::new(3, Duration::from_secs(60));
        for trace in [1, 2, 1, 3] {
            store.remember(span_in(trace));
        }
        assert_eq!(store.held(), 3);
        assert_eq!(
            store.spans(&[1; 16]).len(),
            1,
            "the oldest span of trace 1 went first"
        );
        assert_eq!(store.spans(&[3; 16]).len(), 1);
        // A span without a decided trace id is not kept (it could not be found).
        store.remember(Arc::new(http_span(SpanKind::Client, "GET", "/", 200)));
        assert_eq!(store.held(), 3);
    }

    #[test]
    fn forgets_spans_past_the_age() {
        let store = TraceStore::new(10, Duration::from_millis(20));
        store.remember(span_in(1));
        std::thread::sleep(Duration::from_millis(40));
        assert!(store.spans(&[1; 16]).is_empty());
        assert_eq!(store.held(), 0);
    }

    #[test]
    fn trace_ids_are_checked() {
        assert_eq!(parse_trace_id(&"ab".repeat(16)), Ok([0xab; 16]));
        assert!(parse_trace_id("abc").unwrap_err().contains("32 hex digits"));
        assert!(parse_trace_id(&"zz".repeat(16))
            .unwrap_err()
            .contains("not hex"));
        assert!(parse_trace_id(&"0".repeat(32))
            .unwrap_err()
            .contains("all-zero"));
        // Multi-byte text of 32 bytes is refused, not split inside a character.
        assert!(parse_trace_id(&"é".repeat(16)).is_err());
    }
}
