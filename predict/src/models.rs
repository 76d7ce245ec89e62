//! The three models. Each answers with its fit's numbers, so that a prediction can say why.

use serde::Serialize;

use crate::fit::{theil_sen, Line};

/// Fewest points a trend is fitted on.
pub const MIN_TREND_POINTS: usize = 6;
/// Fewest (rate, latency) points a queueing fit is made from.
pub const MIN_KNEE_POINTS: usize = 8;

/// A trend forecast to reach `limit`: the line over time (x in seconds from now), where it
/// stands now, and when it crosses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TrendForecast {
    pub line: Line,
    /// The fitted level now.
    pub level: f64,
    pub limit: f64,
    pub seconds_to_limit: f64,
    /// 0 to 1: Kendall's tau of the series against time, scaled down while it holds few
    /// points.
    pub confidence: f64,
}

/// The Theil–Sen trend of `points` (unix seconds, value) forecast to reach `limit` within
/// `horizon` seconds of `now`. `None` when there are too few points, when the series does not
/// rise, when it is already at or over the limit (burn rate speaks for that), or when the
/// crossing is beyond the horizon.
pub fn trend_to_limit(
    points: &[(f64, f64)],
    now: f64,
    limit: f64,
    horizon: f64,
) -> Option<TrendForecast> {
    if points.len() < MIN_TREND_POINTS || !(limit.is_finite() && limit > 0.0) {
        return None;
    }
    let shifted: Vec<(f64, f64)> = points.iter().map(|(t, v)| (t - now, *v)).collect();
    let line = theil_sen(&shifted)?;
    let level = line.at(0.0);
    if line.slope <= 0.0 || level >= limit || line.tau <= 0.0 {
        return None;
    }
    let seconds_to_limit = (limit - level) / line.slope;
    if seconds_to_limit > horizon {
        return None;
    }
    let fullness = (points.len() as f64 / (2 * MIN_TREND_POINTS) as f64).min(1.0);
    Some(TrendForecast {
        line,
        level,
        limit,
        seconds_to_limit,
        confidence: (line.tau * fullness).clamp(0.0, 1.0),
    })
}

/// Latency against throughput, fitted as an open queue: `latency = base / (1 - rate /
/// capacity)` (M/M/1's shape, which a pool of workers follows near its saturation), i.e.
/// `1/latency` falls linearly with the rate. Fitted with Theil–Sen on `(rate, 1/latency)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KneeFit {
    /// The fit of `1/latency` against the rate.
    pub line: Line,
    /// Latency at no load, seconds.
    pub base_latency: f64,
    /// The rate at which latency grows without bound (requests/s).
    pub capacity: f64,
    /// The knee: the rate at which latency is twice its base.
    pub knee_rate: f64,
    /// The rate at which the fitted latency reaches the limit.
    pub breach_rate: f64,
    /// 0 to 1: how consistently latency rose with the rate (-tau over [`KNEE_FULL_TAU`]).
    pub confidence: f64,
}

/// Fits [`KneeFit`] to `(rate, latency)` pairs, with `limit` the latency objective. Only the
/// pairs at or above the median rate are fitted: a pool of `c` workers (M/M/c) stays flat
/// longer than one queue and then climbs faster, so the line through its low-rate points
/// would put the capacity far too high; near the current operating point it is the tangent.
/// `None` when there are too few pairs, when those rates span too little to say (the highest
/// under 1.3x the lowest), or when latency does not climb with the rate.
pub fn knee(pairs: &[(f64, f64)], limit: f64) -> Option<KneeFit> {
    let mut points: Vec<(f64, f64)> = pairs
        .iter()
        .filter(|(rate, latency)| *rate > 0.0 && *latency > 0.0 && rate.is_finite())
        .map(|(rate, latency)| (*rate, 1.0 / latency))
        .collect();
    if points.len() < 2 * MIN_KNEE_POINTS || !(limit.is_finite() && limit > 0.0) {
        return None;
    }
    let mut rates: Vec<f64> = points.iter().map(|p| p.0).collect();
    let median_rate = crate::fit::median(&mut rates)?;
    points.retain(|(rate, _)| *rate >= median_rate);
    let (low, high) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), (r, _)| {
            (lo.min(*r), hi.max(*r))
        });
    if high < 1.3 * low {
        return None;
    }
    let line = theil_sen(&points)?;
    if line.slope >= 0.0 || line.intercept <= 0.0 || line.tau > -KNEE_MIN_TAU {
        return None;
    }
    let capacity = -line.intercept / line.slope;
    let breach_rate = (1.0 / limit - line.intercept) / line.slope;
    if !(breach_rate > 0.0 && breach_rate < capacity) {
        // The limit is below the no-load latency: no rate keeps it (burn rate says so).
        return None;
    }
    Some(KneeFit {
        line,
        base_latency: 1.0 / line.intercept,
        capacity,
        knee_rate: capacity / 2.0,
        breach_rate,
        confidence: (-line.tau / KNEE_FULL_TAU).clamp(0.0, 1.0),
    })
}

/// How strongly latency must climb with the rate (Kendall's tau of the rate against
/// 1/latency, negated) for a queueing fit at all, and for full confidence in it. Over the 60
/// pairs of a 120-point window a tau of 0.25 is about 3 standard errors away from no
/// association; 0.5 leaves no doubt.
pub const KNEE_MIN_TAU: f64 = 0.25;
pub const KNEE_FULL_TAU: f64 = 0.5;

/// The share of an error budget spent per unit of time, over two windows: `1.0` spends the
/// budget exactly as fast as the objective allows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Burn {
    pub short: f64,
    pub long: f64,
    pub short_requests: f64,
    pub long_requests: f64,
}

/// Fewest requests a window needs before its burn rate means anything.
pub const MIN_BURN_REQUESTS: f64 = 20.0;

/// The burn rate of `bad` out of `requests` (both per-interval counts, unix seconds) over the
/// windows since `short_since` and `long_since`, against `budget` (the allowed bad share).
pub fn burn(
    requests: &[(f64, f64)],
    bad: &[(f64, f64)],
    short_since: f64,
    long_since: f64,
    budget: f64,
) -> Option<Burn> {
    if budget.is_nan() || budget <= 0.0 {
        return None;
    }
    let sum = |series: &[(f64, f64)], since: f64| -> f64 {
        series
            .iter()
            .filter(|(t, _)| *t >= since)
            .map(|(_, n)| n)
            .sum()
    };
    let (short_requests, long_requests) = (sum(requests, short_since), sum(requests, long_since));
    if short_requests < MIN_BURN_REQUESTS || long_requests < MIN_BURN_REQUESTS {
        return None;
    }
    Some(Burn {
        short: sum(bad, short_since) / short_requests / budget,
        long: sum(bad, long_since) / long_requests / budget,
        short_requests,
        long_requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// p99 climbing 1 ms per second from 50 ms toward a 200 ms limit: crosses in ~100 s.
    #[test]
    fn a_rising_series_is_forecast_to_cross_its_limit() {
        let points: Vec<(f64, f64)> = (0..20)
            .map(|i| (1000.0 + 5.0 * i as f64, 0.050 + 0.005 * i as f64))
            .collect();
        let now = 1095.0;
        let forecast = trend_to_limit(&points, now, 0.200, 3600.0).unwrap();
        assert!((forecast.level - 0.145).abs() < 1e-9, "{forecast:?}");
        assert!(
            (forecast.seconds_to_limit - 55.0).abs() < 1e-6,
            "{forecast:?}"
        );
        assert!(forecast.confidence > 0.99);
        // Beyond the horizon: nothing to say.
        assert!(trend_to_limit(&points, now, 0.200, 30.0).is_none());
        // Already over the limit: burn rate's business, not a forecast.
        assert!(trend_to_limit(&points, now, 0.100, 3600.0).is_none());
    }

    #[test]
    fn flat_or_falling_series_are_not_forecast() {
        let flat: Vec<(f64, f64)> = (0..30)
            .map(|i| (i as f64, 0.05 + if i % 3 == 0 { 0.01 } else { 0.0 }))
            .collect();
        assert!(trend_to_limit(&flat, 30.0, 0.2, 1e9).is_none());
        let falling: Vec<(f64, f64)> = (0..30).map(|i| (i as f64, 1.0 - 0.01 * i as f64)).collect();
        assert!(trend_to_limit(&falling, 30.0, 2.0, 1e9).is_none());
    }

    /// Latency of an M/M/1 queue with a 10 ms service time (capacity 100/s), sampled as the
    /// rate rises from 20 to 77.5/s: the fit finds the capacity and the rate at which a 100 ms
    /// limit breaks (90/s).
    #[test]
    fn the_queueing_fit_finds_capacity_and_breach_rate() {
        let pairs: Vec<(f64, f64)> = (0..24)
            .map(|i| {
                let rate = 20.0 + 2.5 * i as f64;
                (rate, 0.010 / (1.0 - rate / 100.0))
            })
            .collect();
        let fit = knee(&pairs, 0.100).unwrap();
        assert!((fit.capacity - 100.0).abs() < 1e-6, "{fit:?}");
        assert!((fit.base_latency - 0.010).abs() < 1e-9, "{fit:?}");
        assert!((fit.breach_rate - 90.0).abs() < 1e-6, "{fit:?}");
        assert!(fit.confidence > 0.99);
    }

    #[test]
    fn no_knee_without_a_rate_spread_or_a_latency_climb() {
        // Steady rate: the spread is too small to say.
        let steady: Vec<(f64, f64)> = (0..20)
            .map(|i| (50.0 + (i % 3) as f64, 0.01 + 0.001 * (i % 2) as f64))
            .collect();
        assert!(knee(&steady, 0.1).is_none());
        // Rising rate, flat latency: no climb, no knee.
        let flat: Vec<(f64, f64)> = (0..20)
            .map(|i| (10.0 + 5.0 * i as f64, 0.01 + 0.0005 * (i % 2) as f64))
            .collect();
        assert!(knee(&flat, 0.1).is_none());
    }

    #[test]
    fn burn_rate_over_two_windows() {
        // 100 requests per 5 s interval for 5 minutes, 1 % errors, then 10 % for the last 30 s.
        let requests: Vec<(f64, f64)> = (0..60).map(|i| (5.0 * i as f64, 100.0)).collect();
        let errors: Vec<(f64, f64)> = (0..60)
            .map(|i| (5.0 * i as f64, if i >= 54 { 10.0 } else { 1.0 }))
            .collect();
        let burn = burn(&requests, &errors, 270.0, 0.0, 0.01).unwrap();
        assert!((burn.short - 10.0).abs() < 1e-9, "{burn:?}");
        assert!((burn.long - 1.9).abs() < 1e-9, "{burn:?}");
        // Too little traffic: no verdict.
        let few: Vec<(f64, f64)> = vec![(0.0, 3.0), (5.0, 3.0)];
        assert!(super::burn(&few, &few, 0.0, 0.0, 0.01).is_none());
    }
}
