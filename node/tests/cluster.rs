//! Multi-node tests with real `apiary node` processes on loopback: real QUIC, real Raft, real
//! files.

use std::time::Duration;

use crate::common::{cli, free_ports, Cluster};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_sent_to_a_follower_is_applied_on_all_three() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader(&[0, 1, 2]).await;
    let follower = (leader + 1) % 3;

    let (status, body) = cluster
        .set(follower, "probe.http.sample_rate", json!(0.2))
        .await;
    assert_eq!(status, 200, "{body}");
    let version = body["version"].as_u64().unwrap();
    assert_eq!(version, 1);
    // The node that took the request has applied it when it answers.
    let config = cluster.get(follower, "/v1/config").await.unwrap();
    assert_eq!(config["version"], 1);
    assert_eq!(config["config"]["probes"]["http"]["sample_rate"], 0.2);

    cluster.wait_version(&[0, 1, 2], 1).await;
    let histories: Vec<_> = futures_all(&cluster, "/v1/config/history").await;
    for node in 0..3 {
        let config = cluster.get(node, "/v1/config").await.unwrap();
        assert_eq!(
            config["config"]["probes"]["http"]["sample_rate"], 0.2,
            "node {node}"
        );
        assert_eq!(histories[node], histories[0]);
    }
    let event = &histories[0]["events"][0];
    assert_eq!(event["version"], 1);
    assert_eq!(event["origin_node"], cluster.nodes[follower].name.as_str());
    assert_eq!(event["comment"], "test");

    // The CLI against another follower: set, get, history, revert, status, in tables and JSON.
    let peer = cluster.nodes[(leader + 2) % 3].url("");
    let token = cluster.token.clone();
    let (ok, out, err) = cli(&[
        "config",
        "set",
        "probe.tcp.enabled=false",
        "budget.cpu_percent_per_node=5",
        "-m",
        "from the cli",
        "--peer",
        &peer,
        "--token",
        &token,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("config version 2"), "{out}");
    let (ok, out, _) = cli(&["config", "get", "--peer", &peer, "--token", &token]);
    assert!(
        ok && out.contains("probe.tcp.enabled") && out.contains("false"),
        "{out}"
    );
    let (ok, out, _) = cli(&["config", "history", "--peer", &peer, "--token", &token]);
    assert!(
        ok && out.contains("from the cli") && out.contains("probe.http.sample_rate=0.2"),
        "{out}"
    );
    let (ok, out, err) = cli(&[
        "config", "revert", "1", "--peer", &peer, "--token", &token, "--json",
    ]);
    assert!(ok, "{err}");
    let reverted: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reverted["version"], 3);
    assert_eq!(reverted["event"]["change"]["kind"], "revert");
    // Paged: the second event alone, with its diff from the first.
    let page = cluster
        .get(0, "/v1/config/history?since=1&limit=1")
        .await
        .unwrap();
    assert_eq!(page["version"], 3, "{page}");
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(events[0]["version"], 2, "{page}");
    assert!(
        events[0]["diff"].to_string().contains("probe.tcp.enabled"),
        "{page}"
    );
    cluster.wait_version(&[0, 1, 2], 3).await;
    for node in 0..3 {
        let config = cluster.get(node, "/v1/config").await.unwrap();
        assert_eq!(
            config["config"]["probes"]["tcp"]["enabled"], true,
            "revert on node {node}"
        );
        assert_eq!(config["config"]["probes"]["http"]["sample_rate"], 0.2);
    }
    let (ok, out, _) = cli(&["status", "--peer", &peer, "--token", &token]);
    assert!(ok, "{out}");
    for node in &cluster.nodes {
        assert!(out.contains(&node.name), "{out}");
    }
    let (ok, out, _) = cli(&["status", "--peer", &peer, "--json", "--token", &token]);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(ok);
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    assert!(status["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["role"] == "voter"));
    let (ok, _, err) = cli(&[
        "config",
        "set",
        "probe.http.sample_rate=2",
        "--peer",
        &peer,
        "--token",
        &token,
    ]);
    assert!(!ok && err.contains("from 0 to 1"), "{err}");
}

async fn futures_all(cluster: &Cluster, path: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for node in 0..cluster.nodes.len() {
        out.push(cluster.get(node, path).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_is_replaced_and_catches_up_after_restart() {
    let mut cluster = Cluster::start(3).await;
    let (status, _) = cluster.set(0, "probe.http.sample_rate", json!(0.5)).await;
    assert_eq!(status, 200);
    let old_leader = cluster.leader(&[0, 1, 2]).await;
    cluster.nodes[old_leader].kill();

    let survivors: Vec<usize> = (0..3).filter(|&i| i != old_leader).collect();
    let new_leader = cluster.leader(&survivors).await;
    assert_ne!(new_leader, old_leader);
    let (status, body) = cluster
        .set(survivors[0], "probe.tls.sample_rate", json!(0.3))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);
    let (status, _) = cluster
        .set(survivors[1], "probe.tcp.enabled", json!(false))
        .await;
    assert_eq!(status, 200);

    cluster.nodes[old_leader].restart();
    cluster.wait_version(&[0, 1, 2], 3).await;
    let reference = cluster
        .get(survivors[0], "/v1/config/history")
        .await
        .unwrap();
    let restarted = cluster.get(old_leader, "/v1/config/history").await.unwrap();
    assert_eq!(restarted, reference);
    let config = cluster.get(old_leader, "/v1/config").await.unwrap();
    assert_eq!(config["config"]["probes"]["tls"]["sample_rate"], 0.3);
    // The restarted node is a full member again: it reports the others reachable.
    cluster
        .wait_for(
            Duration::from_secs(10),
            "restarted node to see its peers",
            |c| async move {
                let status = c.get(old_leader, "/v1/cluster").await.ok()?;
                let members = status["members"].as_array()?;
                members.iter().all(|m| m["reachable"] == true).then_some(())
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_input_gets_clear_errors_and_the_node_goes_on() {
    let cluster = Cluster::start(1).await;
    let url = cluster.nodes[0].url("/v1/config");
    let http = &cluster.http;

    let send = |body: &'static str, token: Option<&str>| {
        let mut request = http
            .patch(&url)
            .body(body)
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };
    let token = Some(cluster.token.as_str());
    let (status, body) = send("{not json", token).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("invalid JSON body"),
        "{body}"
    );
    let (status, body) = send(
        r#"{"changes":[{"key":"probe.ftp.enabled","value":true}]}"#,
        token,
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("http, tls, tcp, process"),
        "{body}"
    );
    let (status, body) = send(r#"{"changes":{"probe.http.sample_rate":1.5}}"#, token).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("probe.http.sample_rate"),
        "{body}"
    );
    let (status, body) = send(r#"{"changes":[]}"#, token).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = send(r#"{"changes":{"probe.http.sample_rate":0.5}}"#, None).await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    let (status, _) = send(
        r#"{"changes":{"probe.http.sample_rate":0.5}}"#,
        Some("wrong-token"),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = cluster
        .write(
            0,
            Method::POST,
            "/v1/config/revert",
            json!({ "version": 42 }),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("versions run from 0"),
        "{body}"
    );
    let error = cluster
        .get(0, "/v1/config/history?since=abc")
        .await
        .unwrap_err();
    assert!(error.starts_with("400"), "{error}");
    let error = cluster
        .get(0, "/v1/config/history?limit=0")
        .await
        .unwrap_err();
    assert!(error.contains("page size"), "{error}");
    let error = cluster.get(0, "/v2/nothing").await.unwrap_err();
    assert!(error.starts_with("404"), "{error}");
    // Nothing bad was committed.
    assert_eq!(cluster.config_version(0).await, Some(0));

    // Garbage on the QUIC port.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for size in [0usize, 1, 17, 1200, 1500] {
        socket
            .send_to(&vec![0x5a; size], cluster.nodes[0].quic)
            .await
            .unwrap();
    }
    // A peer whose certificate comes from another CA.
    let stranger_ca = apiary_wire::ClusterCa::generate("elsewhere").unwrap();
    let stranger = apiary_wire::Transport::bind(
        "127.0.0.1:0".parse().unwrap(),
        &stranger_ca
            .issue_identity(
                &apiary_wire::tls::NodeName {
                    id: 1,
                    name: "mallory".into(),
                },
                std::time::Duration::from_secs(3600),
            )
            .unwrap(),
    )
    .unwrap();
    let ping = apiary_wire::Message::Request {
        service: apiary_wire::Service::Ping,
        payload: b"null".to_vec(),
    };
    let refused = stranger.call(cluster.nodes[0].quic, &ping).await;
    assert!(
        refused.is_err(),
        "a peer of another CA was answered: {refused:?}"
    );
    // A join with the right CA but a wrong secret.
    let mut token: apiary_wire::JoinToken =
        std::fs::read_to_string(cluster.nodes[0].data_dir.join("join-token"))
            .unwrap()
            .parse()
            .unwrap();
    token.secret[3] ^= 0xff;
    let (_, csr) = apiary_wire::tls::new_key_and_csr("mallory").unwrap();
    let error = apiary_wire::request_join(cluster.nodes[0].quic, &token, "mallory", csr)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("live tokens"), "{error}");

    // Still serving and still writable.
    let health = cluster.get(0, "/healthz").await.unwrap();
    // `degraded` is serving too: a busy machine's disk may have been slow to flush lately.
    assert!(
        health["status"] == "ok" || health["status"] == "degraded",
        "{health}"
    );
    let (status, _) = cluster.set(0, "probe.http.sample_rate", json!(0.5)).await;
    assert_eq!(status, 200);
    let metrics = cluster.metrics(0).await;
    assert!(
        metrics.contains("apiary_config_version{node=\"n0\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("apiary_raft_is_leader{node=\"n0\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_beyond_five_voters_stay_learners() {
    let cluster = Cluster::start(6).await;
    let status = cluster
        .wait_for(
            Duration::from_secs(20),
            "5 voters and 1 learner",
            |c| async move {
                let status = c.get(5, "/v1/cluster").await.ok()?;
                let members = status["members"].as_array()?.clone();
                let voters = members.iter().filter(|m| m["role"] == "voter").count();
                (voters == 5 && members.len() == 6).then_some(members)
            },
        )
        .await;
    let learner = status.iter().find(|m| m["role"] == "learner").unwrap();
    assert_eq!(learner["name"], "n5");
    // A learner takes writes too (forwarded) and applies them.
    let (code, body) = cluster.set(5, "probe.process.enabled", json!(false)).await;
    assert_eq!(code, 200, "{body}");
    cluster.wait_version(&[0, 1, 2, 3, 4, 5], 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_sets_the_write_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("token");
    std::fs::write(&token_path, "an-operator-chosen-token-0123456789\n").unwrap();
    let path = token_path.to_str().unwrap();
    let cluster = Cluster::start_with(1, &["--no-probes", "--token-file", path]).await;
    assert_eq!(cluster.token, "an-operator-chosen-token-0123456789");
    let (status, body) = cluster.set(0, "probe.http.sample_rate", json!(0.3)).await;
    assert_eq!(status, 200, "{body}");

    std::fs::write(&token_path, "short").unwrap();
    let (ok, _, err) = cli(&[
        "node",
        "--no-probes",
        "--token-file",
        path,
        "--data-dir",
        dir.path().join("x").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("at least 16"), "{err}");
}

/// The names of the voters in a `/v1/cluster` answer.
fn voters(status: &serde_json::Value) -> Vec<String> {
    status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["role"] == "voter")
        .map(|m| m["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// `apiary members remove NAME` through node 0.
fn remove_member(cluster: &Cluster, name: &str) -> (bool, String, String) {
    let peer = cluster.nodes[0].url("");
    cli(&[
        "members",
        "remove",
        name,
        "--peer",
        &peer,
        "--token",
        &cluster.token,
    ])
}

/// Node 0's view once it counts `count` voters (the voter keeper promotes within seconds).
async fn wait_for_voters(cluster: &Cluster, count: usize, timeout: Duration) -> serde_json::Value {
    cluster
        .wait_for(timeout, &format!("{count} voters"), |c| async move {
            let status = c.get(0, "/v1/cluster").await.ok()?;
            (voters(&status).len() == count).then_some(status)
        })
        .await
}

/// A voter lost for good is removed by name through the CLI: a reachable learner takes its vote,
/// the cluster keeps five voters, and writes go on. Bad removals are refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_voter_is_removed_and_a_learner_takes_its_vote() {
    let mut cluster = Cluster::start(6).await;
    let status = cluster.get(0, "/v1/cluster").await.unwrap();
    assert_eq!(voters(&status).len(), 5, "{status}");
    assert!(
        !voters(&status).contains(&"n5".to_string()),
        "n5 starts as a learner"
    );

    // Only voters hold the CA key: they fetch it from the node that made the cluster.
    let has_key = |i: usize| cluster.nodes[i].data_dir.join("tls/ca.key").exists();
    cluster
        .wait_for(
            Duration::from_secs(15),
            "every voter to hold the CA key",
            |c| {
                let held = (0..5).all(|i| c.nodes[i].data_dir.join("tls/ca.key").exists());
                async move { held.then_some(()) }
            },
        )
        .await;
    assert!(!has_key(5), "a learner holds the CA key");

    let scratch = tempfile::tempdir().unwrap();
    crate::common::copy_tls(&cluster.nodes[2].data_dir, scratch.path());
    crate::common::ping_with(
        scratch.path(),
        &cluster.nodes[0].data_dir,
        cluster.nodes[0].quic,
    )
    .await
    .expect("a member's certificate is answered");
    cluster.nodes[2].kill();
    let (ok, out, err) = remove_member(&cluster, "n2");
    assert!(ok, "members remove: {out}{err}");
    assert!(out.contains("removed n2"), "{out}");
    // Its certificate is refused at the handshake by every member from now on.
    cluster
        .wait_for(
            Duration::from_secs(10),
            "n2's certificate to be refused",
            |c| {
                let (tls, dir, quic) = (
                    scratch.path().to_path_buf(),
                    c.nodes[3].data_dir.clone(),
                    c.nodes[3].quic,
                );
                async move {
                    let answer = crate::common::ping_with(&tls, &dir, quic).await;
                    answer.err().filter(|e| e.contains("revoked")).map(|_| ())
                }
            },
        )
        .await;

    let status = cluster.get(0, "/v1/cluster").await.unwrap();
    let names: Vec<&str> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(!names.contains(&"n2"), "{status}");
    // Usually the learner is promoted by the removal itself; when it was not caught up at that
    // moment (it had just joined on a loaded machine), the voter keeper promotes it within
    // a few seconds.
    let status = wait_for_voters(&cluster, 5, Duration::from_secs(15)).await;
    let voters_now = voters(&status);
    assert_eq!(voters_now.len(), 5, "a learner took the vote: {status}");
    assert!(voters_now.contains(&"n5".to_string()), "{status}");
    cluster
        .wait_for(
            Duration::from_secs(15),
            "the promoted voter to hold the CA key",
            |c| {
                let held = c.nodes[5].data_dir.join("tls/ca.key").exists();
                async move { held.then_some(()) }
            },
        )
        .await;
    let (code, body) = cluster.set(3, "probe.http.sample_rate", json!(0.3)).await;
    assert_eq!(code, 200, "writes go on after the removal: {body}");

    let (ok, _, err) = remove_member(&cluster, "nobody");
    assert!(
        !ok && err.contains("no member is called \"nobody\""),
        "{err}"
    );
    let (code, body) = cluster
        .write(0, reqwest::Method::DELETE, "/v1/members/12345", json!({}))
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("current member"),
        "{body}"
    );
    let (code, _) = cluster
        .write(
            0,
            reqwest::Method::DELETE,
            "/v1/members/not-a-number",
            json!({}),
        )
        .await;
    assert_eq!(code, 400);
}

/// When a voter is removed while no learner is ready (the only learner is down and behind), the
/// cluster runs one voter short; once the learner is back and caught up, the leader's voter
/// keeper promotes it without the operator doing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_voter_count_heals_when_a_learner_catches_up() {
    let mut cluster = Cluster::start(6).await;
    cluster.nodes[5].kill();
    for i in 0..20 {
        let (code, body) = cluster
            .set(
                0,
                "probe.http.sample_rate",
                json!(0.5 + f64::from(i) / 100.0),
            )
            .await;
        assert_eq!(code, 200, "{body}");
    }
    cluster.nodes[2].kill();
    let (ok, out, err) = remove_member(&cluster, "n2");
    assert!(ok, "members remove: {out}{err}");
    let status = cluster.get(0, "/v1/cluster").await.unwrap();
    assert_eq!(voters(&status).len(), 4, "n5 was down and behind: {status}");

    cluster.nodes[5].spawn();
    let status = wait_for_voters(&cluster, 5, Duration::from_secs(30)).await;
    assert_eq!(voters(&status).len(), 5, "the keeper promoted n5: {status}");
    let (code, body) = cluster.set(4, "probe.http.sample_rate", json!(0.9)).await;
    assert_eq!(code, 200, "writes go on with the healed quorum: {body}");
}

/// Rotating the first tokens as docs/operations.md says: a new admin token, then the first one
/// revoked; the first join token revoked and new ones made. Old tokens stop working on every
/// node; a single-use join token admits one node; an expired one none; a `--token-file` token
/// is admin on its own node only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_tokens_are_revoked_and_join_tokens_expire_or_run_out() {
    let mut cluster = Cluster::start(2).await;
    let old_admin = cluster.token.clone();
    let old_join = std::fs::read_to_string(cluster.nodes[0].data_dir.join("join-token"))
        .unwrap()
        .trim()
        .to_string();
    assert!(
        !cluster.nodes[1].data_dir.join("api-token").exists()
            && !cluster.nodes[1].data_dir.join("join-token").exists(),
        "a joined node was handed the cluster's tokens"
    );
    let (code, body) = cluster
        .write(
            1,
            reqwest::Method::POST,
            "/v1/tokens",
            json!({"name": "ops", "scope": "admin"}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let new_admin = body["token"].as_str().unwrap().to_string();
    let tokens = cluster.get(0, "/v1/tokens").await.unwrap();
    let initial = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"].as_str().unwrap().starts_with("initial"))
        .unwrap_or_else(|| panic!("the first token is listed: {tokens}"));
    let path = format!("/v1/tokens/{}", initial["id"].as_str().unwrap());
    let (code, body) = cluster
        .write(0, reqwest::Method::DELETE, &path, json!({}))
        .await;
    assert_eq!(code, 200, "{body}");
    cluster.token = new_admin.clone();
    for node in 0..2 {
        let old = cluster
            .http
            .get(cluster.nodes[node].url("/v1/cluster"))
            .bearer_auth(&old_admin)
            .send()
            .await
            .unwrap();
        assert_eq!(
            old.status(),
            401,
            "the revoked first token still works on n{node}"
        );
        assert!(cluster.get(node, "/v1/cluster").await.is_ok());
    }

    let join_tokens = cluster.get(1, "/v1/join-tokens").await.unwrap();
    let initial = join_tokens["join_tokens"][0].clone();
    assert!(
        initial["name"].as_str().unwrap().starts_with("initial"),
        "{join_tokens}"
    );
    assert_eq!(
        initial["uses"][0]["node_name"],
        json!("n1"),
        "{join_tokens}"
    );
    let path = format!("/v1/join-tokens/{}", initial["id"].as_str().unwrap());
    let (code, body) = cluster
        .write(1, reqwest::Method::DELETE, &path, json!({}))
        .await;
    assert_eq!(code, 200, "{body}");
    let stale = tempfile::tempdir().unwrap();
    let quic = cluster.nodes[0].quic.to_string();
    let join_with = |name: &str, token: &str| {
        let dir = stale.path().join(name);
        cli(&[
            "node",
            "--no-probes",
            "--name",
            name,
            "--data-dir",
            dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--otlp-grpc",
            "off",
            "--otlp-http",
            "off",
            "--join",
            &quic,
            "--join-token",
            token,
        ])
    };
    let (ok, _, err) = join_with("late", &old_join);
    assert!(
        !ok && err.contains("live tokens"),
        "the revoked join token: {err}"
    );

    let create = |body: serde_json::Value| {
        let cluster = &cluster;
        async move {
            let (code, body) = cluster
                .write(0, reqwest::Method::POST, "/v1/join-tokens", body)
                .await;
            assert_eq!(code, 200, "{body}");
            body["token"].as_str().unwrap().to_string()
        }
    };
    let brief = create(json!({"name": "brief", "ttl": "1s"})).await;
    let once = create(json!({"name": "once", "single_use": true})).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (ok, _, err) = join_with("slow", &brief);
    assert!(
        !ok && err.contains("expired"),
        "the expired join token: {err}"
    );
    std::fs::write(cluster.nodes[0].data_dir.join("join-token"), &once).unwrap();
    cluster.add_node("fresh", &["--no-probes"]).await;
    let (ok, _, err) = join_with("second", &once);
    assert!(
        !ok && err.contains("already used"),
        "a single-use token twice: {err}"
    );
    // A joiner whose answer was lost asks again with the same key: the same id, not "already
    // used" (before the fix its single-use token was spent and it could never join).
    let (code, body) = cluster
        .write(
            0,
            reqwest::Method::POST,
            "/v1/join-tokens",
            json!({"name": "retry", "single_use": true}),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let retry: apiary_wire::JoinToken = body["token"].as_str().unwrap().parse().unwrap();
    let (_, csr) = apiary_wire::tls::new_key_and_csr("retrier").unwrap();
    let ask = |via: usize, csr: Vec<u8>| {
        apiary_wire::request_join(cluster.nodes[via].quic, &retry, "retrier", csr)
    };
    let first = ask(0, csr.clone()).await.unwrap();
    let again = ask(1, csr).await.unwrap();
    assert_eq!(first.node_id, again.node_id, "the same joiner, the same id");
    let (_, other) = apiary_wire::tls::new_key_and_csr("retrier").unwrap();
    let error = ask(0, other).await.unwrap_err().to_string();
    assert!(error.contains("already used"), "another key: {error}");
    let (code, body) = cluster
        .write(
            0,
            reqwest::Method::POST,
            "/v1/join-tokens",
            json!({"name": "x", "ttl": "ever"}),
        )
        .await;
    assert_eq!(code, 400, "{body}");

    // A --token-file token: admin on its node, unknown to the others.
    let token_file = cluster.dir.path().join("local-token");
    std::fs::write(&token_file, "local-admin-token-0123456789abcdef\n").unwrap();
    let node = &mut cluster.nodes[1];
    node.extra
        .extend(["--token-file".to_string(), token_file.display().to_string()]);
    node.restart();
    cluster.token = "local-admin-token-0123456789abcdef".into();
    cluster
        .wait_for(Duration::from_secs(20), "n1 back", |c| async move {
            c.get(1, "/v1/cluster").await.ok()
        })
        .await;
    assert!(
        cluster.get(0, "/v1/cluster").await.is_err(),
        "n1's local token works on n0"
    );
}

/// A second node on one machine given the first one's OTLP/HTTP port binds every listener
/// before it asks to join, so it fails on its own, naming the port, instead of being admitted
/// and then leaving a dead member behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_port_is_taken_fails_before_it_joins() {
    let cluster = Cluster::start(1).await;
    let first = &cluster.nodes[0];
    let token = std::fs::read_to_string(first.data_dir.join("join-token")).unwrap();
    let taken = first.otlp.to_string();
    let data_dir = cluster.dir.path().join("second");
    let (quic, api, _, grpc) = free_ports();
    let (ok, out, err) = cli(&[
        "node",
        "--no-probes",
        "--name",
        "second",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{quic}"),
        "--api",
        &format!("127.0.0.1:{api}"),
        "--otlp-grpc",
        &format!("127.0.0.1:{grpc}"),
        "--otlp-http",
        &taken,
        "--join",
        &first.quic.to_string(),
        "--join-token",
        token.trim(),
    ]);
    assert!(!ok, "the second node started on a taken port: {out}{err}");
    assert!(
        err.contains(&format!("cannot listen for OTLP/HTTP on {taken}"))
            && err.contains("--otlp-http"),
        "{err}"
    );
    assert!(!err.contains("joining"), "it asked to join first: {err}");
    assert!(
        !data_dir.exists(),
        "a refused start left its data dir behind"
    );
    let status = cluster.get(0, "/v1/cluster").await.unwrap();
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{status}");
    assert!(members.iter().all(|m| m["name"] != "second"), "{status}");
}
