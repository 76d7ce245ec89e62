//! QUIC endpoint: one UDP socket per node serves peers and dials them, one bidirectional stream
//! per request.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::sync::Semaphore;

use crate::frame::{
    read_frame, write_frame, JoinGrant, Message, MAX_FRAME_BYTES, MAX_JOIN_FRAME_BYTES,
};
use crate::tls::{cert_info, join_client_config, Identity, JoinToken, PEER_SERVER_NAME};
use crate::WireError;

/// Close code for a peer that broke the protocol (bad frame, no certificate, …).
const CLOSE_PROTOCOL_VIOLATION: u32 = 1;
/// Close code for a peer whose certificate was revoked (a removed member).
const CLOSE_REVOKED: u32 = 2;
/// A connection without a certificate sends its one join request and reads the answer within
/// this long, or is closed.
const JOIN_DEADLINE: Duration = Duration::from_secs(10);
/// At most this many connections without a certificate are served at once; more are closed at
/// once, so unauthenticated peers cannot hold the node's memory or tasks.
const MAX_PENDING_JOINS: usize = 16;
/// A member's request frame must arrive within this long once its stream is open.
const STREAM_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests a peer with a certificate but no place in the membership (a node granted a
/// certificate and not admitted yet, or one holding a stolen certificate) may have open at
/// once; each is read with the join's frame cap. Its admission request is all it needs.
const MAX_NON_MEMBER_STREAMS: usize = 4;

/// Who sent a request.
#[derive(Debug, Clone, Copy)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// The node id named by the peer's certificate (of this cluster's CA); `None` for a peer
    /// without one, which may only ask to join.
    pub node_id: Option<u64>,
}

impl PeerInfo {
    pub fn member(&self) -> bool {
        self.node_id.is_some()
    }
}

/// The node id in the certificate a connection's peer presented.
fn peer_node_id(connection: &Connection) -> Option<u64> {
    let identity = connection.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    cert_info(chain.first()?).ok()?.node_id
}

/// Answers requests from peers. Only [`Message::JoinRequest`] reaches it from non-members.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, peer: PeerInfo, message: Message) -> impl Future<Output = Message> + Send;
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut config = quinn::TransportConfig::default();
    config.keep_alive_interval(Some(Duration::from_millis(500)));
    // A peer silent for this long is dropped so the next call dials again.
    config.max_idle_timeout(Some(VarInt::from_u32(5_000).into()));
    Arc::new(config)
}

fn quic_error(context: &str, error: impl std::fmt::Display) -> WireError {
    WireError::Tls(format!("{context}: {error}"))
}

pub struct Transport {
    endpoint: Endpoint,
    client: Mutex<quinn::ClientConfig>,
    connections: Mutex<HashMap<SocketAddr, Connection>>,
    /// Connections peers opened to us, kept so a reload or a revocation can close them.
    accepted: Arc<Mutex<Vec<Connection>>>,
    /// Node ids whose certificates are refused at every handshake (removed members).
    denied: Arc<RwLock<HashSet<u64>>>,
    /// The current members, once this node knows them ([`Transport::set_members`]).
    members: Members,
    pending_joins: Arc<Semaphore>,
}

fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, WireError> {
    let server_tls = QuicServerConfig::try_from(identity.server_config()?)
        .map_err(|e| quic_error("QUIC server config", e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
    server.transport_config(transport_config());
    Ok(server)
}

fn client_config(identity: &Identity) -> Result<quinn::ClientConfig, WireError> {
    let client_tls = QuicClientConfig::try_from(identity.client_config()?)
        .map_err(|e| quic_error("QUIC client config", e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
    client.transport_config(transport_config());
    Ok(client)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock still guards a valid value: every write replaces whole entries.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Transport {
    /// Binds `listen` for both serving and dialing, so peers see one address per node.
    pub fn bind(listen: SocketAddr, identity: &Identity) -> Result<Arc<Self>, WireError> {
        let endpoint =
            Endpoint::server(server_config(identity)?, listen).map_err(|e| WireError::Bind {
                addr: listen,
                reason: e.to_string(),
            })?;
        Ok(Arc::new(Transport {
            endpoint,
            client: Mutex::new(client_config(identity)?),
            connections: Mutex::new(HashMap::new()),
            accepted: Arc::new(Mutex::new(Vec::new())),
            denied: Arc::new(RwLock::new(HashSet::new())),
            members: Members::default(),
            pending_joins: Arc::new(Semaphore::new(MAX_PENDING_JOINS)),
        }))
    }

    /// The ids of the current members (`None` while this node knows none, as before it is
    /// admitted: its first entries come from a leader it cannot know yet). A certified peer
    /// that is not one of them is served as [`MAX_NON_MEMBER_STREAMS`] requests of at most
    /// [`MAX_JOIN_FRAME_BYTES`] each, so a certificate alone cannot fill this node's memory.
    pub fn set_members(&self, ids: Option<HashSet<u64>>) {
        *self.members.0.write().unwrap_or_else(|p| p.into_inner()) = ids;
    }

    /// Refuses the certificates of `ids` from now on, and closes every open connection with
    /// one of them.
    pub fn deny(&self, ids: impl IntoIterator<Item = u64>) {
        let ids: HashSet<u64> = ids.into_iter().collect();
        // Set first: a connection that registers after the scan below sees the new set when
        // it checks again (accept and dial re-check after registering).
        *self.denied.write().unwrap_or_else(|p| p.into_inner()) = ids.clone();
        let denied = |c: &Connection| peer_node_id(c).is_some_and(|id| ids.contains(&id));
        let closing: Vec<Connection> = {
            let mut dialed = self.lock();
            let gone: Vec<SocketAddr> = dialed
                .iter()
                .filter(|(_, c)| denied(c))
                .map(|(addr, _)| *addr)
                .collect();
            let mut closing: Vec<Connection> =
                gone.iter().filter_map(|addr| dialed.remove(addr)).collect();
            closing.extend(lock(&self.accepted).iter().filter(|c| denied(c)).cloned());
            closing
        };
        for connection in closing {
            connection.close(VarInt::from_u32(CLOSE_REVOKED), b"certificate revoked");
        }
    }

    fn is_denied(denied: &RwLock<HashSet<u64>>, id: u64) -> bool {
        denied
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    /// Serves and dials with `identity` from now on (a CA rotation step). The TLS configs are
    /// built anew, so no session resumes under the old trust. With `close_connections`, every
    /// open connection is closed too, so none authenticated under a CA no longer trusted
    /// survives; peers dial again.
    pub fn reload(&self, identity: &Identity, close_connections: bool) -> Result<(), WireError> {
        let server = server_config(identity)?;
        let client = client_config(identity)?;
        self.endpoint.set_server_config(Some(server));
        *lock(&self.client) = client;
        if close_connections {
            let dialed: Vec<Connection> = self.lock().drain().map(|(_, c)| c).collect();
            let accepted: Vec<Connection> = lock(&self.accepted).drain(..).collect();
            for connection in dialed.iter().chain(&accepted) {
                connection.close(VarInt::from_u32(0), b"credentials reloaded");
            }
        }
        Ok(())
    }

    pub fn local_addr(&self) -> Result<SocketAddr, WireError> {
        self.endpoint.local_addr().map_err(WireError::io)
    }

    /// Accepts connections until the endpoint closes; each request is answered by `handler`.
    pub fn serve<H: Handler>(self: &Arc<Self>, handler: Arc<H>) -> tokio::task::JoinHandle<()> {
        let endpoint = self.endpoint.clone();
        let accepted = self.accepted.clone();
        let denied = self.denied.clone();
        let members = self.members.clone();
        let pending_joins = self.pending_joins.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let handler = handler.clone();
                let accepted = accepted.clone();
                let denied = denied.clone();
                let members = members.clone();
                let pending_joins = pending_joins.clone();
                tokio::spawn(async move {
                    let addr = incoming.remote_address();
                    let connection = match incoming.await {
                        Ok(connection) => connection,
                        // Wrong CA, no ALPN, garbage: the peer is told by TLS; we keep running.
                        Err(e) => {
                            tracing::warn!(peer = %addr, "refused QUIC connection: {e}");
                            return;
                        }
                    };
                    let peer = PeerInfo {
                        addr,
                        node_id: peer_node_id(&connection),
                    };
                    match peer.node_id {
                        Some(id) if Self::is_denied(&denied, id) => {
                            tracing::warn!(peer = %addr, node = id, "refused a revoked member");
                            connection.close(
                                VarInt::from_u32(CLOSE_REVOKED),
                                b"this node's certificate is revoked: it was removed from the cluster; join again with a new join token and data dir",
                            );
                        }
                        Some(id) => {
                            {
                                let mut accepted = lock(&accepted);
                                accepted.retain(|c| c.close_reason().is_none());
                                accepted.push(connection.clone());
                            }
                            // A revocation between the check above and the push.
                            if Self::is_denied(&denied, id) {
                                connection.close(VarInt::from_u32(CLOSE_REVOKED), b"revoked");
                                return;
                            }
                            serve_member(connection, peer, id, members, handler).await
                        }
                        None => match pending_joins.try_acquire_owned() {
                            Ok(_permit) => serve_join(connection, peer, handler).await,
                            Err(_) => {
                                tracing::warn!(peer = %addr, "too many joins at once; closed");
                                connection.close(
                                    VarInt::from_u32(CLOSE_PROTOCOL_VIOLATION),
                                    b"too many joins in progress; retry in a second",
                                );
                            }
                        },
                    }
                });
            }
        })
    }

    /// Sends one request and waits for its answer. A cached connection that turns out to be
    /// dead is replaced once.
    pub async fn call(&self, addr: SocketAddr, message: &Message) -> Result<Message, WireError> {
        self.call_node(addr, None, message).await
    }

    /// Like [`Transport::call`], to the node `expected` (when given): a peer at `addr` whose
    /// certificate names another node gets no request. A member's address is only what the
    /// membership says; the certificate is what proves who answers, so another member (or a
    /// process that took the port) cannot answer for the leader or acknowledge its entries.
    pub async fn call_node(
        &self,
        addr: SocketAddr,
        expected: Option<u64>,
        message: &Message,
    ) -> Result<Message, WireError> {
        let check = |connection: &Connection| {
            match (expected, peer_node_id(connection)) {
            (Some(want), Some(got)) if want != got => Err(WireError::Refused(format!(
                "{addr} answered with the certificate of node {got}, not of node {want} that                  the membership puts there: another node took that address"
            ))),
            _ => Ok(()),
        }
        };
        let connection = self.connection(addr).await?;
        check(&connection)?;
        match request(&connection, message).await {
            Err(WireError::Connection(_)) => {
                self.forget(addr, &connection);
                let fresh = self.connection(addr).await?;
                check(&fresh)?;
                request(&fresh, message).await
            }
            other => other,
        }
    }

    async fn connection(&self, addr: SocketAddr) -> Result<Connection, WireError> {
        let cached = self.lock().get(&addr).cloned();
        if let Some(connection) = cached {
            if connection.close_reason().is_none() {
                return Ok(connection);
            }
        }
        let client = lock(&self.client).clone();
        let connection = self
            .endpoint
            .connect_with(client, addr, PEER_SERVER_NAME)
            .map_err(|e| WireError::Connection(format!("cannot dial {addr}: {e}")))?
            .await
            .map_err(|e| WireError::Connection(format!("cannot connect to {addr}: {e}")))?;
        match peer_node_id(&connection) {
            Some(id) if Self::is_denied(&self.denied, id) => {
                connection.close(VarInt::from_u32(CLOSE_REVOKED), b"certificate revoked");
                return Err(WireError::Refused(format!(
                    "{addr} presented the certificate of node {id}, which was removed from the cluster"
                )));
            }
            Some(_) => {}
            None => {
                connection.close(VarInt::from_u32(CLOSE_PROTOCOL_VIOLATION), b"no node id");
                return Err(WireError::Refused(format!(
                    "{addr} presented a certificate that names no node id"
                )));
            }
        }
        self.lock().insert(addr, connection.clone());
        if peer_node_id(&connection).is_some_and(|id| Self::is_denied(&self.denied, id)) {
            self.forget(addr, &connection);
            connection.close(VarInt::from_u32(CLOSE_REVOKED), b"certificate revoked");
            return Err(WireError::Refused(format!(
                "{addr} was removed from the cluster"
            )));
        }
        Ok(connection)
    }

    fn forget(&self, addr: SocketAddr, dead: &Connection) {
        let mut connections = self.lock();
        if connections.get(&addr).map(Connection::stable_id) == Some(dead.stable_id()) {
            connections.remove(&addr);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Connection>> {
        lock(&self.connections)
    }

    pub fn close(&self) {
        self.endpoint
            .close(VarInt::from_u32(0), b"node shutting down");
    }
}

async fn request(connection: &Connection, message: &Message) -> Result<Message, WireError> {
    let exchange = async {
        let (mut send, mut recv) = connection
            .open_bi()
            .await
            .map_err(|e| WireError::Connection(e.to_string()))?;
        write_frame(&mut send, message).await?;
        send.finish()
            .map_err(|e| WireError::Connection(e.to_string()))?;
        read_frame(&mut recv, MAX_FRAME_BYTES).await
    };
    // A stream error only says "connection lost"; the connection says why (revoked, …).
    exchange
        .await
        .map_err(|error| match connection.close_reason() {
            Some(reason) if matches!(error, WireError::Connection(_)) => {
                WireError::Connection(reason.to_string())
            }
            _ => error,
        })
}

fn close_for(connection: &Connection, peer: &PeerInfo, reason: &str) {
    tracing::warn!(peer = %peer.addr, "closing connection: {reason}");
    connection.close(
        VarInt::from_u32(CLOSE_PROTOCOL_VIOLATION),
        reason.as_bytes(),
    );
}

/// The ids of the members, shared with every connection's task.
#[derive(Clone, Default)]
struct Members(Arc<RwLock<Option<HashSet<u64>>>>);

impl Members {
    /// Whether `id` may send full-size frames: a member, or anyone while none is known.
    fn admits(&self, id: u64) -> bool {
        match &*self.0.read().unwrap_or_else(|p| p.into_inner()) {
            Some(members) => members.contains(&id),
            None => true,
        }
    }
}

/// A peer with a certificate: one request per stream, each read within a deadline; a member
/// any number at once with frames up to [`MAX_FRAME_BYTES`], a non-member a few and small
/// (checked per stream, as a joiner becomes a member on the connection it joined with).
async fn serve_member<H: Handler>(
    connection: Connection,
    peer: PeerInfo,
    id: u64,
    members: Members,
    handler: Arc<H>,
) {
    let non_member_streams = Arc::new(Semaphore::new(MAX_NON_MEMBER_STREAMS));
    loop {
        let (mut send, mut recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(_) => return, // closed or timed out; the peer dials again when it needs us
        };
        let (max_frame, permit) = if members.admits(id) {
            (MAX_FRAME_BYTES, None)
        } else {
            match non_member_streams.clone().try_acquire_owned() {
                Ok(permit) => (MAX_JOIN_FRAME_BYTES, Some(permit)),
                Err(_) => {
                    tracing::warn!(peer = %peer.addr, node = id, "a non-member opened too many streams");
                    let _ = recv.stop(VarInt::from_u32(CLOSE_PROTOCOL_VIOLATION));
                    continue;
                }
            }
        };
        let handler = handler.clone();
        let connection = connection.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let read = tokio::time::timeout(STREAM_READ_TIMEOUT, read_frame(&mut recv, max_frame));
            let message = match read.await {
                Ok(Ok(message)) => message,
                Ok(Err(e)) => return close_for(&connection, &peer, &format!("bad frame: {e}")),
                Err(_) => {
                    tracing::warn!(peer = %peer.addr, "a request frame did not arrive in time");
                    let _ = recv.stop(VarInt::from_u32(CLOSE_PROTOCOL_VIOLATION));
                    return;
                }
            };
            let answer = handler.handle(peer, message).await;
            if write_frame(&mut send, &answer).await.is_ok() {
                let _ = send.finish();
            }
        });
    }
}

/// A peer without a certificate: one stream, one join request of bounded size, answered, all
/// within [`JOIN_DEADLINE`]; then the connection is closed.
async fn serve_join<H: Handler>(connection: Connection, peer: PeerInfo, handler: Arc<H>) {
    let started = Instant::now();
    let exchange = async {
        let (mut send, mut recv) = connection.accept_bi().await.ok()?;
        let message = match read_frame(&mut recv, MAX_JOIN_FRAME_BYTES).await {
            Ok(message @ Message::JoinRequest { .. }) => message,
            Ok(_) => {
                close_for(
                    &connection,
                    &peer,
                    "a peer without a cluster certificate may only send a join request",
                );
                return None;
            }
            Err(e) => {
                close_for(&connection, &peer, &format!("bad join frame: {e}"));
                return None;
            }
        };
        let answer = handler.handle(peer, message).await;
        write_frame(&mut send, &answer).await.ok()?;
        send.finish().ok()?;
        Some(())
    };
    match tokio::time::timeout(JOIN_DEADLINE, exchange).await {
        Err(_) => close_for(
            &connection,
            &peer,
            &format!("no join request was answered within {JOIN_DEADLINE:?}"),
        ),
        Ok(None) => {}
        Ok(Some(())) => {
            // The joiner closes once it has read the answer; wait for that, not longer.
            let left = JOIN_DEADLINE.saturating_sub(started.elapsed());
            let _ = tokio::time::timeout(left, connection.closed()).await;
            connection.close(VarInt::from_u32(0), b"join answered");
        }
    }
}

/// Asks a member at `target` to let this node in. The member must prove it belongs to the CA
/// named by the token; this node proves it holds the token's secret.
pub async fn request_join(
    target: SocketAddr,
    token: &JoinToken,
    node_name: &str,
    csr_der: Vec<u8>,
) -> Result<JoinGrant, WireError> {
    let bind: SocketAddr = if target.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = Endpoint::client(bind).map_err(|e| WireError::Bind {
        addr: bind,
        reason: e.to_string(),
    })?;
    let tls = QuicClientConfig::try_from(join_client_config(token.ca_fingerprint)?)
        .map_err(|e| quic_error("QUIC client config", e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(tls));
    config.transport_config(transport_config());
    let connection = endpoint
        .connect_with(config, target, PEER_SERVER_NAME)
        .map_err(|e| WireError::Connection(format!("cannot dial {target}: {e}")))?
        .await
        .map_err(|e| match handshake_refusal(&e) {
            // A wrong CA does not get better with retries: say so at once.
            true => WireError::Refused(format!("{target} failed the TLS handshake: {e}")),
            false => WireError::Connection(format!("cannot connect to {target}: {e}")),
        })?;
    let answer = request(
        &connection,
        &Message::JoinRequest {
            secret: token.secret.to_vec(),
            node_name: node_name.to_string(),
            csr_der,
        },
    )
    .await;
    connection.close(VarInt::from_u32(0), b"joined");
    endpoint.wait_idle().await;
    match answer? {
        Message::JoinGranted(grant) => Ok(grant),
        Message::Refused { reason } => Err(WireError::Refused(reason)),
        other => Err(WireError::Malformed(format!(
            "unexpected answer to a join request: {other:?}"
        ))),
    }
}

/// Whether a connection failed in the TLS handshake (a certificate refused by either side), as
/// opposed to the network.
fn handshake_refusal(error: &quinn::ConnectionError) -> bool {
    let crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match error {
        quinn::ConnectionError::TransportError(e) => crypto(e.code),
        quinn::ConnectionError::ConnectionClosed(close) => crypto(close.error_code),
        _ => false,
    }
}

#[cfg(test)]
pub(crate) async fn tests_request(
    connection: &Connection,
    message: &Message,
) -> Result<Message, WireError> {
    request(connection, message).await
}
