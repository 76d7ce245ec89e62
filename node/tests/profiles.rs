//! Signed configuration profiles on real three-node clusters: signed with the CLI, checked by the
//! node, applied as one event everywhere, reverted in one step; refused when tampered with or
//! signed by an untrusted key; a time-limited one ended by the leader after the node that
//! applied it was killed.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{cli, Cluster};

const PROFILE: &str = r#"# A profile the tests sign.
[profile]
name = "test-frontend"
version = 3
summary = "for the tests"
author = "tests"
stack = "nginx"
min_apiary_version = "0.1.0"

[settings]
"probe.http.sample_rate" = 0.3
"probe.http.filters.include_ports" = [80, 443]
"budget.always_keep.slower_than_ms" = 250
"#;

/// Runs the CLI and asserts it succeeded; returns its standard output.
fn run(args: &[&str]) -> String {
    let (ok, out, err) = cli(args);
    assert!(ok, "apiary {args:?} failed: {err}\n{out}");
    out
}

fn keygen(dir: &Path, name: &str) -> String {
    let prefix = dir.join(name);
    run(&["profile", "keygen", "--out", prefix.to_str().unwrap()]);
    std::fs::read_to_string(prefix.with_extension("pub")).unwrap()
}

fn public_line(pub_file: &str) -> String {
    pub_file.lines().nth(1).unwrap().trim().to_string()
}

async fn apply(cluster: &Cluster, node: usize, body: Value) -> (u16, Value) {
    cluster
        .write(node, Method::POST, "/v1/profiles/apply", body)
        .await
}

async fn events(cluster: &Cluster, node: usize) -> Vec<Value> {
    let history = cluster.get(node, "/v1/config/history").await.unwrap();
    history["events"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_profile_applies_everywhere_as_one_event_and_bad_ones_are_refused() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;
    let peer = cluster.nodes[follower].url("");
    // Profiles need a `write` token; trusting a key needs `admin`.
    let (status, created) = cluster
        .write(
            0,
            Method::POST,
            "/v1/tokens",
            json!({"name": "profiles", "scope": "write"}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let token = created["token"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();

    // Sign with a new key and check it here, with the CLI.
    let public = keygen(dir.path(), "publisher");
    let file = dir.path().join("test-frontend.toml");
    std::fs::write(&file, PROFILE).unwrap();
    let file_arg = file.to_str().unwrap();
    let key_arg = dir.path().join("publisher.key");
    run(&[
        "profile",
        "sign",
        file_arg,
        "--key",
        key_arg.to_str().unwrap(),
    ]);
    let pub_arg = dir.path().join("publisher.pub");
    let out = run(&[
        "profile",
        "verify",
        file_arg,
        "--key",
        pub_arg.to_str().unwrap(),
    ]);
    assert!(out.contains("ok: test-frontend v3 signed by key"), "{out}");
    let signature = std::fs::read_to_string(format!("{file_arg}.minisig")).unwrap();

    // The cluster does not trust the key yet: refused, and nothing committed.
    let body = json!({"profile": PROFILE, "signature": signature});
    let (status, answer) = apply(&cluster, follower, body.clone()).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("does not trust"),
        "{answer}"
    );
    let (ok, _, err) = cli(&[
        "profile", "apply", file_arg, "--peer", &peer, "--token", &token,
    ]);
    assert!(!ok && err.contains("does not trust"), "{err}");
    assert_eq!(cluster.config_version(follower).await, Some(0));

    // An admin trusts it besides the project's key.
    let profiles = cluster.get(follower, "/v1/profiles").await.unwrap();
    let mut keys: Vec<Value> = profiles["trusted_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["public_key"].clone())
        .collect();
    keys.push(json!(public_line(&public)));
    let assignment = format!("trust.profile_keys={}", Value::Array(keys.clone()));
    let (ok, _, err) = cli(&[
        "config",
        "set",
        &assignment,
        "--peer",
        &peer,
        "--token",
        &token,
    ]);
    assert!(!ok && err.contains("needs an `admin` token"), "{err}");
    let (status, answer) = cluster.set(leader, "trust.profile_keys", json!(keys)).await;
    assert_eq!(status, 200, "{answer}");
    cluster.wait_version(&[0, 1, 2], 1).await;

    // One changed byte after signing: refused although the key is trusted now.
    let tampered = PROFILE.replace("0.3", "0.9");
    let (status, answer) = apply(
        &cluster,
        follower,
        json!({"profile": tampered, "signature": signature}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("does not match"),
        "{answer}"
    );

    // A dry run answers the diff and commits nothing.
    let mut dry = body.clone();
    dry["dry_run"] = json!(true);
    let (status, answer) = apply(&cluster, follower, dry).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["committed"], Value::Null);
    assert_eq!(answer["diff"].as_array().unwrap().len(), 3, "{answer}");
    assert_eq!(cluster.config_version(follower).await, Some(1));

    // Applied through a follower with the CLI: one event, on every node.
    let out = run(&[
        "profile", "apply", file_arg, "--peer", &peer, "--token", &token,
    ]);
    assert!(out.contains("committed: config version 2"), "{out}");
    cluster.wait_version(&[0, 1, 2], 2).await;
    for node in 0..3 {
        let config = cluster.get(node, "/v1/config").await.unwrap()["config"].clone();
        assert_eq!(config["probes"]["http"]["sample_rate"], 0.3, "node {node}");
        assert_eq!(
            config["probes"]["http"]["filters"]["include_ports"],
            json!([80, 443])
        );
        assert_eq!(config["budget"]["always_keep"]["slower_than_ms"], 250);
        let history = events(&cluster, node).await;
        assert_eq!(history.len(), 2, "node {node}: one event for the profile");
        let change = &history[1]["change"];
        assert_eq!(change["kind"], "profile");
        assert_eq!(change["profile"]["name"], "test-frontend");
        assert_eq!(change["profile"]["version"], "3");
        assert_eq!(change["profile"]["signer"]["kind"], "trusted");
    }
    let out = run(&["config", "history", "--peer", &peer, "--token", &token]);
    assert!(
        out.contains("profile test-frontend v3 signed by key"),
        "{out}"
    );
    // Exported, the running config is a profile again (trusted keys left out).
    let exported = dir.path().join("exported.toml");
    let (ok, _, err) = cli(&[
        "profile",
        "export",
        "-o",
        exported.to_str().unwrap(),
        "--peer",
        &peer,
        "--token",
        &token,
    ]);
    assert!(ok && err.contains("left out `trust.profile_keys`"), "{err}");
    let out = run(&["profile", "show", exported.to_str().unwrap()]);
    assert!(
        out.contains("probe.http.sample_rate") && out.contains("0.3"),
        "{out}"
    );

    // One revert undoes it.
    run(&["config", "revert", "1", "--peer", &peer, "--token", &token]);
    cluster.wait_version(&[0, 1, 2], 3).await;
    for node in 0..3 {
        let config = cluster.get(node, "/v1/config").await.unwrap()["config"].clone();
        assert_eq!(config["probes"]["http"]["sample_rate"], 1.0, "node {node}");
        assert_eq!(
            config["probes"]["http"]["filters"]["include_ports"],
            json!([])
        );
    }

    // Signed by a key nobody trusts: refused without the flag, recorded as unverified with it.
    keygen(dir.path(), "stranger");
    let stranger = dir.path().join("stranger.key");
    run(&[
        "profile",
        "sign",
        file_arg,
        "--key",
        stranger.to_str().unwrap(),
    ]);
    let (ok, _, err) = cli(&[
        "profile", "apply", file_arg, "--peer", &peer, "--token", &token,
    ]);
    assert!(!ok && err.contains("does not trust"), "{err}");
    let out = run(&[
        "profile",
        "apply",
        file_arg,
        "--allow-unsigned",
        "--peer",
        &peer,
        "--token",
        &token,
    ]);
    assert!(out.contains("committed: config version 4"), "{out}");
    let history = events(&cluster, follower).await;
    let signer = &history[3]["change"]["profile"]["signer"];
    assert_eq!(signer["kind"], "unverified", "{signer}");
    assert!(
        signer["reason"].as_str().unwrap().contains("untrusted key"),
        "{signer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limited_profile_ends_on_time_with_the_applying_node_killed() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let before = cluster.get(leader, "/v1/config").await.unwrap()["config"].clone();

    // Every catalogue profile is signed with the project's key, trusted by default.
    let profiles = cluster.get(leader, "/v1/profiles").await.unwrap();
    let catalogue = profiles["catalogue"].as_array().unwrap();
    assert_eq!(catalogue.len(), 8, "{profiles}");
    for profile in catalogue {
        assert_eq!(profile["signer"]["kind"], "trusted", "{profile}");
    }

    // Applied on the leader for a few seconds; then the leader is killed at once.
    let (status, answer) = apply(
        &cluster,
        leader,
        json!({"name": "incident-full-capture", "for": "6s", "comment": "incident 42"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let version = answer["committed"]["version"].as_u64().unwrap();
    let expires = answer["expires_at_unix"].as_u64().unwrap();
    cluster.nodes[leader].kill();
    let live: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    cluster.wait_version(&live, version).await;
    let config = cluster.get(live[0], "/v1/config").await.unwrap()["config"].clone();
    assert_eq!(config["probes"]["http"]["capture_bytes"], 4096);

    // The survivors' leader ends it through the log, not before its time.
    let ended = cluster
        .wait_for(Duration::from_secs(60), "the profile's end", |c| {
            let live = live.clone();
            async move {
                let history = events(c, live[0]).await;
                let last = history.last()?.clone();
                (last["change"]["kind"] == "profile_ended").then_some(last)
            }
        })
        .await;
    assert_eq!(ended["change"]["profile_version"], version);
    assert_ne!(ended["origin_node"], cluster.nodes[leader].name.as_str());
    let at = humantime::parse_rfc3339(ended["at"].as_str().unwrap()).unwrap();
    let at_unix = at.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(at_unix >= expires, "ended at {at_unix}, before {expires}");
    assert!(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            >= expires
    );

    let end_version = ended["version"].as_u64().unwrap();
    cluster.wait_version(&live, end_version).await;
    for &node in &live {
        let config = cluster.get(node, "/v1/config").await.unwrap()["config"].clone();
        assert_eq!(config, before, "node {node}: the profile's keys are back");
        let profiles = cluster.get(node, "/v1/profiles").await.unwrap();
        assert_eq!(profiles["active"], json!([]), "node {node}");
    }
}

/// A key and signature from the minisign tool work here, and apiary's work there, so publishers
/// can use either (skipped where minisign is not installed; `.ci/run` installs it).
#[test]
fn minisign_tool_and_apiary_read_each_other() {
    if std::process::Command::new("minisign")
        .arg("-v")
        .output()
        .is_err()
    {
        eprintln!("skipped: the minisign tool is not installed (apt-get install minisign)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("test-frontend.toml");
    std::fs::write(&file, PROFILE).unwrap();
    let (file_arg, key) = (file.to_str().unwrap(), dir.path().join("k.key"));
    keygen(dir.path(), "k");
    let pub_arg = dir.path().join("k.pub");
    // minisign signs with apiary's key; apiary verifies it.
    let signed = std::process::Command::new("minisign")
        .args([
            "-S",
            "-m",
            file_arg,
            "-s",
            key.to_str().unwrap(),
            "-t",
            "by minisign",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let out = run(&[
        "profile",
        "verify",
        file_arg,
        "--key",
        pub_arg.to_str().unwrap(),
    ]);
    assert!(out.contains("(by minisign)"), "{out}");
    // apiary signs; minisign verifies, and refuses the file once changed.
    run(&["profile", "sign", file_arg, "--key", key.to_str().unwrap()]);
    let verify = |path: &str| {
        std::process::Command::new("minisign")
            .args(["-V", "-m", path, "-p", pub_arg.to_str().unwrap()])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(verify(file_arg));
    std::fs::write(&file, PROFILE.replace("0.3", "0.4")).unwrap();
    let tampered = dir.path().join("tampered.toml");
    std::fs::rename(&file, &tampered).unwrap();
    std::fs::rename(
        format!("{file_arg}.minisig"),
        format!("{}.minisig", tampered.display()),
    )
    .unwrap();
    assert!(!verify(tampered.to_str().unwrap()));
}

/// The file commands need no node: a static site of the catalogue whose files verify with the
/// project's key, `import` of one of them into a local catalogue, and `show`.
#[test]
fn site_import_and_show_work_on_files() {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    let out = run(&["profile", "site", site.to_str().unwrap()]);
    assert!(out.contains("(8 profiles)"), "{out}");
    let index = std::fs::read_to_string(site.join("index.html")).unwrap();
    assert_eq!(index.matches("<section>").count(), 8, "{index}");
    assert!(
        index.contains("signed by key <code>A92141B9428BF839</code>"),
        "{index}"
    );
    let nginx = site.join("nginx-frontend.toml");
    let local = dir.path().join("mine");
    let out = run(&[
        "profile",
        "import",
        nginx.to_str().unwrap(),
        "--into",
        local.to_str().unwrap(),
    ]);
    assert!(
        out.contains("ok: nginx-frontend v1 signed by key A92141B9428BF839"),
        "{out}"
    );
    assert!(local.join("nginx-frontend.toml.minisig").exists());
    // The same from the site served over HTTP (before: "fetching a URL is not built in").
    let (_server, port) = crate::common::python_server_in(&site);
    let url = format!("http://127.0.0.1:{port}/tls-only.toml");
    let fetched = dir.path().join("fetched");
    let out = run(&[
        "profile",
        "import",
        &url,
        "--into",
        fetched.to_str().unwrap(),
    ]);
    assert!(out.contains("signed by key A92141B9428BF839"), "{out}");
    assert!(fetched.join("tls-only.toml.minisig").exists());
    let missing = format!("http://127.0.0.1:{port}/nope.toml");
    let (ok, _, err) = cli(&["profile", "import", &missing]);
    assert!(!ok && err.contains("404"), "{err}");
    // A changed file is not imported.
    std::fs::write(&nginx, std::fs::read_to_string(&nginx).unwrap() + "\n").unwrap();
    let (ok, _, err) = cli(&["profile", "import", nginx.to_str().unwrap()]);
    assert!(!ok && err.contains("does not match"), "{err}");
    let out = run(&["profile", "show", "incident-full-capture"]);
    assert!(out.contains("time limit: 30m"), "{out}");
}
