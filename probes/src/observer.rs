//! Reads the ring buffer and turns events into spans, finished TCP flows and process names.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aya::maps::{MapData, RingBuf};
use serde::Serialize;
use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast;

use apiary_span::{Link, Span};

use crate::abi::{decode, Event};
use crate::kernel_red::{Counted, KernelRed};
use crate::protocol::{Clock, Message, Parsers, StreamBuffer};

/// A TCP connection that closed, with the bytes the kernel counted for it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TcpFlow {
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub retransmits: u32,
    pub netns: u32,
    pub closed_unix_nanos: u64,
}

const RECENT_SPANS: usize = 4096;
const RECENT_FLOWS: usize = 4096;
const TCP_FIN_WAIT2: i32 = 5;
const TCP_CLOSE: i32 = 7;
const TCP_LAST_ACK: i32 = 9;
const TCP_CLOSING: i32 = 11;

/// Sees every request, sampled or not (for RED metrics, which must stay exact).
pub type RequestTap = Box<dyn Fn(&Span) + Send + Sync>;

/// Sees the requests the kernel counted without sending them (sampled out, bpf/red.h): `span`
/// stands for all of them (its duration is 0: the durations are in the counts).
pub type CountedTap = Box<dyn Fn(&Span, &Counted) + Send + Sync>;

/// What the ring reader takes from the probes: the ring buffer, and the kernel's RED counts.
pub struct Events {
    pub(crate) ring: RingBuf<MapData>,
    pub(crate) red: Option<KernelRed>,
}

/// Requests kept whatever the sampling (`budget.always_keep`), within a per-second cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepRule {
    /// Exchanges the server failed (HTTP 5xx), on either side.
    pub errors: bool,
    /// Slower than this (0: off).
    pub slower_than_ns: u64,
    pub max_per_second: u64,
}

impl KeepRule {
    fn reason(&self, server_failed: bool, duration_ns: u64) -> Option<&'static str> {
        if self.errors && server_failed {
            Some("error")
        } else if self.slower_than_ns > 0 && duration_ns > self.slower_than_ns {
            Some("slow")
        } else {
            None
        }
    }
}

/// The cap's state: (second, spans kept in it).
#[derive(Default)]
struct KeepBudget {
    rule: KeepRule,
    second: u64,
    kept: u64,
}

/// What the probes saw, for the API and the pipeline. Counts what it cannot decode.
pub struct Observer {
    /// Shared, not copied: every subscriber and the recent list hold the same span.
    spans: broadcast::Sender<Arc<Span>>,
    tap: std::sync::OnceLock<RequestTap>,
    counted_tap: std::sync::OnceLock<CountedTap>,
    keep: Mutex<KeepBudget>,
    kept_query_params: std::sync::RwLock<Vec<String>>,
    /// `privacy.keep_redis_keys`.
    keep_redis_keys: std::sync::atomic::AtomicBool,
    /// Messages of the protocols found per connection that gave no span, by probe
    /// (`DB_PROBES`' order; see [`Observer::unparsed`]).
    db_unparsed: [AtomicU64; crate::DB_PROBES.len()],
    /// How many times each of those probes was switched off (`DB_PROBES`' order): the reader
    /// gives up the probe's connections when it sees this move (see
    /// [`Observer::note_switched_off`]).
    db_switched_off: [AtomicU64; crate::DB_PROBES.len()],
    /// Requests seen, sampled or not (the demand cooperative tuning shares).
    pub requests_total: AtomicU64,
    /// Of those, the requests the kernel counted without a record (bpf/red.h).
    pub counted_in_kernel: AtomicU64,
    /// Requests the kernel counted under a route key that met a second route, or whose
    /// service could not be told: not in RED (a guess would be a wrong answer).
    pub counted_unresolved: AtomicU64,
    /// Spans kept by `budget.always_keep` that sampling had dropped.
    pub kept_by_rule: AtomicU64,
    /// Spans the rule would have kept beyond its per-second cap.
    pub kept_over_cap: AtomicU64,
    recent_spans: Mutex<VecDeque<Arc<Span>>>,
    recent_flows: Mutex<VecDeque<TcpFlow>>,
    pub decode_errors: AtomicU64,
    pub spans_total: AtomicU64,
    pub retransmits_total: AtomicU64,
    /// Requests by how the kernel placed them in a trace (`Link::ALL`'s order), sampled or not.
    links: [AtomicU64; Link::ALL.len()],
    /// Called with every span that will be exported, as it is published (before any channel).
    export_tap: std::sync::OnceLock<RequestTap>,
    /// `sync` asks the ring reader to drain now; it counts the drains it did on request.
    drain_requests: tokio::sync::Notify,
    drains: tokio::sync::watch::Sender<u64>,
}

impl Default for Observer {
    fn default() -> Self {
        Observer {
            spans: broadcast::channel(8192).0,
            tap: std::sync::OnceLock::new(),
            counted_tap: std::sync::OnceLock::new(),
            keep: Mutex::new(KeepBudget::default()),
            kept_query_params: Default::default(),
            keep_redis_keys: Default::default(),
            db_unparsed: Default::default(),
            db_switched_off: Default::default(),
            requests_total: AtomicU64::new(0),
            counted_in_kernel: AtomicU64::new(0),
            counted_unresolved: AtomicU64::new(0),
            kept_by_rule: AtomicU64::new(0),
            kept_over_cap: AtomicU64::new(0),
            recent_spans: Mutex::new(VecDeque::new()),
            recent_flows: Mutex::new(VecDeque::new()),
            decode_errors: AtomicU64::new(0),
            spans_total: AtomicU64::new(0),
            retransmits_total: AtomicU64::new(0),
            links: Default::default(),
            export_tap: std::sync::OnceLock::new(),
            drain_requests: tokio::sync::Notify::new(),
            drains: tokio::sync::watch::channel(0).0,
        }
    }
}

fn push_bounded<T>(queue: &Mutex<VecDeque<T>>, item: T, bound: usize) {
    let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
    if queue.len() >= bound {
        queue.pop_front();
    }
    queue.push_back(item);
}

impl Observer {
    /// Live spans; a receiver that falls behind misses spans (and is told how many).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Span>> {
        self.spans.subscribe()
    }

    pub fn recent_spans(&self) -> Vec<Arc<Span>> {
        self.recent_spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn recent_flows(&self) -> Vec<TcpFlow> {
        self.recent_flows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Installs the function that sees every request, sampled or not; only the first call
    /// takes effect (returns false otherwise).
    pub fn set_request_tap(&self, tap: RequestTap) -> bool {
        self.tap.set(tap).is_ok()
    }

    /// Installs the function that sees the requests the kernel counted (see [`CountedTap`]);
    /// only the first call takes effect.
    pub fn set_counted_tap(&self, tap: CountedTap) -> bool {
        self.counted_tap.set(tap).is_ok()
    }

    /// Sees every span that will be exported, synchronously as it is published: for indexes
    /// that must be up to date once `sync` returns.
    pub fn set_export_tap(&self, tap: RequestTap) -> bool {
        self.export_tap.set(tap).is_ok()
    }

    /// Returns once the ring reader has drained everything the kernel wrote before this call
    /// (or after `timeout`, e.g. when no reader runs). The reader otherwise drains on a timer;
    /// a caller that must see the spans of requests that just finished (the OTLP receiver,
    /// before it re-parents an app's spans) asks for a drain first.
    pub async fn sync(&self, timeout: std::time::Duration) {
        let mut drains = self.drains.subscribe();
        let before = *drains.borrow_and_update();
        self.drain_requests.notify_one();
        let _ = tokio::time::timeout(timeout, drains.wait_for(|n| *n > before)).await;
    }

    /// The query parameters spans keep (`privacy.keep_query_params`); all others are removed
    /// before a span is shown or exported.
    pub fn set_kept_query_params(&self, params: Vec<String>) {
        *self
            .kept_query_params
            .write()
            .unwrap_or_else(|p| p.into_inner()) = params;
    }

    /// Whether Redis spans keep their keys (`privacy.keep_redis_keys`).
    pub fn set_keep_redis_keys(&self, keep: bool) {
        self.keep_redis_keys.store(keep, Ordering::Relaxed);
    }

    /// `probe` was switched off (or, for http2, the tls probe that carries its TLS
    /// connections). The kernel then sends its connections' buffers no more, and does not
    /// always say so when they come again (with every such probe off it looks no connection
    /// up): each connection followed now has a hole and is given up.
    pub fn note_switched_off(&self, probe: &str) {
        if let Some(at) = crate::DB_PROBES.iter().position(|name| *name == probe) {
            self.db_switched_off[at].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Messages of a probe's protocol that gave no span: unparsable, beyond the capture, or on
    /// a connection no longer followed (0 for probes that do not parse a protocol this way).
    pub fn unparsed(&self, probe: &str) -> u64 {
        crate::DB_PROBES
            .iter()
            .position(|name| *name == probe)
            .map_or(0, |at| self.db_unparsed[at].load(Ordering::Relaxed))
    }

    pub fn set_keep_rule(&self, rule: KeepRule) {
        self.keep.lock().unwrap_or_else(|p| p.into_inner()).rule = rule;
    }

    /// Whether the keep rule takes a span sampling dropped (and counts it against the cap).
    fn keep_anyway(&self, span: &Span) -> Option<&'static str> {
        let mut keep = self.keep.lock().unwrap_or_else(|p| p.into_inner());
        let reason = keep.rule.reason(span.server_failed(), span.duration_ns)?;
        let second = span.start_unix_nanos / 1_000_000_000;
        if second != keep.second {
            keep.second = second;
            keep.kept = 0;
        }
        if keep.kept >= keep.rule.max_per_second {
            self.kept_over_cap.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        keep.kept += 1;
        self.kept_by_rule.fetch_add(1, Ordering::Relaxed);
        Some(reason)
    }

    /// Whether the keep rule would take a request sampling dropped (before its cap): if not,
    /// the request is only counted and its span needs no more than RED reads.
    fn may_keep(&self, server_failed: bool, duration_ns: u64) -> bool {
        let keep = self.keep.lock().unwrap_or_else(|p| p.into_inner());
        keep.rule.reason(server_failed, duration_ns).is_some()
    }

    /// Requests seen so far by how they were placed in a trace (joined, or left a root and
    /// why), in `Link::ALL`'s order.
    pub fn link_counts(&self) -> Vec<(Link, u64)> {
        Link::ALL
            .iter()
            .zip(&self.links)
            .map(|(link, n)| (*link, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Requests the kernel counted (sampled out, no record), as `span` stands for them.
    fn publish_counted(&self, span: &Span, counted: &Counted) {
        self.requests_total
            .fetch_add(counted.count, Ordering::Relaxed);
        self.counted_in_kernel
            .fetch_add(counted.count, Ordering::Relaxed);
        if let Some(trace) = &span.trace {
            if let Some(at) = Link::ALL.iter().position(|l| *l == trace.link) {
                self.links[at].fetch_add(counted.count, Ordering::Relaxed);
            }
        }
        if let Some(tap) = self.counted_tap.get() {
            tap(span, counted);
        }
    }

    fn publish(&self, mut span: Span) {
        self.requests_total.fetch_add(1, Ordering::Relaxed);
        if let Some(trace) = &span.trace {
            if let Some(at) = Link::ALL.iter().position(|l| *l == trace.link) {
                self.links[at].fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(tap) = self.tap.get() {
            tap(&span);
        }
        if !span.sampled {
            let Some(reason) = self.keep_anyway(&span) else {
                return;
            };
            // Every span of its class is kept (up to the cap): it stands for itself.
            span.sampled = true;
            span.sample_rate = 1.0;
            span.kept_by = Some(reason);
        }
        self.spans_total.fetch_add(1, Ordering::Relaxed);
        let kept_query_params = self
            .kept_query_params
            .read()
            .unwrap_or_else(|p| p.into_inner());
        if self.keep_redis_keys.load(Ordering::Relaxed) {
            span.apply_privacy_keeping_db_keys(&kept_query_params);
        } else {
            span.apply_privacy(&kept_query_params);
        }
        drop(kept_query_params);
        if let Some(tap) = self.export_tap.get() {
            tap(&span);
        }
        let span = Arc::new(span);
        push_bounded(&self.recent_spans, span.clone(), RECENT_SPANS);
        let _ = self.spans.send(span);
    }
}

/// Turns events into observations; owns the per-connection and per-process state.
pub struct Assembler {
    observer: Arc<Observer>,
    parsers: Parsers,
    /// `Observer::db_switched_off` as last seen.
    switched_off_seen: [u64; crate::DB_PROBES.len()],
    names: HashMap<u32, String, foldhash::fast::RandomState>,
    clock: Clock,
    kernel_red: Option<KernelRed>,
}

impl Assembler {
    pub fn new(observer: Arc<Observer>) -> Self {
        Assembler {
            observer,
            parsers: Parsers::default(),
            switched_off_seen: Default::default(),
            names: HashMap::default(),
            clock: Clock::now(),
            kernel_red: None,
        }
    }

    fn with_kernel_red(observer: Arc<Observer>, red: Option<KernelRed>) -> Self {
        Assembler {
            kernel_red: red,
            ..Assembler::new(observer)
        }
    }

    /// Gives up the connections of each probe switched off since the last stream buffer.
    fn give_up_switched_off(&mut self) {
        for (at, name) in crate::DB_PROBES.iter().enumerate() {
            let now = self.observer.db_switched_off[at].load(Ordering::Relaxed);
            if now != self.switched_off_seen[at] {
                self.switched_off_seen[at] = now;
                self.parsers.switched_off(name);
            }
        }
    }

    /// Reads what the kernel counted since the last time (when due, or `force`), and passes it
    /// on as the requests it stands for.
    fn count_kernel_red(&mut self, force: bool) {
        let Some(red) = self.kernel_red.as_mut() else {
            return;
        };
        if !red.due(force) {
            return;
        }
        let now = self
            .clock
            .to_unix_nanos(crate::protocol::clock_ns(libc::CLOCK_MONOTONIC));
        for (key, counted) in red.poll() {
            let names = &mut self.names;
            let service = |pid: u32, comm: &str| service_name(names, pid, comm);
            match red.counted_span(&key, &counted, service, now) {
                Some(span) => self.observer.publish_counted(&span, &counted),
                None => {
                    self.observer
                        .counted_unresolved
                        .fetch_add(counted.count, Ordering::Relaxed);
                }
            }
        }
    }

    pub fn handle(&mut self, record: &[u8]) {
        let event = match decode(record) {
            Ok(event) => event,
            Err(e) => {
                self.observer.decode_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("undecodable probe event: {e}");
                return;
            }
        };
        match event {
            Event::Data {
                header,
                flow,
                conn_id,
                total_len,
                direction,
                sample_threshold,
                sampled_out,
                request_side,
                stream_start,
                stream_gap,
                data,
                // Not set on the DB path (bpf/db.h): its spans stay roots.
                trace: _,
            } if matches!(
                header.probe,
                crate::abi::PROBE_REDIS
                    | crate::abi::PROBE_POSTGRES
                    | crate::abi::PROBE_MYSQL
                    | crate::abi::PROBE_HTTP2
            ) =>
            {
                self.give_up_switched_off();
                let message = Message {
                    probe: probe_name(header.probe),
                    pid: header.pid,
                    conn_id,
                    ts_ns: header.ts_ns,
                    direction,
                    flow: flow.as_ref(),
                    sample_threshold,
                    sampled_out,
                    data,
                    netns: header.netns,
                    cgroup_id: header.cgroup_id,
                    trace: None,
                };
                let names = &mut self.names;
                let comm = &header.comm;
                let service = |pid: u32| service_name(names, pid, comm);
                let mut spans = Vec::new();
                let buffer = StreamBuffer {
                    total_len: u64::try_from(total_len).unwrap_or(0),
                    request_side,
                    starts: stream_start,
                    after_gap: stream_gap,
                };
                self.parsers
                    .stream(message, buffer, service, &self.clock, &mut spans);
                for (at, name) in crate::DB_PROBES.iter().enumerate() {
                    self.observer.db_unparsed[at]
                        .store(self.parsers.unparsed(name), Ordering::Relaxed);
                }
                for span in spans {
                    self.observer.publish(span);
                }
            }
            Event::Data {
                header,
                flow,
                conn_id,
                direction,
                sample_threshold,
                sampled_out,
                trace,
                data,
                ..
            } => {
                let message = Message {
                    probe: probe_name(header.probe),
                    pid: header.pid,
                    conn_id,
                    ts_ns: header.ts_ns,
                    direction,
                    flow: flow.as_ref(),
                    sample_threshold,
                    sampled_out,
                    trace,
                    data,
                    netns: header.netns,
                    cgroup_id: header.cgroup_id,
                };
                let names = &mut self.names;
                let comm = &header.comm;
                let service = |pid: u32| service_name(names, pid, comm);
                if let Some(span) = self.parsers.message(message, service, &self.clock) {
                    self.observer.publish(span);
                }
            }
            Event::Exchange {
                header,
                flow,
                conn_id,
                request_ts_ns,
                direction,
                sample_threshold,
                sampled_out,
                trace,
                route,
                request,
                response,
            } => {
                let message = Message {
                    probe: probe_name(header.probe),
                    pid: header.pid,
                    conn_id,
                    ts_ns: request_ts_ns,
                    direction,
                    flow: flow.as_ref(),
                    sample_threshold,
                    sampled_out,
                    trace,
                    data: request,
                    netns: header.netns,
                    cgroup_id: header.cgroup_id,
                };
                let names = &mut self.names;
                let comm = &header.comm;
                let service = |pid: u32| service_name(names, pid, comm);
                let observer = &self.observer;
                let may_keep = |failed, duration| observer.may_keep(failed, duration);
                let span = match response {
                    Some(response) => self.parsers.exchange(
                        message,
                        response,
                        header.ts_ns,
                        may_keep,
                        service,
                        &self.clock,
                    ),
                    // A request the kernel did not pair: the next responses pair in order.
                    None => self.parsers.message(message, service, &self.clock),
                };
                if let Some(span) = span {
                    if let (Some(red), apiary_span::Protocol::Http(http)) =
                        (self.kernel_red.as_mut(), &span.protocol)
                    {
                        if route != 0 {
                            red.learn(route, &http.method, &http.route);
                        }
                    }
                    self.observer.publish(span);
                }
            }
            Event::TcpState {
                header,
                flow,
                old_state,
                new_state,
                bytes_sent,
                bytes_received,
                retransmits,
                ..
            } if new_state == TCP_CLOSE => {
                // The kernel counts a received FIN as one byte (rcv_nxt moves past it). A socket
                // that closes from these states did receive the peer's FIN.
                let fin_received = matches!(old_state, TCP_FIN_WAIT2 | TCP_LAST_ACK | TCP_CLOSING);
                let bytes_received = bytes_received.saturating_sub(u64::from(fin_received));
                let flow = TcpFlow {
                    local: flow.as_ref().map(|f| f.local),
                    remote: flow.as_ref().map(|f| f.remote),
                    bytes_sent,
                    bytes_received,
                    retransmits,
                    netns: header.netns,
                    closed_unix_nanos: self.clock.to_unix_nanos(header.ts_ns),
                };
                push_bounded(&self.observer.recent_flows, flow, RECENT_FLOWS);
            }
            Event::TcpState { .. } => {}
            Event::TcpRetransmit { .. } => {
                self.observer
                    .retransmits_total
                    .fetch_add(1, Ordering::Relaxed);
            }
            Event::Exec {
                header, filename, ..
            } => {
                let name = filename.rsplit('/').next().unwrap_or(&filename).to_string();
                self.names.insert(
                    header.pid,
                    if name.is_empty() {
                        header.comm.into_owned()
                    } else {
                        name
                    },
                );
            }
            Event::Exit { header, .. } => {
                self.names.remove(&header.pid);
                self.parsers.forget_process(header.pid);
            }
        }
    }
}

fn probe_name(probe: u32) -> &'static str {
    match probe {
        crate::abi::PROBE_TLS => "tls",
        crate::abi::PROBE_REDIS => "redis",
        crate::abi::PROBE_POSTGRES => "postgres",
        crate::abi::PROBE_MYSQL => "mysql",
        crate::abi::PROBE_HTTP2 => "http2",
        _ => "http",
    }
}

/// `service.name` of a process: its executable's name from exec, else /proc, else the comm of
/// the thread that did the I/O.
fn service_name(
    names: &mut HashMap<u32, String, foldhash::fast::RandomState>,
    pid: u32,
    comm: &str,
) -> String {
    if let Some(name) = names.get(&pid) {
        return name.clone();
    }
    let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| comm.to_string());
    if names.len() > 65_536 {
        names.clear();
    }
    names.insert(pid, name.clone());
    name
}

/// Reads the ring buffer until it is closed, waking on epoll readiness, and the kernel's RED
/// counts once a second (and on every `Observer::sync`).
pub fn spawn_reader(
    events: Events,
    observer: Arc<Observer>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let Events { ring, red } = events;
    // SAFETY: the ring buffer owns its map fd, keeps it open and returns the same fd for as long
    // as the AsyncFd owns the ring buffer.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut assembler = Assembler::with_kernel_red(observer.clone(), red);
    Ok(tokio::spawn(async move {
        // The probes write without waking this reader (see WAKEUP_BYTES in bpf/events.h):
        // it drains on this timer, or at once when the kernel wakes it for a large backlog.
        // An idle ring is looked at less often: an idle node should cost next to nothing.
        let mut wait = DRAIN_INTERVAL;
        loop {
            tokio::select! {
                ready = fd.readable_mut() => match ready {
                    Ok(mut guard) => {
                        drain(guard.get_inner_mut(), &mut assembler);
                        guard.clear_ready();
                        assembler.count_kernel_red(false);
                    }
                    Err(e) => {
                        tracing::error!("probe ring buffer failed: {e}");
                        return;
                    }
                },
                _ = tokio::time::sleep(wait) => {
                    wait = if drain(fd.get_mut(), &mut assembler) == 0 {
                        IDLE_DRAIN_INTERVAL
                    } else {
                        DRAIN_INTERVAL
                    };
                    assembler.count_kernel_red(false);
                }
                _ = observer.drain_requests.notified() => {
                    drain(fd.get_mut(), &mut assembler);
                    assembler.count_kernel_red(true);
                    observer.drains.send_modify(|n| *n += 1);
                }
            }
        }
    }))
}

/// How long an event may wait in the ring buffer before the reader takes it: the latency a
/// span gains, traded for no wakeup per event in the traced programs. A wakeup of this process
/// costs about 0.1 ms of CPU on the 2-core VMs measured (a bare tokio timer loop at 50 wakeups/s
/// took 0.6 % of a core), so at 20 ms the timer alone cost more than a few thousand records/s;
/// the ring (4 MiB by default, the kernel wakes the reader at 1 MiB) holds far more than 100 ms of them.
const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
/// The same after a drain that found nothing: an idle node should cost next to nothing.
const IDLE_DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Handles every record waiting; returns how many there were.
fn drain(ring: &mut RingBuf<MapData>, assembler: &mut Assembler) -> usize {
    let mut records = 0;
    while let Some(record) = ring.next() {
        assembler.handle(&record);
        records += 1;
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_span::SpanKind;

    fn span(status: u16, duration_ns: u64, second: u64) -> Span {
        let mut span = apiary_span::testing::http_span(SpanKind::Server, "GET", "/", status);
        span.start_unix_nanos = second * 1_000_000_000;
        span.duration_ns = duration_ns;
        span.sample_rate = 0.05;
        span.sampled = false;
        span
    }

    #[test]
    fn errors_and_slow_requests_are_kept_within_the_cap() {
        let observer = Observer::default();
        let mut live = observer.subscribe();
        observer.set_keep_rule(KeepRule {
            errors: true,
            slower_than_ns: 1_000_000,
            max_per_second: 3,
        });
        observer.publish(span(200, 10, 1)); // fast success: dropped by sampling
        observer.publish(span(503, 10, 1));
        observer.publish(span(200, 2_000_000, 1));
        observer.publish(span(500, 10, 1));
        observer.publish(span(500, 10, 1)); // over the cap of 3 in second 1
        observer.publish(span(500, 10, 2)); // a new second
        let kept: Vec<Arc<Span>> = std::iter::from_fn(|| live.try_recv().ok()).collect();
        let reasons: Vec<_> = kept.iter().map(|s| s.kept_by).collect();
        assert_eq!(
            reasons,
            vec![Some("error"), Some("slow"), Some("error"), Some("error")]
        );
        assert!(kept.iter().all(|s| s.sampled && s.sample_rate == 1.0));
        assert_eq!(observer.kept_over_cap.load(Ordering::Relaxed), 1);
        assert_eq!(observer.requests_total.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn spans_leave_without_the_query_parameters_privacy_does_not_keep() {
        let observer = Observer::default();
        let mut live = observer.subscribe();
        observer.set_kept_query_params(vec!["page".into()]);
        let mut span = span(200, 10, 1);
        span.sampled = true;
        span.http_mut().target = "/search?q=mine&token=s3cret&page=2".into();
        observer.publish(span);
        let seen = live.try_recv().unwrap();
        assert_eq!(seen.expect_http().target, "/search?page=2");
    }
}
