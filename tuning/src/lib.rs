//! Cooperative probe intensity, decided by every node alone over the same view.
//!
//! Each node measures its load once a second (demand: requests/s its probes see before
//! sampling; cost: CPU of the probes and pipeline) and shares a [`LoadReport`] with its peers by
//! gossip. Every node runs the same deterministic [`allocate`] over the reports it holds, so the
//! nodes agree on everyone's share of the cluster's export budget without a coordinator; each
//! turns its own share into a sampling rate through a damped [`RateController`].
//!
//! Load reports are not in the Raft log: they change every second, are only useful while fresh,
//! and must keep flowing when there is no quorum (see docs/architecture.md).

mod allocate;
mod controller;
mod cpu;
mod demand;

pub use allocate::{allocate, Allocation, Budget, Decision};
pub use controller::RateController;
pub use cpu::{own_cpu_seconds, process_cpu_seconds};
pub use demand::DemandMeter;

use serde::{Deserialize, Serialize};

/// What one node tells the others each second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub node: u64,
    pub name: String,
    /// Requests per second the probes saw, before sampling (smoothed over rounds: see
    /// [`DemandMeter`]).
    pub demand: f64,
    /// Exported spans per second this node could afford within its CPU budget (from its own
    /// measured cost per span); `None` when it has not measured enough to say.
    pub cpu_cap: Option<f64>,
    /// CPU of probes (BPF run time) and the agent, in percent of one core.
    pub cpu_percent: f64,
    /// The sampling rate the operator configured (the ceiling).
    pub configured_rate: f64,
    /// The rate the node runs at now.
    pub rate: f64,
    /// Spans per second it exported.
    pub exported: f64,
}
