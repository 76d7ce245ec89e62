//! Predictions on this node: every `--predict-interval` the RED counts of each server-side
//! service (every request the probes saw, before sampling) become one interval's rate, error
//! rate and latency quantiles, its processes' saturation signals are read, both go into the
//! history (`apiary_predict`), and the detector runs. `GET /v1/predictions`, `/metrics` and
//! `apiary predict` read what it holds.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiary_config::ClusterConfig;
use apiary_consensus::Consensus;
use apiary_pipeline::transforms::red::{quantile, RedMetrics, DURATION_BOUNDS_SECONDS};
use apiary_predict::{
    baseline_slo, Detector, DetectorSettings, Event, History, Signal, Slo, Source,
};
use serde::Serialize;
use serde_json::{json, Value};

use super::predict_notify::Notifier;
use super::saturation::{self, CpuCounters, Mounts};

const BUCKETS: usize = DURATION_BOUNDS_SECONDS.len() + 1;
/// Fewest requests in an interval for its quantiles to go into the history: the p99 of three
/// requests is their maximum, noise rather than a signal.
pub const MIN_QUANTILE_REQUESTS: u64 = 10;
/// Services whose series the history holds at most (12 signals each).
const MAX_SERIES: usize = 12 * 256;
/// The history is written to disk every this many intervals.
const SAVE_EVERY: u64 = 12;

/// Cumulative RED counts of one service's server side.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Totals {
    count: u64,
    errors: u64,
    sum_seconds: f64,
    buckets: [u64; BUCKETS],
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            count: 0,
            errors: 0,
            sum_seconds: 0.0,
            buckets: [0; BUCKETS],
        }
    }
}

/// The objective in effect for a service, and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct SloView {
    pub p99_ms: Option<f64>,
    pub p99_source: Option<Source>,
    pub error_rate: Option<f64>,
    pub error_source: Option<Source>,
}

struct State {
    history: History,
    detector: Detector,
    last: HashMap<String, (f64, Totals)>,
    cpu: HashMap<String, Option<CpuCounters>>,
    slos: BTreeMap<String, SloView>,
    unavailable: BTreeMap<String, Vec<String>>,
    intervals: u64,
    /// The detector's own cost: wall time of sampling and evaluating, in total and last.
    spent: Duration,
    last_spent: Duration,
    save_error: Option<String>,
}

pub struct Predictor {
    state: Mutex<State>,
    interval: Duration,
    path: PathBuf,
    /// Log records and the webhook for each event raised or resolved.
    notifier: Notifier,
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Requests over `threshold` seconds in a histogram, the bucket holding the threshold counted
/// by linear interpolation (as the quantiles are).
fn slower_than(buckets: &[u64; BUCKETS], threshold: f64) -> f64 {
    let mut slow = 0.0;
    for (i, &n) in buckets.iter().enumerate() {
        let lower = if i == 0 {
            0.0
        } else {
            DURATION_BOUNDS_SECONDS[i - 1]
        };
        match DURATION_BOUNDS_SECONDS.get(i) {
            Some(&upper) if upper <= threshold => {}
            Some(_) if lower >= threshold => slow += n as f64,
            Some(&upper) => slow += n as f64 * (upper - threshold) / (upper - lower),
            None => slow += if lower >= threshold { n as f64 } else { 0.0 },
        }
    }
    slow
}

/// Server-side totals per service, all routes and statuses together.
fn totals(red: &RedMetrics) -> HashMap<String, Totals> {
    let mut out: HashMap<String, Totals> = HashMap::new();
    for (key, series) in red.snapshot() {
        if key.kind != "server" {
            continue;
        }
        let t = out.entry(key.service.clone()).or_default();
        t.count += series.count;
        t.errors += series.errors;
        t.sum_seconds += series.sum_seconds;
        for (total, n) in t.buckets.iter_mut().zip(series.buckets) {
            *total += n;
        }
    }
    out
}

/// The objectives for `service`: the config's, else the baseline's.
fn slo_for(config: &ClusterConfig, history: &History, service: &str) -> (Option<Slo>, SloView) {
    let configured = config.slos.get(service);
    let (base_p99, base_errors) = baseline_slo(history, service);
    let p99 = configured
        .and_then(|s| s.p99_ms)
        .map(|ms| (ms / 1e3, Source::Config))
        .or(base_p99.map(|s| (s, Source::Baseline)));
    let errors = configured
        .and_then(|s| s.error_rate)
        .map(|r| (r, Source::Config))
        .or(base_errors.map(|r| (r, Source::Baseline)));
    let view = SloView {
        p99_ms: p99.map(|p| p.0 * 1e3),
        p99_source: p99.map(|p| p.1),
        error_rate: errors.map(|e| e.0),
        error_source: errors.map(|e| e.1),
    };
    let slo = match (p99, errors) {
        (Some((p99_seconds, p99_source)), Some((error_rate, error_source))) => Some(Slo {
            p99_seconds,
            p99_source,
            error_rate,
            error_source,
        }),
        _ => None,
    };
    (slo, view)
}

impl Predictor {
    /// Loads the saved history from the data dir (a damaged file is set aside with a warning,
    /// not fatal) and samples every `interval` until the node stops.
    pub fn start(
        data_dir: &std::path::Path,
        interval: Duration,
        history_points: usize,
        horizon: Duration,
        red: Arc<RedMetrics>,
        consensus: Arc<Consensus>,
        notifier: Notifier,
    ) -> Arc<Predictor> {
        let path = data_dir.join("predict-history.json");
        let history = History::load(&path, history_points, MAX_SERIES).unwrap_or_else(|e| {
            tracing::warn!("starting with an empty prediction history: {e}");
            let _ = std::fs::rename(&path, path.with_extension("damaged"));
            History::new(history_points, MAX_SERIES)
        });
        let settings = DetectorSettings {
            resolution_secs: interval.as_secs_f64(),
            horizon_secs: horizon.as_secs_f64(),
            ..DetectorSettings::default()
        };
        let predictor = Arc::new(Predictor {
            state: Mutex::new(State {
                history,
                detector: Detector::new(settings),
                last: HashMap::new(),
                cpu: HashMap::new(),
                slos: BTreeMap::new(),
                unavailable: BTreeMap::new(),
                intervals: 0,
                spent: Duration::ZERO,
                last_spent: Duration::ZERO,
                save_error: None,
            }),
            interval,
            path,
            notifier,
        });
        let weak = Arc::downgrade(&predictor);
        let mounts = Mounts::read();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(predictor) = weak.upgrade() else {
                    return;
                };
                let config = consensus.config_state().history().current().clone();
                let red = red.clone();
                let mounts = mounts.clone();
                let save = tokio::task::spawn_blocking(move || {
                    predictor.tick(&red, &config, &mounts, unix_now())
                })
                .await;
                if let Ok(Some((history, path))) = save {
                    let result = tokio::task::spawn_blocking(move || history.save(&path)).await;
                    let error = match result {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(e) => Some(e.to_string()),
                    };
                    if let Some(e) = &error {
                        tracing::warn!("saving the prediction history: {e}");
                    }
                    if let Some(predictor) = weak.upgrade() {
                        predictor.lock().save_error = error;
                    }
                }
            }
        });
        predictor
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One interval: sample, evaluate, log the events. Returns a copy of the history to save
    /// when it is time to.
    fn tick(
        &self,
        red: &RedMetrics,
        config: &ClusterConfig,
        mounts: &Mounts,
        now: f64,
    ) -> Option<(History, PathBuf)> {
        let started = Instant::now();
        let totals = totals(red);
        let mut state = self.lock();
        let state = &mut *state;
        let names: Vec<&str> = totals.keys().map(String::as_str).collect();
        let pids = saturation::pids_by_name(&names);
        for (service, now_totals) in &totals {
            let previous = state.last.insert(service.clone(), (now, *now_totals));
            let (slo, view) = slo_for(config, &state.history, service);
            state.slos.insert(service.clone(), view);
            if let Some((then, before)) = previous {
                record_interval(
                    &mut state.history,
                    service,
                    now - then,
                    &before,
                    now_totals,
                    slo,
                    now,
                );
            }
            let last_cpu = state.cpu.entry(service.clone()).or_default();
            let reading = saturation::sample(
                mounts,
                pids.get(service).map_or(&[][..], Vec::as_slice),
                now,
                last_cpu,
            );
            for (signal, value) in reading.values {
                state.history.push(service, signal, now, value);
            }
            state
                .unavailable
                .insert(service.clone(), reading.unavailable);
        }
        state.last.retain(|service, _| totals.contains_key(service));
        state.cpu.retain(|service, _| totals.contains_key(service));
        state.slos.retain(|service, _| totals.contains_key(service));
        state
            .unavailable
            .retain(|service, _| totals.contains_key(service));
        let slos: BTreeMap<String, Slo> = totals
            .keys()
            .filter_map(|service| {
                Some((service.clone(), slo_for(config, &state.history, service).0?))
            })
            .collect();
        let events = state.detector.evaluate(&state.history, &slos, now);
        for event in &events {
            log_event(event);
            self.notifier.send(event);
        }
        state.intervals += 1;
        state.last_spent = started.elapsed();
        state.spent += state.last_spent;
        state
            .intervals
            .is_multiple_of(SAVE_EVERY)
            .then(|| (state.history.clone(), self.path.clone()))
    }

    /// `GET /v1/predictions`.
    pub fn status(&self) -> Value {
        let state = self.lock();
        let active: Vec<_> = state.detector.active().cloned().collect();
        let events: Vec<&Event> = state.detector.events().collect();
        json!({
            "interval_seconds": self.interval.as_secs_f64(),
            "history": {
                "points_per_series": state.history.capacity,
                "series": state.history.series_count(),
                "points": state.history.points(),
                "refused_series": state.history.refused_series,
                "save_error": state.save_error,
            },
            "settings": state.detector.settings,
            "slos": state.slos,
            "unavailable": state.unavailable,
            "active": active,
            "pending": state.detector.pending(),
            "events": events,
            "outputs": self.notifier.status(),
            "cost": {
                "intervals": state.intervals,
                "seconds_total": state.spent.as_secs_f64(),
                "last_seconds": state.last_spent.as_secs_f64(),
            },
        })
    }

    /// Prometheus gauges: one per active prediction, and the detector's cost.
    pub fn render_prometheus(&self, node: &str, out: &mut String) {
        use std::fmt::Write;
        let esc = apiary_pipeline::prometheus::escape_label_value;
        let state = self.lock();
        let node = esc(node);
        let _ = writeln!(
            out,
            "# HELP apiary_prediction_seconds_to_breach Seconds until an active prediction says \
             the signal crosses its limit (0: it already does).\n\
             # TYPE apiary_prediction_seconds_to_breach gauge"
        );
        let mut confidence = String::new();
        for p in state.detector.active() {
            let labels = format!(
                "node=\"{node}\",service=\"{}\",signal=\"{}\",model=\"{}\"",
                esc(&p.service),
                p.signal.as_str(),
                p.model
            );
            let _ = writeln!(
                out,
                "apiary_prediction_seconds_to_breach{{{labels}}} {}",
                (p.breach_at - unix_now()).max(0.0)
            );
            let _ = writeln!(
                confidence,
                "apiary_prediction_confidence{{{labels}}} {}",
                p.confidence
            );
        }
        let _ = write!(
            out,
            "# HELP apiary_prediction_confidence Confidence of an active prediction, 0 to 1.\n\
             # TYPE apiary_prediction_confidence gauge\n{confidence}\
             # HELP apiary_predictions_active Predictions raised and not resolved.\n\
             # TYPE apiary_predictions_active gauge\n\
             apiary_predictions_active{{node=\"{node}\"}} {}\n\
             # HELP apiary_predict_seconds_total Time spent sampling and evaluating predictions.\n\
             # TYPE apiary_predict_seconds_total counter\n\
             apiary_predict_seconds_total{{node=\"{node}\"}} {}\n",
            state.detector.active().count(),
            state.spent.as_secs_f64()
        );
    }
}

/// One interval's RED signals from the change in a service's totals over `seconds`.
fn record_interval(
    history: &mut History,
    service: &str,
    seconds: f64,
    before: &Totals,
    after: &Totals,
    slo: Option<Slo>,
    now: f64,
) {
    // Series expire after going quiet: a total that went down starts over.
    if after.count < before.count || seconds <= 0.0 {
        return;
    }
    let count = after.count - before.count;
    let errors = after.errors.saturating_sub(before.errors);
    let mut buckets = [0u64; BUCKETS];
    for (i, slot) in buckets.iter_mut().enumerate() {
        *slot = after.buckets[i].saturating_sub(before.buckets[i]);
    }
    history.push(service, Signal::Rate, now, count as f64 / seconds);
    if count == 0 {
        return;
    }
    history.push(service, Signal::Requests, now, count as f64);
    history.push(service, Signal::Errors, now, errors as f64);
    history.push(
        service,
        Signal::ErrorRate,
        now,
        errors as f64 / count as f64,
    );
    if let Some(slo) = slo {
        history.push(
            service,
            Signal::Slow,
            now,
            slower_than(&buckets, slo.p99_seconds),
        );
    }
    if count >= MIN_QUANTILE_REQUESTS {
        history.push(service, Signal::P50, now, quantile(&buckets, 0.50));
        history.push(service, Signal::P99, now, quantile(&buckets, 0.99));
        let mean = (after.sum_seconds - before.sum_seconds) / count as f64;
        history.push(service, Signal::Mean, now, mean);
    }
}

fn log_event(event: &Event) {
    let p = &event.prediction;
    tracing::info!(
        kind = ?event.kind,
        service = %p.service,
        signal = p.signal.as_str(),
        model = p.model,
        seconds_to_breach = p.seconds_to_breach,
        confidence = p.confidence,
        "prediction: {}",
        p.why
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_requests_are_counted_from_the_histogram() {
        let mut buckets = [0u64; BUCKETS];
        // 10 requests in (50 ms, 75 ms], 5 in (75 ms, 100 ms], 1 in +Inf.
        buckets[9] = 10;
        buckets[10] = 5;
        buckets[BUCKETS - 1] = 1;
        assert_eq!(slower_than(&buckets, 0.075), 6.0);
        assert!((slower_than(&buckets, 0.0625) - 11.0).abs() < 1e-9);
        assert_eq!(slower_than(&buckets, 20.0), 0.0);
    }
}
