//! From the models' answers to predictions: each candidate must hold for `raise_after`
//! evaluations in a row before it is raised, and be absent for `resolve_after` before it is
//! resolved, so that one noisy interval neither raises nor resolves one.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use serde_json::{json, Value};

use crate::history::History;
use crate::models::{burn, trend_to_limit};

mod queueing;
use crate::{Signal, Slo};
use queueing::queueing;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectorSettings {
    /// Seconds between samples (the history's resolution).
    pub resolution_secs: f64,
    /// Forecasts further out than this are not raised.
    pub horizon_secs: f64,
    /// Newest points a trend is fitted on.
    pub trend_points: usize,
    /// Newest (rate, latency) pairs the queueing fit uses.
    pub knee_points: usize,
    pub raise_after: u32,
    pub resolve_after: u32,
    /// Candidates below this confidence are not raised.
    pub min_confidence: f64,
    /// Burn rate at or above which, in both windows, the objective is broken now.
    pub burn_threshold: f64,
    pub burn_short_secs: f64,
    pub burn_long_secs: f64,
    /// Raised, updated and resolved events kept for the API.
    pub max_events: usize,
}

impl Default for DetectorSettings {
    fn default() -> Self {
        DetectorSettings {
            resolution_secs: 5.0,
            horizon_secs: 1800.0,
            trend_points: 24,
            knee_points: 120,
            raise_after: 2,
            resolve_after: 3,
            min_confidence: 0.6,
            burn_threshold: 2.0,
            burn_short_secs: 30.0,
            burn_long_secs: 300.0,
            max_events: 256,
        }
    }
}

/// The series and fit a prediction rests on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// (unix seconds, value) of the signal the fit used; for the queueing model, the rate.
    pub series: Vec<(f64, f64)>,
    /// For the queueing model: the (rate, latency) pairs fitted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<(f64, f64)>,
    /// The fit's parameters, by name.
    pub fit: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// `service/signal/model`.
    pub id: String,
    pub service: String,
    pub signal: Signal,
    /// `trend`, `queueing` or `burn_rate`.
    pub model: &'static str,
    /// Unix seconds at which the signal is forecast to cross `limit` (now, for a burn rate).
    pub breach_at: f64,
    pub seconds_to_breach: f64,
    /// 0 to 1.
    pub confidence: f64,
    pub limit: f64,
    /// The signal's fitted or measured value now.
    pub current: f64,
    /// One sentence: what the fit says.
    pub why: String,
    pub action: String,
    pub evidence: Evidence,
    /// Unix seconds it was first raised, and last changed.
    pub raised_at: f64,
    pub updated_at: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Raised,
    Updated,
    Resolved,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub at: f64,
    pub kind: EventKind,
    pub prediction: Prediction,
}

#[derive(Debug, Default)]
pub struct Detector {
    pub settings: DetectorSettings,
    /// Raised predictions by id.
    active: BTreeMap<String, Prediction>,
    /// Candidates not yet raised: consecutive evaluations seen.
    pending: BTreeMap<String, u32>,
    /// Raised predictions absent from the latest evaluations: how many in a row.
    missing: BTreeMap<String, u32>,
    events: VecDeque<Event>,
    pub evaluations: u64,
}

impl Detector {
    pub fn new(settings: DetectorSettings) -> Self {
        Detector {
            settings,
            ..Default::default()
        }
    }

    pub fn active(&self) -> impl Iterator<Item = &Prediction> {
        self.active.values()
    }

    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Runs every model on every service with an objective, and returns the events this
    /// evaluation raised, updated or resolved.
    pub fn evaluate(
        &mut self,
        history: &History,
        slos: &BTreeMap<String, Slo>,
        now: f64,
    ) -> Vec<Event> {
        self.evaluations += 1;
        let mut candidates: BTreeMap<String, Prediction> = BTreeMap::new();
        for service in history.services() {
            for candidate in
                candidates_for(&self.settings, history, service, slos.get(service), now)
            {
                if candidate.confidence >= self.settings.min_confidence {
                    // One per id: the sooner breach wins.
                    match candidates.get(&candidate.id) {
                        Some(old) if old.breach_at <= candidate.breach_at => {}
                        _ => {
                            candidates.insert(candidate.id.clone(), candidate);
                        }
                    }
                }
            }
        }
        let mut out = Vec::new();
        let seen: std::collections::BTreeSet<String> = candidates.keys().cloned().collect();
        self.pending.retain(|id, _| seen.contains(id));
        for (id, mut candidate) in candidates {
            self.missing.remove(&id);
            if let Some(active) = self.active.get_mut(&id) {
                candidate.raised_at = active.raised_at;
                let shift = (candidate.breach_at - active.breach_at).abs();
                let moved = shift > (0.2 * active.seconds_to_breach.max(0.0)).max(10.0);
                let surer = (candidate.confidence - active.confidence).abs() > 0.15;
                if moved || surer {
                    candidate.updated_at = now;
                    *active = candidate;
                    out.push(Event {
                        at: now,
                        kind: EventKind::Updated,
                        prediction: active.clone(),
                    });
                } else {
                    // Fresh numbers, no event.
                    candidate.updated_at = active.updated_at;
                    *active = candidate;
                }
                continue;
            }
            let seen = self.pending.entry(id.clone()).or_insert(0);
            *seen += 1;
            if *seen >= self.settings.raise_after {
                self.pending.remove(&id);
                candidate.raised_at = now;
                candidate.updated_at = now;
                out.push(Event {
                    at: now,
                    kind: EventKind::Raised,
                    prediction: candidate.clone(),
                });
                self.active.insert(id, candidate);
            }
        }
        let absent: Vec<String> = self
            .active
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in absent {
            let misses = self.missing.entry(id.clone()).or_insert(0);
            *misses += 1;
            if *misses >= self.settings.resolve_after {
                self.missing.remove(&id);
                if let Some(mut prediction) = self.active.remove(&id) {
                    prediction.updated_at = now;
                    out.push(Event {
                        at: now,
                        kind: EventKind::Resolved,
                        prediction,
                    });
                }
            }
        }
        for event in &out {
            self.events.push_back(event.clone());
            while self.events.len() > self.settings.max_events {
                self.events.pop_front();
            }
        }
        out
    }
}

/// The suggested action for a signal and model.
fn action(signal: Signal, model: &str) -> &'static str {
    match (signal, model) {
        (_, "burn_rate") => {
            "the objective is being broken now: look at the slowest or failing routes (apiary \
             trace) and shed or add capacity"
        }
        (Signal::P99, "queueing") => {
            "add workers or instances before the rate reaches the breach rate, or shed load"
        }
        (Signal::P99, _) => {
            "latency is climbing: look at the slowest routes and their downstream calls before \
             it passes the objective"
        }
        (Signal::ErrorRate, _) => {
            "errors are climbing: check recent deploys and the service's dependencies"
        }
        (Signal::Memory, _) => {
            "memory grows toward memory.max: look for a leak, or raise the limit before the OOM \
             killer acts"
        }
        (Signal::Fds, _) => {
            "open files grow toward RLIMIT_NOFILE: look for a descriptor leak, or raise the limit"
        }
        (Signal::CpuUsage, _) => {
            "CPU use grows toward the cgroup's cpu.max: raise the quota or add instances"
        }
        _ => "look at the evidence",
    }
}

fn unit(signal: Signal) -> (&'static str, f64) {
    match signal {
        Signal::P50 | Signal::P99 | Signal::Mean => ("ms", 1e3),
        Signal::Rate => ("/s", 1.0),
        _ => ("%", 100.0),
    }
}

#[allow(clippy::too_many_arguments)]
fn prediction(
    service: &str,
    signal: Signal,
    model: &'static str,
    now: f64,
    seconds: f64,
    confidence: f64,
    limit: f64,
    current: f64,
    why: String,
    evidence: Evidence,
) -> Prediction {
    Prediction {
        id: format!("{service}/{}/{model}", signal.as_str()),
        service: service.to_string(),
        signal,
        model,
        breach_at: now + seconds,
        seconds_to_breach: seconds,
        confidence,
        limit,
        current,
        why,
        action: action(signal, model).to_string(),
        evidence,
        raised_at: now,
        updated_at: now,
    }
}

/// The limits the trend model forecasts each signal against, given the service's objectives.
fn trend_limits(slo: Option<&Slo>) -> Vec<(Signal, f64)> {
    let mut limits = vec![
        (Signal::Memory, 0.95),
        (Signal::Fds, 0.9),
        (Signal::CpuUsage, 0.95),
    ];
    if let Some(slo) = slo {
        limits.push((Signal::P99, slo.p99_seconds));
        limits.push((Signal::ErrorRate, slo.error_rate));
    }
    limits
}

fn candidates_for(
    settings: &DetectorSettings,
    history: &History,
    service: &str,
    slo: Option<&Slo>,
    now: f64,
) -> Vec<Prediction> {
    let mut out = Vec::new();
    let stamp = |mut fit: Value| {
        fit["evaluated_at"] = json!(now);
        fit
    };
    for (signal, limit) in trend_limits(slo) {
        let Some(ring) = history.ring(service, signal) else {
            continue;
        };
        let points = ring.last(settings.trend_points);
        let Some(f) = trend_to_limit(&points, now, limit, settings.horizon_secs) else {
            continue;
        };
        let (unit, scale) = unit(signal);
        let why = format!(
            "{} rises {:.3}{unit}/min (Theil–Sen over {} points, tau {:.2}): {:.2}{unit} now, \
             {:.2}{unit} limit in {:.0} s",
            signal.as_str(),
            f.line.slope * 60.0 * scale,
            f.line.points,
            f.line.tau,
            f.level * scale,
            limit * scale,
            f.seconds_to_limit,
        );
        let fit = stamp(json!({
            "kind": "theil_sen",
            "slope_per_s": f.line.slope,
            "level_now": f.level,
            "tau": f.line.tau,
            "mad": f.line.mad,
            "points": f.line.points,
        }));
        out.push(prediction(
            service,
            signal,
            "trend",
            now,
            f.seconds_to_limit,
            f.confidence,
            limit,
            f.level,
            why,
            Evidence {
                series: points,
                pairs: Vec::new(),
                fit,
            },
        ));
    }
    let Some(slo) = slo else {
        return out;
    };
    if let Some(p) = queueing(settings, history, service, slo, now) {
        out.push(p);
    }
    out.extend(burn_rates(settings, history, service, slo, now));
    out
}

fn burn_rates(
    settings: &DetectorSettings,
    history: &History,
    service: &str,
    slo: &Slo,
    now: f64,
) -> Vec<Prediction> {
    let Some(requests) = history.ring(service, Signal::Requests) else {
        return Vec::new();
    };
    let long_since = now - settings.burn_long_secs;
    let short_since = now - settings.burn_short_secs;
    let requests = requests.since(long_since);
    let mut out = Vec::new();
    // p99's objective allows 1 % of requests over it.
    for (signal, bad_signal, budget, limit) in [
        (Signal::P99, Signal::Slow, 0.01, slo.p99_seconds),
        (
            Signal::ErrorRate,
            Signal::Errors,
            slo.error_rate,
            slo.error_rate,
        ),
    ] {
        let bad = history
            .ring(service, bad_signal)
            .map(|r| r.since(long_since))
            .unwrap_or_default();
        let Some(b) = burn(&requests, &bad, short_since, long_since, budget) else {
            continue;
        };
        if b.short < settings.burn_threshold || b.long < settings.burn_threshold {
            continue;
        }
        let why = format!(
            "the {} objective's budget burns {:.1}x over the last {:.0} s ({:.0} requests) and \
             {:.1}x over {:.0} s ({:.0} requests); {:.1}x is the threshold",
            signal.as_str(),
            b.short,
            settings.burn_short_secs,
            b.short_requests,
            b.long,
            settings.burn_long_secs,
            b.long_requests,
            settings.burn_threshold,
        );
        out.push(prediction(
            service,
            signal,
            "burn_rate",
            now,
            0.0,
            1.0,
            limit,
            b.short * budget,
            why,
            Evidence {
                series: bad,
                pairs: Vec::new(),
                fit: json!({
                    "kind": "burn_rate",
                    "budget": budget,
                    "short": b.short,
                    "long": b.long,
                    "short_secs": settings.burn_short_secs,
                    "long_secs": settings.burn_long_secs,
                    "evaluated_at": now,
                }),
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod pool_tests;
