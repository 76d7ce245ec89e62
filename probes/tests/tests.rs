//! The probes' integration tests, as one binary: the probes in the real kernel with real servers
//! and clients in other processes (`kernel`), requests paired in the kernel (`pairing`) and node
//! scopes (`scope`). They need root (and `ip netns`, cgroup v2 for `scope`); elsewhere each test
//! is skipped with one message.

#[macro_use]
mod common;
mod cost;
mod kernel;
mod pairing;
mod scope;
