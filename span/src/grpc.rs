//! gRPC calls (over HTTP/2), per the OpenTelemetry semantic conventions for RPC spans and
//! metrics (`rpc.*`).

use serde::Serialize;

use crate::{RedDimensions, RedSchema, SpanKind, Value};

/// One gRPC call: the method its `:path` named and the status its trailers gave.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Grpc {
    /// `rpc.service`: the full service name (`helloworld.Greeter`). In JSON `rpc_service`,
    /// beside the span's own `service` (the process).
    #[serde(rename = "rpc_service")]
    pub service: String,
    /// `rpc.method`: `SayHello`.
    #[serde(rename = "rpc_method")]
    pub method: String,
    /// `rpc.grpc.status_code`: 0 (OK) to 16, from `grpc-status`.
    #[serde(rename = "grpc_status")]
    pub status: u16,
    /// The `:authority` the client called.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// RED of gRPC calls: by service, side, RPC service and method, and status code.
pub static RED_SCHEMA: RedSchema = RedSchema {
    protocol: "grpc",
    server_metric: "rpc.server.call.duration",
    client_metric: "rpc.client.call.duration",
    metric_description: "Duration of gRPC calls seen by Apiary's probes, counted before sampling.",
    fixed_attribute: Some(("rpc.system", "grpc")),
    operation_attribute: "rpc.service",
    route_attribute: "rpc.method",
    status_attribute: "rpc.grpc.status_code",
    prometheus_prefix: "apiary_grpc",
    prometheus_labels: ["rpc_service", "rpc_method", "grpc_status"],
};

impl Grpc {
    /// `{service}/{method}` (semantic conventions).
    pub(crate) fn name(&self, out: &mut String) {
        out.clear();
        out.push_str(&self.service);
        out.push('/');
        out.push_str(&self.method);
    }

    /// Semantic conventions: any status but OK fails the client's call; the server's only on
    /// the codes that say the server failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
    /// INTERNAL, UNAVAILABLE, DATA_LOSS), not on the caller's mistakes (NOT_FOUND, ...).
    pub fn is_error(&self, kind: SpanKind) -> bool {
        match kind {
            SpanKind::Client => self.status != 0,
            SpanKind::Server => matches!(self.status, 2 | 4 | 12 | 13 | 14 | 15),
        }
    }

    pub(crate) fn red(&self) -> RedDimensions<'_> {
        RedDimensions {
            protocol: &RED_SCHEMA,
            operation: &self.service,
            route: &self.method,
            status: self.status,
        }
    }

    pub(crate) fn for_each_attribute(&self, emit: &mut impl FnMut(&str, Value)) {
        emit("rpc.system", Value::Str("grpc"));
        emit("rpc.service", Value::Str(&self.service));
        emit("rpc.method", Value::Str(&self.method));
        emit("rpc.grpc.status_code", Value::Int(self.status.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_follow_the_semantic_conventions() {
        let call = |status| Grpc {
            service: "helloworld.Greeter".into(),
            method: "SayHello".into(),
            status,
            host: None,
        };
        assert!(!call(0).is_error(SpanKind::Client));
        assert!(call(5).is_error(SpanKind::Client));
        assert!(!call(5).is_error(SpanKind::Server));
        assert!(call(13).is_error(SpanKind::Server));
        let mut name = String::new();
        call(0).name(&mut name);
        assert_eq!(name, "helloworld.Greeter/SayHello");
    }
}
