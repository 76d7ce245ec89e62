//! A follower that was away while more than one 16 MiB frame of entries committed catches up:
//! the leader sends what fits in a frame and openraft sends the rest after (a partial success),
//! where one request of every missed entry would never fit a frame and be refused for good.
//! A follower away for longer than the leader keeps its log is sent the leader's snapshot, in
//! chunks, over QUIC, and ends with the same history.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::Cluster;

/// A change of 90 headers of `bytes` each, different for each `round`.
fn big_change(round: usize, bytes: usize) -> Value {
    let changes: Vec<Value> = (0..90)
        .map(|h| {
            let value: String =
                std::iter::repeat_n(char::from(b'a' + ((round + h) % 26) as u8), bytes).collect();
            json!({"key": format!("destination.big.headers.x-h{h}"), "value": value})
        })
        .chain([json!({"key": "destination.big.endpoint", "value": "http://127.0.0.1:9"})])
        .collect();
    json!({"changes": changes, "comment": format!("big change {round}")})
}

/// Commits `rounds` changes of [`big_change`] through node `writer`; the last version.
async fn commit_big_changes(cluster: &Cluster, writer: usize, rounds: usize, bytes: usize) -> u64 {
    let mut version = 0;
    for round in 0..rounds {
        let (status, body) = cluster
            .write(
                writer,
                reqwest::Method::PATCH,
                "/v1/config",
                big_change(round, bytes),
            )
            .await;
        assert_eq!(status, 200, "round {round}: {body}");
        version = body["version"].as_u64().expect("a version");
    }
    version
}

/// Three nodes with one committed change; the nodes' roles: the leader, a follower the test
/// sends away, and the other follower, which takes the writes.
async fn three_with_a_follower_to_send_away() -> (Cluster, usize, usize, usize) {
    let cluster = Cluster::start(3).await;
    let (status, body) = cluster.set(0, "probe.http.sample_rate", json!(0.5)).await;
    assert_eq!(status, 200, "{body}");
    let leader = cluster.leader(&[0, 1, 2]).await;
    let away = (leader + 1) % 3;
    let writer = 3 - leader - away;
    (cluster, leader, away, writer)
}

async fn wait_until_back(cluster: &Cluster, away: usize, version: u64, within: Duration) {
    cluster
        .wait_for(
            within,
            &format!("the returning follower at version {version}"),
            |c| async move { (c.config_version(away).await? >= version).then_some(()) },
        )
        .await;
}

async fn assert_same_history(cluster: &Cluster, leader: usize, away: usize) {
    let reference = cluster.get(leader, "/v1/config/history").await.unwrap();
    let caught_up = cluster.get(away, "/v1/config/history").await.unwrap();
    assert_eq!(caught_up, reference);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_by_more_than_a_frame_catches_up() {
    // 20 MB through three debug nodes: beside a browser test on 2 cores, the returning
    // follower's appends outlasted the 100 ms replication timeout again and again, and it was
    // not back within 60 s (CI, 2026-12-04; 102 s for the whole test alone).
    let _alone = crate::common::alone();
    let (mut cluster, leader, away, writer) = three_with_a_follower_to_send_away().await;
    cluster.nodes[away].kill();

    // About 20 MB of entries while it is away: more than one 16 MiB frame.
    let version = commit_big_changes(&cluster, writer, 110, 2_000).await;
    cluster.nodes[away].spawn();
    wait_until_back(&cluster, away, version, Duration::from_secs(120)).await;
    assert_same_history(&cluster, leader, away).await;
}

/// A change too large to replicate within a heartbeat is refused before it is proposed, saying
/// why and what to do; the cluster goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_too_large_to_replicate_is_refused() {
    let cluster = Cluster::start(1).await;
    let (status, body) = cluster
        .write(
            0,
            reqwest::Method::PATCH,
            "/v1/config",
            big_change(0, 20_000),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("split it into several changes"), "{body}");
    let (status, body) = cluster.set(0, "probe.http.sample_rate", json!(0.5)).await;
    assert_eq!(status, 200, "{body}");
}

/// Field `key` of node `node`'s `/v1/cluster`.
async fn cluster_index(cluster: &Cluster, node: usize, key: &str) -> u64 {
    let status = cluster.get(node, "/v1/cluster").await.expect("/v1/cluster");
    status[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

/// The leader snapshots every 1000 entries and keeps 500 behind it: after about 1600 entries
/// committed while a follower was away, the entries it lacks are gone from the leader's log and
/// only the snapshot (here about 15 MB of history: 30 chunks, longer to send than an election
/// timeout) can bring it back. The leader stays leader in its term meanwhile: the follower is
/// told it is alive during the transfer, so it does not stand for election (which deposed the
/// leader and restarted the transfer, for ever, in the soak).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_purged_log_is_sent_the_snapshot() {
    // As heavy as the test above (a 15 MB history): the machine to itself.
    let _alone = crate::common::alone();
    let (mut cluster, leader, away, writer) = three_with_a_follower_to_send_away().await;
    let left_at = cluster_index(&cluster, away, "last_log_index").await;
    cluster.nodes[away].kill();

    // A large history first, so that the snapshot spans several chunks.
    commit_big_changes(&cluster, writer, 90, 1_800).await;
    let mut version = 0;
    let mut round = 0u64;
    while cluster_index(&cluster, leader, "purged_index").await <= left_at {
        assert!(
            round < 5_000,
            "the leader never purged its log past {left_at}"
        );
        let (status, body) = cluster
            .set(
                writer,
                "probe.http.capture_bytes",
                json!(256 + round % 1000),
            )
            .await;
        assert_eq!(status, 200, "change {round}: {body}");
        version = body["version"].as_u64().expect("a version");
        round += 1;
    }
    let purged = cluster_index(&cluster, leader, "purged_index").await;
    assert!(
        purged > left_at,
        "purged {purged}, the follower left at {left_at}"
    );

    let term = cluster_index(&cluster, leader, "term").await;
    cluster.nodes[away].spawn();
    wait_until_back(&cluster, away, version, Duration::from_secs(90)).await;
    assert_eq!(
        (
            cluster.leader(&[0, 1, 2]).await,
            cluster_index(&cluster, leader, "term").await
        ),
        (leader, term),
        "the leader (node {leader}, term {term}) was deposed while the snapshot was sent"
    );
    // Its log could not be filled from the leader's: what it holds now came in a snapshot.
    let installed = cluster_index(&cluster, away, "snapshot_index").await;
    assert!(
        installed > left_at,
        "the follower's snapshot covers up to {installed}, not past {left_at}"
    );
    assert_same_history(&cluster, leader, away).await;
    let reference = cluster.get(leader, "/v1/config").await.unwrap();
    let caught_up = cluster.get(away, "/v1/config").await.unwrap();
    assert_eq!(caught_up, reference);
    // And it goes on taking part: a change after it is applied there too.
    let (status, body) = cluster
        .set(writer, "probe.http.sample_rate", json!(0.25))
        .await;
    assert_eq!(status, 200, "{body}");
    let version = body["version"].as_u64().expect("a version");
    cluster.wait_version(&[0, 1, 2], version).await;
}
