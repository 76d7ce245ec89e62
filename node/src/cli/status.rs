//! `apiary status`: the cluster as one node sees it (leader, members, reachability) and its
//! cooperative tuning.

use anyhow::Result;
use serde_json::Value;

use apiary_api_types::{ClusterView, Role};

use super::client::{parse, print_json, table, text, Client, ClientArgs};

pub async fn status(args: &ClientArgs) -> Result<()> {
    let client = Client::new(args)?;
    let mut cluster = client.get("/v1/cluster").await?;
    // Older nodes have no tuning endpoint; the cluster table stands alone then.
    let intensity = client.get("/v1/intensity").await.ok();
    if args.json {
        if let (Some(object), Some(intensity)) = (cluster.as_object_mut(), &intensity) {
            object.insert("intensity".into(), intensity.clone());
        }
        return print_json(&cluster);
    }
    let view: ClusterView = parse(&cluster, "GET /v1/cluster")?;
    let status = &view.status;
    println!(
        "node {} ({}) · leader {} · term {} · config version {}",
        view.node_name,
        status.state,
        status.leader_name.as_deref().unwrap_or("-"),
        status.term,
        status.committed_version,
    );
    let mut members = table(&["NAME", "ID", "ADDRESS", "ROLE", "LEADER", "REACHABLE"]);
    for member in &status.members {
        members.add_row(vec![
            member.name.clone(),
            member.id.to_string(),
            member.address.clone(),
            match member.role {
                Role::Voter => "voter".into(),
                Role::Learner => "learner".into(),
            },
            if member.leader {
                "*".into()
            } else {
                String::new()
            },
            if member.reachable {
                "yes".into()
            } else {
                "NO".into()
            },
        ]);
    }
    println!("{members}");
    if let Some(intensity) = intensity {
        print_intensity(&intensity);
    }
    Ok(())
}

/// Cooperative tuning as this node sees it: one row per node in its view.
fn print_intensity(intensity: &Value) {
    println!(
        "probe intensity ({}) · export budget {} spans/s cluster-wide · CPU budget {} % per node · this node at rate {} (configured {})",
        text(&intensity["mode"]),
        text(&intensity["budget_export_events_per_second"]),
        text(&intensity["budget_cpu_percent_per_node"]),
        text(&intensity["rate"]),
        text(&intensity["configured_rate"]),
    );
    let mut rows = table(&[
        "NAME",
        "DEMAND/S",
        "CPU %",
        "SHARE/S",
        "RATE",
        "REPORT AGE",
        "WHY",
    ]);
    let number = |v: &Value, digits: usize| {
        v.as_f64()
            .map(|f| format!("{f:.digits$}"))
            .unwrap_or_else(|| "-".into())
    };
    let view = intensity["view"].as_array().cloned().unwrap_or_default();
    for decision in intensity["allocation"]["decisions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let peer = view.iter().find(|v| v["node"] == decision["node"]);
        rows.add_row(vec![
            text(&decision["name"]),
            number(&decision["demand"], 0),
            peer.map_or_else(
                || number(&intensity["cpu"]["percent"], 1),
                |p| number(&p["cpu_percent"], 1),
            ),
            number(&decision["share"], 0),
            number(&decision["rate"], 3),
            peer.map_or_else(|| "-".into(), |p| format!("{} ms", text(&p["age_ms"]))),
            text(&decision["reason"]),
        ]);
    }
    println!("{rows}");
    let cpu = &intensity["cpu"];
    if cpu["over_budget"].as_bool() == Some(true) {
        let fixed = if cpu["beyond_sampling"].as_bool() == Some(true) {
            "a lower rate would not bring it under (or would save less than the measurement's noise): fewer probes, filters or more nodes can"
        } else {
            "the rest is per-span work, which a lower rate reduces"
        };
        println!(
            "CPU over budget: {} % of a core, of it {} % the probes' kernel time and {} % the quiet agent, paid whatever the rate; {fixed}",
            number(&cpu["percent"], 2),
            number(&cpu["kernel_percent"], 2),
            number(&cpu["quiet_percent"], 2),
        );
    }
    if let Some(last) = intensity["decisions"].as_array().and_then(|d| d.first()) {
        println!(
            "last change: {} → {} ({})",
            text(&last["from"]),
            text(&last["to"]),
            text(&last["reason"])
        );
    }
}
