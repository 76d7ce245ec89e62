//! QUIC endpoint: one UDP socket per node serves peers and dials them, one bidirectional stream
//! per request.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, VarInt};

use crate::frame::{read_frame, write_frame, JoinGrant, Message};
use crate::tls::{join_client_config, Identity, JoinToken, PEER_SERVER_NAME};
use crate::WireError;

/// Close code for a peer that broke the protocol (bad frame, no certificate, …).
const CLOSE_PROTOCOL_VIOLATION: u32 = 1;

/// Who sent a request.
#[derive(Debug, Clone, Copy)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// The peer presented a certificate of this cluster's CA.
    pub member: bool,
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
    /// Connections peers opened to us, kept so a reload can close them.
    accepted: Arc<Mutex<Vec<Connection>>>,
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
        }))
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
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let handler = handler.clone();
                let accepted = accepted.clone();
                tokio::spawn(async move {
                    let addr = incoming.remote_address();
                    match incoming.await {
                        Ok(connection) => {
                            {
                                let mut accepted = lock(&accepted);
                                accepted.retain(|c| c.close_reason().is_none());
                                accepted.push(connection.clone());
                            }
                            serve_connection(connection, handler).await
                        }
                        // Wrong CA, no ALPN, garbage: the peer is told by TLS; we keep running.
                        Err(e) => tracing::warn!(peer = %addr, "refused QUIC connection: {e}"),
                    }
                });
            }
        })
    }

    /// Sends one request and waits for its answer. A cached connection that turns out to be
    /// dead is replaced once.
    pub async fn call(&self, addr: SocketAddr, message: &Message) -> Result<Message, WireError> {
        let connection = self.connection(addr).await?;
        match request(&connection, message).await {
            Err(WireError::Connection(_)) => {
                self.forget(addr, &connection);
                let fresh = self.connection(addr).await?;
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
        self.lock().insert(addr, connection.clone());
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
    let (mut send, mut recv) = connection
        .open_bi()
        .await
        .map_err(|e| WireError::Connection(e.to_string()))?;
    write_frame(&mut send, message).await?;
    send.finish()
        .map_err(|e| WireError::Connection(e.to_string()))?;
    read_frame(&mut recv).await
}

async fn serve_connection<H: Handler>(connection: Connection, handler: Arc<H>) {
    let peer = PeerInfo {
        addr: connection.remote_address(),
        member: connection.peer_identity().is_some(),
    };
    loop {
        let (mut send, mut recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(_) => return, // closed or timed out; the peer dials again when it needs us
        };
        let handler = handler.clone();
        let connection = connection.clone();
        tokio::spawn(async move {
            let message = match read_frame(&mut recv).await {
                Ok(message) => message,
                Err(e) => {
                    let reason = format!("bad frame: {e}");
                    tracing::warn!(peer = %peer.addr, "closing connection: {reason}");
                    connection.close(
                        VarInt::from_u32(CLOSE_PROTOCOL_VIOLATION),
                        reason.as_bytes(),
                    );
                    return;
                }
            };
            if !peer.member && !matches!(message, Message::JoinRequest { .. }) {
                let reason = "a peer without a cluster certificate may only send a join request";
                tracing::warn!(peer = %peer.addr, "closing connection: {reason}");
                connection.close(
                    VarInt::from_u32(CLOSE_PROTOCOL_VIOLATION),
                    reason.as_bytes(),
                );
                return;
            }
            let answer = handler.handle(peer, message).await;
            if write_frame(&mut send, &answer).await.is_ok() {
                let _ = send.finish();
            }
        });
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
