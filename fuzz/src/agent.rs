//! `apiary.toml` loading, compiled from the node's own files: the node (`node/`) is a binary
//! crate, so nothing outside it can name `agent::settings`; these `#[path]` modules are those
//! files as they are, not copies. `settings.rs` reads `super::args`, which is why both are here
//! under a module named `agent`, as in the node.
//!
//! If either file starts to use another module of the node (`crate::…`), this stops building:
//! then give the node a library target, or move the file-settings code into a crate.

#[allow(dead_code)]
#[path = "../../node/src/agent/args.rs"]
pub mod args;

#[allow(dead_code)]
#[path = "../../node/src/agent/settings.rs"]
pub mod settings;
