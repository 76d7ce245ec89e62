//! `apiary predict`: this node's active predictions (`GET /v1/predictions`) as a table, one row
//! each, with the objectives in effect per service and the latest events; `--cluster` every
//! member's (`?scope=cluster`), a NODE column added and the members that did not answer named;
//! `--json` prints the answer whole (evidence included).

use anyhow::Result;
use serde_json::Value;

use super::client::{print_json, table, Client, ClientArgs};

pub async fn predict(args: &ClientArgs, cluster: bool) -> Result<()> {
    let client = Client::new(args)?;
    if cluster {
        let answer = client.get("/v1/predictions?scope=cluster").await?;
        if args.json {
            return print_json(&answer);
        }
        return print_cluster(&answer);
    }
    let answer = client.get("/v1/predictions").await?;
    if args.json {
        return print_json(&answer);
    }
    let node = answer["node"].as_str().unwrap_or("?");
    let active = answer["active"].as_array().cloned().unwrap_or_default();
    if active.is_empty() {
        println!("{node}: no predictions ({} pending)", answer["pending"]);
    } else {
        let mut rows = table(&[
            "SERVICE",
            "SIGNAL",
            "MODEL",
            "BREACH IN",
            "CONFIDENCE",
            "NOW",
            "LIMIT",
            "WHY",
            "ACTION",
        ]);
        for p in &active {
            let signal = p["signal"].as_str().unwrap_or("-");
            rows.add_row(vec![
                text(p, "service"),
                signal.to_string(),
                text(p, "model"),
                breach_in(p["seconds_to_breach"].as_f64().unwrap_or(0.0)),
                format!("{:.2}", p["confidence"].as_f64().unwrap_or(0.0)),
                value(signal, p["current"].as_f64()),
                value(signal, p["limit"].as_f64()),
                text(p, "why"),
                text(p, "action"),
            ]);
        }
        println!("{node}: {} predictions", active.len());
        println!("{rows}");
    }
    if let Some(slos) = answer["slos"].as_object().filter(|s| !s.is_empty()) {
        let mut rows = table(&[
            "SERVICE",
            "P99 OBJECTIVE",
            "ERROR OBJECTIVE",
            "SIGNALS UNAVAILABLE",
        ]);
        for (service, slo) in slos {
            let objective = |value: Option<f64>, source: &Value, unit: &str, scale: f64| match value
            {
                Some(v) => format!(
                    "{:.4}{unit} ({})",
                    v * scale,
                    source.as_str().unwrap_or("?")
                ),
                None => "waiting for a baseline".to_string(),
            };
            let unavailable: Vec<String> = answer["unavailable"][service]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            rows.add_row(vec![
                service.clone(),
                objective(slo["p99_ms"].as_f64(), &slo["p99_source"], " ms", 1.0),
                objective(
                    slo["error_rate"].as_f64(),
                    &slo["error_source"],
                    " %",
                    100.0,
                ),
                unavailable.join("; "),
            ]);
        }
        println!("{rows}");
    }
    Ok(())
}

fn print_cluster(answer: &Value) -> Result<()> {
    let active = answer["active"].as_array().cloned().unwrap_or_default();
    let answered = answer["answered"].as_array().map_or(0, Vec::len);
    if active.is_empty() {
        println!("cluster: no predictions on the {answered} members that answered");
    } else {
        let mut rows = table(&[
            "NODE",
            "SERVICE",
            "SIGNAL",
            "MODEL",
            "BREACH IN",
            "CONFIDENCE",
            "NOW",
            "LIMIT",
            "WHY",
        ]);
        for p in &active {
            let signal = p["signal"].as_str().unwrap_or("-");
            rows.add_row(vec![
                text(p, "node"),
                text(p, "service"),
                signal.to_string(),
                text(p, "model"),
                breach_in(p["seconds_to_breach"].as_f64().unwrap_or(0.0)),
                format!("{:.2}", p["confidence"].as_f64().unwrap_or(0.0)),
                value(signal, p["current"].as_f64()),
                value(signal, p["limit"].as_f64()),
                text(p, "why"),
            ]);
        }
        println!(
            "cluster: {} predictions on {answered} members",
            active.len()
        );
        println!("{rows}");
    }
    for member in answer["missing"].as_array().into_iter().flatten() {
        println!(
            "missing: {} ({})",
            text(member, "node"),
            text(member, "error")
        );
    }
    Ok(())
}

fn text(value: &Value, key: &str) -> String {
    value[key].as_str().unwrap_or("-").to_string()
}

fn breach_in(seconds: f64) -> String {
    match seconds {
        s if s <= 0.0 => "now".to_string(),
        s if s < 120.0 => format!("{s:.0} s"),
        s => format!("{:.1} min", s / 60.0),
    }
}

fn value(signal: &str, value: Option<f64>) -> String {
    let Some(v) = value else {
        return "-".to_string();
    };
    match signal {
        "p50" | "p99" | "mean" => format!("{:.1} ms", v * 1e3),
        "rate" => format!("{v:.1}/s"),
        _ => format!("{:.1} %", v * 100.0),
    }
}
