use apiary_span::SpanKind;

use super::*;
use crate::abi::Direction;
use crate::protocol::{Clock, Message};

#[test]
fn parses_request_with_traceparent_and_host() {
    let raw = b"GET /users/42?x=1 HTTP/1.1\r\nHost: api\r\nTraceParent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nAccept: */*\r\n\r\nbody";
    let request = parse_request(raw).unwrap();
    assert_eq!(request.method, "GET");
    assert_eq!(request.target, "/users/42?x=1");
    assert_eq!(request.host.as_deref(), Some("api"));
    assert_eq!(
        request.traceparent.as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    // A status line is never taken for a request line.
    assert!(parse_request(b"HTTP/1.1 200 OK\r\nHost: x\r\n\r\n").is_none());
}

#[test]
fn refuses_non_http_and_bad_traceparent() {
    assert!(parse_request(b"GETTING things done").is_none());
    assert!(parse_request(b"get / HTTP/1.1\r\n").is_none());
    let bad = b"GET / HTTP/1.1\r\ntraceparent: 00-zz-yy-01\r\n\r\n";
    assert_eq!(parse_request(bad).unwrap().traceparent, None);
    // A header cut by the capture limit is not used.
    let cut = b"GET / HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad";
    assert_eq!(parse_request(cut).unwrap().traceparent, None);
    assert_eq!(parse_status(b"HTTP/1.0 404 Not Found\r\n"), Some(404));
    assert_eq!(parse_status(b"HTTP/2 200"), None);
    assert_eq!(parse_status(b"HTTP/1.1 abc"), None);
    assert_eq!(parse_status(b"HTTP/1.1 2000 OK"), None);
    assert_eq!(parse_status(b"HTTP/1.1 503"), Some(503));
    assert_eq!(
        parse_status(b"HTTP/1.1 200 OK\r\nServer: x 500\r\n"),
        Some(200)
    );
    // Only what the request line needs must be text.
    let odd = b"GET /a HTTP/1.1\r\nX-Bin: \xff\xfe\r\nHost: h\r\n\r\n";
    assert_eq!(parse_request(odd).unwrap().host.as_deref(), Some("h"));
}

#[test]
fn templates_obvious_ids_only() {
    assert_eq!(route_template("/users/123"), "/users/{id}");
    assert_eq!(
        route_template("/users/123/orders/9?x"),
        "/users/{id}/orders/{id}"
    );
    assert_eq!(
        route_template("/o/3fa85f64-5717-4562-b3fc-2c963f66afa6"),
        "/o/{id}"
    );
    assert_eq!(route_template("/blob/9f8e7d6c5b4a3f2e1d"), "/blob/{id}");
    assert_eq!(route_template("/v1/config"), "/v1/config");
    assert_eq!(route_template("/api/deadbeefcafe"), "/api/deadbeefcafe");
    assert_eq!(route_template(""), "/");
    assert_eq!(route_template("http://h:1/a/7"), "/a/{id}");
    assert_eq!(route_template("/a//7/"), "/a//{id}/");
    assert_eq!(route_template("/ü/7#frag"), "/ü/{id}");
}

fn message<'a>(conn: u64, ts: u64, direction: Direction, data: &'a [u8]) -> Message<'a> {
    Message {
        probe: "http",
        pid: 7,
        conn_id: conn,
        ts_ns: ts,
        direction,
        flow: None,
        sample_threshold: u32::MAX,
        sampled_out: false,
        trace: None,
        data,
        netns: 1,
        cgroup_id: 1,
    }
}

#[test]
fn pairs_pipelined_requests_in_order() {
    let clock = Clock::with_offset(1_000);
    let mut matcher = Matcher::default();
    let name = |_| "svc".to_string();
    assert!(matcher
        .feed(
            message(3, 10, Direction::Ingress, b"GET /a HTTP/1.1\r\n\r\n"),
            name,
            &clock
        )
        .is_none());
    assert!(matcher
        .feed(
            message(3, 20, Direction::Ingress, b"POST /b/1 HTTP/1.1\r\n\r\n"),
            name,
            &clock
        )
        .is_none());
    let first = matcher
        .feed(
            message(3, 50, Direction::Egress, b"HTTP/1.1 200 OK\r\n"),
            name,
            &clock,
        )
        .unwrap();
    assert_eq!(
        (
            first.http().unwrap().method.as_str(),
            first.http().unwrap().status,
            first.duration_ns
        ),
        ("GET", 200, 40)
    );
    assert_eq!(first.kind, SpanKind::Server);
    assert_eq!(first.start_unix_nanos, 1_010);
    let second = matcher
        .feed(
            message(3, 90, Direction::Egress, b"HTTP/1.1 503 Busy\r\n"),
            name,
            &clock,
        )
        .unwrap();
    assert_eq!(
        (
            second.http().unwrap().route.as_str(),
            second.http().unwrap().status
        ),
        ("/b/{id}", 503)
    );
    assert_eq!(matcher.pending_connections(), 0);
    // A client span: written request, read response.
    matcher.feed(
        message(4, 100, Direction::Egress, b"GET / HTTP/1.1\r\n\r\n"),
        name,
        &clock,
    );
    let client = matcher
        .feed(
            message(4, 130, Direction::Ingress, b"HTTP/1.1 204 No\r\n"),
            name,
            &clock,
        )
        .unwrap();
    assert_eq!(client.kind, SpanKind::Client);
    // A response with no request is ignored.
    assert!(matcher
        .feed(
            message(5, 1, Direction::Egress, b"HTTP/1.1 200 OK\r\n"),
            name,
            &clock
        )
        .is_none());
}

#[test]
fn a_dropped_request_is_parsed_only_as_far_as_red_needs_unless_a_rule_may_keep_it() {
    let clock = Clock::now();
    let raw = b"GET /orders/42?x=1 HTTP/1.1\r\nHost: shop\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n";
    let dropped = |data| Message {
        sampled_out: true,
        ..message(3, 1_000, Direction::Ingress, data)
    };
    let response = b"HTTP/1.1 503 Service Unavailable\r\n";
    let brief = exchange(
        dropped(raw),
        response,
        5_000,
        |_, _| false,
        |_| "svc".into(),
        &clock,
    )
    .unwrap();
    assert_eq!(
        (
            brief.http().unwrap().method.as_str(),
            brief.http().unwrap().route.as_str(),
            brief.http().unwrap().status
        ),
        ("GET", "/orders/{id}", 503)
    );
    assert_eq!((brief.duration_ns, brief.sampled), (4_000, false));
    assert!(
        brief.http().unwrap().target.is_empty()
            && brief.http().unwrap().host.is_none()
            && brief.traceparent.is_none()
    );
    // A rule that may keep it (a 503 here): the whole request, as an exported span has it.
    let mut seen = None;
    let full = exchange(
        dropped(raw),
        response,
        5_000,
        |failed, duration| {
            seen = Some((failed, duration));
            true
        },
        |_| "svc".into(),
        &clock,
    )
    .unwrap();
    assert_eq!(seen, Some((true, 4_000)));
    assert_eq!(full.http().unwrap().target, "/orders/42?x=1");
    assert_eq!(full.http().unwrap().host.as_deref(), Some("shop"));
    assert!(full.traceparent.is_some());
}
