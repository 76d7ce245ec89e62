//! The node's probes: loaded at start, fed the replicated config on every committed change.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use apiary_config::ClusterConfig;
use apiary_consensus::Consensus;
use apiary_probes::{spawn_reader, KeepRule, Observer, ProbeReport, ProbeSet, ProbeState, Scope};

pub struct ProbeRuntime {
    set: Mutex<ProbeSet>,
    pub observer: Arc<Observer>,
    /// The rate cooperative tuning asks for; the maps get min(configured, tuned).
    tuned_rate: Mutex<Option<f64>>,
    state: Arc<apiary_consensus::ConfigState>,
}

/// The config the maps get: the replicated one with the HTTP-level probes' sampling lowered to
/// the tuned rate.
fn effective(config: &ClusterConfig, tuned: Option<f64>) -> ClusterConfig {
    let mut config = config.clone();
    if let Some(tuned) = tuned {
        for probe in [&mut config.probes.http, &mut config.probes.tls] {
            probe.sample_rate = probe.sample_rate.min(tuned);
        }
    }
    config
}

/// Tells the observer which probes going from `before` to `after` switches off: the streams of
/// the connections they followed get holes (the observer ignores the probes that follow none).
fn note_switched_off(observer: &Observer, before: &ClusterConfig, after: &ClusterConfig) {
    for ((name, was), (_, is)) in before.probes.iter().zip(after.probes.iter()) {
        if was.enabled && !is.enabled {
            observer.note_switched_off(name);
        }
    }
    // The tls probe carries HTTP/2's TLS connections.
    if before.probes.tls.enabled && !after.probes.tls.enabled {
        observer.note_switched_off("http2");
    }
}

impl ProbeRuntime {
    /// Loads and attaches the probes, applies the current config, and keeps applying it as new
    /// versions commit. Map writes only: programs stay loaded and events keep flowing.
    pub fn start(
        scopes: &[Scope],
        libssl: Option<&std::path::Path>,
        ring_bytes: u32,
        propagate_traces: bool,
        consensus: &Arc<Consensus>,
    ) -> Result<Arc<Self>> {
        let mut set = ProbeSet::load_with_libssl(scopes, libssl, ring_bytes)?;
        if propagate_traces {
            match set.propagate_traces() {
                Ok(()) => tracing::info!("trace context goes to peers' nodes in TCP header options"),
                Err(e) => tracing::warn!(
                    "no trace context across nodes (requests from other nodes start new traces here): {e}"
                ),
            }
        }
        let state = consensus.config_state().clone();
        let mut versions = state.subscribe();
        set.apply(state.history().current())
            .context("applying the config to the probes")?;
        let observer = Arc::new(Observer::default());
        observer.set_keep_rule(keep_rule(state.history().current()));
        observer.set_kept_query_params(state.history().current().privacy.keep_query_params.clone());
        observer.set_keep_redis_keys(state.history().current().privacy.keep_redis_keys);
        let events = set
            .take_events()
            .context("the probes' ring buffer was already taken")?;
        spawn_reader(events, observer.clone()).context("reading the probes' ring buffer")?;
        let runtime = Arc::new(ProbeRuntime {
            set: Mutex::new(set),
            observer,
            tuned_rate: Mutex::new(None),
            state: state.clone(),
        });
        let weak = Arc::downgrade(&runtime);
        let mut applied_last = state.history().current().clone();
        tokio::spawn(async move {
            while versions.changed().await.is_ok() {
                let Some(runtime) = weak.upgrade() else {
                    return;
                };
                let (version, config) = {
                    let history = state.history();
                    (history.version(), history.current().clone())
                };
                runtime.observer.set_keep_rule(keep_rule(&config));
                runtime
                    .observer
                    .set_kept_query_params(config.privacy.keep_query_params.clone());
                runtime
                    .observer
                    .set_keep_redis_keys(config.privacy.keep_redis_keys);
                note_switched_off(&runtime.observer, &applied_last, &config);
                applied_last = config.clone();
                let tuned = *runtime.tuned_rate.lock().unwrap_or_else(|p| p.into_inner());
                let applied = runtime.lock().apply(&effective(&config, tuned));
                match applied {
                    Ok(()) => tracing::info!(version, "probe config applied"),
                    Err(e) => tracing::error!(version, "probe config not applied: {e}"),
                }
            }
        });
        Ok(runtime)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProbeSet> {
        self.set.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn reports(&self) -> Vec<ProbeReport> {
        let mut reports = self.lock().reports();
        for report in &mut reports {
            report.unparsed = self.observer.unparsed(report.name);
        }
        reports
    }

    /// Sets the rate cooperative tuning chose (never above the configured one) and writes it
    /// into the maps at once.
    pub fn set_tuned_rate(&self, rate: f64) -> Result<()> {
        *self.tuned_rate.lock().unwrap_or_else(|p| p.into_inner()) = Some(rate);
        let config = self.state.history().current().clone();
        self.lock()
            .apply(&effective(&config, Some(rate)))
            .context("applying the tuned sampling rate")
    }
}

/// The replicated `budget.always_keep` as the observer's rule.
fn keep_rule(config: &ClusterConfig) -> KeepRule {
    let keep = &config.budget.always_keep;
    KeepRule {
        errors: keep.errors,
        slower_than_ns: keep.slower_than_ms.saturating_mul(1_000_000),
        max_per_second: keep.max_per_second,
    }
}

/// `/v1/probes` when the node runs without probes.
pub fn reports_without_probes(reason: &str) -> Vec<ProbeReport> {
    apiary_config::PROBE_NAMES
        .into_iter()
        .map(|name| ProbeReport {
            name,
            state: ProbeState::Disabled,
            reason: Some(reason.to_string()),
            sample_rate: 0.0,
            runs: 0,
            run_time_ns: 0,
            ns_per_run: 0.0,
            offered: 0,
            events: 0,
            lost: 0,
            sampled_out: 0,
            filtered: 0,
            counted: 0,
            unparsed: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use apiary_pipeline::transforms::red::DURATION_BOUNDS_SECONDS;
    use apiary_probes::abi::{RED_BOUNDS_NS, RED_BUCKETS};

    /// The kernel counts sampled-out requests into its own histogram (bpf/red.h), which RED
    /// adds bucket by bucket: the bounds must be the same.
    #[test]
    fn the_kernel_histogram_has_the_red_bounds() {
        assert_eq!(RED_BUCKETS, DURATION_BOUNDS_SECONDS.len() + 1);
        for (ns, seconds) in RED_BOUNDS_NS.iter().zip(DURATION_BOUNDS_SECONDS) {
            assert_eq!(*ns, (seconds * 1e9).round() as u64);
            // The kernel compares integer ns, userspace ns / 1e9 in f64: the same at the bound.
            assert!((*ns as f64 / 1e9) <= seconds && ((*ns + 1) as f64 / 1e9) > seconds);
        }
    }
}
