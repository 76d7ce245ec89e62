//! Where predictions go beyond `GET /v1/predictions` on the node that made them: the fleet-wide
//! view from another member over the mesh (`?scope=cluster`, `apiary predict --cluster`), one
//! OTLP log record per prediction raised or resolved through the export, and a POST to
//! `predict.webhook.url`. A real pool app (`predict/pool_app.py`) is held to a 5 ms p99
//! objective it cannot meet, so the burn rate is raised within seconds; the objective is then
//! relaxed, and the prediction resolves once the short window has aged out. Only the first
//! node runs probes, so what the second shows came over the mesh. Needs root (eBPF).

use std::time::Duration;

use apiary_api_types::MissingMember;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;
use serde_json::{json, Value};

use crate::common::{cli, root, Cluster, Collector};
use crate::predict::{load, pool_app};

const SERVICE: &str = "evalhook";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_reach_the_fleet_view_the_log_export_and_the_webhook() {
    if !root() {
        eprintln!("SKIPPED predictions_reach_the_fleet_view_the_log_export_and_the_webhook: needs root to load eBPF (CI runs it as root)");
        return;
    }
    let mut cluster = Cluster::start_with(1, &["--predict-interval", "1s"]).await;
    cluster
        .add_node("n1", &["--no-probes", "--predict-interval", "1s"])
        .await;
    cluster.unbind_budgets().await;
    let collector = Collector::default();
    let port = collector.start().await;
    for (key, value) in [
        (
            "destination.main.endpoint",
            json!(format!("http://127.0.0.1:{port}")),
        ),
        (
            "predict.webhook.url",
            json!(format!("http://127.0.0.1:{port}/hook")),
        ),
        (&format!("slo.{SERVICE}.p99_ms") as &str, json!(5)),
    ] {
        let (status, body) = cluster.set(0, key, value).await;
        assert_eq!(status, 200, "{key}: {body}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (_app, app_port) = pool_app(dir.path(), SERVICE);
    let id = format!("{SERVICE}/p99/burn_rate");
    let (id, collector) = (id.as_str(), &collector);

    // Load until the burn rate is raised on n0, seen from n1.
    let traffic = tokio::spawn(load(app_port, 60.0, 7, |_| 40.0));
    let seen = cluster
        .wait_for(
            Duration::from_secs(40),
            "the burn rate raised, seen from n1",
            |c| async move {
                let answer = c.get(1, "/v1/predictions?scope=cluster").await.ok()?;
                let active = answer["active"].as_array()?.clone();
                active
                    .iter()
                    .any(|p| p["id"] == id && p["node"] == "n0")
                    .then_some(answer)
            },
        )
        .await;
    assert_eq!(seen["answered"], json!(["n0", "n1"]), "{seen}");
    assert_eq!(seen["missing"], json!([]), "{seen}");
    let (ok, out, err) = cli(&[
        "predict",
        "--cluster",
        "--peer",
        &cluster.nodes[1].url(""),
        "--token",
        &cluster.token,
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("n0") && out.contains(SERVICE), "{out}");

    // Relax the objective; once the slow requests leave the short window it resolves.
    let (status, body) = cluster
        .set(0, &format!("slo.{SERVICE}.p99_ms"), json!(10_000))
        .await;
    assert_eq!(status, 200, "{body}");
    cluster
        .wait_for(
            Duration::from_secs(60),
            "the burn rate resolved",
            |c| async move {
                let answer = c.get(0, "/v1/predictions").await.ok()?;
                answer["events"]
                    .as_array()?
                    .iter()
                    .any(|e| e["kind"] == "resolved" && e["prediction"]["id"] == id)
                    .then_some(())
            },
        )
        .await;
    traffic.abort();

    // The webhook: one POST per raised and per resolved event, each naming the node.
    let hooks = cluster
        .wait_for(
            Duration::from_secs(15),
            "both webhook calls",
            |_| async move {
                let hooks: Vec<Value> = collector
                    .bodies("/hook")
                    .iter()
                    .filter_map(|b| serde_json::from_slice(b).ok())
                    .filter(|h: &Value| h["prediction"]["id"] == id)
                    .collect();
                let kinds: Vec<&str> = hooks.iter().filter_map(|h| h["kind"].as_str()).collect();
                (kinds.contains(&"raised") && kinds.contains(&"resolved")).then_some(hooks)
            },
        )
        .await;
    for hook in &hooks {
        assert_eq!(hook["node"], "n0", "{hook}");
        assert!(hook["prediction"].get("evidence").is_none(), "{hook}");
    }
    // The logs: one record per raised and per resolved event, under the service's resource.
    let names = cluster
        .wait_for(
            Duration::from_secs(15),
            "both log records",
            |_| async move {
                let mut names = Vec::new();
                for body in collector.bodies("/v1/logs") {
                    let request = ExportLogsServiceRequest::decode(body.as_slice()).ok()?;
                    for logs in &request.resource_logs {
                        let service = logs.resource.as_ref().and_then(|r| {
                            r.attributes
                                .iter()
                                .find(|kv| kv.key == "service.name")
                                .map(|kv| format!("{:?}", kv.value))
                        });
                        if !service.is_some_and(|s| s.contains(SERVICE)) {
                            continue;
                        }
                        for record in logs.scope_logs.iter().flat_map(|s| &s.log_records) {
                            names.push(record.event_name.clone());
                        }
                    }
                }
                (names.iter().any(|n| n == "apiary.prediction.raised")
                    && names.iter().any(|n| n == "apiary.prediction.resolved"))
                .then_some(names)
            },
        )
        .await;
    let raised = hooks.iter().filter(|h| h["kind"] == "raised").count();
    let raised_logs = names
        .iter()
        .filter(|n| *n == "apiary.prediction.raised")
        .count();
    assert_eq!(
        raised, raised_logs,
        "one log record per webhook call: {names:?}"
    );

    // A member that does not answer is named, and the rest still come back.
    cluster.nodes[0].kill();
    let answer = cluster
        .get(1, "/v1/predictions?scope=cluster")
        .await
        .unwrap();
    let missing: Vec<MissingMember> = serde_json::from_value(answer["missing"].clone()).unwrap();
    assert_eq!(missing.len(), 1, "{answer}");
    assert_eq!(missing[0].node, "n0");
    assert_eq!(answer["answered"], json!(["n1"]));
    let (status, _) = (
        cluster
            .http
            .get(cluster.nodes[1].url("/v1/predictions?scope=fleet"))
            .bearer_auth(&cluster.token)
            .send()
            .await
            .unwrap()
            .status(),
        (),
    );
    assert_eq!(status, 400, "an unknown scope is refused");
}
