//! Cooperative probe intensity on a node: once a second, measure this node's load, gossip it to
//! the other members over QUIC, run the shared allocation over the fresh reports, and write the
//! resulting sampling rate into this node's BPF maps.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apiary_consensus::Consensus;
use apiary_tuning::{allocate, Allocation, Budget, DemandMeter, LoadReport, RateController};
use apiary_wire::{Message, Service};
use serde::Serialize;

use super::probes::ProbeRuntime;

/// A report older than this counts as gone.
pub const FRESH: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_secs(1);
const DECISIONS_KEPT: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct RateChange {
    pub at_unix_ms: u64,
    pub from: f64,
    pub to: f64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    #[serde(flatten)]
    pub report: LoadReport,
    pub age_ms: u64,
    pub fresh: bool,
}

/// `GET /v1/intensity`.
#[derive(Debug, Clone, Serialize)]
pub struct IntensityStatus {
    pub node: u64,
    pub name: String,
    pub configured_rate: f64,
    pub rate: f64,
    pub budget_export_events_per_second: u64,
    pub budget_cpu_percent_per_node: f64,
    /// `cooperative` (shares from the fresh view), `safe-share` (too few fresh reports: an
    /// equal share of the budget), or `off` (no probes).
    pub mode: &'static str,
    /// Age of the oldest fresh report in the view.
    pub view_age_ms: u64,
    pub view: Vec<PeerView>,
    pub allocation: Option<Allocation>,
    pub decisions: Vec<RateChange>,
    pub kept_by_rule: u64,
    pub kept_over_cap: u64,
    /// This node's CPU in the last second, against its budget.
    pub cpu: CpuUse,
}

/// Where this node's CPU goes, in % of one core over the last second, and what sampling can do
/// about it: the probes' kernel time and the quiet agent are paid whatever the rate.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuUse {
    /// The agent process plus the probes' kernel time.
    pub percent: f64,
    /// The probes' kernel time (BPF run time), paid per request whatever the sampling.
    pub kernel_percent: f64,
    /// The agent's lowest CPU of the last minute: its cost with nothing to do.
    pub quiet_percent: f64,
    pub over_budget: bool,
    /// Over budget with no CPU cap on the spans this round: the kernel time and quiet agent
    /// alone exceed the budget, or what a lower rate would save is within the measurement's
    /// noise. Sampling is not what brings the node under (more nodes, fewer probes or filters
    /// can).
    pub beyond_sampling: bool,
}

impl CpuUse {
    /// `capped`: the node caps its spans for CPU this round (see `beyond_sampling`).
    fn of(
        budget_percent: f64,
        kernel_percent: f64,
        agent_percent: f64,
        quiet_percent: f64,
        capped: bool,
    ) -> Self {
        let percent = kernel_percent + agent_percent;
        let over_budget = percent > budget_percent;
        CpuUse {
            percent,
            kernel_percent,
            quiet_percent,
            over_budget,
            beyond_sampling: over_budget && !capped,
        }
    }
}

#[derive(Clone)]
struct Counters {
    at: Instant,
    requests: u64,
    exported: u64,
    /// Probe spans the export shed because a destination's buffer was full.
    shed: u64,
    bpf_ns: u64,
    cpu_s: f64,
}

struct State {
    controller: RateController,
    demand: DemandMeter,
    /// The agent's CPU % of the last rounds, for its quiet floor.
    agent_history: VecDeque<f64>,
    last: Option<Counters>,
    allocation: Option<Allocation>,
    mode: &'static str,
    decisions: VecDeque<RateChange>,
    cpu: CpuUse,
}

pub struct Intensity {
    node: u64,
    name: String,
    consensus: Arc<Consensus>,
    probes: Option<Arc<ProbeRuntime>>,
    /// The export's count of probe spans shed for lack of buffer room (see `round`).
    export_shed: Arc<AtomicU64>,
    reports: Mutex<HashMap<u64, (LoadReport, Instant)>>,
    state: Mutex<State>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Intensity {
    pub fn start(
        node: u64,
        name: String,
        consensus: Arc<Consensus>,
        probes: Option<Arc<ProbeRuntime>>,
        export_shed: Arc<AtomicU64>,
    ) -> Arc<Self> {
        let configured = consensus
            .config_state()
            .history()
            .current()
            .probes
            .http
            .sample_rate;
        let intensity = Arc::new(Intensity {
            node,
            name,
            consensus,
            probes,
            export_shed,
            reports: Mutex::new(HashMap::new()),
            state: Mutex::new(State {
                controller: RateController::new(configured),
                demand: DemandMeter::default(),
                agent_history: VecDeque::new(),
                last: None,
                allocation: None,
                mode: "cooperative",
                decisions: VecDeque::new(),
                cpu: CpuUse::default(),
            }),
        });
        let weak = Arc::downgrade(&intensity);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(intensity) = weak.upgrade() else {
                    return;
                };
                intensity.round();
            }
        });
        intensity
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A peer's report, from the QUIC service.
    /// A load report from member `sender`, which may report only its own load.
    pub fn receive(&self, sender: u64, payload: &[u8]) -> Message {
        match serde_json::from_slice::<LoadReport>(payload) {
            Ok(report) if report.node != sender => Message::Refused {
                reason: format!(
                    "a load report for node {} from node {sender}: a node reports only its own",
                    report.node
                ),
            },
            Ok(report) if report.node != self.node => {
                self.reports
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(report.node, (report, Instant::now()));
                Message::Response {
                    payload: b"null".to_vec(),
                }
            }
            Ok(_) => Message::Refused {
                reason: "a load report from this node's own id: two nodes share an identity?"
                    .into(),
            },
            Err(e) => Message::Refused {
                reason: format!("malformed load report: {e}"),
            },
        }
    }

    /// One second of tuning: measure, share, decide, apply.
    fn round(self: &Arc<Self>) {
        let Some(probes) = &self.probes else {
            self.lock().mode = "off";
            return;
        };
        let config = self.consensus.config_state().history().current().clone();
        let configured = config.probes.http.sample_rate;
        let budget = &config.budget;
        let now = Counters {
            at: Instant::now(),
            requests: probes.observer.requests_total.load(Ordering::Relaxed),
            exported: probes.observer.spans_total.load(Ordering::Relaxed),
            shed: self.export_shed.load(Ordering::Relaxed),
            bpf_ns: probes.reports().iter().map(|r| r.run_time_ns).sum(),
            cpu_s: apiary_tuning::own_cpu_seconds(),
        };
        let mut state = self.lock();
        let Some(last) = state.last.replace(now.clone()) else {
            return;
        };
        let seconds = now.at.duration_since(last.at).as_secs_f64().max(1e-3);
        let seen = now.requests.saturating_sub(last.requests) as f64;
        let demand = state.demand.observe(seen, seconds);
        let exported = now.exported.saturating_sub(last.exported) as f64 / seconds;
        let bpf_percent = now.bpf_ns.saturating_sub(last.bpf_ns) as f64 / 1e9 / seconds * 100.0;
        let agent_percent = (now.cpu_s - last.cpu_s).max(0.0) / seconds * 100.0;
        let cpu_percent = bpf_percent + agent_percent;
        // The agent's CPU when quiet (the lowest of the last minute) is not reducible by
        // sampling, nor is the probes' kernel time (paid per request whatever the rate). Over
        // its CPU budget, a node caps its exported spans in proportion to the rest; when the
        // fixed part alone exceeds the budget, sampling cannot help and there is no cap.
        state.agent_history.push_back(agent_percent);
        if state.agent_history.len() > 60 {
            state.agent_history.pop_front();
        }
        let floor = state
            .agent_history
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let reducible = (agent_percent - floor).max(0.0);
        let allowed = budget.cpu_percent_per_node - bpf_percent - floor;
        // Scaled from the full demand, not from what is exported now: where the agent's cost
        // does not shrink with the rate, this settles instead of ratcheting down to the floor.
        // Under a point of reducible CPU is measurement noise, not a reason to drop spans.
        let cpu_cap = (cpu_percent > budget.cpu_percent_per_node
            && allowed > 0.0
            && reducible > allowed.max(1.0)
            && demand > 0.0)
            .then(|| demand * configured * allowed / reducible);
        state.cpu = CpuUse::of(
            budget.cpu_percent_per_node,
            bpf_percent,
            agent_percent,
            floor,
            cpu_cap.is_some(),
        );
        // Spans the destinations could not take (their buffers full) were shed: cap this
        // node's exported spans at what got through, so that sampling sheds instead, evenly,
        // and the budget goes to the nodes whose spans are kept.
        let shed = now.shed.saturating_sub(last.shed) as f64 / seconds;
        let export_cap = (shed > 0.0).then(|| (exported - shed).max(0.0));
        let cap = match (cpu_cap, export_cap) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let rate = state.controller.rate();
        let own = LoadReport {
            node: self.node,
            name: self.name.clone(),
            demand,
            cpu_cap: cap,
            cpu_percent,
            configured_rate: configured,
            rate,
            exported,
        };
        self.consensus.broadcast(Service::LoadReport, &own);

        let members = self.consensus.status().members.len().max(1);
        let mut view: Vec<LoadReport> = {
            let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
            reports.retain(|_, (_, at)| at.elapsed() < FRESH * 10);
            reports
                .values()
                .filter(|(_, at)| at.elapsed() < FRESH)
                .map(|(r, _)| r.clone())
                .collect()
        };
        view.push(own);
        let total = Budget {
            export_events_per_second: budget.export_events_per_second as f64,
        };
        // Without fresh reports from a majority, this node may be cut off: it takes an equal
        // share of the budget instead of trusting a partial view.
        let (target, reason, mode) = if members > 1 && view.len() * 2 <= members {
            let share = total.export_events_per_second / members as f64;
            let target = if demand > 0.0 {
                (share / demand).min(configured)
            } else {
                configured
            };
            state.allocation = None;
            (
                target,
                format!(
                    "safe share: {} of {members} members reported recently, {share:.0} spans/s",
                    view.len()
                ),
                "safe-share",
            )
        } else {
            let allocation = allocate(&view, total);
            let (target, reason) = allocation
                .of(self.node)
                .map(|d| (d.rate, d.reason.clone()))
                .unwrap_or((configured, "not in the view".into()));
            state.allocation = Some(allocation);
            (target, reason, "cooperative")
        };
        state.mode = mode;
        let (next, changed) = state.controller.step(target, configured);
        if changed {
            if let Err(e) = probes.set_tuned_rate(next) {
                tracing::error!("cannot apply the tuned sampling rate: {e:#}");
                return;
            }
            tracing::info!(from = rate, to = next, "sampling rate tuned: {reason}");
            state.decisions.push_back(RateChange {
                at_unix_ms: unix_ms(),
                from: rate,
                to: next,
                reason,
            });
            if state.decisions.len() > DECISIONS_KEPT {
                state.decisions.pop_front();
            }
        }
    }

    pub fn status(&self) -> IntensityStatus {
        let config = self.consensus.config_state().history().current().clone();
        let state = self.lock();
        let reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        let mut view: Vec<PeerView> = reports
            .values()
            .map(|(report, at)| PeerView {
                report: report.clone(),
                age_ms: at.elapsed().as_millis() as u64,
                fresh: at.elapsed() < FRESH,
            })
            .collect();
        view.sort_by_key(|v| v.report.node);
        let observer = self.probes.as_ref().map(|p| &p.observer);
        IntensityStatus {
            node: self.node,
            name: self.name.clone(),
            configured_rate: config.probes.http.sample_rate,
            rate: state.controller.rate(),
            budget_export_events_per_second: config.budget.export_events_per_second,
            budget_cpu_percent_per_node: config.budget.cpu_percent_per_node,
            mode: state.mode,
            view_age_ms: view
                .iter()
                .filter(|v| v.fresh)
                .map(|v| v.age_ms)
                .max()
                .unwrap_or(0),
            view,
            allocation: state.allocation.clone(),
            decisions: state.decisions.iter().rev().cloned().collect(),
            kept_by_rule: observer.map_or(0, |o| o.kept_by_rule.load(Ordering::Relaxed)),
            kept_over_cap: observer.map_or(0, |o| o.kept_over_cap.load(Ordering::Relaxed)),
            cpu: state.cpu.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CpuUse;

    #[test]
    fn cpu_beyond_sampling_when_over_budget_and_not_capped() {
        // Over budget and no cap (e.g. 1.5 % kernel time + 0.6 % quiet agent > 2 %).
        let fixed = CpuUse::of(2.0, 1.5, 1.0, 0.6, false);
        assert!(fixed.over_budget && fixed.beyond_sampling);
        assert!((fixed.percent - 2.5).abs() < 1e-9);
        // Over budget and capped: a lower rate is what brings it down.
        let reducible = CpuUse::of(2.0, 0.5, 3.0, 0.3, true);
        assert!(reducible.over_budget && !reducible.beyond_sampling);
        let under = CpuUse::of(2.0, 0.5, 1.0, 0.3, false);
        assert!(!under.over_budget && !under.beyond_sampling);
    }
}
