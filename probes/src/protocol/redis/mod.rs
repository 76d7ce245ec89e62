//! Redis (RESP2 and RESP3): commands and replies on the connections the kernel found to speak
//! it (bpf/protocol_redis.h, bpf/db.h), and the spans built from them.
//!
//! The kernel sends every buffer of such a connection; each direction is followed as a byte
//! stream (`stream`), its messages walked (`resp`), and replies paired with commands in order
//! (`matcher`): Redis answers a connection's commands in the order they came, so pipelined
//! commands pair up. RESP3 pushes answer no command and are passed over. A connection that
//! can no longer be followed (bytes beyond the capture, subscriptions, garbage) stops being
//! paired and its messages are counted as unparsed, rather than risk a reply on the wrong
//! command.

mod matcher;
mod resp;

pub use matcher::Matcher;

#[cfg(test)]
mod tests;
