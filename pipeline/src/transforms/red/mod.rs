//! RED metrics (rate, errors, duration) per service, side, operation, route and status, counted
//! from every exchange the probes saw — before sampling — so they stay exact whatever the
//! sampling rate. What an exchange counts under, and what the series are called when exported,
//! is its protocol's (`apiary_span::RedSchema`: for HTTP, method, route and status code, as
//! `http.server.request.duration` / `http.client.request.duration` cumulative OTLP histograms
//! and `apiary_http_*` Prometheus series).

mod render;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use apiary_span::{RedDimensions, RedSchema, Span};
use serde::Serialize;

/// Histogram bounds for HTTP durations, in seconds: the OpenTelemetry semantic conventions'
/// advice (5 ms to 10 s) with five finer buckets below it, because the services the probes see
/// on one machine often answer in well under a millisecond, and with a first bucket of 5 ms
/// their p50 and p99 could only read "somewhere below 5 ms".
pub const DURATION_BOUNDS_SECONDS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0,
];
const BUCKETS: usize = DURATION_BOUNDS_SECONDS.len() + 1;

/// Series beyond this fold into the route `{other}` so that a scan of random paths cannot eat
/// the node's memory.
pub const MAX_SERIES: usize = 10_000;
pub const OVERFLOW_ROUTE: &str = "{other}";
/// A series that counted nothing for this long is dropped (from `/v1/red`, `/metrics` and the
/// export), so routes and services that went away free their place under [`MAX_SERIES`].
pub const QUIET_SERIES_EXPIRY: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RedKey {
    /// The protocol, which names the series when they are exported.
    #[serde(serialize_with = "protocol_name")]
    pub protocol: &'static RedSchema,
    pub service: String,
    /// `server` or `client`.
    pub kind: &'static str,
    /// HTTP: the method.
    pub operation: String,
    /// HTTP: the route template.
    pub route: String,
    /// The protocol's status (HTTP: the status code).
    pub status: u16,
    /// Whether exchanges of this status failed, per the protocol's semantic conventions.
    pub error: bool,
}

fn protocol_name<S: serde::Serializer>(
    schema: &&'static RedSchema,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(schema.protocol)
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RedSeries {
    pub count: u64,
    pub errors: u64,
    pub sum_seconds: f64,
    /// Per bucket (not cumulative); the last one is `+Inf`.
    pub buckets: [u64; BUCKETS],
    /// When the series began counting (its first request's end), for OTLP's start time.
    #[serde(skip)]
    pub started_unix_nanos: u64,
    /// Its latest request's end: a series quiet for [`QUIET_SERIES_EXPIRY`] is dropped.
    #[serde(skip)]
    pub last_unix_nanos: u64,
}

/// Requests of one route since the node started (`GET /v1/red`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RouteSummary {
    /// The protocol's name (`http`).
    pub protocol: &'static str,
    pub service: String,
    pub kind: &'static str,
    /// HTTP: the method.
    pub operation: String,
    pub route: String,
    pub count: u64,
    pub errors: u64,
    pub sum_seconds: f64,
    pub buckets: [u64; BUCKETS],
    pub p50_seconds: f64,
    pub p99_seconds: f64,
}

/// The `q` quantile of a histogram, interpolated linearly inside its bucket (as Prometheus'
/// `histogram_quantile` does); the open last bucket answers its lower bound.
pub fn quantile(buckets: &[u64; BUCKETS], q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (index, &n) in buckets.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let lower = if index == 0 {
                0.0
            } else {
                DURATION_BOUNDS_SECONDS[index - 1]
            };
            let Some(&upper) = DURATION_BOUNDS_SECONDS.get(index) else {
                return lower;
            };
            let within = (rank - below as f64) / n as f64;
            return lower + (upper - lower) * within.clamp(0.0, 1.0);
        }
        below += n;
    }
    DURATION_BOUNDS_SECONDS[DURATION_BOUNDS_SECONDS.len() - 1]
}

/// foldhash, seeded per process: every request the probes see is hashed here, and SipHash
/// (std's default) took about a tenth of the agent's CPU under load. The seed keeps series
/// keys, which come from request paths, from being chosen to collide.
type Hasher = foldhash::fast::RandomState;

#[derive(Default)]
struct Table {
    by_hash: HashMap<u64, Vec<(RedKey, RedSeries)>, Hasher>,
    len: usize,
    keys: Hasher,
}

fn key_hash(
    keys: &Hasher,
    service: &str,
    kind: &str,
    red: &RedDimensions,
    operation: &str,
    route: &str,
) -> u64 {
    use std::hash::BuildHasher;
    keys.hash_one((
        red.protocol.protocol,
        service,
        kind,
        operation,
        route,
        red.status,
    ))
}

pub struct RedMetrics {
    start_unix_nanos: u64,
    /// Series by a hash of their key, so that counting a request of a known series allocates
    /// nothing (this runs for every request the probes see).
    series: Mutex<Table>,
    /// Requests counted under `{other}` because the series limit was reached.
    pub overflowed: AtomicU64,
    /// Series dropped after going quiet.
    pub expired: AtomicU64,
}

impl Default for RedMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_nanos_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl RedMetrics {
    pub fn new() -> Self {
        RedMetrics {
            start_unix_nanos: unix_nanos_now(),
            series: Mutex::new(Table::default()),
            overflowed: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one request, sampled or not.
    pub fn record(&self, span: &Span) {
        let seconds = span.duration_ns as f64 / 1e9;
        let bucket = DURATION_BOUNDS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS - 1);
        let ended = span.start_unix_nanos.saturating_add(span.duration_ns);
        self.add(span, ended, |key, entry| {
            entry.count += 1;
            entry.errors += u64::from(key.error);
            entry.sum_seconds += seconds;
            entry.buckets[bucket] += 1;
        });
    }

    /// Counts `count` requests that `span` stands for, counted elsewhere (the probes' kernel
    /// side, for requests sampling dropped): their total duration and their histogram, whose
    /// buckets are [`DURATION_BOUNDS_SECONDS`]'s (a histogram of another length is refused).
    pub fn record_counted(
        &self,
        span: &Span,
        count: u64,
        sum_ns: u64,
        buckets: &[u64],
    ) -> Result<(), String> {
        if buckets.len() != BUCKETS {
            return Err(format!(
                "a histogram of {} buckets, not {BUCKETS}",
                buckets.len()
            ));
        }
        self.add(span, span.start_unix_nanos, |key, entry| {
            entry.count += count;
            entry.errors += if key.error { count } else { 0 };
            entry.sum_seconds += sum_ns as f64 / 1e9;
            for (total, n) in entry.buckets.iter_mut().zip(buckets) {
                *total += n;
            }
        });
        Ok(())
    }

    /// The series of `span`'s key (created if new, `{other}` past the cap), given to `count`.
    fn add(&self, span: &Span, ended: u64, count: impl FnOnce(&RedKey, &mut RedSeries)) {
        let kind = span.kind.as_str();
        let red = span.red();
        let matches = |k: &RedKey, operation: &str, route: &str| {
            std::ptr::eq(k.protocol, red.protocol)
                && k.service == span.service
                && k.kind == kind
                && k.operation == operation
                && k.route == route
                && k.status == red.status
        };
        let mut table = self.lock();
        let Table { by_hash, len, keys } = &mut *table;
        let (mut operation, mut route) = (red.operation, red.route);
        let mut hash = key_hash(keys, &span.service, kind, &red, operation, route);
        if *len >= MAX_SERIES
            && !by_hash
                .get(&hash)
                .is_some_and(|bucket| bucket.iter().any(|(k, _)| matches(k, operation, route)))
        {
            // Both parts a request chooses (an HTTP method is any word) fold, or a client
            // inventing a method per request would grow the table past the cap.
            (operation, route) = (OVERFLOW_ROUTE, OVERFLOW_ROUTE);
            hash = key_hash(keys, &span.service, kind, &red, operation, route);
            self.overflowed.fetch_add(1, Ordering::Relaxed);
        }
        let same_hash = by_hash.entry(hash).or_default();
        let index = match same_hash
            .iter()
            .position(|(k, _)| matches(k, operation, route))
        {
            Some(index) => index,
            None => {
                same_hash.push((
                    RedKey {
                        protocol: red.protocol,
                        service: span.service.clone(),
                        kind,
                        operation: operation.to_string(),
                        route: route.to_string(),
                        status: red.status,
                        error: span.is_error(),
                    },
                    RedSeries {
                        started_unix_nanos: ended,
                        ..RedSeries::default()
                    },
                ));
                *len += 1;
                same_hash.len() - 1
            }
        };
        let (key, entry) = &mut same_hash[index];
        count(key, entry);
        entry.last_unix_nanos = entry.last_unix_nanos.max(ended);
    }

    /// Drops the series that counted nothing for `quiet_for`; returns how many.
    pub fn expire_quiet(&self, quiet_for: Duration) -> usize {
        let cutoff = unix_nanos_now().saturating_sub(quiet_for.as_nanos() as u64);
        let mut table = self.lock();
        let Table { by_hash, len, .. } = &mut *table;
        let before = *len;
        by_hash.retain(|_, same_hash| {
            same_hash.retain(|(_, series)| series.last_unix_nanos >= cutoff);
            !same_hash.is_empty()
        });
        *len = by_hash.values().map(Vec::len).sum();
        let expired = before - *len;
        self.expired.fetch_add(expired as u64, Ordering::Relaxed);
        expired
    }

    /// Every series, sorted.
    pub fn snapshot(&self) -> Vec<(RedKey, RedSeries)> {
        let mut rows: Vec<(RedKey, RedSeries)> = self
            .lock()
            .by_hash
            .values()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// One row per service, side, method and route (all statuses together), with latency
    /// quantiles estimated from the histogram: what the dashboard's services page shows.
    pub fn routes(&self) -> Vec<RouteSummary> {
        let mut rows: Vec<RouteSummary> = Vec::new();
        // The snapshot is sorted by protocol, service, side, operation, route and status, so
        // the statuses of one route are adjacent: one pass, not a search per series.
        for (key, series) in self.snapshot() {
            let same_route = |r: &RouteSummary| {
                r.protocol == key.protocol.protocol
                    && r.service == key.service
                    && r.kind == key.kind
                    && r.operation == key.operation
                    && r.route == key.route
            };
            if !rows.last().is_some_and(same_route) {
                rows.push(RouteSummary {
                    protocol: key.protocol.protocol,
                    service: key.service.clone(),
                    kind: key.kind,
                    operation: key.operation.clone(),
                    route: key.route.clone(),
                    ..Default::default()
                });
            }
            let Some(row) = rows.last_mut() else {
                continue;
            };
            row.count += series.count;
            row.errors += series.errors;
            row.sum_seconds += series.sum_seconds;
            for (total, n) in row.buckets.iter_mut().zip(series.buckets) {
                *total += n;
            }
        }
        for row in &mut rows {
            row.p50_seconds = quantile(&row.buckets, 0.50);
            row.p99_seconds = quantile(&row.buckets, 0.99);
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::resource::ResourceInfo;
    use apiary_span::SpanKind;
    use opentelemetry_proto::tonic::metrics::v1::metric;

    fn span(status: u16, duration_ns: u64, sampled: bool) -> Span {
        let mut span = apiary_span::testing::http_span(SpanKind::Server, "GET", "/cart/7", status);
        span.http_mut().route = "/cart/{id}".into();
        span.http_mut().host = None;
        span.service = "shop".into();
        span.pid = 10;
        span.start_unix_nanos = 1;
        span.duration_ns = duration_ns;
        span.sample_rate = 0.1;
        span.sampled = sampled;
        span
    }

    /// Sub-millisecond services get sub-millisecond quantiles, not "below 5 ms".
    #[test]
    fn fast_routes_get_fine_quantiles() {
        let red = RedMetrics::new();
        for _ in 0..99 {
            red.record(&span(200, 180_000, false));
        }
        red.record(&span(200, 900_000, false));
        let row = &red.routes()[0];
        assert!(
            row.p50_seconds > 0.0001 && row.p50_seconds <= 0.00025,
            "{}",
            row.p50_seconds
        );
        assert!(
            row.p99_seconds > 0.0001 && row.p99_seconds <= 0.001,
            "{}",
            row.p99_seconds
        );
    }

    #[test]
    fn routes_sum_statuses_and_estimate_quantiles() {
        let red = RedMetrics::new();
        for _ in 0..98 {
            red.record(&span(200, 3_000_000, false));
        }
        red.record(&span(500, 600_000_000, false));
        red.record(&span(500, 600_000_000, false));
        let rows = red.routes();
        assert_eq!(rows.len(), 1, "one route across statuses");
        let row = &rows[0];
        assert_eq!((row.count, row.errors), (100, 2));
        assert!(
            row.p50_seconds > 0.0025 && row.p50_seconds <= 0.005,
            "{}",
            row.p50_seconds
        );
        assert!(
            row.p99_seconds > 0.5 && row.p99_seconds <= 0.75,
            "{}",
            row.p99_seconds
        );
        assert_eq!(quantile(&[0; BUCKETS], 0.5), 0.0);
    }

    #[test]
    fn counts_every_request_with_errors_and_buckets() {
        let red = RedMetrics::new();
        red.record(&span(200, 3_000_000, true));
        red.record(&span(200, 60_000_000, false));
        red.record(&span(503, 20_000_000_000, false));
        let rows = red.snapshot();
        assert_eq!(rows.len(), 2);
        let ok = &rows[0].1;
        assert_eq!((ok.count, ok.errors), (2, 0));
        let bucket_of = |upper: f64| {
            DURATION_BOUNDS_SECONDS
                .iter()
                .position(|&b| b == upper)
                .unwrap()
        };
        assert_eq!(ok.buckets[bucket_of(0.005)], 1, "3 ms in the 5 ms bucket");
        assert_eq!(ok.buckets[bucket_of(0.075)], 1, "60 ms in the 75 ms bucket");
        let failed = &rows[1].1;
        assert_eq!((failed.count, failed.errors), (1, 1));
        assert_eq!(failed.buckets[BUCKETS - 1], 1, "20 s in +Inf");

        let request = red.to_otlp(&ResourceInfo::default()).unwrap();
        let metric = &request.resource_metrics[0].scope_metrics[0].metrics[0];
        assert_eq!(metric.name, "http.server.request.duration");
        let Some(metric::Data::Histogram(histogram)) = &metric.data else {
            panic!("not a histogram")
        };
        let total: u64 = histogram.data_points.iter().map(|p| p.count).sum();
        assert_eq!(total, 3);
        assert!(histogram
            .data_points
            .iter()
            .all(|p| p.bucket_counts.len() == p.explicit_bounds.len() + 1
                && p.bucket_counts.iter().sum::<u64>() == p.count));

        let mut text = String::new();
        red.render_prometheus("n1", &mut text);
        assert!(text.contains("apiary_http_requests_total{node=\"n1\",service=\"shop\",kind=\"server\",method=\"GET\",route=\"/cart/{id}\",status=\"503\"} 1"));
        assert!(text.contains("le=\"+Inf\"} 2"));
    }

    /// Series that went quiet leave, and free their room under the cap for new routes.
    #[test]
    fn quiet_series_expire_and_free_their_place() {
        let red = RedMetrics::new();
        let now = unix_nanos_now();
        let hour = 3600 * 1_000_000_000;
        for i in 0..MAX_SERIES {
            let mut old = span(200, 1_000, false);
            old.http_mut().route = format!("/gone/{i}");
            old.start_unix_nanos = now - hour;
            red.record(&old);
        }
        let mut live = span(200, 1_000, false);
        live.start_unix_nanos = now;
        red.record(&live);
        assert_eq!(
            red.snapshot().len(),
            MAX_SERIES + 1,
            "the live route overflowed"
        );
        assert_eq!(red.expire_quiet(QUIET_SERIES_EXPIRY), MAX_SERIES);
        let rows = red.snapshot();
        assert_eq!(rows.len(), 1, "only the live series is left");
        assert_eq!(rows[0].0.route, OVERFLOW_ROUTE);
        let mut new = span(200, 1_000, false);
        new.start_unix_nanos = now;
        new.http_mut().route = "/new".into();
        red.record(&new);
        assert!(
            red.snapshot().iter().any(|(k, _)| k.route == "/new"),
            "a new route gets its own series again"
        );
        assert_eq!(red.expired.load(Ordering::Relaxed), MAX_SERIES as u64);
        assert_eq!(red.expire_quiet(QUIET_SERIES_EXPIRY), 0);
    }

    #[test]
    fn series_are_bounded() {
        let red = RedMetrics::new();
        for i in 0..(MAX_SERIES + 5) {
            let mut s = span(200, 1, true);
            s.http_mut().route = format!("/r{i}");
            red.record(&s);
        }
        assert_eq!(red.snapshot().len(), MAX_SERIES + 1);
        assert_eq!(red.overflowed.load(Ordering::Relaxed), 5);
        // Past the cap, a method invented per request folds too: the table stays at the cap.
        for i in 0..100 {
            let mut s = span(200, 1, true);
            s.http_mut().method = format!("M{i}");
            s.http_mut().route = format!("/fresh{i}");
            red.record(&s);
        }
        assert_eq!(red.snapshot().len(), MAX_SERIES + 1);
        assert_eq!(red.overflowed.load(Ordering::Relaxed), 105);
        let other = red
            .routes()
            .into_iter()
            .find(|r| r.route == OVERFLOW_ROUTE)
            .unwrap();
        assert_eq!(
            (other.operation.as_str(), other.count),
            (OVERFLOW_ROUTE, 105)
        );
    }

    /// `/v1/red` groups a full table's statuses per route (in one pass over the sorted series).
    #[test]
    fn routes_of_a_full_table_group_their_statuses() {
        let red = RedMetrics::new();
        for i in 0..MAX_SERIES {
            let mut s = span(if i % 2 == 0 { 200 } else { 500 }, 1, true);
            s.http_mut().route = format!("/r{}", i / 2);
            red.record(&s);
        }
        let rows = red.routes();
        assert_eq!(rows.len(), MAX_SERIES / 2, "two statuses per route");
        assert!(rows.iter().all(|r| r.count == 2 && r.errors == 1));
    }
}
