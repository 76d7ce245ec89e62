//! The node's probes: loaded at start, fed the replicated config on every committed change.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use apiary_consensus::Consensus;
use apiary_probes::{spawn_reader, Observer, ProbeReport, ProbeSet, ProbeState, Scope};

pub struct ProbeRuntime {
    set: Mutex<ProbeSet>,
    pub observer: Arc<Observer>,
}

impl ProbeRuntime {
    /// Loads and attaches the probes, applies the current config, and keeps applying it as new
    /// versions commit. Map writes only: programs stay loaded and events keep flowing.
    pub fn start(
        scopes: &[Scope],
        libssl: Option<&std::path::Path>,
        consensus: &Arc<Consensus>,
    ) -> Result<Arc<Self>> {
        let mut set = ProbeSet::load_with_libssl(scopes, libssl)?;
        let state = consensus.config_state().clone();
        let mut versions = state.subscribe();
        set.apply(state.history().current())
            .context("applying the config to the probes")?;
        let observer = Arc::new(Observer::default());
        let events = set
            .take_events()
            .context("the probes' ring buffer was already taken")?;
        spawn_reader(events, observer.clone()).context("reading the probes' ring buffer")?;
        let runtime = Arc::new(ProbeRuntime {
            set: Mutex::new(set),
            observer,
        });
        let weak = Arc::downgrade(&runtime);
        tokio::spawn(async move {
            while versions.changed().await.is_ok() {
                let Some(runtime) = weak.upgrade() else {
                    return;
                };
                let (version, config) = {
                    let history = state.history();
                    (history.version(), history.current().clone())
                };
                let applied = runtime.lock().apply(&config);
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
        self.lock().reports()
    }
}

/// `/v1/probes` when the node runs without probes.
pub fn reports_without_probes(reason: &str) -> Vec<ProbeReport> {
    ["http", "tls", "tcp", "process"]
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
        })
        .collect()
}
