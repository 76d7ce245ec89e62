//! PostgreSQL (frontend/backend protocol 3): statements and results on the connections the
//! kernel found to speak it from their startup packet (bpf/protocol_postgres.h, bpf/db.h),
//! and the spans built from them.
//!
//! The kernel sends every buffer of such a connection; each direction is followed as a byte
//! stream (`crate::protocol::stream`), its messages framed (`wire`), results paired with the
//! Query or Execute that asked for them (`matcher`), and each statement's text reduced to what
//! a span may show (`crate::protocol::sql` in its PostgreSQL dialect: literals replaced by `?`,
//! the operation, the one table it names).

mod matcher;
mod wire;

pub use matcher::Matcher;

#[cfg(test)]
mod tests;
