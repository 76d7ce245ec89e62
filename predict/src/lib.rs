//! Predictive bottleneck detection, and only that: from a bounded history of each service's
//! signals (request rate, errors, latency, and its process's saturation), explainable models
//! forecast when the service will break its objective, each forecast carrying its evidence.
//!
//! - [`history`]: one ring per (service, signal), saved to a file so it survives a restart.
//! - [`models`]: a robust (Theil–Sen) trend to a limit, a queueing fit of latency against
//!   throughput whose knee the rate trend is forecast to reach, and multi-window SLO burn rate.
//! - [`detector`]: turns the models' answers into predictions raised, updated and resolved as
//!   events, with hysteresis so that one noisy sample neither raises nor resolves one.
//!
//! The crate does no I/O but the history file: the node samples the signals and serves the
//! predictions.

pub mod detector;
pub mod fit;
pub mod history;
pub mod models;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use detector::{Detector, DetectorSettings, Event, EventKind, Prediction};
pub use history::{History, Ring};

/// What one series measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Server requests per second.
    Rate,
    /// Failed share of the interval's requests, 0 to 1.
    ErrorRate,
    /// Latency quantiles of the interval's requests, seconds.
    P50,
    P99,
    /// Mean latency of the interval's requests, seconds.
    Mean,
    /// The interval's request count, its failed ones and those slower than the p99 objective
    /// (the burn rate's inputs).
    Requests,
    Errors,
    Slow,
    /// CPU used over the cgroup's `cpu.max` quota, 0 to 1 (and above in bursts).
    CpuUsage,
    /// Share of the cgroup's CPU periods that were throttled, 0 to 1.
    CpuThrottled,
    /// `memory.current` over `memory.max`, 0 to 1.
    Memory,
    /// Open file descriptors over the soft `RLIMIT_NOFILE`, 0 to 1.
    Fds,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Rate => "rate",
            Signal::ErrorRate => "error_rate",
            Signal::P50 => "p50",
            Signal::P99 => "p99",
            Signal::Mean => "mean",
            Signal::Requests => "requests",
            Signal::Errors => "errors",
            Signal::Slow => "slow",
            Signal::CpuUsage => "cpu_usage",
            Signal::CpuThrottled => "cpu_throttled",
            Signal::Memory => "memory",
            Signal::Fds => "fds",
        }
    }
}

/// Where an objective came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `slo.<service>.*` in the replicated config.
    Config,
    /// Derived from what this node observed ([`baseline_slo`]).
    Baseline,
}

/// A service's objectives, as the detector uses them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Slo {
    pub p99_seconds: f64,
    pub p99_source: Source,
    /// The failed share of requests allowed, 0 to 1.
    pub error_rate: f64,
    pub error_source: Source,
}

/// Intervals of history a baseline needs before it is trusted.
pub const BASELINE_POINTS: usize = 12;

/// Objectives derived from the history when the config sets none: the p99 objective is 4x the
/// service's quiet p99 (the 25th percentile of its interval p99s), at least 10 ms; the error
/// objective 4x its median error rate, at least 1 % and at most 50 %. `None` per field until
/// [`BASELINE_POINTS`] intervals were seen.
pub fn baseline_slo(history: &History, service: &str) -> (Option<f64>, Option<f64>) {
    let quantile = |signal: Signal, q: f64| -> Option<f64> {
        let ring = history.ring(service, signal)?;
        if ring.len() < BASELINE_POINTS {
            return None;
        }
        let mut values: Vec<f64> = ring.last(usize::MAX).into_iter().map(|p| p.1).collect();
        values.sort_by(f64::total_cmp);
        let index = ((values.len() - 1) as f64 * q).round() as usize;
        values.get(index).copied()
    };
    let p99 = quantile(Signal::P99, 0.25).map(|p| (4.0 * p).max(0.010));
    let errors = quantile(Signal::ErrorRate, 0.5).map(|e| (4.0 * e).clamp(0.01, 0.5));
    (p99, errors)
}

#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Format(String),
}

impl PredictError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        PredictError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_waits_for_enough_points_then_scales_the_quiet_p99() {
        let mut history = History::new(100, 100);
        for i in 0..BASELINE_POINTS - 1 {
            history.push("web", Signal::P99, i as f64, 0.020);
        }
        assert_eq!(baseline_slo(&history, "web"), (None, None));
        for i in 0..40 {
            // A quiet 20 ms most of the time, with spikes that must not lift the baseline.
            let p99 = if i % 5 == 0 { 0.5 } else { 0.020 };
            history.push("web", Signal::P99, 100.0 + i as f64, p99);
            history.push("web", Signal::ErrorRate, 100.0 + i as f64, 0.0);
        }
        let (p99, errors) = baseline_slo(&history, "web");
        assert!((p99.unwrap() - 0.080).abs() < 1e-9, "{p99:?}");
        assert_eq!(errors, Some(0.01));
    }
}
