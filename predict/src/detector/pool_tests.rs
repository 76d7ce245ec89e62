//! The detector on a simulated pool of 4 workers (each request 14 ms + an exponential 6 ms,
//! capacity 200/s: the harness's `pool_app.py`) under the harness's short ramp, at a 1 s
//! interval: the same scenario as `node/tests/predict.rs` without the machine's noise, so that
//! what the model does with a pool's late, steep climb is checked on every run.

use super::*;
use crate::Source;

/// splitmix64, uniform in [0, 1).
struct Uniform(u64);

impl Uniform {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn exponential(&mut self, mean: f64) -> f64 {
        -(1.0 - self.next()).ln() * mean
    }
}

const WORKERS: usize = 4;
const SLO: f64 = 0.100;
const T0: f64 = 1_000_000.0;

/// (arrival, latency) of each request of an open-loop Poisson load at `rate(t)` for `seconds`
/// on the pool, first come first served.
fn simulate(seed: u64, seconds: f64, rate: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
    let mut random = Uniform(seed);
    let mut free = [0.0f64; WORKERS];
    let mut out = Vec::new();
    let mut t = 0.0;
    while t < seconds {
        let worker = (0..WORKERS)
            .min_by(|a, b| free[*a].total_cmp(&free[*b]))
            .unwrap();
        let done = free[worker].max(t) + 0.014 + random.exponential(0.006);
        free[worker] = done;
        out.push((t, done - t));
        t += random.exponential(1.0 / rate(t).max(0.1));
    }
    out
}

/// The requests' intervals by the second they finished in, as the probes see them, into the
/// history; the detector evaluated after each. Returns every event and the breach as the
/// harness defines it (the end of the first 5 s window of arrivals whose p99 is over the
/// objective, the next one too).
fn run(requests: &[(f64, f64)], seconds: f64) -> (Vec<Event>, Option<f64>) {
    let mut by_second: Vec<Vec<f64>> = vec![Vec::new(); seconds as usize + 60];
    for (arrival, latency) in requests {
        if let Some(slot) = by_second.get_mut((arrival + latency) as usize) {
            slot.push(*latency);
        }
    }
    let slos = BTreeMap::from([(
        "pool".to_string(),
        Slo {
            p99_seconds: SLO,
            p99_source: Source::Config,
            error_rate: 0.01,
            error_source: Source::Config,
        },
    )]);
    let mut history = History::new(720, 100);
    let mut detector = Detector::new(DetectorSettings {
        resolution_secs: 1.0,
        ..DetectorSettings::default()
    });
    let mut events = Vec::new();
    for (second, latencies) in by_second.iter_mut().enumerate() {
        let at = T0 + second as f64 + 1.0;
        let count = latencies.len() as f64;
        latencies.sort_by(f64::total_cmp);
        history.push("pool", Signal::Rate, at, count);
        if latencies.len() >= 10 {
            let quantile = |q: f64| latencies[((count * q) as usize).min(latencies.len() - 1)];
            let slow = latencies.iter().filter(|l| **l > SLO).count() as f64;
            for (signal, value) in [
                (Signal::Requests, count),
                (Signal::Errors, 0.0),
                (Signal::ErrorRate, 0.0),
                (Signal::Slow, slow),
                (Signal::P50, quantile(0.5)),
                (Signal::P99, quantile(0.99)),
                (Signal::Mean, latencies.iter().sum::<f64>() / count),
            ] {
                history.push("pool", signal, at, value);
            }
        }
        events.extend(detector.evaluate(&history, &slos, at));
    }
    let mut windows: Vec<Vec<f64>> = Vec::new();
    for (arrival, latency) in requests {
        let index = (arrival / 5.0) as usize;
        if windows.len() <= index {
            windows.resize(index + 1, Vec::new());
        }
        windows[index].push(*latency);
    }
    let over: Vec<bool> = windows
        .iter_mut()
        .map(|w| {
            w.sort_by(f64::total_cmp);
            w.len() >= 20 && w[(w.len() as f64 * 0.99) as usize - 1] > SLO
        })
        .collect();
    let breach = (0..over.len().saturating_sub(1))
        .find(|&i| over[i] && over[i + 1])
        .map(|i| T0 + 5.0 * (i + 1) as f64);
    (events, breach)
}

/// 15 s at 60/s, then a linear rise to 240/s over 80 s (the harness's short version). Over
/// several seeds: every ramp is forecast before its breach, the median lead is at least 30 s,
/// and no forecast says a breach is more than 3x further than it was (the worst of these seeds: 47 s for 19 s). Lead times of this
/// model on these seeds, for the record: 10 to 48 s.
#[test]
fn a_pools_ramp_is_forecast_before_its_breach() {
    let mut leads = Vec::new();
    for seed in 1..=6 {
        let requests = simulate(seed, 95.0, |t| {
            if t < 15.0 {
                60.0
            } else {
                60.0 + 180.0 * (t - 15.0) / 80.0
            }
        });
        let (events, breach) = run(&requests, 95.0);
        let breach = breach.expect("the ramp breaks the objective");
        let forecast = events
            .iter()
            .find(|e| e.kind == EventKind::Raised && e.prediction.model != "burn_rate")
            .unwrap_or_else(|| panic!("seed {seed}: no forecast"));
        let lead = breach - forecast.at;
        let said = forecast.prediction.seconds_to_breach;
        eprintln!(
            "seed {seed}: lead {lead} s, said {said:.0} s: {}",
            forecast.prediction.why
        );
        assert!(lead > 0.0, "seed {seed}: raised {lead} s after the breach");
        assert!(
            said < 3.0 * lead,
            "seed {seed}: said {said:.0} s for a breach {lead} s away: {}",
            forecast.prediction.why
        );
        leads.push(lead);
    }
    leads.sort_by(f64::total_cmp);
    let median = (leads[2] + leads[3]) / 2.0;
    assert!(median >= 30.0, "median lead {median} s: {leads:?}");
}

/// Five minutes each of steady load at half the capacity and of bursts (40/s and 130/s in
/// turns of 30 s, to 65 %) at a 1 s interval: nothing is raised. The bursts are the case the
/// rate's sustained trend is there for: each step up looks like a steep trend to the short
/// window.
#[test]
fn steady_and_bursty_loads_on_a_pool_raise_nothing() {
    let steady = simulate(11, 300.0, |_| 100.0);
    let bursty = simulate(12, 300.0, |t| {
        if ((t / 30.0) as u64).is_multiple_of(2) {
            40.0
        } else {
            130.0
        }
    });
    for (name, requests) in [("steady", steady), ("bursty", bursty)] {
        let (events, breach) = run(&requests, 300.0);
        assert_eq!(breach, None, "{name} broke the objective");
        let raised: Vec<&Event> = events
            .iter()
            .filter(|e| e.kind == EventKind::Raised)
            .collect();
        assert!(
            raised.is_empty(),
            "{name}: raised {}",
            raised[0].prediction.why
        );
    }
}
