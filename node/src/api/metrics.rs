//! Prometheus text exposition of the node's own health.

use std::fmt::Write;

use apiary_pipeline::prometheus::escape_label_value;

use apiary_consensus::{ClusterStatus, Role};
use apiary_probes::{Observer, ProbeReport, ProbeState};

use crate::agent::export::{DestinationStatus, Export};

/// Every metric name of the node's health, in output order; the unit tests hold the exporter to
/// this list (and `tests/dashboards.rs` holds deploy/grafana to what a running node exports).
#[cfg_attr(not(test), allow(dead_code))]
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
    "apiary_storage_slowest_flush_ms",
];

fn node_label(node: &str) -> String {
    format!("node=\"{}\"", escape_label_value(node))
}

/// Probe counters, one sample per probe: the same numbers as `GET /v1/probes`.
#[cfg_attr(not(test), allow(dead_code))]
pub const PROBE_METRIC_NAMES: &[&str] = &[
    "apiary_probe_attached",
    "apiary_probe_runs_total",
    "apiary_probe_run_time_ns_total",
    "apiary_probe_offered_total",
    "apiary_probe_events_total",
    "apiary_probe_lost_total",
    "apiary_probe_sampled_out_total",
    "apiary_probe_filtered_total",
    "apiary_probe_sample_rate",
];

type ProbeValue = fn(&ProbeReport) -> String;

pub fn render_probes(node: &str, reports: &[ProbeReport], observer: Option<&Observer>) -> String {
    let label = node_label(node);
    let mut out = String::new();
    let families: [(&str, &str, &str, ProbeValue); 9] = [
        (
            "apiary_probe_attached",
            "gauge",
            "1 if the probe's programs are attached and enabled.",
            |r| u8::from(r.state == ProbeState::Attached).to_string(),
        ),
        (
            "apiary_probe_runs_total",
            "counter",
            "Runs of the probe's eBPF programs.",
            |r| r.runs.to_string(),
        ),
        (
            "apiary_probe_run_time_ns_total",
            "counter",
            "Kernel time spent in the probe's programs.",
            |r| r.run_time_ns.to_string(),
        ),
        (
            "apiary_probe_offered_total",
            "counter",
            "Events offered before sampling.",
            |r| r.offered.to_string(),
        ),
        (
            "apiary_probe_events_total",
            "counter",
            "Events written to the ring buffer.",
            |r| r.events.to_string(),
        ),
        (
            "apiary_probe_lost_total",
            "counter",
            "Events lost for lack of ring buffer room.",
            |r| r.lost.to_string(),
        ),
        (
            "apiary_probe_sampled_out_total",
            "counter",
            "Events dropped by sampling.",
            |r| r.sampled_out.to_string(),
        ),
        (
            "apiary_probe_filtered_total",
            "counter",
            "Events dropped by the probe's filters.",
            |r| r.filtered.to_string(),
        ),
        (
            "apiary_probe_sample_rate",
            "gauge",
            "The probe's configured sampling rate.",
            |r| r.sample_rate.to_string(),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for report in reports {
            let _ = writeln!(
                out,
                "{name}{{{label},probe=\"{}\"}} {}",
                report.name,
                value(report)
            );
        }
    }
    if let Some(observer) = observer {
        for (name, help, value) in [
            (
                "apiary_spans_total",
                "Spans built from probe events.",
                &observer.spans_total,
            ),
            (
                "apiary_probe_decode_errors_total",
                "Ring buffer records that could not be decoded.",
                &observer.decode_errors,
            ),
            (
                "apiary_tcp_retransmits_total",
                "TCP retransmissions seen.",
                &observer.retransmits_total,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(
                out,
                "{name}{{{label}}} {}",
                value.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
        let name = "apiary_trace_links_total";
        let _ = writeln!(
            out,
            "# HELP {name} Requests by how they were placed in a trace: joined to a parent seen on this node (reason connection or thread), or left a root (and why)."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        for (link, count) in observer.link_counts() {
            let result = if link.is_joined() { "joined" } else { "root" };
            let _ = writeln!(
                out,
                "{name}{{{label},result=\"{result}\",reason=\"{}\"}} {count}",
                link.reason()
            );
        }
    }
    out
}

/// The store of exported spans that `GET /v1/traces/{id}` reads.
pub fn render_trace_store(node: &str, store: &crate::agent::traces::TraceStore) -> String {
    let label = node_label(node);
    let missed = store.missed.load(std::sync::atomic::Ordering::Relaxed);
    format!(
        "# HELP apiary_trace_store_spans Spans held for GET /v1/traces.\n\
         # TYPE apiary_trace_store_spans gauge\n\
         apiary_trace_store_spans{{{label}}} {}\n\
         # HELP apiary_trace_store_missed_total Exported spans the trace store missed (it fell behind).\n\
         # TYPE apiary_trace_store_missed_total counter\n\
         apiary_trace_store_missed_total{{{label}}} {missed}\n",
        store.held()
    )
}

/// Per export destination (label `destination`), and what the batcher missed.
pub fn render_export(node: &str, export: &Export) -> String {
    let label = node_label(node);
    let rows = export.status();
    let mut out = String::new();
    type Family = (
        &'static str,
        &'static str,
        &'static str,
        fn(&DestinationStatus) -> u64,
    );
    let families: [Family; 10] = [
        (
            "apiary_export_accepted_items_total",
            "counter",
            "Items (spans, metrics, log records) taken into the destination's disk buffer.",
            |r| r.accepted_items,
        ),
        (
            "apiary_export_queued_batches",
            "gauge",
            "Batches on disk waiting for the destination.",
            |r| r.queued_batches,
        ),
        (
            "apiary_export_queued_items",
            "gauge",
            "Items on disk waiting for the destination.",
            |r| r.queued_items,
        ),
        (
            "apiary_export_backlog_bytes",
            "gauge",
            "Bytes the destination's buffer files take on disk, measured.",
            |r| r.queued_bytes,
        ),
        (
            "apiary_export_delivered_items_total",
            "counter",
            "Items the destination acknowledged.",
            |r| r.delivered_items,
        ),
        (
            "apiary_export_refused_items_total",
            "counter",
            "Items the destination would not keep (partial success, or refused for good).",
            |r| r.refused_items,
        ),
        (
            "apiary_export_pushed_back_items_total",
            "counter",
            "Items not taken because the buffer was full: apps told to retry, probe spans shed.",
            |r| r.pushed_back_items,
        ),
        (
            "apiary_export_dropped_items_total",
            "counter",
            "Items taken and then dropped for room (only where when_full is drop).",
            |r| r.dropped_items,
        ),
        (
            "apiary_export_failed_attempts_total",
            "counter",
            "Send attempts that failed.",
            |r| r.failed_attempts,
        ),
        (
            "apiary_export_in_flight",
            "gauge",
            "Requests to the destination in flight now.",
            |r| r.in_flight,
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for row in &rows {
            let destination = escape_label_value(&row.name);
            let _ = writeln!(
                out,
                "{name}{{{label},destination=\"{destination}\"}} {}",
                value(row)
            );
        }
    }
    let name = "apiary_export_drain_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Seconds the backlog takes to deliver at the recent rate (absent while nothing drains)."
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    for row in &rows {
        if let Some(seconds) = row.drain_seconds {
            let destination = escape_label_value(&row.name);
            let _ = writeln!(
                out,
                "{name}{{{label},destination=\"{destination}\"}} {seconds:.1}"
            );
        }
    }
    let name = "apiary_export_probe_items_shed_total";
    let _ = writeln!(
        out,
        "# HELP {name} Probe spans and RED points not stored because a destination's buffer was full."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    let _ = writeln!(
        out,
        "{name}{{{label}}} {}",
        export
            .probe_items_shed
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let name = "apiary_export_source_dropped_items_total";
    let _ = writeln!(
        out,
        "# HELP {name} Spans the exporter missed because it fell behind the probes."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    let _ = writeln!(
        out,
        "{name}{{{label}}} {}",
        export
            .source_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    out
}

/// Cooperative tuning: this node's rate and share, and each fresh peer's demand.
pub fn render_intensity(node: &str, status: &crate::agent::intensity::IntensityStatus) -> String {
    let label = node_label(node);
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{label}}} {value}"
        );
    };
    gauge(
        "apiary_intensity_rate",
        "Sampling rate cooperative tuning runs this node's HTTP probes at.",
        status.rate,
    );
    gauge(
        "apiary_intensity_configured_rate",
        "The operator's configured sampling rate (the ceiling).",
        status.configured_rate,
    );
    gauge(
        "apiary_intensity_cpu_percent",
        "This node's agent CPU plus the probes' kernel time, % of one core over the last second.",
        status.cpu.percent,
    );
    gauge(
        "apiary_intensity_kernel_cpu_percent",
        "The probes' kernel time (BPF run time), % of one core, paid whatever the sampling rate.",
        status.cpu.kernel_percent,
    );
    gauge(
        "apiary_intensity_cpu_beyond_sampling",
        "1 when the node is over its CPU budget and a lower sampling rate cannot bring it under.",
        f64::from(u8::from(status.cpu.beyond_sampling)),
    );
    let own = status
        .allocation
        .as_ref()
        .and_then(|a| a.of(status.node))
        .cloned();
    gauge(
        "apiary_intensity_demand",
        "Requests per second the probes see on this node, before sampling.",
        own.as_ref().map_or(0.0, |d| d.demand),
    );
    gauge(
        "apiary_intensity_share",
        "This node's share of the cluster export budget, spans per second.",
        own.as_ref().map_or(0.0, |d| d.share),
    );
    gauge(
        "apiary_intensity_fresh_peers",
        "Peers whose load report is fresh in this node's view.",
        status.view.iter().filter(|v| v.fresh).count() as f64,
    );
    gauge(
        "apiary_intensity_kept_by_rule",
        "Spans budget.always_keep kept after sampling dropped them (total).",
        status.kept_by_rule as f64,
    );
    out
}

pub fn render(node: &str, status: &ClusterStatus) -> String {
    let label = node_label(node);
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{{{label}}} {value}");
    };
    let voters = status
        .members
        .iter()
        .filter(|m| m.role == Role::Voter)
        .count() as u64;
    let others = status.members.iter().filter(|m| m.id != status.node_id);
    let peers_total = others.clone().count() as u64;
    let peers_up = others.filter(|m| m.reachable).count() as u64;
    gauge("apiary_raft_term", "Current Raft term.", status.term);
    gauge(
        "apiary_raft_is_leader",
        "1 if this node is the Raft leader.",
        u64::from(status.leader_id == Some(status.node_id)),
    );
    gauge(
        "apiary_raft_commit_index",
        "Highest log index known committed.",
        status.commit_index,
    );
    gauge(
        "apiary_raft_last_log_index",
        "Highest log index stored on this node.",
        status.last_log_index,
    );
    gauge(
        "apiary_raft_last_applied_index",
        "Highest log index applied to the config state.",
        status.last_applied_index,
    );
    gauge(
        "apiary_raft_apply_lag",
        "Log entries stored but not yet applied on this node.",
        status
            .last_log_index
            .saturating_sub(status.last_applied_index),
    );
    gauge(
        "apiary_config_version",
        "Config version applied on this node.",
        status.committed_version,
    );
    gauge("apiary_cluster_voters", "Voting members.", voters);
    gauge(
        "apiary_cluster_learners",
        "Non-voting members.",
        status.members.len() as u64 - voters,
    );
    gauge(
        "apiary_peers_up",
        "Other members that answered a ping within 3 s.",
        peers_up,
    );
    gauge("apiary_peers_total", "Other members.", peers_total);
    gauge(
        "apiary_storage_slowest_flush_ms",
        "Slowest flush of the data dir's database in the last 30 to 60 s (Raft appends and votes wait for it).",
        status.slowest_flush_ms,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_consensus::MemberStatus;

    #[test]
    fn renders_every_listed_metric_once_and_counts_peers() {
        let member = |id, reachable, role| MemberStatus {
            id,
            name: format!("n{id}"),
            address: "127.0.0.1:1".into(),
            role,
            leader: id == 1,
            reachable,
        };
        let status = ClusterStatus {
            node_id: 1,
            state: "leader".into(),
            leader_id: Some(1),
            leader_name: Some("n1".into()),
            term: 4,
            committed_version: 7,
            commit_index: 12,
            last_log_index: 13,
            last_applied_index: 12,
            snapshot_index: 0,
            purged_index: 0,
            slowest_flush_ms: 3,
            members: vec![
                member(1, true, Role::Voter),
                member(2, true, Role::Voter),
                member(3, false, Role::Learner),
            ],
        };
        let text = render("a\"b", &status);
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let names: Vec<&str> = samples
            .iter()
            .map(|l| l.split('{').next().unwrap())
            .collect();
        assert_eq!(names, METRIC_NAMES);
        assert!(
            text.contains("apiary_raft_apply_lag{node=\"a\\\"b\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("apiary_peers_up{node=\"a\\\"b\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("apiary_peers_total{node=\"a\\\"b\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("apiary_cluster_learners{node=\"a\\\"b\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn renders_every_probe_metric_for_every_probe() {
        let reports = crate::agent::probes::reports_without_probes("test");
        let text = render_probes("n", &reports, None);
        let mut names: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split('{').next().unwrap())
            .collect();
        names.dedup();
        assert_eq!(names, PROBE_METRIC_NAMES);
        assert!(
            text.contains("apiary_probe_attached{node=\"n\",probe=\"tls\"} 0"),
            "{text}"
        );
    }
}
