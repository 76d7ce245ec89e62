//! Apiary's peer transport.
//!
//! Peers talk QUIC ([`quinn`]) with mutual TLS under a cluster CA ([`tls`]): a member presents a
//! certificate signed by the CA and checks the other side's; a node that wants to join presents
//! none, pins the CA by the fingerprint in its join token, and may send nothing but a join
//! request. Each request is one bidirectional stream carrying one length-prefixed, validated
//! rkyv [`frame`]; a malformed, oversized or unauthenticated frame closes that connection with a
//! logged reason and the node goes on.

pub mod frame;
pub mod tls;
mod transport;

pub use frame::{JoinGrant, Message, Service, MAX_FRAME_BYTES, PROTOCOL_VERSION};
pub use tls::{ClusterCa, Identity, JoinToken};
pub use transport::{request_join, Handler, PeerInfo, Transport};

use std::net::SocketAddr;

#[derive(Debug, Clone, thiserror::Error)]
pub enum WireError {
    #[error("cannot bind QUIC on {addr}: {reason} (is another node using this port?)")]
    Bind { addr: SocketAddr, reason: String },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("peer connection failed: {0}")]
    Connection(String),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("peer speaks wire protocol {theirs}, this node speaks {ours}: upgrade the older node")]
    Version { theirs: u16, ours: u16 },
    #[error("bad join token: {0}")]
    BadToken(String),
    #[error("refused by peer: {0}")]
    Refused(String),
}

impl WireError {
    pub(crate) fn io(error: impl std::fmt::Display) -> Self {
        WireError::Connection(error.to_string())
    }
}

#[cfg(test)]
mod tests;
