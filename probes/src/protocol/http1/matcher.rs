//! Pairing HTTP/1 requests with their responses, and the spans of the pairs.

use std::collections::{HashMap, VecDeque};

use apiary_span::{Http, Protocol, Span, SpanKind, TraceLink};

use super::parse::{parse_request, parse_status, request_line, Request};
use super::route::route_template;
use crate::abi::{rate_of_threshold, Direction};
use crate::protocol::{Clock, Message};

struct Pending {
    request: Request,
    kind: SpanKind,
    ts_ns: u64,
    sample_threshold: u32,
    sampled_out: bool,
    trace: Option<TraceLink>,
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
                trace: message.trace,
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
/// A request sampling dropped, which no keep rule could still export (`may_keep(server_failed,
/// duration_ns)` false), is only counted (RED): only its request line is parsed, and the span
/// carries no target, host or traceparent (nothing reads them). Otherwise it is parsed in full.
pub fn exchange(
    request: Message,
    response: &[u8],
    response_ts_ns: u64,
    may_keep: impl FnOnce(bool, u64) -> bool,
    service: impl FnOnce(u32) -> String,
    clock: &Clock,
) -> Option<Span> {
    let status = parse_status(response)?;
    let duration_ns = response_ts_ns.saturating_sub(request.ts_ns);
    let (parsed, route) = if request.sampled_out
        && !may_keep(
            apiary_span::http::is_error(SpanKind::Server, status),
            duration_ns,
        ) {
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
        trace: request.trace,
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
        start_unix_nanos: clock.to_unix_nanos(pending.ts_ns),
        duration_ns: response.ts_ns.saturating_sub(pending.ts_ns),
        peer: response.flow.map(|f| f.remote),
        local: response.flow.map(|f| f.local),
        traceparent: pending.request.traceparent,
        sample_rate: rate_of_threshold(pending.sample_threshold),
        sampled: !pending.sampled_out,
        kept_by: None,
        netns: response.netns,
        cgroup_id: response.cgroup_id,
        trace: pending.trace,
        protocol: Protocol::Http(Http {
            method: pending.request.method,
            target: pending.request.target,
            route,
            status,
            host: pending.request.host,
        }),
    }
}
