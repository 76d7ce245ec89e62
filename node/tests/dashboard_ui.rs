//! The dashboard in a real browser: two nodes, headless Chromium driven by playwright-core
//! (`dashboard/e2e/dashboard.mjs`). Every page loads on node A; a setting changed through A's
//! form shows on B's page with its diff; a revert from B shows on A; a catalogue profile
//! applied on A's Profiles page and undone there shows in B's history. Screenshots of each step
//! are kept in `target/dashboard-screenshots/` as artifacts.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{root, Cluster, Collector};

const CHROMIUM: &str = "/usr/bin/chromium";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[tokio::test]
async fn every_page_loads_and_a_change_on_one_node_shows_on_another() {
    if !Path::new(CHROMIUM).exists() {
        eprintln!("SKIPPED dashboard browser test: {CHROMIUM} is missing (apt-get install chromium; .ci/run does)");
        return;
    }
    let playwright = repo().join("dashboard/node_modules/playwright-core");
    assert!(
        playwright.exists(),
        "{} is missing: building the apiary binary runs `npm ci` in dashboard/",
        playwright.display()
    );
    // With root the nodes run their probes, so the services and spans pages have data (the
    // browser's own requests); otherwise they run the mesh only and those pages stay empty.
    let probes = root();
    let extra: &[&str] = if probes {
        &["--predict-interval", "1s"]
    } else {
        &["--no-probes"]
    };
    let cluster = Cluster::start_with(2, extra).await;
    if probes {
        // The nodes' own API held to a p99 objective no request meets: the Predictions page
        // then shows a burn rate raised, with its evidence.
        let (status, body) = cluster
            .set(0, "slo.apiary.p99_ms", serde_json::json!(0.001))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let shots = repo().join("target/dashboard-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    // A read-only token: the pages show with it, and a write with it is refused.
    let (status, created) = cluster
        .write(
            0,
            reqwest::Method::POST,
            "/v1/tokens",
            serde_json::json!({ "name": "dashboard-test", "scope": "read" }),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let read_token = created["token"].as_str().unwrap().to_string();
    // A destination for the export page.
    let collector = Collector::default();
    let collector_port = collector.start().await;
    let (status, body) = cluster
        .set(
            0,
            "destination.main.endpoint",
            serde_json::json!(format!("http://127.0.0.1:{collector_port}")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let output = tokio::task::spawn_blocking({
        let (a, b, token) = (
            format!("http://{}", cluster.nodes[0].api),
            format!("http://{}", cluster.nodes[1].api),
            cluster.token.clone(),
        );
        let shots = shots.clone();
        move || {
            Command::new("node")
                .arg("e2e/dashboard.mjs")
                .current_dir(repo().join("dashboard"))
                .env("A_URL", a)
                .env("B_URL", b)
                .env("TOKEN", token)
                .env("READ_TOKEN", read_token)
                .env("SHOTS", &shots)
                .env("CHROMIUM", CHROMIUM)
                .env("HAS_PROBES", if probes { "1" } else { "0" })
                .output()
        }
    })
    .await
    .expect("join")
    .expect("run node (Node.js) for the browser test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the dashboard browser test failed:\n{stdout}\n{stderr}\nnode A's log:\n{}",
        cluster.nodes[0].log_tail()
    );
    for page in [
        "01-cluster",
        "02-services",
        "03-spans",
        "04-probes",
        "07-config-seen-on-b",
        "09-profiles-apply-on-a",
        "10-profile-undone-seen-on-b",
        "11-export",
        "12-predictions",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "screenshot {page}"
        );
    }
}
