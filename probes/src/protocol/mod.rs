//! The protocols the probes parse in userspace, one module each, behind one seam.
//!
//! The kernel sends message starts (`Event::Data`) and request/response pairs it matched
//! (`Event::Exchange`); [`Parsers`] hands each to the protocol it belongs to, which pairs
//! requests with responses, decodes them and builds a [`Span`] (from `apiary-span`) with its
//! typed attributes. A protocol module holds its parser, its pairing and its tests; nothing
//! outside it knows the protocol's bytes.
//!
//! Adding a protocol, userspace side (see also `bpf/README.md` for the kernel side and
//! `docs/architecture.md` for the whole checklist):
//! 1. `probes/src/protocol/<name>/` — parse, pair, build spans (`Span { protocol: … }`), tests;
//! 2. `probes/src/protocol/mod.rs` — one field in [`Parsers`] and one arm in its dispatch;
//! 3. `span/src/<name>.rs` — the protocol's typed attributes and RED schema;
//! 4. `span/src/lib.rs` — one [`apiary_span::Protocol`] variant and its arms.

mod connections;
pub mod http1;
pub mod http2;
pub mod mysql;
pub mod postgres;
pub mod redis;
mod sql;
mod stream;

use apiary_span::{Protocol, Span, SpanKind};

use crate::abi::{rate_of_threshold, Direction, Flow};

/// A message start from the kernel, as every protocol's parser takes it.
pub struct Message<'a> {
    pub probe: &'static str,
    pub pid: u32,
    pub conn_id: u64,
    pub ts_ns: u64,
    pub direction: Direction,
    pub flow: Option<&'a Flow>,
    pub sample_threshold: u32,
    pub sampled_out: bool,
    /// A request's trace context from the kernel (None for a response).
    pub trace: Option<apiary_span::TraceLink>,
    pub data: &'a [u8],
    pub netns: u32,
    pub cgroup_id: u64,
}

/// How a database request was seen, kept until its reply ends it: what its span needs besides
/// the protocol's attributes (the DB protocols of bpf/db.h share it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DbRequest {
    pub ts_ns: u64,
    pub kind: SpanKind,
    pub sampled_out: bool,
    pub sample_threshold: u32,
}

impl DbRequest {
    /// A request that started at `ts_ns` in a buffer of `message` (the requests' side).
    pub fn at(message: &Message, ts_ns: u64) -> Self {
        DbRequest {
            ts_ns,
            kind: match message.direction {
                Direction::Ingress => SpanKind::Server,
                Direction::Egress => SpanKind::Client,
            },
            sampled_out: message.sampled_out,
            sample_threshold: message.sample_threshold,
        }
    }

    /// Its span, ended at `end_ts_ns` by a reply in a buffer of `message`.
    pub fn span(
        self,
        end_ts_ns: u64,
        message: &Message,
        service: String,
        clock: &Clock,
        protocol: Protocol,
    ) -> Span {
        Span {
            kind: self.kind,
            probe: message.probe,
            service,
            pid: message.pid,
            start_unix_nanos: clock.to_unix_nanos(self.ts_ns),
            duration_ns: end_ts_ns.saturating_sub(self.ts_ns),
            peer: message.flow.map(|f| f.remote),
            local: message.flow.map(|f| f.local),
            traceparent: None,
            sample_rate: rate_of_threshold(self.sample_threshold),
            sampled: !self.sampled_out,
            kept_by: None,
            netns: message.netns,
            cgroup_id: message.cgroup_id,
            // Database calls are not joined into traces yet (the kernel's DB path gives no
            // context).
            trace: None,
            protocol,
        }
    }
}

/// The service name of the process a buffer came from, asked of `ask` at most once, and only
/// when a span needs it (most buffers of a stream complete none).
pub(crate) struct ServiceName<F> {
    ask: Option<F>,
    pid: u32,
    name: Option<String>,
}

impl<F: FnOnce(u32) -> String> ServiceName<F> {
    pub fn new(ask: F, pid: u32) -> Self {
        ServiceName {
            ask: Some(ask),
            pid,
            name: None,
        }
    }

    pub fn get(&mut self) -> String {
        let ServiceName { ask, pid, name } = self;
        name.get_or_insert_with(|| ask.take().map_or_else(String::new, |f| f(*pid)))
            .clone()
    }
}

/// Every protocol's parser, with its per-connection state.
/// Where a buffer of a connection-detected protocol stands (bpf/db.h's record flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamBuffer {
    /// Bytes the syscall moved (the record captured the first of them).
    pub total_len: u64,
    /// On the requests' side (read by a server, written by a client).
    pub request_side: bool,
    /// The connection's first: what was followed under its key was an earlier connection's.
    pub starts: bool,
    /// A buffer of the connection before this one was not sent: the stream has a hole.
    pub after_gap: bool,
}

#[derive(Default)]
pub struct Parsers {
    http1: http1::Matcher,
    redis: redis::Matcher,
    postgres: postgres::Matcher,
    mysql: mysql::Matcher,
    http2: http2::Matcher,
}

impl Parsers {
    /// One message start the kernel could not pair: the protocol pairs it with the others of
    /// its connection. Returns a span when it completes an exchange.
    pub fn message(
        &mut self,
        message: Message,
        service: impl FnOnce(u32) -> String,
        clock: &Clock,
    ) -> Option<Span> {
        // The kernel emits HTTP/1 message starts only; a second protocol dispatches here on the
        // protocol the kernel classified the record as.
        self.http1.feed(message, service, clock)
    }

    /// A request and the start of its response that the kernel paired.
    ///
    /// `may_keep(server_failed, duration_ns)` says whether a keep rule could still export a
    /// request sampling dropped; if not, the protocol parses only what RED counts.
    pub fn exchange(
        &mut self,
        request: Message,
        response: &[u8],
        response_ts_ns: u64,
        may_keep: impl FnOnce(bool, u64) -> bool,
        service: impl FnOnce(u32) -> String,
        clock: &Clock,
    ) -> Option<Span> {
        http1::exchange(request, response, response_ts_ns, may_keep, service, clock)
    }

    /// One buffer of a connection whose protocol the kernel found once for the connection and
    /// whose every buffer it sends (bpf/db.h): `buffer.total_len` bytes, of which
    /// `message.data` were captured. Spans of the exchanges it completes (several, when
    /// commands were pipelined) go to `out`.
    pub fn stream(
        &mut self,
        message: Message,
        buffer: StreamBuffer,
        service: impl FnOnce(u32) -> String,
        clock: &Clock,
        out: &mut Vec<Span>,
    ) {
        let StreamBuffer {
            total_len,
            request_side,
            starts,
            after_gap,
        } = buffer;
        if starts {
            match message.probe {
                "postgres" => self.postgres.connections.forget(&message),
                "mysql" => self.mysql.connections.forget(&message),
                "http2" => self.http2.connections.forget(&message),
                _ => self.redis.connections.forget(&message),
            }
        }
        if after_gap {
            // Bytes between the last buffer and this one never came: where this one's messages
            // start, and (HTTP/2) what the header table holds, are unknown.
            match message.probe {
                "postgres" => self.postgres.unparsed += self.postgres.connections.lose(&message),
                "mysql" => self.mysql.unparsed += self.mysql.connections.lose(&message),
                "http2" => self.http2.unparsed += self.http2.connections.lose(&message),
                _ => self.redis.unparsed += self.redis.connections.lose(&message),
            }
            return;
        }
        match message.probe {
            "postgres" => self
                .postgres
                .feed(message, total_len, request_side, service, clock, out),
            "mysql" => self
                .mysql
                .feed(message, total_len, request_side, service, clock, out),
            "http2" => self
                .http2
                .feed(message, total_len, request_side, service, clock, out),
            _ => self
                .redis
                .feed(message, total_len, request_side, service, clock, out),
        }
    }

    /// A probe of a protocol found per connection was switched off: its connections' buffers
    /// stopped coming, so each now has a hole and is given up.
    pub fn switched_off(&mut self, probe: &str) {
        match probe {
            "postgres" => self.postgres.unparsed += self.postgres.connections.lose_all(),
            "mysql" => self.mysql.unparsed += self.mysql.connections.lose_all(),
            "http2" => self.http2.unparsed += self.http2.connections.lose_all(),
            _ => self.redis.unparsed += self.redis.connections.lose_all(),
        }
    }

    /// Messages of a protocol that gave no span because they could not be parsed or paired
    /// (`/v1/probes`' `unparsed`), by probe name.
    pub fn unparsed(&self, probe: &str) -> u64 {
        match probe {
            "redis" => self.redis.unparsed,
            "postgres" => self.postgres.unparsed,
            "mysql" => self.mysql.unparsed,
            "http2" => self.http2.unparsed,
            _ => 0,
        }
    }

    /// Forgets the connections of a process that exited.
    pub fn forget_process(&mut self, pid: u32) {
        self.http1.forget_process(pid);
        self.redis.forget_process(pid);
        self.postgres.forget_process(pid);
        self.mysql.forget_process(pid);
        self.http2.forget_process(pid);
    }

    /// Connections with requests waiting for their response, over all protocols.
    pub fn pending_connections(&self) -> usize {
        self.http1.pending_connections()
            + self.redis.pending_connections()
            + self.postgres.pending_connections()
            + self.mysql.pending_connections()
            + self.http2.pending_connections()
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

    #[cfg(test)]
    pub(crate) fn with_offset(offset_ns: i128) -> Self {
        Clock { offset_ns }
    }

    pub fn to_unix_nanos(&self, monotonic_ns: u64) -> u64 {
        let unix = i128::from(monotonic_ns) + self.offset_ns;
        u64::try_from(unix.max(0)).unwrap_or(u64::MAX)
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
    use super::Clock;

    /// A kernel time past what the offset can carry saturates rather than wrapping to a time
    /// near 1970 (an `as` cast did).
    #[test]
    fn unix_time_saturates_at_both_ends() {
        assert_eq!(Clock::with_offset(10).to_unix_nanos(u64::MAX), u64::MAX);
        assert_eq!(Clock::with_offset(-10).to_unix_nanos(5), 0);
        assert_eq!(Clock::with_offset(10).to_unix_nanos(5), 15);
    }
}
