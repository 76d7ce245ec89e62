//! Spans for tests (feature `testing`): an HTTP exchange with plain defaults, for tests to
//! change the fields they are about.

use crate::{Http, Protocol, Span, SpanKind};

/// An HTTP exchange of `svc` (pid 7) with `target`, its route templated by the caller's
/// `target` as given (no query), answered `status` 1 µs after it started at 1 s.
pub fn http_span(kind: SpanKind, method: &str, target: &str, status: u16) -> Span {
    let route = target.split(['?', '#']).next().unwrap_or("/").to_string();
    Span {
        kind,
        probe: "http",
        service: "svc".into(),
        pid: 7,
        start_unix_nanos: 1_000_000_000,
        duration_ns: 1_000,
        peer: None,
        local: None,
        traceparent: None,
        sample_rate: 1.0,
        sampled: true,
        kept_by: None,
        netns: 1,
        cgroup_id: 1,
        trace: None,
        protocol: Protocol::Http(Http {
            method: method.into(),
            target: target.into(),
            route,
            status,
            host: Some("api".into()),
        }),
    }
}

impl Span {
    /// The HTTP attributes, to change in a test.
    pub fn http_mut(&mut self) -> &mut Http {
        match &mut self.protocol {
            Protocol::Http(http) => http,
            _ => panic!("not an HTTP span"),
        }
    }
}

impl Span {
    /// The HTTP attributes of a span a test knows is HTTP.
    pub fn expect_http(&self) -> &Http {
        self.http().expect("an HTTP span")
    }
}
