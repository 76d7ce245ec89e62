//! MySQL and MariaDB (client/server protocol 10): text and prepared statements and their
//! results on the connections the kernel found from the server's greeting
//! (bpf/protocol_mysql.h, bpf/db.h), and the spans built from them.
//!
//! The kernel sends every buffer of such a connection; each direction is followed as a byte
//! stream (`crate::protocol::stream`), its packets framed (`wire`), replies paired with the
//! commands that asked for them (`matcher`), and each statement's text reduced to what a span
//! may show (`crate::protocol::sql` in its MySQL dialect: literals replaced by `?`, the
//! operation, the one table it names). `db.system.name` is `mariadb` when the greeting says
//! so, else `mysql`.

mod matcher;
mod wire;

pub use matcher::Matcher;

#[cfg(test)]
mod tests;
