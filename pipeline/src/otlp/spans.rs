//! Probe spans as OTLP (`ExportTraceServiceRequest`) built from `opentelemetry-proto`'s
//! structs, grouped by process into resources: the reference the fast writer (`writer`) is
//! tested against.

use std::collections::BTreeMap;

use apiary_span::{Span, SpanKind, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span as OtlpSpan, Status,
};

use crate::otlp::attributes::{
    double_attribute as double, int_attribute as int, string_attribute as string,
};
use crate::otlp::ids::ids_into;
use crate::otlp::resource::ResourceInfo;

fn ids(span: &Span) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (mut trace_id, mut span_id, mut parent) = ([0u8; 16], [0u8; 8], [0u8; 8]);
    let has_parent = ids_into(span, &mut trace_id, &mut span_id, &mut parent);
    let parent = if has_parent {
        parent.to_vec()
    } else {
        Vec::new()
    };
    (trace_id.to_vec(), span_id.to_vec(), parent)
}

fn to_otlp(span: &Span) -> OtlpSpan {
    let (trace_id, span_id, parent_span_id) = ids(span);
    let mut attributes = Vec::with_capacity(12);
    let mut scratch = String::new();
    span.for_each_attribute(&mut scratch, |key, value| {
        attributes.push(match value {
            Value::Str(text) => string(key, text),
            Value::Int(n) => int(key, n),
            Value::Double(x) => double(key, x),
        })
    });
    let error = span.is_error();
    let mut name = String::new();
    span.name(&mut name);
    OtlpSpan {
        trace_id,
        span_id,
        parent_span_id,
        name,
        kind: match span.kind {
            SpanKind::Server => span::SpanKind::Server as i32,
            SpanKind::Client => span::SpanKind::Client as i32,
        },
        start_time_unix_nano: span.start_unix_nanos,
        end_time_unix_nano: span.start_unix_nanos.saturating_add(span.duration_ns),
        attributes,
        status: Some(Status {
            code: if error {
                status::StatusCode::Error as i32
            } else {
                status::StatusCode::Unset as i32
            },
            message: String::new(),
        }),
        ..Default::default()
    }
}

/// One OTLP request for `spans`, one resource per (service, process).
pub fn export_request(spans: &[Span], resource: &ResourceInfo) -> ExportTraceServiceRequest {
    let mut by_process: BTreeMap<(&str, u32), Vec<OtlpSpan>> = BTreeMap::new();
    for span in spans {
        by_process
            .entry((span.service.as_str(), span.pid))
            .or_default()
            .push(to_otlp(span));
    }
    let resource_spans = by_process
        .into_iter()
        .map(|((service, pid), spans)| {
            let attributes = resource.attributes(service, Some(pid));
            ResourceSpans {
                resource: Some(Resource {
                    attributes,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "apiary".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::ids::hex_into;
    use crate::otlp::writer::encode;
    use prost::Message;

    fn hex_bytes(text: &str) -> Option<Vec<u8>> {
        let mut out = vec![0u8; text.len() / 2];
        hex_into(text, &mut out).then_some(out)
    }

    fn span(kind: SpanKind, traceparent: Option<&str>, status: u16) -> Span {
        let mut span = apiary_span::testing::http_span(kind, "GET", "/cart/7?x=1", status);
        span.http_mut().route = "/cart/{id}".into();
        span.http_mut().host = Some("cart".into());
        span.service = "shop".into();
        span.pid = 10;
        span.start_unix_nanos = 1_000;
        span.duration_ns = 500;
        span.peer = Some("10.0.0.2:8080".parse().unwrap());
        span.local = Some("10.0.0.1:40000".parse().unwrap());
        span.traceparent = traceparent.map(str::to_string);
        span.sample_rate = 0.5;
        span
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn server_span_joins_the_callers_trace() {
        let otlp = to_otlp(&span(SpanKind::Server, Some(TP), 503));
        assert_eq!(
            otlp.trace_id,
            hex_bytes("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(otlp.parent_span_id, hex_bytes("00f067aa0ba902b7").unwrap());
        assert_eq!(otlp.span_id.len(), 8);
        assert_eq!(otlp.name, "GET /cart/{id}");
        assert_eq!(otlp.end_time_unix_nano - otlp.start_time_unix_nano, 500);
        assert_eq!(otlp.status.unwrap().code, status::StatusCode::Error as i32);
        let client = to_otlp(&span(SpanKind::Client, Some(TP), 404));
        assert_eq!(client.span_id, hex_bytes("00f067aa0ba902b7").unwrap());
        assert!(client.parent_span_id.is_empty());
        assert_eq!(
            client.status.unwrap().code,
            status::StatusCode::Error as i32
        );
    }

    #[test]
    fn request_groups_by_process_and_round_trips() {
        let resource = ResourceInfo {
            host_name: "h".into(),
            node: "n1".into(),
            extra: vec![],
            ..Default::default()
        }
        .with_env_attributes("deployment.environment=prod, team=edge")
        .unwrap();
        let mut other = span(SpanKind::Server, None, 200);
        other.pid = 11;
        let bytes = encode(
            &[
                span(SpanKind::Server, None, 200),
                span(SpanKind::Client, None, 200),
                other,
            ],
            &resource,
        );
        let decoded = ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded.resource_spans.len(), 2);
        let first = &decoded.resource_spans[0];
        let attrs = &first.resource.as_ref().unwrap().attributes;
        for key in [
            "service.name",
            "host.name",
            "apiary.node",
            "deployment.environment",
            "team",
        ] {
            assert!(attrs.iter().any(|kv| kv.key == key), "missing {key}");
        }
        assert_eq!(first.scope_spans[0].spans.len(), 2);
        assert!(ResourceInfo::default()
            .with_env_attributes("novalue")
            .is_err());
    }
}
