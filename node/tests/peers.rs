//! The peer transport's rules on real nodes over real QUIC: a member speaks only for the id its
//! certificate names, a certificate of the cluster's CA that is not a member's gets nothing but
//! refusals, and certificates are renewed before they expire.

use std::time::{Duration, Instant};

use apiary_wire::{Message, Service, Transport};
use serde_json::json;

use crate::common::{copy_tls, transport_with, Cluster};

async fn ask(
    transport: &Transport,
    to: std::net::SocketAddr,
    service: Service,
    payload: Vec<u8>,
) -> String {
    let message = Message::Request { service, payload };
    match tokio::time::timeout(Duration::from_secs(5), transport.call(to, &message)).await {
        Ok(Ok(Message::Refused { reason })) => reason,
        other => panic!("{service:?} was not refused: {other:?}"),
    }
}

async fn node_id(cluster: &Cluster, node: usize) -> u64 {
    cluster.get(node, "/v1/cluster").await.unwrap()["node_id"]
        .as_u64()
        .unwrap()
}

/// Before the fix a member could vote, report load or ask admission in another's name, and any
/// holder of a cluster certificate was served: each of these is refused now, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_speaks_only_for_itself() {
    let cluster = Cluster::start(2).await;
    let (n0, n1) = (node_id(&cluster, 0).await, node_id(&cluster, 1).await);
    let scratch = tempfile::tempdir().unwrap();
    copy_tls(&cluster.nodes[1].data_dir, scratch.path());
    let as_n1 = transport_with(scratch.path(), &cluster.nodes[0].data_dir);
    let to = cluster.nodes[0].quic;

    let vote = openraft::raft::VoteRequest::<u64>::new(openraft::Vote::new(99, n0), None);
    let reason = ask(
        &as_n1,
        to,
        Service::RaftVote,
        serde_json::to_vec(&vote).unwrap(),
    )
    .await;
    assert!(reason.contains("names another candidate"), "{reason}");

    let report = json!({"node": n0, "name": "n0", "demand": 1e9, "cpu_cap": null,
        "cpu_percent": 0.0, "configured_rate": 1.0, "rate": 1.0, "exported": 0.0});
    let reason = ask(
        &as_n1,
        to,
        Service::LoadReport,
        report.to_string().into_bytes(),
    )
    .await;
    assert!(reason.contains("reports only its own"), "{reason}");

    // A node asks admission only for itself (and the leader admits only an id a CA holder
    // granted a certificate with a join token).
    let admit = json!([n0 ^ 1, {"name": "ghost", "addr": "127.0.0.1:9"}]);
    let message = Message::Request {
        service: Service::Admit,
        payload: admit.to_string().into_bytes(),
    };
    let answer = match as_n1.call(to, &message).await {
        Ok(Message::Response { payload }) => String::from_utf8_lossy(&payload).to_string(),
        other => format!("{other:?}"),
    };
    assert!(answer.contains("only for itself"), "{answer}");
    as_n1.close();

    // A certificate of the cluster's CA for an id that is no member's (as a stolen CA key
    // would make): no write, no removal, no CA key, no signature.
    let ca = apiary_wire::ClusterCa::from_der(
        std::fs::read(cluster.nodes[0].data_dir.join("tls/ca.der")).unwrap(),
        &std::fs::read(cluster.nodes[0].data_dir.join("tls/ca.key")).unwrap(),
    )
    .unwrap();
    let stranger = ca
        .issue_identity(
            &apiary_wire::tls::NodeName {
                id: 4242,
                name: "stranger".into(),
            },
            Duration::from_secs(3600),
        )
        .unwrap();
    let stranger = Transport::bind("127.0.0.1:0".parse().unwrap(), &stranger).unwrap();
    for service in [
        Service::ForwardWrite,
        Service::RemoveMember,
        Service::TokenStep,
    ] {
        let reason = ask(&stranger, to, service, b"{}".to_vec()).await;
        assert!(reason.contains("not a member"), "{service:?}: {reason}");
    }
    let reason = ask(&stranger, to, Service::CaKey, b"null".to_vec()).await;
    assert!(reason.contains("not a voter"), "{reason}");
    let reason = ask(&stranger, to, Service::CaStep, b"{}".to_vec()).await;
    assert!(reason.contains("only voters"), "{reason}");
    let reason = ask(
        &stranger,
        to,
        Service::SignCsr,
        json!({"ca_fingerprint": "", "csr": []})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert!(reason.contains("not a member"), "{reason}");
    stranger.close();
    let status = cluster.get(0, "/v1/cluster").await.unwrap();
    let ids: Vec<u64> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{status}");
    assert!(ids.contains(&n1), "{status}");
    let (code, body) = cluster.set(1, "probe.http.sample_rate", json!(0.5)).await;
    assert_eq!(code, 200, "the cluster goes on: {body}");
}

/// Nodes whose certificates live 30 s renew them from a voter at two thirds of the lifetime;
/// a node restarted after its first certificate expired reconnects with the renewed one, and
/// `apiary doctor` shows the expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_before_they_expire() {
    let mut cluster = Cluster::start_with(2, &["--no-probes", "--cert-lifetime", "30s"]).await;
    let serial = |c: &Cluster, node: usize| {
        let cert = std::fs::read(c.nodes[node].data_dir.join("tls/node.der")).unwrap();
        apiary_wire::tls::cert_info(&cert).unwrap()
    };
    let first = serial(&cluster, 1);
    let started = Instant::now();
    cluster
        .wait_for(
            Duration::from_secs(40),
            "n1 to renew its certificate",
            |c| {
                let renewed = serial(c, 1).serial != first.serial;
                async move { renewed.then_some(()) }
            },
        )
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "renewed only after expiry"
    );
    let renewed = serial(&cluster, 1);
    assert_eq!(
        renewed.node_id, first.node_id,
        "the renewed certificate names the same node"
    );
    assert!(renewed.not_after > first.not_after);

    // Past the first certificate's expiry, a fresh handshake with the renewed one works.
    while std::time::SystemTime::now() < first.not_after + Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.nodes[1].restart();
    cluster
        .wait_for(
            Duration::from_secs(30),
            "n1 back with a leader",
            |c| async move {
                let status = c.get(1, "/v1/cluster").await.ok()?;
                status["leader_name"].as_str().map(|_| ())
            },
        )
        .await;
    cluster
        .wait_for(
            Duration::from_secs(30),
            "n1 to write again",
            |c| async move {
                let (code, _) = c.set(1, "probe.http.sample_rate", json!(0.4)).await;
                (code == 200).then_some(())
            },
        )
        .await;
    let report = cluster.get(1, "/v1/ca").await.unwrap();
    assert!(
        report["certificate"]["expires_in_seconds"]
            .as_i64()
            .unwrap()
            > 0,
        "{report}"
    );
    let (ok, out, _) = crate::common::cli(&[
        "doctor",
        "--peer",
        &cluster.nodes[1].url(""),
        "--token",
        &cluster.api_token(),
    ]);
    assert!(
        out.contains("certificate") && out.contains("renewed from"),
        "{ok} {out}"
    );
}

/// The answer of a forwarded request as text (`Attempt` JSON), or the refusal.
async fn forward(
    transport: &Transport,
    to: std::net::SocketAddr,
    service: Service,
    payload: serde_json::Value,
) -> String {
    let message = Message::Request {
        service,
        payload: payload.to_string().into_bytes(),
    };
    match tokio::time::timeout(Duration::from_secs(10), transport.call(to, &message)).await {
        Ok(Ok(Message::Response { payload })) => String::from_utf8_lossy(&payload).to_string(),
        Ok(Ok(Message::Refused { reason })) => reason,
        other => panic!("{service:?}: no answer: {other:?}"),
    }
}

/// Before the fix a learner's certificate was all it took to mint an admin token, remove a
/// voter or change where spans go (the leader trusted any member's forward), and to take the
/// lead by sending entries under a higher term naming itself. Now the leader checks the
/// caller's token again, and entries come only from voters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_cannot_lead_nor_change_more_than_its_callers_may() {
    let cluster = Cluster::start(6).await;
    cluster
        .wait_for(Duration::from_secs(20), "n5 a learner", |c| async move {
            let status = c.get(0, "/v1/cluster").await.ok()?;
            let members = status["members"].as_array()?.clone();
            members
                .iter()
                .any(|m| m["name"] == "n5" && m["role"] == "learner")
                .then_some(())
        })
        .await;
    let leader = cluster.leader(&[0, 1, 2, 3, 4, 5]).await;
    let leader_id = node_id(&cluster, leader).await;
    let scratch = tempfile::tempdir().unwrap();
    copy_tls(&cluster.nodes[5].data_dir, scratch.path());
    let as_learner = transport_with(scratch.path(), &cluster.nodes[0].data_dir);
    let to = cluster.nodes[leader].quic;

    let (code, read) = cluster
        .write(
            0,
            reqwest::Method::POST,
            "/v1/tokens",
            json!({"name": "reader", "scope": "read"}),
        )
        .await;
    assert_eq!(code, 200, "{read}");
    let read_token = read["token"].as_str().unwrap().to_string();
    let minted = |caller: serde_json::Value| {
        json!({"caller": caller, "request": {"Create": {"id": "f0f0f0f0", "name": "forged",
            "scope": "admin", "sha256": "00", "created_at": "now", "created_by": "n5"}}})
    };
    let answer = forward(&as_learner, to, Service::TokenStep, minted(json!("Node"))).await;
    assert!(
        answer.contains("Forbidden") && answer.contains("is a learner"),
        "{answer}"
    );
    let caller = json!({"Token": read_token});
    let answer = forward(&as_learner, to, Service::TokenStep, minted(caller.clone())).await;
    assert!(answer.contains("needs a `admin` token"), "{answer}");
    let answer = forward(
        &as_learner,
        to,
        Service::TokenStep,
        minted(json!({"Token": "x"})),
    )
    .await;
    assert!(answer.contains("does not know this token"), "{answer}");
    let removal = json!({"caller": caller, "request": node_id(&cluster, 1).await});
    let answer = forward(&as_learner, to, Service::RemoveMember, removal).await;
    assert!(answer.contains("needs a `admin` token"), "{answer}");
    let (code, write) = cluster
        .write(
            0,
            reqwest::Method::POST,
            "/v1/tokens",
            json!({"name": "writer", "scope": "write"}),
        )
        .await;
    assert_eq!(code, 200, "{write}");
    let redirect = json!({"caller": {"Token": write["token"]}, "request": {
        "origin_node": "n5", "author": "n5", "comment": "", "at": "2026-12-01T00:00:00Z",
        "intent": {"kind": "set", "settings": [
            {"key": "destination.evil.endpoint", "value": "http://127.0.0.1:9/"}]}}});
    let answer = forward(&as_learner, to, Service::ForwardWrite, redirect).await;
    assert!(answer.contains("needs a `admin` token"), "{answer}");
    let tokens = cluster.get(0, "/v1/tokens").await.unwrap().to_string();
    assert!(!tokens.contains("forged"), "{tokens}");

    // Entries under a higher term naming the learner as leader.
    let term = cluster.get(leader, "/v1/cluster").await.unwrap()["term"]
        .as_u64()
        .unwrap();
    let learner_id = node_id(&cluster, 5).await;
    let entries = json!({"vote": {"leader_id": {"term": term + 5, "node_id": learner_id},
        "committed": true}, "prev_log_id": null, "entries": [], "leader_commit": null});
    for node in [leader, (leader + 1) % 5] {
        let reason = ask(
            &as_learner,
            cluster.nodes[node].quic,
            Service::RaftAppendEntries,
            entries.to_string().into_bytes(),
        )
        .await;
        assert!(
            reason.contains("is a learner") && reason.contains("confirm"),
            "{reason}"
        );
    }
    as_learner.close();
    let status = cluster.get(0, "/v1/cluster").await.unwrap();
    assert_eq!(status["leader_id"].as_u64(), Some(leader_id), "{status}");
    assert_eq!(status["term"].as_u64(), Some(term), "{status}");
    // The learner's own API, with a cluster token, still makes changes through the leader.
    let (code, body) = cluster.set(5, "probe.http.sample_rate", json!(0.4)).await;
    assert_eq!(code, 200, "{body}");
}
