//! An [`Ingest`] for the receivers' tests: it records what it accepted, can refuse, and can
//! hold probe spans "in the ring" that only a sync puts in the index.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use apiary_span::{Span, SpanKind};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind as OtlpKind;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan};

use crate::signal::Signal;
use crate::sources::ingest::{Ingest, NotTaken};
use crate::transforms::reparent::ServerSpanIndex;

#[derive(Default)]
pub(crate) struct FakeIngest {
    pub server_spans: ServerSpanIndex,
    /// What `accept` took: (signal, items, payload).
    pub accepted: Mutex<Vec<(Signal, u32, Vec<u8>)>>,
    /// `accept` fails with this when set.
    pub refuse: Option<NotTaken>,
    /// With probes: the spans still in the ring, indexed by the next sync. `None`: no probes.
    pub ring: Option<Mutex<Vec<Span>>>,
    pub syncs: AtomicUsize,
}

// `async fn`s, as the node's implementation for its export can write them.
impl Ingest for FakeIngest {
    fn server_spans(&self) -> &ServerSpanIndex {
        &self.server_spans
    }

    async fn sync_with_probes(&self, _timeout: Duration) -> bool {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let Some(ring) = &self.ring else {
            return false;
        };
        for span in ring.lock().unwrap().drain(..) {
            self.server_spans.remember(&span);
        }
        true
    }

    async fn accept(&self, signal: Signal, items: u32, payload: &[u8]) -> Result<(), NotTaken> {
        if let Some(reason) = &self.refuse {
            return Err(reason.clone());
        }
        self.accepted
            .lock()
            .unwrap()
            .push((signal, items, payload.to_vec()));
        Ok(())
    }
}

impl FakeIngest {
    pub fn accepted(&self) -> Vec<(Signal, u32, Vec<u8>)> {
        self.accepted.lock().unwrap().clone()
    }
}

/// The probe's server span of a request that came with `traceparent`.
pub(crate) fn probe_span(traceparent: &str) -> Span {
    let mut span = apiary_span::testing::http_span(SpanKind::Server, "GET", "/a", 200);
    span.traceparent = Some(traceparent.into());
    span
}

/// A traceparent of trace `ab…ab` from caller span `01…01`.
pub(crate) const TRACEPARENT: &str = "00-abababababababababababababababab-0101010101010101-01";

/// An app's request with one span of `kind` whose parent is `parent`, in trace `ab…ab`, and
/// two more spans without a parent.
pub(crate) fn app_traces(kind: OtlpKind, parent: Vec<u8>) -> ExportTraceServiceRequest {
    let span = |id: u8, kind: OtlpKind, parent: Vec<u8>| OtlpSpan {
        trace_id: vec![0xab; 16],
        span_id: vec![id; 8],
        parent_span_id: parent,
        kind: kind as i32,
        name: format!("app-span-{id}"),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    span(3, kind, parent),
                    span(4, OtlpKind::Internal, vec![]),
                    span(5, OtlpKind::Internal, vec![]),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}
