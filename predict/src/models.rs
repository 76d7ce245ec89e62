//! The three models. Each answers with its fit's numbers, so that a prediction can say why.

use serde::Serialize;

use crate::fit::{median, theil_sen, Line};

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

/// Latency against throughput, fitted as a queue whose latency climbs as the rate nears its
/// capacity: `latency = base / (1 - (rate / capacity)^n)`. With `n = 1` that is M/M/1's shape;
/// a pool of `c` workers (M/M/c) stays flat longer and then climbs faster (its queueing delay
/// grows about as the utilization to the power `c` at low load), which a larger `n` follows.
/// `1/latency` is linear in `rate^n`; each of [`KNEE_EXPONENTS`] is fitted with Theil–Sen over
/// every pair and the one with the smallest relative residuals is kept, so that the curve's
/// flat part and its climb both constrain the capacity. (A line through `1/latency` against the
/// rate alone is a tangent: while the climb is young it put a 4-worker pool's capacity at
/// twice the truth, and the forecast was four times too late.)
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct KneeFit {
    /// The fit of `1/latency` against `(rate / rate_scale)^exponent`.
    pub line: Line,
    pub exponent: u32,
    /// The highest rate fitted: the fit's x unit.
    pub rate_scale: f64,
    /// Latency at no load, seconds.
    pub base_latency: f64,
    /// The rate at which latency grows without bound (requests/s).
    pub capacity: f64,
    /// The knee: the rate at which latency is twice its base.
    pub knee_rate: f64,
    /// The rate at which the fitted latency reaches the limit.
    pub breach_rate: f64,
    /// The highest breach rate of the exponents that fit about as well ([`KNEE_MISFIT_SLACK`]):
    /// how much later the breach may come.
    pub latest_breach_rate: f64,
    /// Kendall's tau of the rate against `1/latency` over every pair (negative: latency climbs
    /// with the rate), and how many standard errors it is from no association.
    pub tau: f64,
    pub z: f64,
    /// 0 to 1: `z` over [`KNEE_FULL_Z`].
    pub confidence: f64,
}

/// The exponents [`knee`] tries: 1 (one queue) to 8 (a pool of about eight workers).
pub const KNEE_EXPONENTS: [u32; 6] = [1, 2, 3, 4, 6, 8];
/// Ranges of the rate whose medians choose the exponent.
pub const KNEE_BINS: usize = 6;
/// Exponents whose misfit is within this factor of the best fit about as well.
pub const KNEE_MISFIT_SLACK: f64 = 2.0;

/// How strongly latency must climb with the rate for a queueing fit at all, and for full
/// confidence in it, in standard errors of Kendall's tau from no association. The window's
/// every pair counts, so a longer climb gives more evidence; the detector's 0.6 confidence bar
/// is then 1.8 standard errors, and the rate's own trend must hold as well (the detector's
/// `queueing`).
pub const KNEE_MIN_Z: f64 = 1.5;
pub const KNEE_FULL_Z: f64 = 3.0;

/// The z-score of Kendall's tau over `n` points under no association.
pub fn tau_z(tau: f64, n: usize) -> f64 {
    let n = n as f64;
    if n < 3.0 {
        return 0.0;
    }
    3.0 * tau * (n * (n - 1.0)).sqrt() / (2.0 * (2.0 * n + 5.0)).sqrt()
}

/// Fits [`KneeFit`] to `(rate, latency)` pairs, with `limit` the latency objective. `None` when
/// there are too few pairs, when the rates span too little to say (the 90th percentile under
/// 1.3x the 10th), when latency does not climb with the rate, or when no rate keeps the limit.
pub fn knee(pairs: &[(f64, f64)], limit: f64) -> Option<KneeFit> {
    let points: Vec<(f64, f64)> = pairs
        .iter()
        .filter(|(rate, latency)| {
            *rate > 0.0 && *latency > 0.0 && rate.is_finite() && latency.is_finite()
        })
        .map(|(rate, latency)| (*rate, 1.0 / latency))
        .collect();
    if points.len() < 2 * MIN_KNEE_POINTS || !(limit.is_finite() && limit > 0.0) {
        return None;
    }
    let mut rates: Vec<f64> = points.iter().map(|p| p.0).collect();
    rates.sort_by(f64::total_cmp);
    let at = |q: f64| rates[((rates.len() - 1) as f64 * q).round() as usize];
    if at(0.9) < 1.3 * at(0.1) {
        return None;
    }
    let rate_scale = rates[rates.len() - 1];
    // The exponent is chosen by how well each curve passes through the medians of
    // [`KNEE_BINS`] equally wide ranges of the rate: the medians hold the curve's shape with
    // the interval-to-interval noise averaged out (a misfit over the single pairs lets a steep
    // exponent fit the noise), and equal widths weigh the climb as much as a long plateau at
    // one rate.
    let low = rates[0];
    let width = (rate_scale - low) / KNEE_BINS as f64;
    let bins: Vec<(f64, f64)> = (0..KNEE_BINS)
        .filter_map(|i| {
            let from = low + width * i as f64;
            let last = i + 1 == KNEE_BINS;
            let (mut xs, mut ys): (Vec<f64>, Vec<f64>) = points
                .iter()
                .filter(|(r, _)| *r >= from && (*r < from + width || last))
                .copied()
                .unzip();
            Some((median(&mut xs)?, median(&mut ys)?))
        })
        .collect();
    let mut tau = 0.0;
    let z_of = |tau: f64| tau_z(-tau, points.len());
    // (misfit, fit) of each exponent whose curve has a capacity and keeps the limit below it.
    let mut fits: Vec<(f64, KneeFit)> = Vec::new();
    for exponent in KNEE_EXPONENTS {
        let scale = |rate: f64| (rate / rate_scale).powi(exponent as i32);
        let scaled: Vec<(f64, f64)> = points.iter().map(|(r, y)| (scale(*r), *y)).collect();
        let Some(line) = theil_sen(&scaled) else {
            continue;
        };
        // The rank correlation is the same for every exponent (x^n keeps the order): without
        // a climb, the other exponents need not be fitted.
        tau = line.tau;
        if z_of(tau) < KNEE_MIN_Z {
            return None;
        }
        // 1/latency = a + b x with x = (rate / scale)^n, b < 0: latency is unbounded at
        // x = -a/b. A limit at or under the no-load latency is kept by no rate (burn rate
        // says so).
        let target = 1.0 / limit;
        if line.slope >= 0.0 || line.intercept <= 0.0 || target >= line.intercept {
            continue;
        }
        let root = 1.0 / exponent as f64;
        let capacity = rate_scale * (-line.intercept / line.slope).powf(root);
        let breach_rate = rate_scale * ((target - line.intercept) / line.slope).powf(root);
        if !(breach_rate > 0.0 && breach_rate < capacity) {
            continue;
        }
        let misfit: f64 = bins
            .iter()
            .map(|(rate, y)| ((y - line.at(scale(*rate))) / y).powi(2))
            .sum();
        let z = z_of(line.tau);
        fits.push((
            misfit,
            KneeFit {
                line,
                exponent,
                rate_scale,
                base_latency: 1.0 / line.intercept,
                capacity,
                knee_rate: capacity * 0.5f64.powf(root),
                breach_rate,
                latest_breach_rate: breach_rate,
                tau: line.tau,
                z,
                confidence: (z / KNEE_FULL_Z).clamp(0.0, 1.0),
            },
        ));
    }
    if z_of(tau) < KNEE_MIN_Z {
        return None;
    }
    // While the climb is young the data cannot tell one queue from a pool (both fit a few
    // percent of climb): of the shapes that fit about as well as the best, the one that
    // breaks soonest is said, since a warning that comes late is the harmful error; the
    // latest of them is kept beside it.
    let best = fits.iter().map(|(m, _)| *m).min_by(f64::total_cmp)?;
    let plausible: Vec<&KneeFit> = fits
        .iter()
        .filter(|(m, _)| *m <= KNEE_MISFIT_SLACK * best + 1e-12)
        .map(|(_, fit)| fit)
        .collect();
    let latest = plausible
        .iter()
        .map(|f| f.breach_rate)
        .max_by(f64::total_cmp)?;
    let mut soonest = **plausible
        .iter()
        .min_by(|a, b| a.breach_rate.total_cmp(&b.breach_rate))?;
    soonest.latest_breach_rate = latest;
    Some(soonest)
}

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

    /// Mean sojourn time of an M/M/c queue (Erlang C), service time `service`.
    fn mmc_latency(rate: f64, workers: u32, service: f64) -> f64 {
        let load = rate * service;
        let rho = load / workers as f64;
        let mut term = 1.0;
        let mut sum = 1.0;
        for k in 1..workers {
            term *= load / k as f64;
            sum += term;
        }
        let last = term * load / workers as f64 / (1.0 - rho);
        let waiting = last / (sum + last);
        service + waiting * service / (workers as f64 * (1.0 - rho))
    }

    /// A pool of 4 workers (20 ms each, capacity 200/s) seen only from 30 % to 65 % of its
    /// capacity, where its latency has barely started to climb: the fit still places the
    /// capacity and the rate that breaks a 50 ms mean close to the truth (a line through
    /// 1/latency put them at about twice the truth).
    #[test]
    fn the_queueing_fit_finds_a_pools_capacity_before_the_climb_is_steep() {
        let pairs: Vec<(f64, f64)> = (0..36)
            .map(|i| {
                let rate = 60.0 + 2.0 * i as f64;
                (rate, mmc_latency(rate, 4, 0.020))
            })
            .collect();
        let truth = (1000..2000)
            .map(|r| r as f64 / 10.0)
            .find(|r| mmc_latency(*r, 4, 0.020) >= 0.050)
            .unwrap();
        let fit = knee(&pairs, 0.050).unwrap();
        assert!(
            (fit.capacity - 200.0).abs() < 0.15 * 200.0,
            "{fit:?} (truth 200/s)"
        );
        assert!(
            (fit.breach_rate - truth).abs() < 0.1 * truth,
            "{fit:?} (truth {truth}/s)"
        );
        assert!(fit.exponent > 1, "{fit:?}");
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
