//! The hot path of export: probe spans written straight to OTLP protobuf bytes.
//!
//! Building `opentelemetry-proto`'s structs costs a dozen allocations per span, and prost then
//! walks nested messages once per level to size them; together that capped the pipeline near
//! 250 k spans/s per core. This writer produces the same message as
//! [`crate::otlp::spans::export_request`] (a test decodes both and compares them) with sizes
//! computed once and no per-span allocation beyond reused buffers.

use std::collections::BTreeMap;

use apiary_span::{Span, SpanKind, Value};
use prost::Message;

use crate::otlp::ids::ids_into;
use crate::otlp::resource::ResourceInfo;

const LEN: u32 = 2;
const VARINT: u32 = 0;
const FIXED64: u32 = 1;

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from(field << 3 | wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    tag(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn len_prefixed(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// The `KeyValue` (Span.attributes is field 9) around an `AnyValue` whose one field is
/// `any_len` bytes long; a oneof member is written even when it holds a default value.
fn attribute_head(out: &mut Vec<u8>, key: &str, any_len: usize) {
    let kv = len_prefixed(key.len()) + len_prefixed(any_len);
    tag(out, 9, LEN);
    varint(out, kv as u64);
    bytes_field(out, 1, key.as_bytes());
    tag(out, 2, LEN);
    varint(out, any_len as u64);
}

/// `KeyValue { key, value: AnyValue { string_value } }`.
fn string_attribute(out: &mut Vec<u8>, key: &str, value: &str) {
    attribute_head(out, key, len_prefixed(value.len()));
    tag(out, 1, LEN);
    varint(out, value.len() as u64);
    out.extend_from_slice(value.as_bytes());
}

/// `KeyValue { key, value: AnyValue { int_value } }`.
fn int_attribute(out: &mut Vec<u8>, key: &str, value: i64) {
    attribute_head(out, key, 1 + varint_len(value as u64));
    tag(out, 3, VARINT);
    varint(out, value as u64);
}

/// `KeyValue { key, value: AnyValue { double_value } }`.
fn double_attribute(out: &mut Vec<u8>, key: &str, value: f64) {
    attribute_head(out, key, 9);
    tag(out, 4, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

/// One `Span` message's fields (without its own tag and length).
fn span_fields(out: &mut Vec<u8>, span: &Span, scratch: &mut String) {
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    let mut parent = [0u8; 8];
    let has_parent = ids_into(span, &mut trace_id, &mut span_id, &mut parent);
    bytes_field(out, 1, &trace_id);
    bytes_field(out, 2, &span_id);
    if has_parent {
        bytes_field(out, 4, &parent);
    }
    span.name(scratch);
    bytes_field(out, 5, scratch.as_bytes());
    tag(out, 6, VARINT);
    varint(out, if span.kind == SpanKind::Server { 2 } else { 3 });
    tag(out, 7, FIXED64);
    out.extend_from_slice(&span.start_unix_nanos.to_le_bytes());
    tag(out, 8, FIXED64);
    out.extend_from_slice(
        &span
            .start_unix_nanos
            .saturating_add(span.duration_ns)
            .to_le_bytes(),
    );
    span.for_each_attribute(scratch, |key, value| match value {
        Value::Str(text) => string_attribute(out, key, text),
        Value::Int(n) => int_attribute(out, key, n),
        Value::Double(x) => double_attribute(out, key, x),
    });
    // Status { code } (field 15): ERROR = 2, UNSET = 0 (an empty message).
    let error = span.is_error();
    tag(out, 15, LEN);
    if error {
        varint(out, 2);
        tag(out, 3, VARINT);
        varint(out, 2);
    } else {
        varint(out, 0);
    }
}

/// Encodes `spans` as one `ExportTraceServiceRequest`, one resource per (service, process),
/// appending to `out`.
/// Takes spans or shared spans (`Arc<Span>`, as the observer hands them out).
pub fn encode_spans<S: std::borrow::Borrow<Span>>(
    spans: &[S],
    resource: &ResourceInfo,
    out: &mut Vec<u8>,
) {
    let mut by_process: BTreeMap<(&str, u32), Vec<&Span>> = BTreeMap::new();
    for span in spans {
        let span: &Span = span.borrow();
        by_process
            .entry((span.service.as_str(), span.pid))
            .or_default()
            .push(span);
    }
    let scope = opentelemetry_proto::tonic::common::v1::InstrumentationScope {
        name: "apiary".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let mut span_buf = Vec::with_capacity(512);
    let mut scope_spans = Vec::with_capacity(64 * 1024);
    let mut scratch = String::new();
    for ((service, pid), spans) in by_process {
        scope_spans.clear();
        tag(&mut scope_spans, 1, LEN);
        varint(&mut scope_spans, scope.encoded_len() as u64);
        scope.encode_raw(&mut scope_spans);
        for span in spans {
            span_buf.clear();
            span_fields(&mut span_buf, span, &mut scratch);
            bytes_field(&mut scope_spans, 2, &span_buf);
        }
        let resource_message = opentelemetry_proto::tonic::resource::v1::Resource {
            attributes: resource.attributes(service, Some(pid)),
            ..Default::default()
        };
        let resource_len = resource_message.encoded_len();
        let resource_spans_len = len_prefixed(resource_len) + len_prefixed(scope_spans.len());
        // ExportTraceServiceRequest.resource_spans (1) → ResourceSpans { resource (1),
        // scope_spans (2) }.
        tag(out, 1, LEN);
        varint(out, resource_spans_len as u64);
        tag(out, 1, LEN);
        varint(out, resource_len as u64);
        resource_message.encode_raw(out);
        tag(out, 2, LEN);
        varint(out, scope_spans.len() as u64);
        out.extend_from_slice(&scope_spans);
    }
}

/// The protobuf bytes of [`crate::otlp::spans::export_request`], written directly by
/// [`encode_spans`].
pub fn encode<S: std::borrow::Borrow<Span>>(spans: &[S], resource: &ResourceInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(spans.len() * 400);
    encode_spans(spans, resource, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::spans::export_request;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    fn span(i: u64, kind: SpanKind, traceparent: Option<&str>) -> Span {
        let status = [200, 404, 503, 0][i as usize % 4];
        let target = format!("/orders/{i}?q=1");
        let mut span = apiary_span::testing::http_span(kind, "POST", &target, status);
        span.http_mut().route = "/orders/{id}".into();
        span.http_mut().host = i.is_multiple_of(3).then(|| "api.example".to_string());
        span.probe = if i.is_multiple_of(2) { "http" } else { "tls" };
        span.service = format!("svc{}", i % 3);
        span.pid = (i % 4) as u32;
        span.start_unix_nanos = 1_700_000_000_000_000_000 + i;
        span.duration_ns = i * 1000;
        span.peer = (!i.is_multiple_of(5)).then(|| {
            if i.is_multiple_of(2) {
                "10.1.2.3:8080".parse().unwrap()
            } else {
                "[2001:db8::1]:443".parse().unwrap()
            }
        });
        span.traceparent = traceparent.map(str::to_string);
        span.sample_rate = [1.0, 0.25, 0.0][i as usize % 3];
        span.kept_by = [None, Some("error"), Some("slow")][i as usize % 3];
        span
    }

    /// Found by the ring_record fuzz target: a record stamped near u64::MAX made the end time
    /// overflow (a panic in debug builds, a wrapped end before the start in release).
    #[test]
    fn an_end_time_past_u64_max_saturates_in_both_encoders() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut late = span(1, SpanKind::Server, Some(tp));
        late.start_unix_nanos = u64::MAX - 5;
        late.duration_ns = 1_000;
        let resource = ResourceInfo::default();
        let mut fast = Vec::new();
        encode_spans(&[&late], &resource, &mut fast);
        let decoded = ExportTraceServiceRequest::decode(fast.as_slice()).unwrap();
        let otlp = &decoded.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(otlp.end_time_unix_nano, u64::MAX);
        assert_eq!(decoded, export_request(&[late], &resource));
    }

    #[test]
    fn writes_the_same_message_as_the_prost_structs() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let spans: Vec<Span> = (0..200)
            .map(|i| {
                let kind = if i % 2 == 0 {
                    SpanKind::Server
                } else {
                    SpanKind::Client
                };
                span(i, kind, Some(tp))
            })
            .collect();
        let resource = ResourceInfo {
            host_name: "h".into(),
            node: "n".into(),
            extra: vec![("team".into(), "edge".into())],
            ..Default::default()
        };
        let mut fast = Vec::new();
        encode_spans(&spans, &resource, &mut fast);
        let decoded = ExportTraceServiceRequest::decode(fast.as_slice()).unwrap();
        assert_eq!(decoded, export_request(&spans, &resource));
    }

    #[test]
    fn spans_without_traceparent_get_fresh_trace_ids() {
        let spans = vec![
            span(1, SpanKind::Server, None),
            span(2, SpanKind::Server, None),
        ];
        let mut bytes = Vec::new();
        encode_spans(&spans, &ResourceInfo::default(), &mut bytes);
        let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        let ids: Vec<&Vec<u8>> = decoded
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| &s.trace_id)
            .collect();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1]);
        assert!(ids
            .iter()
            .all(|id| id.len() == 16 && id.iter().any(|b| *b != 0)));
    }

    #[test]
    fn varint_lengths() {
        for value in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "{value}");
        }
    }
}
