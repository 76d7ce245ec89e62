//! Merging an app's own spans with the probes' spans of the same requests.
//!
//! When a request carries a W3C `traceparent`, the probe's server span and the app's server span
//! (from its OpenTelemetry SDK) both name the caller's span as their parent: two siblings for
//! one request. The probe saw the request first (on the wire) and the app handled it inside, so
//! the app's span becomes the child of the probe's span. This index remembers, for a while, the
//! probe server spans by (trace id, caller span id); the OTLP receivers (`sources`) re-parent app
//! spans with it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use apiary_span::{Span, SpanKind};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind as OtlpKind;

use crate::otlp::ids::{probe_span_id, traceparent_ids};

type Key = ([u8; 16], [u8; 8]);

fn key(trace: &[u8], parent: &[u8]) -> Option<Key> {
    Some((trace.try_into().ok()?, parent.try_into().ok()?))
}

/// Probe server spans of the last one to two `keep` periods, in two generations.
pub struct ServerSpanIndex {
    keep: Duration,
    max_entries: usize,
    state: Mutex<Generations>,
}

struct Generations {
    current: HashMap<Key, [u8; 8]>,
    previous: HashMap<Key, [u8; 8]>,
    rotated: Instant,
}

impl Default for ServerSpanIndex {
    fn default() -> Self {
        Self::new(Duration::from_secs(60), 200_000)
    }
}

impl ServerSpanIndex {
    pub fn new(keep: Duration, max_entries: usize) -> Self {
        ServerSpanIndex {
            keep,
            max_entries,
            state: Mutex::new(Generations {
                current: HashMap::new(),
                previous: HashMap::new(),
                rotated: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers a probe span that will be exported.
    pub fn remember(&self, span: &Span) {
        if span.kind != SpanKind::Server {
            return;
        }
        let Some(key) = traceparent_ids(span) else {
            return;
        };
        let mut state = self.lock();
        if state.rotated.elapsed() >= self.keep || state.current.len() >= self.max_entries / 2 {
            state.previous = std::mem::take(&mut state.current);
            state.rotated = Instant::now();
        }
        state.current.insert(key, probe_span_id(span));
    }

    /// Whether a probe span is known for this (trace id, caller span id).
    pub fn contains(&self, trace: &[u8], parent: &[u8]) -> bool {
        let Some(key) = key(trace, parent) else {
            return false;
        };
        let state = self.lock();
        state.current.contains_key(&key) || state.previous.contains_key(&key)
    }

    /// Makes each app server span whose request a probe saw the child of the probe's span.
    /// Returns how many spans changed, and how many server spans name a caller the index does
    /// not know (yet: the probe span of that request may still be in the ring buffer).
    pub fn reparent(&self, request: &mut ExportTraceServiceRequest) -> Reparented {
        let state = self.lock();
        let mut outcome = Reparented::default();
        for span in request
            .resource_spans
            .iter_mut()
            .flat_map(|r| r.scope_spans.iter_mut())
            .flat_map(|s| s.spans.iter_mut())
        {
            if span.kind != OtlpKind::Server as i32 || span.parent_span_id.is_empty() {
                continue;
            }
            let Some(key) = key(&span.trace_id, &span.parent_span_id) else {
                continue;
            };
            let Some(probe_span) = state.current.get(&key).or_else(|| state.previous.get(&key))
            else {
                outcome.unknown_callers += 1;
                continue;
            };
            if span.span_id != probe_span {
                span.parent_span_id = probe_span.to_vec();
                outcome.changed += 1;
            }
        }
        outcome
    }
}

/// What [`ServerSpanIndex::reparent`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reparented {
    pub changed: usize,
    pub unknown_callers: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan};

    fn probe_span(traceparent: &str) -> Span {
        let mut span = apiary_span::testing::http_span(SpanKind::Server, "GET", "/a", 200);
        span.service = "shop".into();
        span.pid = 10;
        span.start_unix_nanos = 5;
        span.duration_ns = 7;
        span.traceparent = Some(traceparent.into());
        span
    }

    fn app_request(kind: OtlpKind, parent: Vec<u8>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![OtlpSpan {
                        trace_id: vec![0xab; 16],
                        span_id: vec![3; 8],
                        parent_span_id: parent,
                        kind: kind as i32,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn parent_of(request: &ExportTraceServiceRequest) -> &[u8] {
        &request.resource_spans[0].scope_spans[0].spans[0].parent_span_id
    }

    #[test]
    fn app_server_span_becomes_the_child_of_the_probe_span() {
        let index = ServerSpanIndex::default();
        let tp = format!("00-{}-{}-01", "ab".repeat(16), "01".repeat(8));
        let probe = probe_span(&tp);
        index.remember(&probe);
        let mut request = app_request(OtlpKind::Server, vec![1; 8]);
        assert!(index.contains(&[0xab; 16], &[1; 8]));
        assert!(!index.contains(&[0xab; 16], &[2; 8]));
        assert_eq!(index.reparent(&mut request).changed, 1);
        assert_eq!(parent_of(&request), probe_span_id(&probe));
        // Another caller, a client span, or a root span: untouched.
        for (kind, parent) in [
            (OtlpKind::Server, vec![2; 8]),
            (OtlpKind::Client, vec![1; 8]),
            (OtlpKind::Server, vec![]),
        ] {
            let mut request = app_request(kind, parent.clone());
            assert_eq!(index.reparent(&mut request).changed, 0);
            assert_eq!(parent_of(&request), parent.as_slice());
        }
    }

    #[test]
    fn forgets_after_two_generations() {
        let index = ServerSpanIndex::new(Duration::from_millis(1), 100);
        let tp = format!("00-{}-{}-01", "ab".repeat(16), "01".repeat(8));
        index.remember(&probe_span(&tp));
        std::thread::sleep(Duration::from_millis(3));
        let other = format!("00-{}-{}-01", "cd".repeat(16), "01".repeat(8));
        index.remember(&probe_span(&other));
        std::thread::sleep(Duration::from_millis(3));
        index.remember(&probe_span(&other));
        let mut request = app_request(OtlpKind::Server, vec![1; 8]);
        assert_eq!(
            index.reparent(&mut request),
            Reparented {
                changed: 0,
                unknown_callers: 1
            }
        );
    }
}
