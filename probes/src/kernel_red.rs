//! RED counted in the kernel (bpf/red.h): requests sampling dropped leave no ring record when
//! the kernel can count them as userspace would. The kernel keys them by a route key (a seeded
//! hash of the request line's method and exact path); this side tells the kernel which keys it
//! resolved to a method and route template (`red_routes`, from the records of a route's first
//! sampled-out requests), and reads the kernel's per-CPU counts (`red_counts`) as deltas.
//!
//! Routes stay templated here (probes/src/protocol/http1/route.rs): a key is one exact path, so
//! it names one route. A path not yet resolved, a table full at [`RED_ROUTE_ENTRIES`] keys (a
//! service with ids in its paths has a key per id), or a response a keep rule may want, goes
//! to userspace as a record, as before: counting then costs the record, never accuracy.

use std::collections::HashMap as StdHashMap;
use std::time::{Duration, Instant};

use aya::maps::{HashMap, MapData, PerCpuHashMap};

use apiary_span::{Http, Protocol, Span, SpanKind, TraceLink};

use crate::abi::{
    red_direction, red_link, Direction, RedKey, RedValue, RED_BUCKETS, RED_ROUTE_ENTRIES,
};

/// How often the counts are read (and on every `Observer::sync`). Well under the cooperative
/// tuner's 1 s tick: read once a second, a tick saw two seconds of kernel-counted requests or
/// none, its demand jumped, and the cluster's export swung around its budget (samples 64–214
/// spans/s for a budget of 100 in CI).
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often entries of processes that exited are dropped from the kernel's map.
const CLEANUP_INTERVAL: Duration = Duration::from_secs(60);

/// The kernel's side of RED counting, owned by the ring reader.
pub struct KernelRed {
    routes: HashMap<MapData, u64, u8>,
    counts: PerCpuHashMap<MapData, RedKey, RedValue>,
    /// Route key → (method, route); None: two routes met under one key, and the key is never
    /// counted in the kernel again.
    known: StdHashMap<u64, Option<(String, String)>>,
    /// What each kernel entry had counted at the last poll (its counters are cumulative).
    seen: StdHashMap<RedKey, Counted>,
    last_poll: Option<Instant>,
    last_cleanup: Instant,
    /// Route keys that met a second route (a hash collision).
    pub collisions: u64,
}

/// Requests the kernel counted under one key since the last poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub count: u64,
    pub sum_ns: u64,
    pub buckets: [u64; RED_BUCKETS],
    pub comm: String,
}

impl Default for Counted {
    fn default() -> Self {
        Counted {
            count: 0,
            sum_ns: 0,
            buckets: [0; RED_BUCKETS],
            comm: String::new(),
        }
    }
}

impl KernelRed {
    pub(crate) fn new(
        routes: HashMap<MapData, u64, u8>,
        counts: PerCpuHashMap<MapData, RedKey, RedValue>,
    ) -> Self {
        KernelRed {
            routes,
            counts,
            known: StdHashMap::new(),
            seen: StdHashMap::new(),
            last_poll: None,
            last_cleanup: Instant::now(),
            collisions: 0,
        }
    }

    /// A sampled-out request's record carried route key `key`, and userspace read `method`
    /// and `route` from it: the kernel may count the key's next requests itself.
    pub fn learn(&mut self, key: u64, method: &str, route: &str) {
        if key == 0 {
            return;
        }
        match self.known.get(&key) {
            Some(Some((m, r))) if m == method && r == route => {}
            Some(None) => {}
            Some(Some(_)) => {
                self.known.insert(key, None);
                let _ = self.routes.remove(&key);
                self.collisions += 1;
                tracing::warn!("two routes share a kernel route key; its requests are counted from records from now on");
            }
            None => {
                if self.known.len() >= RED_ROUTE_ENTRIES as usize {
                    return;
                }
                match self.routes.insert(key, 1, 0) {
                    Ok(()) => {
                        self.known
                            .insert(key, Some((method.to_string(), route.to_string())));
                    }
                    Err(e) => tracing::debug!("red_routes: {e}"),
                }
            }
        }
    }

    /// The method and route of a key, when it is known (and met no second route).
    pub fn resolve(&self, key: u64) -> Option<(&str, &str)> {
        self.known
            .get(&key)?
            .as_ref()
            .map(|(m, r)| (m.as_str(), r.as_str()))
    }

    /// The span that stands for requests counted under `key` (its duration 0: theirs are in
    /// the counts), or None when its route or its service cannot be told. `service(pid,
    /// comm)` names a process; `now_unix_nanos` is when they were read.
    pub fn counted_span(
        &self,
        key: &RedKey,
        counted: &Counted,
        service: impl FnOnce(u32, &str) -> String,
        now_unix_nanos: u64,
    ) -> Option<Span> {
        let (method, route) = self.resolve(key.route)?;
        let service = service(key.pid, &counted.comm);
        if service.is_empty() {
            return None;
        }
        let kind = match red_direction(key.direction) {
            Direction::Ingress => SpanKind::Server,
            Direction::Egress => SpanKind::Client,
        };
        Some(Span {
            kind,
            probe: "http",
            service,
            pid: key.pid,
            start_unix_nanos: now_unix_nanos,
            duration_ns: 0,
            peer: None,
            local: None,
            traceparent: None,
            sample_rate: 0.0,
            sampled: false,
            kept_by: None,
            netns: 0,
            cgroup_id: 0,
            trace: red_link(key.link).map(|link| TraceLink {
                trace_id: [0; 16],
                span_id: [0; 8],
                parent_span_id: None,
                link,
            }),
            protocol: Protocol::Http(Http {
                method: method.to_string(),
                target: String::new(),
                route: route.to_string(),
                status: key.status,
                host: None,
            }),
        })
    }

    /// Whether a poll is due (`force`: asked for by `Observer::sync`).
    pub fn due(&self, force: bool) -> bool {
        force
            || self
                .last_poll
                .is_none_or(|at| at.elapsed() >= POLL_INTERVAL)
    }

    /// What the kernel counted since the last poll, per key.
    pub fn poll(&mut self) -> Vec<(RedKey, Counted)> {
        self.last_poll = Some(Instant::now());
        let mut out = Vec::new();
        let mut idle = Vec::new();
        for entry in self.counts.iter() {
            let Ok((key, per_cpu)) = entry else {
                continue;
            };
            let mut total = Counted::default();
            for value in per_cpu.iter() {
                total.count += value.count;
                total.sum_ns += value.sum_ns;
                for (sum, n) in total.buckets.iter_mut().zip(value.buckets) {
                    *sum += n;
                }
                if total.comm.is_empty() && value.comm[0] != 0 {
                    let end = value.comm.iter().position(|&b| b == 0).unwrap_or(16);
                    total.comm = String::from_utf8_lossy(&value.comm[..end]).into_owned();
                }
            }
            let before = self.seen.get(&key).cloned().unwrap_or_default();
            if total.count <= before.count {
                idle.push(key);
                continue;
            }
            let mut delta = Counted {
                count: total.count - before.count,
                sum_ns: total.sum_ns.saturating_sub(before.sum_ns),
                comm: total.comm.clone(),
                ..Counted::default()
            };
            for ((d, now), was) in delta
                .buckets
                .iter_mut()
                .zip(total.buckets)
                .zip(before.buckets)
            {
                *d = now.saturating_sub(was);
            }
            self.seen.insert(key, total);
            out.push((key, delta));
        }
        if self.last_cleanup.elapsed() >= CLEANUP_INTERVAL {
            self.last_cleanup = Instant::now();
            // A process that exited counts nothing more: its entries can go without losing any.
            for key in idle {
                if !std::path::Path::new(&format!("/proc/{}", key.pid)).exists() {
                    let _ = self.counts.remove(&key);
                    self.seen.remove(&key);
                }
            }
        }
        out
    }
}
