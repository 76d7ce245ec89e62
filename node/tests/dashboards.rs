//! The Grafana dashboards in deploy/grafana query only metrics a real node exports: every
//! `apiary_*` name in every panel's expression must appear in a running node's `/metrics`.
//! No root needed (the node runs without probes; their families are still exported).

use std::collections::BTreeSet;

use crate::common::Cluster;
use serde_json::Value;

/// Metric names a Prometheus text exposition declares (`# TYPE`), with a histogram's series.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        names.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// `apiary_*` identifiers in a PromQL expression.
fn queried_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("apiary_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |e| start + e);
        if before_ok {
            names.push(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_names_an_exported_metric() {
    let cluster = Cluster::start(1).await;
    let text = cluster.metrics(0).await;
    let exported = exported_names(&text);
    assert!(exported.contains("apiary_raft_term"), "{exported:?}");

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
    let mut dashboards = 0;
    let mut queries = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        dashboards += 1;
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
        let panels = dashboard["panels"].as_array().expect("panels");
        assert!(!panels.is_empty());
        let variables = dashboard["templating"]["list"].as_array().unwrap();
        let variable_queries = variables.iter().filter_map(|v| v["query"].as_str());
        let panel_queries = panels
            .iter()
            .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
            .filter_map(|t| t["expr"].as_str().map(str::to_string));
        for expr in panel_queries.chain(variable_queries.map(str::to_string)) {
            for name in queried_names(&expr) {
                queries += 1;
                assert!(
                    exported.contains(&name),
                    "{} queries {name}, which the node does not export (in {expr})",
                    path.display()
                );
            }
        }
    }
    assert!(dashboards >= 2, "no dashboards in {}", dir.display());
    assert!(queries > 20, "only {queries} metric references checked");
}

#[test]
fn finds_names_in_expressions() {
    assert_eq!(
        queried_names("sum(rate(apiary_http_requests_total{a=\"b\"}[5m])) / x_apiary_y"),
        vec!["apiary_http_requests_total"]
    );
}
