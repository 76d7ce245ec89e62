//! A member restarted at another address (`--listen` / `--advertise` changed, as after a move
//! to another host or port) is dialled there by the others: the new address is committed to
//! the membership through the leader. Before, the membership kept the old one, so the leader
//! never reached the moved node and a quorum that needed it never formed.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use serde_json::json;

use crate::common::Cluster;

fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    socket.local_addr().expect("local addr").port()
}

/// Restarts node `i` listening at a new QUIC port and waits until node `observer` records it
/// there and hears it.
async fn move_node(cluster: &mut Cluster, i: usize, observer: usize) -> SocketAddr {
    cluster.nodes[i].kill();
    let old = cluster.nodes[i].quic;
    let new = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    assert_ne!(old, new);
    cluster.nodes[i].quic = new;
    cluster.nodes[i].spawn();
    let name = cluster.nodes[i].name.clone();
    let address = new.to_string();
    cluster
        .wait_for(
            Duration::from_secs(30),
            &format!("{name} recorded at its new address {new} (was {old}) and reachable there"),
            |c| {
                let (name, address) = (name.clone(), address.clone());
                async move {
                    let status = c.get(observer, "/v1/cluster").await.ok()?;
                    let members = status["members"].as_array()?;
                    let member = members.iter().find(|m| m["name"] == name.as_str())?;
                    (member["address"] == address.as_str() && member["reachable"] == true)
                        .then_some(())
                }
            },
        )
        .await;
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_at_another_address_is_reached_there() {
    let mut cluster = Cluster::start(3).await;
    let (status, body) = cluster.set(0, "probe.http.sample_rate", json!(0.5)).await;
    assert_eq!(status, 200, "{body}");

    // A joined member, then the founder (which has no join address to fall back on).
    move_node(&mut cluster, 2, 0).await;
    move_node(&mut cluster, 0, 1).await;
    for i in 0..3 {
        let status = cluster.get(i, "/v1/cluster").await.expect("cluster status");
        for member in status["members"].as_array().expect("members") {
            let name = member["name"].as_str().unwrap_or_default();
            let node = cluster
                .nodes
                .iter()
                .find(|n| n.name == name)
                .expect("a node");
            assert_eq!(
                member["address"],
                node.quic.to_string(),
                "{} records {name} at {}",
                cluster.nodes[i].name,
                member["address"]
            );
        }
    }

    // With n1 gone, a quorum is n0 and n2, both at their new addresses only.
    cluster.nodes[1].kill();
    let leader = cluster.leader(&[0, 2]).await;
    let (status, body) = cluster
        .set(2 - leader, "probe.tls.sample_rate", json!(0.25))
        .await;
    assert_eq!(status, 200, "{body}");
    let version = body["version"].as_u64().expect("a version");
    cluster.wait_version(&[0, 2], version).await;
}
