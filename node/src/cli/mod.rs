//! The clients: every `apiary` subcommand but `node`. They ask any node's HTTP API (`client`)
//! and print tables or JSON; `init` and `doctor` also check this machine (`checks`).

pub mod ca;
mod checks;
pub mod client;
pub mod config;
pub mod doctor;
pub mod init;
pub mod members;
pub mod predict;
pub mod profile;
mod profile_site;
/// Spinners and counters for long steps; the agent reports its startup steps through it too.
pub mod progress;
pub mod status;
pub mod tail;
pub mod tokens;
pub mod trace;
