//! HTTP/1.x message starts captured by the probes, and the spans built from them.
//!
//! A request and its response are matched per connection (process, probe, fd or SSL object),
//! first in first out so that pipelined requests pair up. The side that read the request is the
//! server; the side that wrote it is the client.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use serde::Serialize;

use crate::abi::{rate_of_threshold, Direction, Flow};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub host: Option<String>,
    pub traceparent: Option<String>,
}

/// Parses a request line and the headers that fit in the captured prefix. Every request the
/// probes see passes here (sampled or not, for RED metrics), so it works on bytes and looks
/// closely only at the two headers it keeps.
pub fn parse_request(data: &[u8]) -> Option<Request> {
    // Lines end at '\n' (a '\r' before it is dropped). Only complete lines count: a header cut
    // by the capture limit is not trusted. The request line alone may be cut.
    let mut ends = memchr::memchr_iter(b'\n', data);
    let first_end = ends.next();
    let (method, target) = request_line(&data[..first_end.unwrap_or(data.len())])?;
    let mut request = Request {
        method: method.to_string(),
        target: target.to_string(),
        host: None,
        traceparent: None,
    };
    let mut start = first_end.map_or(data.len(), |end| end + 1);
    for end in ends {
        let line = without_cr(&data[start..end]);
        start = end + 1;
        if line.is_empty() {
            break; // the end of the headers
        }
        // Most headers are neither: their first letter says so without a search.
        if !matches!(line[0] | 0x20, b'h' | b't') {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case(b"host") {
            request.host = Some(value.to_string());
        } else if name.eq_ignore_ascii_case(b"traceparent") && valid_traceparent(value) {
            request.traceparent = Some(value.to_string());
        }
    }
    Some(request)
}

/// `METHOD SP TARGET SP HTTP/1.x` → (method, target).
fn request_line(line: &[u8]) -> Option<(&str, &str)> {
    let line = without_cr(line);
    let method_end = memchr::memchr(b' ', line)?;
    let (method, rest) = (&line[..method_end], &line[method_end + 1..]);
    let target_end = memchr::memchr(b' ', rest)?;
    let (target, version) = (&rest[..target_end], &rest[target_end + 1..]);
    if !version.starts_with(b"HTTP/1.")
        || method.is_empty()
        || !method.iter().all(u8::is_ascii_uppercase)
    {
        return None;
    }
    Some((
        std::str::from_utf8(method).ok()?,
        std::str::from_utf8(target).ok()?,
    ))
}

fn without_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The status code of a response's status line (`HTTP/1.x NNN ...`).
pub fn parse_status(data: &[u8]) -> Option<u16> {
    if !data.starts_with(b"HTTP/1.") {
        return None;
    }
    let line = &data[..memchr::memchr(b'\r', data).unwrap_or(data.len())];
    let code_at = memchr::memchr(b' ', line)? + 1;
    let code = line.get(code_at..code_at + 3)?;
    if !code.iter().all(u8::is_ascii_digit) || line.get(code_at + 3).is_some_and(|&b| b != b' ') {
        return None;
    }
    let code = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    (100..=999).contains(&code).then_some(code)
}

/// W3C trace context: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
fn valid_traceparent(value: &str) -> bool {
    let mut parts = value.split('-');
    let lower_hex = |p: &str, len: usize| {
        p.len() == len
            && p.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    let (Some(version), Some(trace), Some(parent), Some(flags), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    lower_hex(version, 2)
        && lower_hex(trace, 32)
        && lower_hex(parent, 16)
        && lower_hex(flags, 2)
        && trace != "00000000000000000000000000000000"
}

/// `/users/123/orders/9f8e7d6c5b4a3f2e?x=1` → `/users/{id}/orders/{id}`.
pub fn route_template(target: &str) -> String {
    let end = target
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(target.len());
    let path = &target[..end];
    let path = match memchr::memmem::find(path.as_bytes(), b"://") {
        // Absolute-form targets (proxies): keep only the path.
        Some(i) => path[i + 3..]
            .find('/')
            .map(|j| &path[i + 3 + j..])
            .unwrap_or("/"),
        None => path,
    };
    if path.is_empty() {
        return "/".into();
    }
    // Room for a few ids longer as `{id}` than as written, so that the route is allocated once.
    let mut route = String::with_capacity(path.len() + 16);
    let mut start = 0;
    // Segment bounds are at '/' (ASCII), so each slice below is on a char boundary.
    for end in memchr::memchr_iter(b'/', path.as_bytes()).chain([path.len()]) {
        let segment = &path[start..end];
        route.push_str(if looks_like_id(segment) {
            "{id}"
        } else {
            segment
        });
        if end < path.len() {
            route.push('/');
        }
        start = end + 1;
    }
    route
}

fn looks_like_id(segment: &str) -> bool {
    let hex_or_dash = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    let digits = segment.bytes().filter(u8::is_ascii_digit).count();
    !segment.is_empty()
        && (segment.bytes().all(|b| b.is_ascii_digit())
            || (segment.len() == 36 && hex_or_dash(segment) && segment.matches('-').count() == 4)
            || (segment.len() >= 16 && hex_or_dash(segment) && digits > 0))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    Server,
    Client,
}

/// One HTTP request/response seen by a probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    pub kind: SpanKind,
    /// `http` (socket syscalls) or `tls` (OpenSSL plaintext).
    pub probe: &'static str,
    pub service: String,
    pub pid: u32,
    pub method: String,
    pub target: String,
    pub route: String,
    pub status: u16,
    pub start_unix_nanos: u64,
    pub duration_ns: u64,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub host: Option<String>,
    pub traceparent: Option<String>,
    /// The sampling rate the request was kept at, for re-weighting counts downstream.
    pub sample_rate: f64,
    /// False when sampling dropped the request: it counts in RED metrics but is not exported.
    pub sampled: bool,
    /// Set when `budget.always_keep` kept a request sampling had dropped (`error`, `slow`).
    pub kept_by: Option<&'static str>,
    pub netns: u32,
    pub cgroup_id: u64,
}

impl Span {
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent
            .as_deref()
            .and_then(|t| t.split('-').nth(1))
    }
}

/// What the matcher needs from a data event.
pub struct Message<'a> {
    pub probe: &'static str,
    pub pid: u32,
    pub conn_id: u64,
    pub ts_ns: u64,
    pub direction: Direction,
    pub flow: Option<&'a Flow>,
    pub sample_threshold: u32,
    pub sampled_out: bool,
    pub data: &'a [u8],
    pub netns: u32,
    pub cgroup_id: u64,
}

struct Pending {
    request: Request,
    kind: SpanKind,
    ts_ns: u64,
    sample_threshold: u32,
    sampled_out: bool,
}

/// Pairs requests with responses. Bounded: the oldest connections are forgotten first.
#[derive(Default)]
pub struct Matcher {
    pending: HashMap<(&'static str, u32, u64), VecDeque<Pending>>,
}

const MAX_CONNECTIONS: usize = 65_536;
const MAX_PIPELINED: usize = 64;

impl Matcher {
    /// Feeds one message start; returns a span when it completes a request.
    pub fn feed(
        &mut self,
        message: Message,
        service: impl FnOnce(u32) -> String,
        clock: &Clock,
    ) -> Option<Span> {
        let key = (message.probe, message.pid, message.conn_id);
        // Half the messages are responses: do not try them as requests first.
        let request = if message.data.starts_with(b"HTTP/") {
            None
        } else {
            parse_request(message.data)
        };
        if let Some(request) = request {
            if self.pending.len() >= MAX_CONNECTIONS && !self.pending.contains_key(&key) {
                self.evict_oldest();
            }
            let queue = self.pending.entry(key).or_default();
            if queue.len() >= MAX_PIPELINED {
                queue.pop_front();
            }
            queue.push_back(Pending {
                request,
                kind: kind_of(message.direction),
                ts_ns: message.ts_ns,
                sample_threshold: message.sample_threshold,
                sampled_out: message.sampled_out,
            });
            return None;
        }
        let status = parse_status(message.data)?;
        let queue = self.pending.get_mut(&key)?;
        let pending = queue.pop_front()?;
        if queue.is_empty() {
            self.pending.remove(&key);
        }
        let expected = match pending.kind {
            SpanKind::Server => Direction::Egress,
            SpanKind::Client => Direction::Ingress,
        };
        if message.direction != expected {
            return None;
        }
        let route = route_template(&pending.request.target);
        Some(span_of(pending, route, &message, status, service, clock))
    }

    /// Forgets the connections of a process that exited.
    pub fn forget_process(&mut self, pid: u32) {
        self.pending.retain(|(_, p, _), _| *p != pid);
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .pending
            .iter()
            .filter_map(|(key, queue)| Some((*key, queue.front()?.ts_ns)))
            .min_by_key(|(_, ts)| *ts)
            .map(|(key, _)| key);
        if let Some(key) = oldest {
            self.pending.remove(&key);
        }
    }

    pub fn pending_connections(&self) -> usize {
        self.pending.len()
    }
}

/// The span of a request and the start of its response that the kernel paired (`request` is the
/// request's message, `response` the response's bytes at `response_ts_ns`): the span,
/// without passing through the per-connection queues.
///
/// A request sampling dropped, which no keep rule could still export (`may_keep(status,
/// duration_ns)` false), is only counted (RED): only its request line is parsed, and the span
/// carries no target, host or traceparent (nothing reads them). Otherwise it is parsed in full.
pub fn exchange(
    request: Message,
    response: &[u8],
    response_ts_ns: u64,
    may_keep: impl FnOnce(u16, u64) -> bool,
    service: impl FnOnce(u32) -> String,
    clock: &Clock,
) -> Option<Span> {
    let status = parse_status(response)?;
    let duration_ns = response_ts_ns.saturating_sub(request.ts_ns);
    let (parsed, route) = if request.sampled_out && !may_keep(status, duration_ns) {
        let end = memchr::memchr(b'\n', request.data).unwrap_or(request.data.len());
        let (method, target) = request_line(&request.data[..end])?;
        let brief = Request {
            method: method.to_string(),
            target: String::new(),
            host: None,
            traceparent: None,
        };
        (brief, route_template(target))
    } else {
        let full = parse_request(request.data)?;
        let route = route_template(&full.target);
        (full, route)
    };
    let pending = Pending {
        request: parsed,
        kind: kind_of(request.direction),
        ts_ns: request.ts_ns,
        sample_threshold: request.sample_threshold,
        sampled_out: request.sampled_out,
    };
    let response = Message {
        ts_ns: response_ts_ns,
        ..request
    };
    Some(span_of(pending, route, &response, status, service, clock))
}

/// Reading a request means serving it; writing one, being its client.
fn kind_of(request_direction: Direction) -> SpanKind {
    match request_direction {
        Direction::Ingress => SpanKind::Server,
        Direction::Egress => SpanKind::Client,
    }
}

/// The span of a request and the response message that answered it.
fn span_of(
    pending: Pending,
    route: String,
    response: &Message,
    status: u16,
    service: impl FnOnce(u32) -> String,
    clock: &Clock,
) -> Span {
    Span {
        kind: pending.kind,
        probe: response.probe,
        service: service(response.pid),
        pid: response.pid,
        route,
        method: pending.request.method,
        target: pending.request.target,
        status,
        start_unix_nanos: clock.to_unix_nanos(pending.ts_ns),
        duration_ns: response.ts_ns.saturating_sub(pending.ts_ns),
        peer: response.flow.map(|f| f.remote),
        local: response.flow.map(|f| f.local),
        host: pending.request.host,
        traceparent: pending.request.traceparent,
        sample_rate: rate_of_threshold(pending.sample_threshold),
        sampled: !pending.sampled_out,
        kept_by: None,
        netns: response.netns,
        cgroup_id: response.cgroup_id,
    }
}

/// Converts the kernel's monotonic timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let monotonic = clock_ns(libc::CLOCK_MONOTONIC);
        let realtime = clock_ns(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: realtime as i128 - monotonic as i128,
        }
    }

    pub fn to_unix_nanos(&self, monotonic_ns: u64) -> u64 {
        (monotonic_ns as i128 + self.offset_ns).max(0) as u64
    }
}

pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

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
            data,
            netns: 1,
            cgroup_id: 1,
        }
    }

    #[test]
    fn pairs_pipelined_requests_in_order() {
        let clock = Clock { offset_ns: 1_000 };
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
            (first.method.as_str(), first.status, first.duration_ns),
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
        assert_eq!((second.route.as_str(), second.status), ("/b/{id}", 503));
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
            (brief.method.as_str(), brief.route.as_str(), brief.status),
            ("GET", "/orders/{id}", 503)
        );
        assert_eq!((brief.duration_ns, brief.sampled), (4_000, false));
        assert!(brief.target.is_empty() && brief.host.is_none() && brief.traceparent.is_none());
        // A rule that may keep it (a 503 here): the whole request, as an exported span has it.
        let mut seen = None;
        let full = exchange(
            dropped(raw),
            response,
            5_000,
            |status, duration| {
                seen = Some((status, duration));
                true
            },
            |_| "svc".into(),
            &clock,
        )
        .unwrap();
        assert_eq!(seen, Some((503, 4_000)));
        assert_eq!(full.target, "/orders/42?x=1");
        assert_eq!(full.host.as_deref(), Some("shop"));
        assert!(full.traceparent.is_some());
    }
}
