//! The ids of a probe span: its span id, derived from the request so that the receiver can
//! find it again, and the trace (and parent) it joins from the W3C `traceparent` it carried.

use apiary_span::{Span, SpanKind};

/// A probe span's id, derived from what identifies the request (process, start, duration,
/// side) so that the receiver can later name it as the parent of the app's own span.
pub fn probe_span_id(span: &Span) -> [u8; 8] {
    if let Some(trace) = &span.trace {
        // The kernel's id: the one its children on this node name as their parent.
        return trace.span_id;
    }
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (span.pid, span.start_unix_nanos, span.duration_ns).hash(&mut hasher);
    (
        span.kind == SpanKind::Server,
        &span.protocol,
        &span.traceparent,
    )
        .hash(&mut hasher);
    let id = hasher.finish().to_be_bytes();
    // An all-zero span id is invalid in OTLP.
    if id == [0; 8] {
        [0, 0, 0, 0, 0, 0, 0, 1]
    } else {
        id
    }
}

/// The (trace id, caller's span id) a request carried in its W3C `traceparent`.
pub fn traceparent_ids(span: &Span) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = span.traceparent.as_deref()?.split('-').skip(1);
    let (mut trace, mut caller) = ([0u8; 16], [0u8; 8]);
    (hex_into(parts.next()?, &mut trace) && hex_into(parts.next()?, &mut caller))
        .then_some((trace, caller))
}

/// The trace id a span is exported under, when it is decided before export: the `traceparent`'s,
/// else the kernel's. (A span with neither gets a random one as it is encoded.)
pub fn exported_trace_id(span: &Span) -> Option<[u8; 16]> {
    traceparent_ids(span)
        .map(|(trace, _)| trace)
        .or(span.trace.map(|link| link.trace_id))
}

pub(crate) fn hex_into(text: &str, out: &mut [u8]) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() != out.len() * 2 {
        return false;
    }
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let nibble = |c: u8| (c as char).to_digit(16);
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(h), Some(l)) => out[i] = (h * 16 + l) as u8,
            _ => return false,
        }
    }
    true
}

/// Trace id, span id and parent span id, written into the arrays; returns whether there is a
/// parent. A request that carried a W3C `traceparent` joins that trace: on the server side
/// the caller's span is the parent; on the client side the header's span id is the id the
/// calling app gave its request, so the client span takes it and the server span on the other
/// end links to it. Otherwise the kernel's trace context (`Span::trace`: a parent found on this
/// node through the connection or the thread) gives all three; a span without one (a test's,
/// or from a kernel side without it) starts a trace of its own.
pub(crate) fn ids_into(
    span: &Span,
    trace_id: &mut [u8; 16],
    span_id: &mut [u8; 8],
    parent: &mut [u8; 8],
) -> bool {
    *span_id = probe_span_id(span);
    let Some((trace, header)) = traceparent_ids(span) else {
        let Some(link) = &span.trace else {
            *trace_id = rand::random();
            return false;
        };
        *trace_id = link.trace_id;
        if let Some(id) = link.parent_span_id {
            *parent = id;
            return true;
        }
        return false;
    };
    *trace_id = trace;
    match span.kind {
        SpanKind::Server => {
            *parent = header;
            true
        }
        SpanKind::Client => {
            *span_id = header;
            false
        }
    }
}
