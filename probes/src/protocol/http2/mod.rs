//! HTTP/2 in cleartext and gRPC over it: requests and responses on the connections the kernel
//! found from the client's preface (bpf/protocol_http2.h, bpf/db.h), and their spans.
//!
//! The kernel sends every buffer of such a connection, a writev's iovecs each as a buffer of
//! its own; each direction is followed as a byte stream of frames (`frame`), its header blocks
//! decoded with that direction's HPACK table (loona-hpack), and each response paired with its
//! request by stream id (`matcher`), so that many concurrent streams on one connection pair
//! up. A request that says `content-type: application/grpc` is a gRPC call: its span waits
//! for the `grpc-status` of the trailers. A header block that cannot be decoded (cut by the
//! capture, or not HPACK) leaves the direction's table unknown: the connection stops being
//! paired and its streams count as unparsed, rather than give a header from a guessed table.

mod frame;
mod matcher;

pub use matcher::Matcher;

#[cfg(test)]
mod tests;
