//! Prometheus text exposition of the node's own health.

use std::fmt::Write;

use apiary_consensus::{ClusterStatus, Role};

/// Every metric name this node exports, for dashboards and the test that checks them.
pub const METRIC_NAMES: &[&str] = &[
    "apiary_raft_term",
    "apiary_raft_is_leader",
    "apiary_raft_commit_index",
    "apiary_raft_last_log_index",
    "apiary_raft_last_applied_index",
    "apiary_raft_apply_lag",
    "apiary_config_version",
    "apiary_cluster_voters",
    "apiary_cluster_learners",
    "apiary_peers_up",
    "apiary_peers_total",
];

pub fn render(node: &str, status: &ClusterStatus) -> String {
    let label = format!("node=\"{}\"", node.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{{{label}}} {value}");
    };
    let voters = status.members.iter().filter(|m| m.role == Role::Voter).count() as u64;
    let others = status.members.iter().filter(|m| m.id != status.node_id);
    let peers_total = others.clone().count() as u64;
    let peers_up = others.filter(|m| m.reachable).count() as u64;
    gauge("apiary_raft_term", "Current Raft term.", status.term);
    gauge(
        "apiary_raft_is_leader",
        "1 if this node is the Raft leader.",
        u64::from(status.leader_id == Some(status.node_id)),
    );
    gauge("apiary_raft_commit_index", "Highest log index known committed.", status.commit_index);
    gauge("apiary_raft_last_log_index", "Highest log index stored on this node.", status.last_log_index);
    gauge("apiary_raft_last_applied_index", "Highest log index applied to the config state.", status.last_applied_index);
    gauge(
        "apiary_raft_apply_lag",
        "Log entries stored but not yet applied on this node.",
        status.last_log_index.saturating_sub(status.last_applied_index),
    );
    gauge("apiary_config_version", "Config version applied on this node.", status.committed_version);
    gauge("apiary_cluster_voters", "Voting members.", voters);
    gauge("apiary_cluster_learners", "Non-voting members.", status.members.len() as u64 - voters);
    gauge("apiary_peers_up", "Other members that answered a ping within 3 s.", peers_up);
    gauge("apiary_peers_total", "Other members.", peers_total);
    out
}
