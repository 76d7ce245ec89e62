//! The Raft type configuration: what is replicated and what a member is.

use std::fmt;
use std::io::Cursor;

use apiary_config::{ConfigError, Proposal};
use serde::{Deserialize, Serialize};

pub type NodeId = u64;

/// A member of the cluster as Raft knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    /// QUIC address other peers dial, `host:port`.
    pub addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

/// An entry of the replicated log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    Config(Proposal),
    /// A step of rotating the cluster CA (see [`crate::ca`]).
    Ca(crate::ca::CaStep),
    /// An API token created or revoked (see [`crate::tokens`]).
    Token(crate::tokens::TokenStep),
    /// A join token created, revoked or used (see [`crate::join_tokens`]).
    JoinToken(crate::join_tokens::JoinTokenStep),
}

/// What applying an entry produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Committed {
        version: u64,
    },
    Rejected {
        error: ConfigError,
    },
    /// A blank or membership entry, which carries no config change.
    Internal,
}

openraft::declare_raft_types!(
    /// Apiary's Raft: config proposals in, config versions out.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Member>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
