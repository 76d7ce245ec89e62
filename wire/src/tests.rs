//! End-to-end tests over real QUIC sockets on loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;

use crate::frame::{JoinGrant, Message, Service};
use crate::tls::{
    cert_info, csr_for, join_client_config, new_key_and_csr, ClusterCa, Identity, JoinToken,
    NodeName, DEFAULT_CERT_LIFETIME, PEER_SERVER_NAME,
};
use crate::{request_join, Handler, PeerInfo, Transport, WireError};

struct Echo {
    ca: ClusterCa,
    token: JoinToken,
}

impl Handler for Echo {
    async fn handle(&self, peer: PeerInfo, message: Message) -> Message {
        match message {
            Message::Request {
                service: Service::Ping,
                ..
            } => Message::Response {
                payload: peer.node_id.unwrap_or(0).to_string().into_bytes(),
            },
            Message::Request { payload, .. } => Message::Response { payload },
            Message::JoinRequest {
                secret,
                node_name,
                csr_der,
            } => {
                assert!(!peer.member());
                if !self.token.secret_matches(&secret) {
                    return Message::Refused {
                        reason: "wrong join secret".into(),
                    };
                }
                let node = NodeName {
                    id: 7,
                    name: node_name,
                };
                match self
                    .ca
                    .issue_from_csr(&node, &csr_der, DEFAULT_CERT_LIFETIME)
                {
                    Ok(cert_der) => Message::JoinGranted(JoinGrant {
                        node_id: 7,
                        cert_der,
                        ca_cert_der: self.ca.cert_der().to_vec(),
                    }),
                    Err(e) => Message::Refused {
                        reason: e.to_string(),
                    },
                }
            }
            other => Message::Refused {
                reason: format!("unexpected {other:?}"),
            },
        }
    }
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn node(id: u64, name: &str) -> NodeName {
    NodeName {
        id,
        name: name.into(),
    }
}

fn identity(ca: &ClusterCa, id: u64) -> Identity {
    ca.issue_identity(&node(id, &format!("n{id}")), DEFAULT_CERT_LIFETIME)
        .unwrap()
}

fn ping(payload: &[u8]) -> Message {
    Message::Request {
        service: Service::Ping,
        payload: payload.to_vec(),
    }
}

async fn server() -> (Arc<Transport>, SocketAddr, Identity, JoinToken, ClusterCa) {
    let ca = ClusterCa::generate("test").unwrap();
    let identity = identity(&ca, 1);
    let token = JoinToken::new(ca.fingerprint());
    let transport = Transport::bind(loopback(), &identity).unwrap();
    let addr = transport.local_addr().unwrap();
    let same_ca = ClusterCa::from_der(ca.cert_der().to_vec(), &ca.key_der()).unwrap();
    transport.serve(Arc::new(Echo {
        ca: same_ca,
        token: token.clone(),
    }));
    (transport, addr, identity, token, ca)
}

#[tokio::test]
async fn members_exchange_requests() {
    let (_server, addr, _, _, ca) = server().await;
    let client = Transport::bind(loopback(), &identity(&ca, 2)).unwrap();
    for i in 0..20u8 {
        let echo = Message::Request {
            service: Service::ForwardWrite,
            payload: vec![i],
        };
        let answer = client.call(addr, &echo).await.unwrap();
        assert_eq!(answer, Message::Response { payload: vec![i] });
    }
}

/// The handler learns the sender's id from its certificate, whatever a message says.
#[tokio::test]
async fn the_certificate_names_the_sender() {
    let (_server, addr, _, _, ca) = server().await;
    let client = Transport::bind(loopback(), &identity(&ca, 42)).unwrap();
    let answer = client.call(addr, &ping(b"")).await.unwrap();
    assert_eq!(
        answer,
        Message::Response {
            payload: b"42".to_vec()
        }
    );
    let info = cert_info(&identity(&ca, 43).cert).unwrap();
    assert_eq!((info.node_id, info.name.as_str()), (Some(43), "n43"));
    let lifetime = info
        .not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(lifetime > DEFAULT_CERT_LIFETIME - std::time::Duration::from_secs(60));
    assert!(lifetime <= DEFAULT_CERT_LIFETIME);
}

/// A caller that expects node 3 at an address where node 1 answers sends it nothing: before
/// the check, whoever held the address answered for the node the membership put there.
#[tokio::test]
async fn the_dialed_certificate_must_name_the_expected_node() {
    let (_server, addr, _, _, ca) = server().await;
    let client = Transport::bind(loopback(), &identity(&ca, 2)).unwrap();
    match client.call_node(addr, Some(3), &ping(b"")).await {
        Err(WireError::Refused(reason)) => {
            assert!(
                reason.contains("certificate of node 1, not of node 3"),
                "{reason}"
            )
        }
        other => panic!("a peer with another id was called: {other:?}"),
    }
    assert!(client.call_node(addr, Some(1), &ping(b"")).await.is_ok());
    assert!(client.call_node(addr, None, &ping(b"")).await.is_ok());
}

/// A revoked (removed) member is refused at the handshake, and its open connection is closed.
#[tokio::test]
async fn denied_ids_are_refused_at_every_handshake() {
    let (server, addr, _, _, ca) = server().await;
    let removed = Transport::bind(loopback(), &identity(&ca, 5)).unwrap();
    let kept = Transport::bind(loopback(), &identity(&ca, 6)).unwrap();
    assert!(removed.call(addr, &ping(b"")).await.is_ok());
    server.deny([5]);
    let error = removed.call(addr, &ping(b"")).await.unwrap_err();
    assert!(error.to_string().contains("revoked"), "{error}");
    assert!(kept.call(addr, &ping(b"")).await.is_ok());
    // Dialing a denied node is refused too.
    let (other, other_addr, _, _, _) = {
        let transport = Transport::bind(loopback(), &identity(&ca, 9)).unwrap();
        let addr = transport.local_addr().unwrap();
        transport.serve(Arc::new(Echo {
            ca: ClusterCa::from_der(ca.cert_der().to_vec(), &ca.key_der()).unwrap(),
            token: JoinToken::new(ca.fingerprint()),
        }));
        (transport, addr, (), (), ())
    };
    kept.deny([9]);
    let error = kept.call(other_addr, &ping(b"")).await.unwrap_err();
    assert!(
        error.to_string().contains("removed from the cluster"),
        "{error}"
    );
    other.close();
}

/// A certificate past its lifetime is refused; a renewed one (same key, new certificate) works.
#[tokio::test]
async fn expired_certificates_are_refused_and_renewal_keeps_the_key() {
    let (_server, addr, _, _, ca) = server().await;
    let short = ca
        .issue_identity(&node(8, "short"), std::time::Duration::from_secs(1))
        .unwrap();
    // Validity is counted in whole seconds: wait past the second after expiry.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let expired = Transport::bind(loopback(), &short).unwrap();
    let answer = expired.call(addr, &ping(b"")).await;
    assert!(
        answer.is_err(),
        "{answer:?} at {:?}",
        std::time::SystemTime::now()
    );
    let csr = csr_for("short", &short.key_pkcs8).unwrap();
    let renewed = ca
        .issue_from_csr(&node(8, "short"), &csr, DEFAULT_CERT_LIFETIME)
        .unwrap();
    let renewed = Identity::new(renewed, short.key_pkcs8.clone(), ca.cert_der().to_vec());
    let client = Transport::bind(loopback(), &renewed).unwrap();
    assert!(client.call(addr, &ping(b"")).await.is_ok());
}

#[test]
fn a_ca_key_matches_only_its_own_certificate() {
    let ca = ClusterCa::generate("a").unwrap();
    let other = ClusterCa::generate("b").unwrap();
    assert!(ClusterCa::key_matches(ca.cert_der(), &ca.key_der()));
    assert!(!ClusterCa::key_matches(ca.cert_der(), &other.key_der()));
    assert!(!ClusterCa::key_matches(b"junk", &ca.key_der()));
}

#[tokio::test]
async fn peer_from_another_ca_is_refused_and_server_goes_on() {
    let (_server, addr, _, _, ca) = server().await;
    let stranger_ca = ClusterCa::generate("other").unwrap();
    let stranger = Transport::bind(loopback(), &identity(&stranger_ca, 3)).unwrap();
    let error = stranger.call(addr, &ping(b"hi")).await.unwrap_err();
    assert!(matches!(error, WireError::Connection(_)), "{error}");
    let member = Transport::bind(loopback(), &identity(&ca, 4)).unwrap();
    assert!(member.call(addr, &ping(b"still up")).await.is_ok());
}

#[tokio::test]
async fn join_with_token_yields_a_working_identity() {
    let (_server, addr, _, token, ca) = server().await;
    let (key, csr) = new_key_and_csr("newbie").unwrap();
    let grant = request_join(addr, &token, "newbie", csr).await.unwrap();
    let identity = Identity::new(grant.cert_der, key, grant.ca_cert_der);
    assert_eq!(identity.ca_cert.as_ref(), ca.cert_der().as_ref());
    let joined = Transport::bind(loopback(), &identity).unwrap();
    assert!(joined.call(addr, &ping(b"member now")).await.is_ok());
}

#[tokio::test]
async fn join_refused_on_wrong_secret_or_wrong_ca() {
    let (_server, addr, _, token, _) = server().await;
    let (_, csr) = new_key_and_csr("n").unwrap();
    let mut wrong_secret = token.clone();
    wrong_secret.secret[0] ^= 1;
    let error = request_join(addr, &wrong_secret, "n", csr.clone())
        .await
        .unwrap_err();
    assert!(matches!(error, WireError::Refused(_)), "{error}");
    let mut wrong_ca = token.clone();
    wrong_ca.ca_fingerprint[0] ^= 1;
    let error = request_join(addr, &wrong_ca, "n", csr).await.unwrap_err();
    assert!(error.to_string().contains("fingerprint"), "{error}");
    assert!(
        matches!(error, WireError::Refused(_)),
        "a wrong CA is not retried: {error:?}"
    );
}

async fn unauthenticated_connection(addr: SocketAddr, token: &JoinToken) -> quinn::Connection {
    let endpoint = quinn::Endpoint::client(loopback()).unwrap();
    let tls =
        QuicClientConfig::try_from(join_client_config(token.ca_fingerprint).unwrap()).unwrap();
    endpoint
        .connect_with(
            quinn::ClientConfig::new(Arc::new(tls)),
            addr,
            PEER_SERVER_NAME,
        )
        .unwrap()
        .await
        .unwrap()
}

#[tokio::test]
async fn non_member_may_only_ask_to_join() {
    let (_server, addr, _, token, ca) = server().await;
    let connection = unauthenticated_connection(addr, &token).await;
    let error = crate::transport::tests_request(&connection, &ping(b"sneaky"))
        .await
        .unwrap_err();
    assert!(matches!(error, WireError::Connection(_)), "{error}");
    let reason = connection.closed().await.to_string();
    assert!(reason.contains("only send a join request"), "{reason}");
    // One join request per connection: the second stream is never answered.
    let connection = unauthenticated_connection(addr, &token).await;
    let (_, csr) = new_key_and_csr("twice").unwrap();
    let join = Message::JoinRequest {
        secret: token.secret.to_vec(),
        node_name: "twice".into(),
        csr_der: csr,
    };
    let first = crate::transport::tests_request(&connection, &join).await;
    assert!(matches!(first, Ok(Message::JoinGranted(_))), "{first:?}");
    let second = tokio::time::timeout(
        std::time::Duration::from_secs(12),
        crate::transport::tests_request(&connection, &join),
    )
    .await
    .expect("the connection is closed within the join deadline");
    assert!(
        second.is_err(),
        "a second join on one connection: {second:?}"
    );
    let member = Transport::bind(loopback(), &identity(&ca, 4)).unwrap();
    assert!(member.call(addr, &ping(b"still up")).await.is_ok());
}

#[tokio::test]
async fn garbage_frames_and_datagrams_close_only_that_connection() {
    let (_server, addr, _, token, ca) = server().await;
    // Raw garbage on the UDP port is not QUIC: dropped by the endpoint.
    let socket = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    for size in [1usize, 40, 1200] {
        socket.send_to(&vec![0xA5; size], addr).await.unwrap();
    }
    // A garbage frame inside a real stream closes that connection with a reason.
    let connection = unauthenticated_connection(addr, &token).await;
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8])
        .await
        .unwrap();
    send.finish().unwrap();
    let reason = connection.closed().await.to_string();
    assert!(reason.contains("bad join frame"), "{reason}");
    // An oversized length prefix too.
    let connection = unauthenticated_connection(addr, &token).await;
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let reason = connection.closed().await.to_string();
    assert!(reason.contains("exceeds the limit"), "{reason}");
    // A join frame may not be large, even below the members' limit.
    let connection = unauthenticated_connection(addr, &token).await;
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    send.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
    let reason = connection.closed().await.to_string();
    assert!(reason.contains("exceeds the limit of 65536"), "{reason}");
    // A peer that opens a stream and sends nothing is closed at the join deadline.
    let connection = unauthenticated_connection(addr, &token).await;
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    send.write_all(&[0, 0]).await.unwrap();
    let reason = tokio::time::timeout(std::time::Duration::from_secs(15), connection.closed())
        .await
        .expect("closed at the deadline")
        .to_string();
    assert!(reason.contains("within"), "{reason}");

    let member = Transport::bind(loopback(), &identity(&ca, 4)).unwrap();
    assert!(member.call(addr, &ping(b"still up")).await.is_ok());
}

#[test]
fn join_token_round_trips_and_explains_bad_input() {
    let token = JoinToken::new([7; 32]);
    let text = token.to_string();
    assert_eq!(text.parse::<JoinToken>().unwrap(), token);
    assert!(!format!("{token:?}").contains(&hex::encode(token.secret)));
    for bad in [
        "",
        "apiary1.zz.00",
        "apiary2.aa.bb",
        &text[..text.len() - 2],
    ] {
        let error = bad.parse::<JoinToken>().unwrap_err().to_string();
        assert!(error.contains("apiary1.<64 hex digits>"), "{error}");
    }
}

/// A CA rotation at the transport: a peer of a new CA is refused until the server trusts that
/// CA too, and refused again (its open connection closed) once the server drops it.
#[tokio::test]
async fn reload_changes_which_cas_are_trusted() {
    let (server, addr, server_identity, _, old_ca) = server().await;
    let new_ca = ClusterCa::generate("test").unwrap();
    let client_key = new_key_and_csr("client").unwrap().0;
    let client_csr = csr_for("client", &client_key).unwrap();
    let client_identity = Identity::new(
        new_ca
            .issue_from_csr(&node(2, "client"), &client_csr, DEFAULT_CERT_LIFETIME)
            .unwrap(),
        client_key,
        new_ca.cert_der().to_vec(),
    )
    .trusting([old_ca.cert_der().to_vec()]);
    let client = Transport::bind(loopback(), &client_identity).unwrap();
    assert!(
        client.call(addr, &ping(b"1")).await.is_err(),
        "the server does not trust the new CA yet"
    );

    let staged = server_identity
        .clone()
        .trusting([new_ca.cert_der().to_vec()]);
    server.reload(&staged, false).unwrap();
    let answer = client.call(addr, &ping(b"2")).await.unwrap();
    assert!(matches!(answer, Message::Response { payload } if payload == b"2"));

    server.reload(&server_identity, true).unwrap();
    assert!(
        client.call(addr, &ping(b"3")).await.is_err(),
        "the old trust is back: the connection is closed and a new one refused"
    );
}

/// A certificate of the cluster's CA whose id is not a member's gets small frames only: before
/// the cap, it could send 16 MiB on each of 100 streams.
#[tokio::test]
async fn a_certified_non_member_sends_only_small_frames() {
    let (server, addr, _, _, ca) = server().await;
    server.set_members(Some([1, 2].into_iter().collect()));
    let big = Message::Request {
        service: Service::ForwardWrite,
        payload: vec![7; 100 * 1024],
    };
    let member = Transport::bind(loopback(), &identity(&ca, 2)).unwrap();
    assert!(matches!(
        member.call(addr, &big).await,
        Ok(Message::Response { .. })
    ));
    let stranger = Transport::bind(loopback(), &identity(&ca, 3)).unwrap();
    assert!(
        stranger.call(addr, &ping(b"")).await.is_ok(),
        "small is fine"
    );
    match stranger.call(addr, &big).await {
        Err(WireError::Connection(reason)) => assert!(reason.contains("bad frame"), "{reason}"),
        other => panic!("a non-member's 100 KiB frame was served: {other:?}"),
    }
    // Once it is a member (admitted on this connection's node), full frames pass.
    server.set_members(Some([1, 2, 3].into_iter().collect()));
    let again = Transport::bind(loopback(), &identity(&ca, 3)).unwrap();
    assert!(matches!(
        again.call(addr, &big).await,
        Ok(Message::Response { .. })
    ));
}
