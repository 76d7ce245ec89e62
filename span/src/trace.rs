//! Where a request sits in a trace, as the kernel decided when it started (`bpf/trace.h`): its
//! ids, its parent when one was found on this node, and how it was found or why not.

use serde::{Serialize, Serializer};

/// How a span's parent was found, or why it was left a root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// A server span: the child of the client span of the same request on its connection.
    Connection,
    /// A client span: the child of the server request its thread was handling.
    Thread,
    /// No parent seen on this node: a new trace.
    Root,
    /// A server span whose connection's client is traced here, but not at this request (it
    /// sent another since, or its count started elsewhere): left a root rather than guessed.
    RootOutOfOrder,
    /// A client span sent by a thread handling several server requests at once.
    RootThreadBusy,
    /// A client span sent by a thread whose server request was answered or is gone.
    RootThreadStale,
    /// A client span sent by a thread that has interleaved server requests (an event loop):
    /// its thread says nothing about which request caused it.
    RootMultiplexed,
    /// A server span: the child of the client span whose node sent the request's context in
    /// a TCP header option (another node, `bpf/propagate.h`).
    Remote,
    /// A server span whose connection carried a context from the client's node, but not for
    /// this request's first byte: left a root rather than guessed.
    RootRemoteOutOfOrder,
}

impl Link {
    /// Every value, in the order `/metrics` lists them.
    pub const ALL: [Link; 9] = [
        Link::Connection,
        Link::Thread,
        Link::Remote,
        Link::Root,
        Link::RootOutOfOrder,
        Link::RootThreadBusy,
        Link::RootThreadStale,
        Link::RootMultiplexed,
        Link::RootRemoteOutOfOrder,
    ];

    pub fn is_joined(self) -> bool {
        matches!(self, Link::Connection | Link::Thread | Link::Remote)
    }

    /// The reason as `/metrics` labels it (`connection`, `thread`, `no_parent`, ...).
    pub fn reason(self) -> &'static str {
        match self {
            Link::Connection => "connection",
            Link::Thread => "thread",
            Link::Root => "no_parent",
            Link::RootOutOfOrder => "out_of_order",
            Link::RootThreadBusy => "thread_busy",
            Link::RootThreadStale => "thread_stale",
            Link::RootMultiplexed => "thread_multiplexed",
            Link::Remote => "remote",
            Link::RootRemoteOutOfOrder => "remote_out_of_order",
        }
    }
}

/// A span's trace context from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct TraceLink {
    #[serde(serialize_with = "hex")]
    pub trace_id: [u8; 16],
    #[serde(serialize_with = "hex")]
    pub span_id: [u8; 8],
    #[serde(serialize_with = "hex_option")]
    pub parent_span_id: Option<[u8; 8]>,
    pub link: Link,
}

/// Lowercase hex, as W3C trace context and OTLP/JSON write ids.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn hex<S: Serializer, const N: usize>(bytes: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&to_hex(bytes))
}

fn hex_option<S: Serializer>(bytes: &Option<[u8; 8]>, s: S) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(bytes) => s.serialize_str(&to_hex(bytes)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_in_json() {
        let link = TraceLink {
            trace_id: [0xab; 16],
            span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            parent_span_id: None,
            link: Link::RootOutOfOrder,
        };
        let json = serde_json::to_value(link).unwrap();
        assert_eq!(json["trace_id"], "ab".repeat(16));
        assert_eq!(json["span_id"], "0102030405060708");
        assert!(json["parent_span_id"].is_null());
        assert_eq!(json["link"], "root_out_of_order");
    }
}
