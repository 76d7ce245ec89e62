//! The queueing model's prediction: mean latency against the rate fitted as a queue nearing its
//! capacity ([`knee`]), and the rate's own trend forecast to reach the rate that breaks the p99
//! objective.

use std::collections::BTreeMap;

use serde_json::json;

use super::{prediction, DetectorSettings, Evidence, Prediction};
use crate::fit::{median, theil_sen, Line};
use crate::history::History;
use crate::models::{knee, TrendForecast, MIN_TREND_POINTS};
use crate::{Signal, Slo};

/// The rate's trend must also hold over this many times the trend window, with at least
/// [`SUSTAINED_MIN_TAU`]: a step in the rate (bursty load) looks like a steep trend for as long
/// as the short window straddles it, and would be forecast to run on into the knee. Over a
/// window twice as long the step is one plateau after another, which is no trend.
pub const SUSTAINED_WINDOWS: usize = 2;
pub const SUSTAINED_MIN_TAU: f64 = 0.4;

pub(super) fn queueing(
    settings: &DetectorSettings,
    history: &History,
    service: &str,
    slo: &Slo,
    now: f64,
) -> Option<Prediction> {
    let rates = history.ring(service, Signal::Rate)?;
    let p99s = history.ring(service, Signal::P99)?;
    let means = history.ring(service, Signal::Mean)?;
    let rate_at: BTreeMap<u64, f64> = rates
        .last(settings.knee_points)
        .into_iter()
        .map(|(t, v)| (t.to_bits(), v))
        .collect();
    let p99_at: BTreeMap<u64, f64> = p99s
        .last(settings.knee_points)
        .into_iter()
        .map(|(t, v)| (t.to_bits(), v))
        .collect();
    // The mean, not the p99, is fitted: over one interval's requests it is far less noisy,
    // so the climb shows earlier. The objective is on the p99, so it becomes a mean limit
    // through the p99/mean ratio of the newest intervals.
    let mut triples: Vec<(f64, f64, f64)> = means
        .last(settings.knee_points)
        .into_iter()
        .filter_map(|(t, mean)| {
            Some((
                *rate_at.get(&t.to_bits())?,
                mean,
                *p99_at.get(&t.to_bits())?,
            ))
        })
        .collect();
    triples.retain(|(_, mean, p99)| *mean > 0.0 && *p99 > 0.0);
    let mut ratios: Vec<f64> = triples
        .iter()
        .rev()
        .take(settings.trend_points)
        .map(|(_, mean, p99)| p99 / mean)
        .collect();
    let ratio = median(&mut ratios)?;
    let pairs: Vec<(f64, f64)> = triples
        .iter()
        .map(|(rate, mean, _)| (*rate, *mean))
        .collect();
    let mean_limit = slo.p99_seconds / ratio;
    let fit = knee(&pairs, mean_limit)?;
    let rate_points = rates.last(settings.trend_points);
    if rate_points.len() < MIN_TREND_POINTS {
        return None;
    }
    let rate_line = line_to_now(&rate_points, now)?;
    let level = rate_line.at(0.0);
    // Already at the breach rate: the forecast is now (and stays raised while it holds).
    let seconds = if level >= fit.breach_rate {
        0.0
    } else if rate_line.slope > 0.0 && rate_line.tau > 0.0 {
        let sustained = line_to_now(&rates.last(SUSTAINED_WINDOWS * settings.trend_points), now)?;
        if sustained.slope <= 0.0 || sustained.tau < SUSTAINED_MIN_TAU {
            return None;
        }
        (fit.breach_rate - level) / rate_line.slope
    } else {
        return None;
    };
    if seconds > settings.horizon_secs {
        return None;
    }
    let fullness = (rate_points.len() as f64 / (2 * MIN_TREND_POINTS) as f64).min(1.0);
    let rate_confidence = if seconds == 0.0 {
        1.0
    } else {
        rate_line.tau * fullness
    };
    let trend = TrendForecast {
        line: rate_line,
        level,
        limit: fit.breach_rate,
        seconds_to_limit: seconds,
        confidence: rate_confidence.clamp(0.0, 1.0),
    };
    let why = format!(
        "mean latency against rate fits a queue nearing its capacity (latency = {:.1} ms / \
         (1 - (rate / {:.1}/s)^{}), tau {:.2} over {} points, {:.1} standard errors); with p99 \
         at {:.1}x the mean, the {:.0} ms p99 objective breaks at {:.1}/s (shapes that fit as \
         well say up to {:.1}/s); the rate is {:.1}/s and rises {:.2}/s per minute, reaching it in {:.0} s",
        fit.base_latency * 1e3,
        fit.capacity,
        fit.exponent,
        fit.tau,
        fit.line.points,
        fit.z,
        ratio,
        slo.p99_seconds * 1e3,
        fit.breach_rate,
        fit.latest_breach_rate,
        trend.level,
        trend.line.slope * 60.0,
        trend.seconds_to_limit,
    );
    let evidence = Evidence {
        series: rate_points,
        pairs,
        fit: json!({
            "kind": "queue",
            "fitted": "mean_latency",
            "formula": "latency = base / (1 - (rate / capacity)^exponent)",
            "exponent": fit.exponent,
            "p99_over_mean": ratio,
            "base_latency_s": fit.base_latency,
            "capacity_per_s": fit.capacity,
            "knee_rate_per_s": fit.knee_rate,
            "breach_rate_per_s": fit.breach_rate,
            "latest_breach_rate_per_s": fit.latest_breach_rate,
            "mean_limit_s": mean_limit,
            "tau": fit.tau,
            "z": fit.z,
            "rate_level_per_s": trend.level,
            "rate_slope_per_s2": trend.line.slope,
            "rate_tau": trend.line.tau,
            "evaluated_at": now,
        }),
    };
    Some(prediction(
        service,
        Signal::P99,
        "queueing",
        now,
        trend.seconds_to_limit,
        fit.confidence.min(trend.confidence),
        slo.p99_seconds,
        p99s.latest().map_or(0.0, |p| p.1),
        why,
        evidence,
    ))
}

/// The Theil–Sen line through `points` with x in seconds from `now`.
fn line_to_now(points: &[(f64, f64)], now: f64) -> Option<Line> {
    let shifted: Vec<(f64, f64)> = points.iter().map(|(t, v)| (t - now, *v)).collect();
    theil_sen(&shifted)
}
