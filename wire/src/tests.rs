//! End-to-end tests over real QUIC sockets on loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;

use crate::frame::{JoinGrant, Message, Service};
use crate::tls::{
    join_client_config, new_key_and_csr, ClusterCa, Identity, JoinToken, PEER_SERVER_NAME,
};
use crate::{request_join, Handler, PeerInfo, Transport, WireError};

struct Echo {
    ca: ClusterCa,
    token: JoinToken,
}

impl Handler for Echo {
    async fn handle(&self, peer: PeerInfo, message: Message) -> Message {
        match message {
            Message::Request { payload, .. } => Message::Response { payload },
            Message::JoinRequest {
                secret,
                node_name,
                csr_der,
            } => {
                assert!(!peer.member);
                if !self.token.secret_matches(&secret) {
                    return Message::Refused {
                        reason: "wrong join secret".into(),
                    };
                }
                match self.ca.issue_from_csr(&node_name, &csr_der) {
                    Ok(cert_der) => Message::JoinGranted(JoinGrant {
                        node_id: 7,
                        cert_der,
                        ca_cert_der: self.ca.cert_der().to_vec(),
                        ca_key_der: vec![],
                        join_secret: vec![],
                        api_token: String::new(),
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

fn ping(payload: &[u8]) -> Message {
    Message::Request {
        service: Service::Ping,
        payload: payload.to_vec(),
    }
}

async fn server() -> (Arc<Transport>, SocketAddr, Identity, JoinToken, ClusterCa) {
    let ca = ClusterCa::generate("test").unwrap();
    let identity = ca.issue_identity("server").unwrap();
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
    let client = Transport::bind(loopback(), &ca.issue_identity("client").unwrap()).unwrap();
    for i in 0..20u8 {
        let answer = client.call(addr, &ping(&[i])).await.unwrap();
        assert_eq!(answer, Message::Response { payload: vec![i] });
    }
}

#[tokio::test]
async fn peer_from_another_ca_is_refused_and_server_goes_on() {
    let (_server, addr, _, _, ca) = server().await;
    let stranger_ca = ClusterCa::generate("other").unwrap();
    let stranger = Transport::bind(loopback(), &stranger_ca.issue_identity("x").unwrap()).unwrap();
    let error = stranger.call(addr, &ping(b"hi")).await.unwrap_err();
    assert!(matches!(error, WireError::Connection(_)), "{error}");
    let member = Transport::bind(loopback(), &ca.issue_identity("ok").unwrap()).unwrap();
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
    let member = Transport::bind(loopback(), &ca.issue_identity("ok").unwrap()).unwrap();
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
    assert!(reason.contains("bad frame"), "{reason}");
    // An oversized length prefix too.
    let connection = unauthenticated_connection(addr, &token).await;
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let reason = connection.closed().await.to_string();
    assert!(reason.contains("exceeds the limit"), "{reason}");

    let member = Transport::bind(loopback(), &ca.issue_identity("ok").unwrap()).unwrap();
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
    let client_identity = Identity::new(
        new_ca.issue_for_key("client", &client_key).unwrap(),
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
