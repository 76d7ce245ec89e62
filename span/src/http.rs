//! HTTP's attributes, per the OpenTelemetry semantic conventions for HTTP spans and metrics.

use serde::Serialize;

use crate::{RedDimensions, RedSchema, SpanKind, Value};

/// One HTTP request's attributes and its response's status.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Http {
    pub method: String,
    /// The request target as sent (path and query). Empty when sampling dropped the request
    /// and no keep rule could export it: only RED reads such a span.
    pub target: String,
    /// The target with ids templated (`/users/{id}`), the low-cardinality name RED counts by.
    pub route: String,
    pub status: u16,
    pub host: Option<String>,
}

pub static RED_SCHEMA: RedSchema = RedSchema {
    protocol: "http",
    server_metric: "http.server.request.duration",
    client_metric: "http.client.request.duration",
    metric_description:
        "Duration of HTTP requests seen by Apiary's probes, counted before sampling.",
    operation_attribute: "http.request.method",
    route_attribute: "http.route",
    status_attribute: "http.response.status_code",
    fixed_attribute: None,
    prometheus_prefix: "apiary_http",
    prometheus_labels: ["method", "route", "status"],
};

/// RED of HTTP/2 requests: HTTP's metrics, told apart by `network.protocol.version`.
pub static HTTP2_RED_SCHEMA: RedSchema = RedSchema {
    protocol: "http2",
    metric_description:
        "Duration of HTTP/2 requests seen by Apiary's probes, counted before sampling.",
    fixed_attribute: Some(("network.protocol.version", "2")),
    prometheus_prefix: "apiary_http2",
    ..RED_SCHEMA
};

impl Http {
    pub(crate) fn name(&self, out: &mut String) {
        out.clear();
        out.push_str(&self.method);
        out.push(' ');
        out.push_str(&self.route);
    }

    /// Semantic conventions: 5xx is an error on both sides, 4xx only for the client.
    pub fn is_error(&self, kind: SpanKind) -> bool {
        is_error(kind, self.status)
    }

    pub(crate) fn red(&self, schema: &'static RedSchema) -> RedDimensions<'_> {
        RedDimensions {
            protocol: schema,
            operation: &self.method,
            route: &self.route,
            status: self.status,
        }
    }

    /// The request's path: its target without query or fragment (which may hold secrets).
    pub fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or("/")
    }

    /// Removes the query parameters not in `keep` (by name) and any fragment from the target:
    /// query strings carry tokens and session ids as often as search terms.
    pub fn strip_query(&mut self, keep: &[String]) {
        let Some(start) = self.target.find(['?', '#']) else {
            return;
        };
        let (path, rest) = self.target.split_at(start);
        let query = rest
            .strip_prefix('?')
            .map(|q| q.split('#').next().unwrap_or_default())
            .unwrap_or_default();
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let name = pair.split('=').next().unwrap_or_default();
                !name.is_empty() && keep.iter().any(|k| k == name)
            })
            .collect();
        let mut target = path.to_string();
        if !kept.is_empty() {
            target.push('?');
            target.push_str(&kept.join("&"));
        }
        self.target = target;
    }

    pub(crate) fn for_each_attribute(&self, emit: &mut impl FnMut(&str, Value)) {
        emit("http.request.method", Value::Str(&self.method));
        emit("url.path", Value::Str(self.path()));
        emit("http.route", Value::Str(&self.route));
        emit("http.response.status_code", Value::Int(self.status.into()));
    }
}

/// [`Http::is_error`] for a status alone, as RED's series keys hold it.
pub fn is_error(kind: SpanKind, status: u16) -> bool {
    status >= 500 || (kind == SpanKind::Client && status >= 400)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target_after(target: &str, keep: &[&str]) -> String {
        let mut http = Http {
            method: "GET".into(),
            target: target.into(),
            route: "/".into(),
            status: 200,
            host: None,
        };
        let keep: Vec<String> = keep.iter().map(|k| k.to_string()).collect();
        http.strip_query(&keep);
        http.target
    }

    #[test]
    fn query_strings_keep_only_the_parameters_allowed() {
        assert_eq!(target_after("/login?token=s3cret&page=2", &[]), "/login");
        assert_eq!(
            target_after("/login?token=s3cret&page=2", &["page"]),
            "/login?page=2"
        );
        assert_eq!(
            target_after("/a?page=1&page=2&x#frag", &["page"]),
            "/a?page=1&page=2"
        );
        assert_eq!(target_after("/a#only-a-fragment", &["page"]), "/a");
        assert_eq!(target_after("/plain", &["page"]), "/plain");
        assert_eq!(target_after("/a?=v&pagex=1", &["page"]), "/a");
    }
}
