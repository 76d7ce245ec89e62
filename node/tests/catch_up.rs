//! A follower that was away while more than one 16 MiB frame of entries committed catches up:
//! the leader sends what fits in a frame and openraft sends the rest after (a partial success),
//! where one request of every missed entry would never fit a frame and be refused for good.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_by_more_than_a_frame_catches_up() {
    let mut cluster = Cluster::start(3).await;
    let (status, body) = cluster.set(0, "probe.http.sample_rate", json!(0.5)).await;
    assert_eq!(status, 200, "{body}");
    let leader = cluster.leader(&[0, 1, 2]).await;
    let away = (leader + 1) % 3;
    let writer = 3 - leader - away;
    cluster.nodes[away].kill();

    // About 20 MB of entries while it is away: more than one 16 MiB frame.
    let mut version = 0;
    for round in 0..110 {
        let (status, body) = cluster
            .write(
                writer,
                reqwest::Method::PATCH,
                "/v1/config",
                big_change(round, 2_000),
            )
            .await;
        assert_eq!(status, 200, "round {round}: {body}");
        version = body["version"].as_u64().expect("a version");
    }
    cluster.nodes[away].spawn();
    cluster
        .wait_for(
            Duration::from_secs(60),
            &format!("the returning follower at version {version}"),
            |c| async move { (c.config_version(away).await? >= version).then_some(()) },
        )
        .await;
    let reference = cluster.get(leader, "/v1/config/history").await.unwrap();
    let caught_up = cluster.get(away, "/v1/config/history").await.unwrap();
    assert_eq!(caught_up, reference);
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
