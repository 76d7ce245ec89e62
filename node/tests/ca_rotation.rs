//! Rotating the cluster CA in place, on real nodes over real QUIC: refused while a member is
//! down, then stage → switch → finish on every member; afterwards the old CA's certificates
//! and join token are refused, the new join token admits, writes go on, restarts keep the new
//! CA, and a second rotation works the same way.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{cli, copy_tls, free_ports, ping_with, Cluster, BIN};
use serde_json::{json, Value};

fn join_token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("join-token"))
        .unwrap()
        .trim()
        .to_string()
}

/// The CA fingerprint inside a join token `apiary1.<fingerprint>.<secret>`.
fn token_fingerprint(token: &str) -> String {
    token.split('.').nth(1).unwrap_or_default().to_string()
}

async fn ca_report(cluster: &Cluster, node: usize) -> Value {
    cluster.get(node, "/v1/ca").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_ca_rotates_in_place() {
    let mut cluster = Cluster::start(3).await;
    let scratch = tempfile::tempdir().unwrap();
    let old_tls = scratch.path().join("old-tls");
    copy_tls(&cluster.nodes[0].data_dir, &old_tls);
    let old_token = join_token(&cluster.nodes[0].data_dir);
    let old_fingerprint = token_fingerprint(&old_token);

    let report = ca_report(&cluster, 1).await;
    assert_eq!(report["fingerprint"], json!(old_fingerprint), "{report}");
    assert_eq!(report["phase"], Value::Null, "{report}");
    ping_with(&old_tls, &cluster.nodes[1].data_dir, cluster.nodes[1].quic)
        .await
        .expect("before the rotation, the first CA's certificate is a member's");

    // A member down: nothing is staged, and the error names it.
    cluster.nodes[2].kill();
    let peer = cluster.nodes[1].url("");
    let rotate = |peer: &str, token: &str| cli(&["ca", "rotate", "--peer", peer, "--token", token]);
    let (ok, out, err) = rotate(&peer, &cluster.token);
    assert!(!ok, "a rotation with a member down must stop: {out}");
    assert!(err.contains("n2") && err.contains("unreachable"), "{err}");
    assert_eq!(ca_report(&cluster, 0).await["phase"], Value::Null);
    let (ok, _, err) = rotate(&peer, "not-the-token");
    assert!(!ok && err.contains("token"), "{err}");

    cluster.nodes[2].spawn();
    let (ok, out, err) = rotate(&peer, &cluster.token);
    assert!(ok, "rotate: {out}{err}");
    // The driver keeps the new join token; a rotation changes the join secret too.
    let new_token = join_token(&cluster.nodes[1].data_dir);
    let new_fingerprint = token_fingerprint(&new_token);
    assert_ne!(new_fingerprint, old_fingerprint);
    assert_ne!(new_token.rsplit('.').next(), old_token.rsplit('.').next());
    assert!(
        out.contains(&new_token),
        "the rotation prints the new join token: {out}"
    );
    assert!(out.contains(&new_fingerprint), "{out}");
    for step in ["staging", "switching", "finishing"] {
        assert!(out.contains(step), "{out}");
    }

    for i in 0..3 {
        let report = ca_report(&cluster, i).await;
        assert_eq!(report["fingerprint"], json!(new_fingerprint), "{report}");
        assert_eq!(report["epoch"], json!(1), "{report}");
        assert_eq!(report["phase"], json!("finished"), "{report}");
        if i != 1 {
            assert!(
                !cluster.nodes[i].data_dir.join("join-token").exists(),
                "n{i} kept a join token of the old CA"
            );
        }
    }
    let (ok, out, _) = cli(&[
        "ca",
        "status",
        "--peer",
        &peer,
        "--json",
        "--token",
        &cluster.token,
    ]);
    assert!(ok);
    let status: Value = serde_json::from_str(&out).unwrap();
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m["phase"] == "finished"), "{status}");

    // The old CA's certificate no longer gets a member to answer.
    let refused = ping_with(&old_tls, &cluster.nodes[0].data_dir, cluster.nodes[0].quic).await;
    assert!(refused.is_err(), "the old CA is still trusted: {refused:?}");
    let new_tls = scratch.path().join("new-tls");
    copy_tls(&cluster.nodes[0].data_dir, &new_tls);
    ping_with(&new_tls, &cluster.nodes[1].data_dir, cluster.nodes[1].quic)
        .await
        .expect("a certificate of the new CA is a member's");

    // Writes go on and reach every member.
    let (code, body) = cluster.set(2, "probe.http.sample_rate", json!(0.4)).await;
    assert_eq!(code, 200, "{body}");
    let version = body["version"].as_u64().unwrap();
    cluster.wait_version(&[0, 1, 2], version).await;

    // The old join token is refused at once, naming the CA mismatch.
    let (quic, api, otlp, grpc) = free_ports();
    let output = Command::new(BIN)
        .args(["node", "--no-probes", "--name", "late"])
        .args([
            "--data-dir",
            &scratch.path().join("late").display().to_string(),
        ])
        .args(["--listen", &format!("127.0.0.1:{quic}")])
        .args(["--api", &format!("127.0.0.1:{api}")])
        .args(["--otlp-http", &format!("127.0.0.1:{otlp}")])
        .args(["--otlp-grpc", &format!("127.0.0.1:{grpc}")])
        .args(["--join", &cluster.nodes[0].quic.to_string()])
        .args(["--join-token", &old_token])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        err.contains("does not match the join token's CA fingerprint"),
        "{err}"
    );

    // The new join token admits a node (add_node reads n0's file), which gets the config.
    std::fs::write(cluster.nodes[0].data_dir.join("join-token"), &new_token).unwrap();
    cluster.add_node("n3", &["--no-probes"]).await;
    cluster.wait_version(&[3], version).await;

    // A restarted member comes back under the new CA.
    cluster.nodes[1].restart();
    cluster
        .wait_for(Duration::from_secs(20), "n1 back", |c| async move {
            let status = c.get(1, "/v1/cluster").await.ok()?;
            status["leader_name"].as_str().map(|_| ())
        })
        .await;
    let (code, body) = cluster.set(1, "probe.http.sample_rate", json!(0.6)).await;
    assert_eq!(code, 200, "{body}");
    let version = body["version"].as_u64().unwrap();
    cluster.wait_version(&[0, 1, 2, 3], version).await;
    assert_eq!(
        ca_report(&cluster, 1).await["fingerprint"],
        json!(new_fingerprint)
    );

    // A second rotation, now with four members.
    let (ok, out, err) = rotate(&cluster.nodes[3].url(""), &cluster.token);
    assert!(ok, "second rotation: {out}{err}");
    let third_fingerprint = token_fingerprint(&join_token(&cluster.nodes[3].data_dir));
    assert_ne!(third_fingerprint, new_fingerprint);
    for i in 0..4 {
        let report = ca_report(&cluster, i).await;
        assert_eq!(report["fingerprint"], json!(third_fingerprint), "{report}");
        assert_eq!(report["epoch"], json!(2), "{report}");
    }
    let refused = ping_with(&new_tls, &cluster.nodes[2].data_dir, cluster.nodes[2].quic).await;
    assert!(refused.is_err(), "the first rotation's CA is still trusted");
    let (code, body) = cluster.set(3, "probe.http.sample_rate", json!(0.7)).await;
    assert_eq!(code, 200, "{body}");
}

/// A member that stops answering part way stops the rotation with its name; the doctor says how
/// to go on; the member restarts in the middle of the rotation (trusting what its log says) and
/// a second `ca rotate` finishes the same rotation instead of starting another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_stopped_part_way_continues_after_a_restart() {
    let mut cluster = Cluster::start(3).await;
    let peer = cluster.nodes[0].url("");
    let token = cluster.token.clone();
    let rotation = {
        let (peer, token) = (peer.clone(), token.clone());
        std::thread::spawn(move || cli(&["ca", "rotate", "--peer", &peer, "--token", &token]))
    };
    // Freeze n2 as soon as it has staged the new CA: the next step cannot reach it.
    let pid = cluster.nodes[2].pid().unwrap().to_string();
    cluster
        .wait_for(
            Duration::from_secs(20),
            "n2 to stage the new CA",
            |c| async move {
                let report = c.get(2, "/v1/ca").await.ok()?;
                (report["phase"] != Value::Null).then_some(())
            },
        )
        .await;
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());

    let (ok, out, err) = rotation.join().unwrap();
    assert!(!ok, "the rotation cannot finish with n2 frozen: {out}");
    assert!(
        err.contains("n2") && err.contains("run `apiary ca rotate` again"),
        "{err}"
    );
    let report = ca_report(&cluster, 0).await;
    // Where it stopped depends on whether the driver saw n2 staged before it froze.
    let phase = report["phase"].as_str().unwrap_or_default().to_string();
    assert!(
        ["staged", "switched", "finished"].contains(&phase.as_str()),
        "{report}"
    );
    if phase != "finished" {
        let (_, out, _) = cli(&["doctor", "--peer", &peer, "--token", &token]);
        assert!(
            out.contains(&format!("stopped after its {phase} step")),
            "{out}"
        );
    }

    // SIGKILL ends the frozen process; it starts again from its data dir mid-rotation.
    cluster.nodes[2].restart();
    cluster
        .wait_for(
            Duration::from_secs(30),
            "n2 back in the cluster",
            |c| async move {
                let status = c.get(2, "/v1/cluster").await.ok()?;
                status["leader_name"].as_str().map(|_| ())
            },
        )
        .await;
    let (ok, out, err) = cli(&["ca", "rotate", "--peer", &peer, "--token", &token]);
    assert!(ok, "the second call finishes the rotation: {out}{err}");
    let fingerprint = token_fingerprint(&join_token(&cluster.nodes[0].data_dir));
    for i in 0..3 {
        let report = ca_report(&cluster, i).await;
        assert_eq!(
            report["epoch"],
            json!(1),
            "the same rotation, continued: {report}"
        );
        assert_eq!(report["phase"], json!("finished"), "{report}");
        assert_eq!(report["fingerprint"], json!(fingerprint), "{report}");
    }
    let (code, body) = cluster.set(2, "probe.http.sample_rate", json!(0.3)).await;
    assert_eq!(code, 200, "{body}");
    let version = body["version"].as_u64().unwrap();
    cluster.wait_version(&[0, 1, 2], version).await;
}

/// The driver of a rotation is lost for good (its data dir too) right after the stage, with
/// the only copy of the staged CA's key: before the fix no member could apply the stage (no one
/// could sign under it) and nothing could replace it, so the rotation never finished. Now
/// `apiary ca rotate` on another voter stages a new CA in its place and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_whose_driver_is_lost_is_replaced() {
    let mut cluster = Cluster::start(3).await;
    let token = cluster.token.clone();
    // The other voters hold the current CA's key (they fetch it within seconds of joining).
    cluster
        .wait_for(
            Duration::from_secs(30),
            "n1 and n2 to hold the CA key",
            |c| async move {
                for i in [1, 2] {
                    let report = c.get(i, "/v1/ca").await.ok()?;
                    (report["certificate"]["holds_ca_key"] == json!(true)).then_some(())?;
                }
                Some(())
            },
        )
        .await;
    cluster.nodes[0]
        .env
        .push(("APIARY_FAILPOINT".into(), "after-stage".into()));
    cluster.nodes[0].restart();
    cluster
        .wait_for(Duration::from_secs(30), "n0 back", |c| async move {
            let status = c.get(0, "/v1/cluster").await.ok()?;
            status["leader_name"].as_str().map(|_| ())
        })
        .await;
    let peer0 = cluster.nodes[0].url("");
    let (ok, out, _) = cli(&["ca", "rotate", "--peer", &peer0, "--token", &token]);
    assert!(!ok, "the driver exits at the failpoint: {out}");
    cluster.nodes[0].kill();
    std::fs::remove_dir_all(&cluster.nodes[0].data_dir).unwrap();

    let peer1 = cluster.nodes[1].url("");
    cluster.leader(&[1, 2]).await;
    let (ok, out, err) = cli(&[
        "members", "remove", "n0", "--peer", &peer1, "--token", &token,
    ]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cli(&["ca", "rotate", "--peer", &peer1, "--token", &token]);
    assert!(ok, "the rotation finishes through n1: {out}{err}");
    assert!(out.contains("in its place"), "{out}");
    let fingerprint = token_fingerprint(&join_token(&cluster.nodes[1].data_dir));
    for i in [1, 2] {
        let report = ca_report(&cluster, i).await;
        assert_eq!(report["epoch"], json!(2), "a new stage: {report}");
        assert_eq!(report["phase"], json!("finished"), "{report}");
        assert_eq!(report["fingerprint"], json!(fingerprint), "{report}");
    }
    let (code, body) = cluster.set(2, "probe.http.sample_rate", json!(0.3)).await;
    assert_eq!(code, 200, "{body}");
    let version = body["version"].as_u64().unwrap();
    cluster.wait_version(&[1, 2], version).await;
}
