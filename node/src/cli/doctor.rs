//! `apiary doctor`: checks a running node and this machine, and says how to fix each failure.
//!
//! It asks the node's own API (so it sees what the node sees: its leader, which peers answer,
//! which probes failed and why, which destinations are behind) and adds the machine checks that
//! `apiary init` runs. It exits non-zero when anything failed, so it also serves as a health
//! check in scripts.

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::checks::{self, Check, Status};
use super::client::{text, Client, ClientArgs};

/// Batches waiting for a destination beyond which the doctor calls it behind.
const BACKLOG_WARN_BATCHES: u64 = 100;

pub async fn run(args: &ClientArgs) -> Result<()> {
    let client = Client::new(args)?;
    let mut found = Vec::new();
    match client.health().await {
        Ok(health) => {
            found.push(health_check(&health, &args.peer));
            found.extend(cluster_checks(&client.get("/v1/cluster").await?));
            // Nodes from before CA rotation have no /v1/ca: nothing to check there.
            if let Ok(ca) = client.get("/v1/ca").await {
                found.push(ca_check(&ca));
                if ca["certificate"].is_object() {
                    found.push(certificate_check(&ca["certificate"]));
                }
            }
            let probes = client.get("/v1/probes").await?;
            let without_probes = probes.as_array().is_none_or(|list| {
                list.iter().all(|p| {
                    p["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("--no-probes"))
                })
            });
            if !without_probes {
                found.extend(checks::probe_prerequisites());
                found.extend(probe_checks(&probes));
            } else {
                found.push(Check::ok(
                    "probes",
                    "this node runs without probes (--no-probes)",
                ));
            }
            found.extend(export_checks(&client.get("/v1/export").await?));
        }
        Err(e) => {
            found.push(Check::fail(
                "node",
                format!("{e:#}"),
                "start it (`apiary node --config apiary.toml`, or `systemctl start apiary`), or point --peer at its API",
            ));
            found.extend(checks::probe_prerequisites());
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "checks": found }))?
        );
    } else {
        println!("{}", checks::render(&found));
    }
    let failed = found.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        bail!("{failed} check(s) failed: see the fix column");
    }
    Ok(())
}

/// The node answers; it fails this check when it says it cannot do its part (a Raft log it
/// cannot write: each problem says what to do).
fn health_check(health: &Value, peer: &str) -> Check {
    let problems: Vec<&str> = health["problems"]
        .as_array()
        .map(|list| list.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let warnings: Vec<&str> = health["warnings"]
        .as_array()
        .map(|list| list.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if problems.is_empty() && warnings.is_empty() {
        Check::ok(
            "node",
            format!("{} answers at {peer}", text(&health["node"])),
        )
    } else if problems.is_empty() {
        Check::warn(
            "node",
            format!(
                "{} answers at {peer} but is degraded: {}",
                text(&health["node"]),
                warnings.join("; ")
            ),
            "each warning says what to do; a slow disk: move the data dir to a faster disk",
        )
    } else {
        Check::fail(
            "node",
            format!(
                "{} answers at {peer} but is failing: {}",
                text(&health["node"]),
                problems.join("; ")
            ),
            "free space on the data dir's disk (or make it writable), then restart the node",
        )
    }
}

fn cluster_checks(cluster: &Value) -> Vec<Check> {
    let mut found = Vec::new();
    match cluster["leader_name"].as_str() {
        Some(leader) => found.push(Check::ok(
            "leader",
            format!("{leader} (term {}, config version {})", cluster["term"], cluster["committed_version"]),
        )),
        None => found.push(Check::fail(
            "leader",
            "no leader: config changes cannot commit",
            "a majority of the voters must run and reach each other: start the stopped voters (`apiary status` lists them) and check that their QUIC (UDP) ports are open",
        )),
    }
    for member in cluster["members"].as_array().into_iter().flatten() {
        let name = text(&member["name"]);
        let addr = text(&member["address"]);
        let role = text(&member["role"]);
        if member["reachable"] == json!(true) {
            found.push(Check::ok(
                &format!("peer {name}"),
                format!("{role} at {addr} answers"),
            ));
        } else {
            found.push(Check::fail(
                &format!("peer {name}"),
                format!("{role} at {addr} does not answer"),
                format!("check that {name} runs (`apiary doctor` there) and that UDP {addr} is open from this node"),
            ));
        }
    }
    let commit = cluster["commit_index"].as_u64().unwrap_or(0);
    let applied = cluster["last_applied_index"].as_u64().unwrap_or(0);
    if commit > applied + 100 {
        found.push(Check::warn(
            "catch-up",
            format!("applied {applied} of {commit} committed log entries"),
            "wait: the node is catching up; if it does not move, check its log (journalctl -u apiary)",
        ));
    }
    found
}

/// A CA rotation that stopped between its steps leaves two CAs trusted and joins refused.
fn ca_check(ca: &Value) -> Check {
    let fingerprint = text(&ca["fingerprint"]);
    let short = fingerprint.get(..16).unwrap_or(&fingerprint);
    match ca["phase"].as_str() {
        Some(phase @ ("staged" | "switched")) => Check::warn(
            "cluster CA",
            format!(
                "rotation {} stopped after its {phase} step: two CAs are trusted and joins are refused",
                text(&ca["epoch"])
            ),
            "run `apiary ca rotate` to continue it (every member must run; `apiary ca status` shows which did not apply the step)",
        ),
        _ => Check::ok(
            "cluster CA",
            format!("{short}… ({} rotations)", ca["epoch"].as_u64().unwrap_or(0)),
        ),
    }
}

/// The node's own certificate: renewed in time, or how to recover from an expired one.
fn certificate_check(cert: &Value) -> Check {
    let expires_at = text(&cert["expires_at"]);
    let custody = if cert["holds_ca_key"].as_bool() == Some(true) {
        "holds the CA key (a voter)"
    } else {
        "does not hold the CA key"
    };
    let expires_in = cert["expires_in_seconds"].as_i64().unwrap_or(0);
    if expires_in <= 0 {
        return Check::fail(
            "certificate",
            format!("this node's certificate expired at {expires_at}: peers refuse it"),
            "an expired certificate cannot be renewed: stop the node, move its data dir away, \
             remove it (`apiary members remove NAME`) and join it again with a new join token",
        );
    }
    if cert["renew_in_seconds"].as_i64().unwrap_or(0) < -60 {
        return Check::warn(
            "certificate",
            format!(
                "expires at {expires_at} and was due for renewal at {}: no voter signed a new one",
                text(&cert["renew_at"])
            ),
            "check that a voter is reachable (`apiary status`); the node retries every 2 s",
        );
    }
    Check::ok(
        "certificate",
        format!(
            "expires {expires_at}, renewed from {}; {custody}",
            text(&cert["renew_at"])
        ),
    )
}

fn probe_checks(probes: &Value) -> Vec<Check> {
    let mut found = Vec::new();
    for probe in probes.as_array().into_iter().flatten() {
        let name = format!("probe {}", text(&probe["name"]));
        let lost = probe["lost"].as_u64().unwrap_or(0);
        match probe["state"].as_str() {
            Some("failed") => found.push(Check::fail(
                &name,
                format!("failed: {}", text(&probe["reason"])),
                probe_fix(probe["name"].as_str().unwrap_or("")),
            )),
            Some("disabled") => found.push(Check::ok(
                &name,
                format!("disabled: {}", probe["reason"].as_str().unwrap_or("by the cluster config")),
            )),
            _ if lost > 0 => found.push(Check::warn(
                &name,
                format!("attached; {lost} events lost (the ring buffer was full)"),
                "lower its sample_rate (`apiary config set probe.NAME.sample_rate=0.2`) or its capture_bytes",
            )),
            _ => found.push(Check::ok(
                &name,
                format!("attached, {} runs, {:.0} ns/run", probe["runs"], probe["ns_per_run"].as_f64().unwrap_or(0.0)),
            )),
        }
    }
    found
}

fn probe_fix(probe: &str) -> &'static str {
    match probe {
        "tls" => "install OpenSSL 3 (libssl3) or give the node --libssl PATH, then restart it",
        _ => "read the reason: a missing tracepoint needs a kernel with it; a verifier rejection is a bug to report with the reason",
    }
}

fn export_checks(destinations: &Value) -> Vec<Check> {
    let mut found = Vec::new();
    let list = destinations.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        found.push(Check::warn(
            "export",
            "no destination: spans and metrics stay on this node",
            "apiary config set destination.main.endpoint=http://COLLECTOR:4318",
        ));
    }
    for destination in list {
        let name = format!("export {}", text(&destination["name"]));
        let endpoint = text(&destination["endpoint"]);
        let queued = destination["queued_batches"].as_u64().unwrap_or(0);
        let dropped = destination["dropped_items"].as_u64().unwrap_or(0);
        let pushed_back = destination["pushed_back_items"].as_u64().unwrap_or(0);
        let disk_free = destination["disk_available_bytes"].as_u64();
        let disk_reserve = destination["disk_reserve_bytes"].as_u64().unwrap_or(0);
        if let Some(free) = disk_free.filter(|_| destination["disk_low"] == json!(true)) {
            found.push(Check::warn(
                &name,
                format!(
                    "the data dir's disk is nearly full: {} free, under the {} kept for the Raft log; {endpoint} takes no new data (apps told to retry, probe spans shed)",
                    mib(free),
                    mib(disk_reserve)
                ),
                "free space on the data dir's disk, or give the node a data dir on a larger one (--export-buffer-bytes caps each buffer)",
            ));
        }
        if destination["state"] == json!("failed") {
            found.push(Check::fail(
                &name,
                format!("{endpoint}: {}", text(&destination["reason"])),
                "fix the destination in the config (`apiary config set destination.NAME.endpoint=URL`)",
            ));
        } else if queued > BACKLOG_WARN_BATCHES {
            found.push(Check::warn(
                &name,
                format!("{endpoint} is behind: {queued} batches wait on disk (last error: {})", text(&destination["reason"])),
                "check that the collector runs and answers; when the buffer is full (--export-buffer-bytes) apps are told to retry",
            ));
        } else if pushed_back > 0 {
            found.push(Check::warn(
                &name,
                format!("{endpoint}: {pushed_back} items pushed back because the disk buffer was full (apps told to retry, probe spans shed)"),
                "make the collector faster, give the buffer more room (--export-buffer-bytes), or send less (sampling)",
            ));
        } else if dropped > 0 {
            found.push(Check::warn(
                &name,
                format!("{endpoint}: {dropped} items dropped because the disk buffer was full (when_full drop)"),
                "give the buffer more room (--export-buffer-bytes), make the collector faster, or set destination.NAME.when_full=refuse",
            ));
        } else {
            found.push(Check::ok(
                &name,
                format!(
                    "{endpoint}: {} items delivered, {queued} batches waiting",
                    destination["delivered_items"]
                ),
            ));
        }
    }
    found
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_without_leader_and_an_unreachable_peer_fail_with_fixes() {
        let cluster = json!({
            "leader_name": null, "term": 3, "committed_version": 2,
            "commit_index": 10, "last_applied_index": 10,
            "members": [
                {"name": "a", "address": "10.0.0.1:7701", "role": "voter", "reachable": true},
                {"name": "b", "address": "10.0.0.2:7701", "role": "voter", "reachable": false},
            ]
        });
        let found = cluster_checks(&cluster);
        let failed: Vec<_> = found
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(failed, ["leader", "peer b"]);
        assert!(found
            .iter()
            .all(|c| c.status == Status::Ok || c.fix.is_some()));
    }

    #[test]
    fn the_certificate_check_names_expiry_and_renewal() {
        let fresh = certificate_check(&json!({"expires_at": "2027-03-01T00:00:00Z",
            "renew_at": "2027-01-30T00:00:00Z", "expires_in_seconds": 7_000_000,
            "renew_in_seconds": 5_000_000, "holds_ca_key": true}));
        assert_eq!(fresh.status, Status::Ok);
        assert!(
            fresh.detail.contains("holds the CA key"),
            "{}",
            fresh.detail
        );
        let late = certificate_check(&json!({"expires_at": "x", "renew_at": "y",
            "expires_in_seconds": 100, "renew_in_seconds": -3600, "holds_ca_key": false}));
        assert_eq!(late.status, Status::Warn);
        let expired = certificate_check(&json!({"expires_at": "x", "renew_at": "y",
            "expires_in_seconds": -1, "renew_in_seconds": -3600, "holds_ca_key": false}));
        assert_eq!(expired.status, Status::Fail);
        assert!(expired.fix.unwrap().contains("join it again"));
    }

    #[test]
    fn a_stopped_ca_rotation_is_a_warning_with_the_way_on() {
        let paused =
            ca_check(&json!({"fingerprint": "ab".repeat(32), "epoch": 2, "phase": "switched"}));
        assert_eq!(paused.status, Status::Warn);
        assert!(paused
            .fix
            .as_deref()
            .unwrap_or("")
            .contains("apiary ca rotate"));
        let done =
            ca_check(&json!({"fingerprint": "ab".repeat(32), "epoch": 1, "phase": "finished"}));
        assert_eq!(done.status, Status::Ok);
        let never = ca_check(&json!({"fingerprint": "cd".repeat(32), "epoch": 0, "phase": null}));
        assert_eq!(never.status, Status::Ok);
        assert!(never.detail.contains("cdcd"), "{}", never.detail);
    }

    #[test]
    fn failed_probes_and_stuck_destinations_are_named() {
        let probes = json!([
            {"name": "tls", "state": "failed", "reason": "no libssl.so.3", "lost": 0},
            {"name": "http", "state": "attached", "runs": 5, "ns_per_run": 900.0, "lost": 3},
        ]);
        let found = probe_checks(&probes);
        assert_eq!(found[0].status, Status::Fail);
        assert!(found[0].detail.contains("no libssl.so.3"));
        assert!(found[0]
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("libssl3")));
        assert_eq!(found[1].status, Status::Warn);

        let export = json!([{"name": "main", "endpoint": "http://c:4318", "state": "running",
            "reason": "connection refused", "queued_batches": 500, "dropped_items": 0}]);
        let found = export_checks(&export);
        assert_eq!(found[0].status, Status::Warn);
        assert!(found[0].detail.contains("connection refused"));
    }

    #[test]
    fn a_degraded_node_warns_and_a_failing_one_fails() {
        let ok = json!({"status": "ok", "node": "n1"});
        assert_eq!(health_check(&ok, "p").status, Status::Ok);
        let slow = json!({"status": "degraded", "node": "n1",
            "warnings": ["the data dir's disk is slow: a flush took 1.2 s"]});
        let found = health_check(&slow, "p");
        assert_eq!(found.status, Status::Warn);
        assert!(found.detail.contains("disk is slow"), "{}", found.detail);
        let failing = json!({"status": "failing", "node": "n1", "problems": ["Raft stopped"],
            "warnings": ["slow"]});
        assert_eq!(health_check(&failing, "p").status, Status::Fail);
    }
}
