//! Apiary's span model: one request/response exchange a probe saw, whatever its protocol.
//!
//! A [`Span`] holds what every exchange has (side, process, timing, connection, trace context,
//! sampling) and, in [`Protocol`], the typed attributes of the protocol that carried it. The
//! pipeline encodes spans and counts RED metrics only through this crate's protocol-neutral
//! view ([`Span::name`], [`Span::for_each_attribute`], [`Span::red`], [`Span::is_error`]), so a
//! new protocol is a new [`Protocol`] variant and a module here, not an edit of every encoder.
//!
//! This crate depends on nothing but serde: building the pipeline must not build the eBPF
//! probes.

use std::net::SocketAddr;

use serde::Serialize;

pub mod db;
pub mod grpc;
pub mod http;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod trace;

pub use db::Db;
pub use grpc::Grpc;
pub use http::Http;
pub use trace::{Link, TraceLink};

/// Which side of the exchange the traced process was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    Server,
    Client,
}

impl SpanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Server => "server",
            SpanKind::Client => "client",
        }
    }
}

/// One request and its response, seen by a probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    pub kind: SpanKind,
    /// The probe that saw it: `http` (socket syscalls) or `tls` (OpenSSL plaintext).
    pub probe: &'static str,
    pub service: String,
    pub pid: u32,
    pub start_unix_nanos: u64,
    pub duration_ns: u64,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// The W3C `traceparent` the request carried, already checked to be well formed.
    pub traceparent: Option<String>,
    /// The sampling rate the request was kept at, for re-weighting counts downstream.
    pub sample_rate: f64,
    /// False when sampling dropped the request: it counts in RED metrics but is not exported.
    pub sampled: bool,
    /// Set when `budget.always_keep` kept a request sampling had dropped (`error`, `slow`).
    pub kept_by: Option<&'static str>,
    pub netns: u32,
    pub cgroup_id: u64,
    /// The trace context the kernel gave the request (its ids, its parent on this node); a
    /// `traceparent` the request carried wins over it where they differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceLink>,
    /// The protocol and its attributes; in JSON its fields sit beside the ones above, with
    /// `"protocol": "http"` naming it.
    #[serde(flatten)]
    pub protocol: Protocol,
}

/// The protocol an exchange was spoken in, with its typed attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "protocol", rename_all = "lowercase")]
pub enum Protocol {
    Http(Http),
    /// A Redis command and its reply (`db.system.name` redis).
    Redis(Db),
    /// A PostgreSQL statement and its result (`db.system.name` postgresql).
    Postgres(Db),
    /// A MySQL or MariaDB statement and its result (`db.system.name` mysql or mariadb, from
    /// the server's greeting).
    Mysql(Db),
    /// An HTTP/2 request and its response (`network.protocol.version` 2).
    Http2(Http),
    /// A gRPC call over HTTP/2 and its status (`rpc.system` grpc).
    Grpc(Grpc),
}

/// Every protocol's RED schema, in the order metrics are exported.
pub static RED_SCHEMAS: &[&RedSchema] = &[
    &http::RED_SCHEMA,
    &http::HTTP2_RED_SCHEMA,
    &grpc::RED_SCHEMA,
    &db::REDIS_RED_SCHEMA,
    &db::POSTGRES_RED_SCHEMA,
    &db::MYSQL_RED_SCHEMA,
    &db::MARIADB_RED_SCHEMA,
];

/// An attribute value, borrowed from the span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Double(f64),
}

/// What RED metrics count an exchange under, beside its service and side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedDimensions<'a> {
    pub protocol: &'static RedSchema,
    /// HTTP: the method.
    pub operation: &'a str,
    /// HTTP: the route template.
    pub route: &'a str,
    /// The protocol's numeric status (HTTP: the status code).
    pub status: u16,
}

/// How a protocol's RED series are named and labelled when exported, per the OpenTelemetry
/// semantic conventions for OTLP and as Prometheus labels.
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RedSchema {
    /// The protocol's name (`http`), as in a span's `protocol` field.
    pub protocol: &'static str,
    /// OTLP histogram names for the server and the client side.
    pub server_metric: &'static str,
    pub client_metric: &'static str,
    pub metric_description: &'static str,
    /// An attribute on every point, for protocols that share their metric names: the
    /// databases' `db.*.operation.duration` (`db.system.name`), HTTP/2's HTTP ones
    /// (`network.protocol.version`); `None` for HTTP/1.
    pub fixed_attribute: Option<(&'static str, &'static str)>,
    /// OTLP attribute names of the operation, route and status.
    pub operation_attribute: &'static str,
    pub route_attribute: &'static str,
    pub status_attribute: &'static str,
    /// Prometheus: the metric name prefix (`apiary_http`) and the three label names.
    pub prometheus_prefix: &'static str,
    pub prometheus_labels: [&'static str; 3],
}

impl Span {
    /// The span's name as OTLP exports it (HTTP: `GET /users/{id}`).
    pub fn name(&self, out: &mut String) {
        match &self.protocol {
            Protocol::Http(http) | Protocol::Http2(http) => http.name(out),
            Protocol::Grpc(grpc) => grpc.name(out),
            Protocol::Redis(db) | Protocol::Postgres(db) | Protocol::Mysql(db) => db.name(out),
        }
    }

    /// The protocol's name (`http`).
    pub fn protocol_name(&self) -> &'static str {
        self.red().protocol.protocol
    }

    /// True when the exchange failed, per the protocol's semantic conventions. This is the one
    /// definition of an error: spans, RED and keep rules downstream all ask here.
    pub fn is_error(&self) -> bool {
        match &self.protocol {
            Protocol::Http(http) | Protocol::Http2(http) => http.is_error(self.kind),
            Protocol::Grpc(grpc) => grpc.is_error(self.kind),
            Protocol::Redis(db) | Protocol::Postgres(db) | Protocol::Mysql(db) => db.is_error(),
        }
    }

    /// True when the server failed the exchange (HTTP: 5xx), whichever side saw it: what
    /// `budget.always_keep.errors` keeps. A client's own mistakes (HTTP 4xx) are not.
    pub fn server_failed(&self) -> bool {
        match &self.protocol {
            Protocol::Http(http) | Protocol::Http2(http) => http.is_error(SpanKind::Server),
            Protocol::Grpc(grpc) => grpc.is_error(SpanKind::Server),
            // The reply is the server's answer whichever side saw it.
            Protocol::Redis(db) | Protocol::Postgres(db) | Protocol::Mysql(db) => db.is_error(),
        }
    }

    /// What RED metrics count this exchange under.
    pub fn red(&self) -> RedDimensions<'_> {
        match &self.protocol {
            Protocol::Http(http) => http.red(&http::RED_SCHEMA),
            Protocol::Http2(http) => http.red(&http::HTTP2_RED_SCHEMA),
            Protocol::Grpc(grpc) => grpc.red(),
            Protocol::Redis(db) => db.red(&db::REDIS_RED_SCHEMA),
            Protocol::Postgres(db) => db.red(&db::POSTGRES_RED_SCHEMA),
            Protocol::Mysql(db) if db.system == "mariadb" => db.red(&db::MARIADB_RED_SCHEMA),
            Protocol::Mysql(db) => db.red(&db::MYSQL_RED_SCHEMA),
        }
    }

    /// Every exported attribute of the span, protocol ones first, then the connection's and
    /// Apiary's own. `scratch` is room to format an address without allocating per span.
    pub fn for_each_attribute(&self, scratch: &mut String, mut emit: impl FnMut(&str, Value)) {
        match &self.protocol {
            Protocol::Http(http) => http.for_each_attribute(&mut emit),
            Protocol::Http2(http) => {
                http.for_each_attribute(&mut emit);
                emit("network.protocol.version", Value::Str("2"));
            }
            Protocol::Grpc(grpc) => grpc.for_each_attribute(&mut emit),
            Protocol::Redis(db) | Protocol::Postgres(db) | Protocol::Mysql(db) => {
                db.for_each_attribute(&mut emit)
            }
        }
        emit("apiary.probe", Value::Str(self.probe));
        emit("apiary.sample_rate", Value::Double(self.sample_rate));
        if let Some(reason) = self.kept_by {
            emit("apiary.kept_by", Value::Str(reason));
        }
        if let Some(peer) = self.peer {
            use std::fmt::Write;
            scratch.clear();
            let _ = write!(scratch, "{}", peer.ip());
            emit("network.peer.address", Value::Str(scratch));
            emit("network.peer.port", Value::Int(peer.port().into()));
            if self.kind == SpanKind::Client {
                let server = self.server_address().unwrap_or(scratch);
                emit("server.address", Value::Str(server));
                emit("server.port", Value::Int(peer.port().into()));
            } else {
                emit("client.address", Value::Str(scratch));
            }
        }
    }

    /// The name the client addressed the server by, when the protocol carries one (HTTP:
    /// `Host`).
    pub fn server_address(&self) -> Option<&str> {
        match &self.protocol {
            Protocol::Http(http) | Protocol::Http2(http) => http.host.as_deref(),
            Protocol::Grpc(grpc) => grpc.host.as_deref(),
            Protocol::Redis(_) | Protocol::Postgres(_) | Protocol::Mysql(_) => None,
        }
    }

    /// Drops what the operator's privacy rules do not let a span keep (HTTP: query parameters
    /// not in `keep_query_params`). Called before a span is shown or exported.
    pub fn apply_privacy(&mut self, keep_query_params: &[String]) {
        match &mut self.protocol {
            Protocol::Http(http) | Protocol::Http2(http) => http.strip_query(keep_query_params),
            Protocol::Grpc(_) => {}
            // Keys go unless [`Span::keep_db_keys`] says otherwise; a SQL span has no key, and
            // its query text was sanitised when it was built.
            Protocol::Redis(db) | Protocol::Postgres(db) | Protocol::Mysql(db) => {
                db.apply_privacy(false)
            }
        }
    }

    /// [`Span::apply_privacy`] for an operator who asked to keep Redis keys
    /// (`privacy.keep_redis_keys`): the same, but a Redis span keeps its key and query text.
    pub fn apply_privacy_keeping_db_keys(&mut self, keep_query_params: &[String]) {
        match &mut self.protocol {
            Protocol::Redis(_) => {}
            _ => self.apply_privacy(keep_query_params),
        }
    }

    /// The trace id of the request's `traceparent`, if it carried one.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent
            .as_deref()
            .and_then(|t| t.split('-').nth(1))
    }

    /// The HTTP attributes, when the exchange was HTTP.
    pub fn http(&self) -> Option<&Http> {
        match &self.protocol {
            Protocol::Http(http) | Protocol::Http2(http) => Some(http),
            _ => None,
        }
    }

    /// The database attributes, when the exchange was a database's.
    pub fn db(&self) -> Option<&Db> {
        match &self.protocol {
            Protocol::Redis(db) | Protocol::Postgres(db) | Protocol::Mysql(db) => Some(db),
            Protocol::Http(_) | Protocol::Http2(_) | Protocol::Grpc(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http_span(kind: SpanKind, status: u16) -> Span {
        let mut span = testing::http_span(kind, "GET", "/users/42?x=1", status);
        span.peer = Some("10.0.0.2:8080".parse().unwrap());
        span.http_mut().route = "/users/{id}".into();
        span
    }

    #[test]
    fn json_keeps_the_protocol_fields_beside_the_common_ones() {
        let json = serde_json::to_value(http_span(SpanKind::Server, 200)).unwrap();
        assert_eq!(json["protocol"], "http");
        assert_eq!(json["method"], "GET");
        assert_eq!(json["route"], "/users/{id}");
        assert_eq!(json["status"], 200);
        assert_eq!(json["kind"], "server");
        assert_eq!(json["service"], "svc");
    }

    #[test]
    fn attributes_name_the_server_by_host_on_the_client_side() {
        let mut seen = Vec::new();
        let mut scratch = String::new();
        http_span(SpanKind::Client, 404).for_each_attribute(&mut scratch, |key, value| {
            seen.push((key.to_string(), format!("{value:?}")))
        });
        let get = |k: &str| {
            seen.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("http.request.method").as_deref(), Some("Str(\"GET\")"));
        assert_eq!(get("url.path").as_deref(), Some("Str(\"/users/42\")"));
        assert_eq!(get("server.address").as_deref(), Some("Str(\"api\")"));
        assert_eq!(
            get("http.response.status_code").as_deref(),
            Some("Int(404)")
        );
        assert_eq!(get("client.address"), None);
        let mut name = String::new();
        http_span(SpanKind::Client, 404).name(&mut name);
        assert_eq!(name, "GET /users/{id}");
    }

    #[test]
    fn errors_follow_the_semantic_conventions() {
        assert!(http_span(SpanKind::Server, 500).is_error());
        assert!(!http_span(SpanKind::Server, 404).is_error());
        assert!(http_span(SpanKind::Client, 404).is_error());
        assert!(!http_span(SpanKind::Client, 302).is_error());
    }
}
