//! Probe spans as OTLP (`ExportTraceServiceRequest`), grouped by process into resources.

use std::collections::BTreeMap;

use apiary_span::{Span, SpanKind, Value};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span as OtlpSpan, Status,
};

/// Attributes every resource from this node carries.
#[derive(Debug, Clone, Default)]
pub struct ResourceInfo {
    pub host_name: String,
    pub node: String,
    /// From `OTEL_RESOURCE_ATTRIBUTES` (`key=value,key=value`).
    pub extra: Vec<(String, String)>,
    /// Kubernetes attributes by process, read once per process from /proc.
    pub kubernetes: KubernetesCache,
}

type PodAttributes = Vec<(&'static str, String)>;

/// Processes' pod attributes, bounded (cleared when it holds too many processes).
#[derive(Debug, Clone, Default)]
pub struct KubernetesCache(
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u32, PodAttributes>>>,
);

impl KubernetesCache {
    fn of(&self, pid: u32) -> PodAttributes {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 4096 {
            cache.clear();
        }
        cache
            .entry(pid)
            .or_insert_with(|| kubernetes_of(std::path::Path::new("/proc"), pid))
            .clone()
    }
}

impl ResourceInfo {
    /// Parses `OTEL_RESOURCE_ATTRIBUTES`; malformed pairs are reported, not guessed.
    pub fn with_env_attributes(mut self, text: &str) -> Result<Self, String> {
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("OTEL_RESOURCE_ATTRIBUTES: {pair:?} is not key=value"))?;
            self.extra
                .push((key.trim().to_string(), value.trim().to_string()));
        }
        Ok(self)
    }

    /// The resource of a service (and process, when one is known): `service.name`,
    /// `process.pid`, `host.name`, `apiary.node`, the pod's `k8s.*` when the process runs in a
    /// Kubernetes pod, and the `OTEL_RESOURCE_ATTRIBUTES` extras.
    pub fn attributes(&self, service: &str, pid: Option<u32>) -> Vec<KeyValue> {
        let mut attributes = vec![string("service.name", service)];
        if let Some(pid) = pid {
            attributes.push(int("process.pid", pid as i64));
            attributes.extend(
                self.kubernetes
                    .of(pid)
                    .into_iter()
                    .map(|(k, v)| string(k, v)),
            );
        }
        attributes.push(string("host.name", &self.host_name));
        attributes.push(string("apiary.node", &self.node));
        attributes.extend(self.extra.iter().map(|(k, v)| string(k, v)));
        attributes
    }
}

/// `k8s.namespace.name`, `k8s.pod.name` and `k8s.pod.uid` of a process in a Kubernetes pod,
/// read from what every pod has: its service-account namespace file, `HOSTNAME` (the pod's
/// name) and the pod UID in its cgroup path. Empty for a process outside Kubernetes.
pub fn kubernetes_of(proc_root: &std::path::Path, pid: u32) -> Vec<(&'static str, String)> {
    let process = proc_root.join(pid.to_string());
    let Ok(namespace) = std::fs::read_to_string(
        process.join("root/var/run/secrets/kubernetes.io/serviceaccount/namespace"),
    ) else {
        return Vec::new();
    };
    let mut found = vec![("k8s.namespace.name", namespace.trim().to_string())];
    if let Ok(environ) = std::fs::read(process.join("environ")) {
        if let Some(name) = environ
            .split(|b| *b == 0)
            .find_map(|var| var.strip_prefix(b"HOSTNAME="))
        {
            found.push(("k8s.pod.name", String::from_utf8_lossy(name).into_owned()));
        }
    }
    if let Ok(cgroup) = std::fs::read_to_string(process.join("cgroup")) {
        // …/kubepods-burstable-pod1234_5678.slice/… (systemd) or …/kubepods/burstable/pod1234-5678/…
        if let Some(uid) = cgroup.split(['/', '\n']).find_map(|part| {
            let rest = &part[part.rfind("pod")? + 3..];
            let uid: String = rest
                .chars()
                .take_while(|c| c.is_ascii_hexdigit() || *c == '-' || *c == '_')
                .collect();
            (uid.len() == 36).then(|| uid.replace('_', "-"))
        }) {
            found.push(("k8s.pod.uid", uid));
        }
    }
    found
}

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub(crate) fn string_attribute(key: &str, value: impl Into<String>) -> KeyValue {
    attribute(key, any_value::Value::StringValue(value.into()))
}

pub(crate) fn int_attribute(key: &str, value: i64) -> KeyValue {
    attribute(key, any_value::Value::IntValue(value))
}

use int_attribute as int;
use string_attribute as string;

fn double(key: &str, value: f64) -> KeyValue {
    attribute(key, any_value::Value::DoubleValue(value))
}

/// A probe span's id, derived from what identifies the request (process, start, duration,
/// side) so that the receiver can later name it as the parent of the app's own span.
pub fn probe_span_id(span: &Span) -> [u8; 8] {
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

fn hex_into(text: &str, out: &mut [u8]) -> bool {
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
/// end links to it.
pub(crate) fn ids_into(
    span: &Span,
    trace_id: &mut [u8; 16],
    span_id: &mut [u8; 8],
    parent: &mut [u8; 8],
) -> bool {
    *span_id = probe_span_id(span);
    let Some((trace, header)) = traceparent_ids(span) else {
        *trace_id = rand::random();
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
        end_time_unix_nano: span.start_unix_nanos + span.duration_ns,
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

/// The protobuf bytes of [`export_request`], written directly (see `encode`).
pub fn encode<S: std::borrow::Borrow<Span>>(spans: &[S], resource: &ResourceInfo) -> Vec<u8> {
    let mut out = Vec::with_capacity(spans.len() * 400);
    crate::encode::encode_spans(spans, resource, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn kubernetes_pod_of_a_process() {
        let proc_root = tempfile::tempdir().unwrap();
        let process = proc_root.path().join("42");
        let secrets = process.join("root/var/run/secrets/kubernetes.io/serviceaccount");
        std::fs::create_dir_all(&secrets).unwrap();
        std::fs::write(secrets.join("namespace"), "shop\n").unwrap();
        std::fs::write(process.join("environ"), b"PATH=/bin\0HOSTNAME=cart-7d9f\0").unwrap();
        std::fs::write(
            process.join("cgroup"),
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0c5f2a3e_1b2c_4d5e_8f90_a1b2c3d4e5f6.slice/cri-containerd-ab.scope\n",
        )
        .unwrap();
        let found = kubernetes_of(proc_root.path(), 42);
        assert_eq!(
            found,
            vec![
                ("k8s.namespace.name", "shop".to_string()),
                ("k8s.pod.name", "cart-7d9f".to_string()),
                (
                    "k8s.pod.uid",
                    "0c5f2a3e-1b2c-4d5e-8f90-a1b2c3d4e5f6".to_string()
                ),
            ]
        );
        assert!(kubernetes_of(proc_root.path(), 43).is_empty());
    }
}
