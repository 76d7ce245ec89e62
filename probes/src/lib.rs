//! Apiary's eBPF probes.
//!
//! `build.rs` compiles `bpf/apiary.bpf.c` (CO-RE) with clang; [`ProbeSet`] loads it with aya,
//! attaches each probe (`http`, `tls`, `tcp`, `process`) and writes the replicated config into
//! BPF maps, so a config change never reloads a program or interrupts the event stream. The
//! [`observer`] reads the ring buffer and builds HTTP spans, finished TCP flows and process
//! names (each protocol in its module under [`protocol`]). A probe that cannot attach is reported with the kernel's reason; the others run on.

pub mod abi;
mod attach;
mod btf_offsets;
pub mod kernel_red;
mod loader;
pub mod observer;
pub mod protocol;

pub use apiary_span::{Span, SpanKind};
pub use kernel_red::Counted;
pub use loader::{
    check_ring_bytes, find_libssl, ProbeReport, ProbeSet, ProbeState, Scope, DEFAULT_RING_BYTES,
};
/// The probes of protocols found once per connection (bpf/db.h): they ride the http probe's
/// socket tracepoints and have no programs of their own.
pub const DB_PROBES: [&str; 4] = ["redis", "postgres", "mysql", "http2"];

pub use observer::{spawn_reader, Assembler, CountedTap, Events, KeepRule, Observer, TcpFlow};

/// Fails with [`ProbeError::NotRoot`] unless this process may load eBPF programs.
pub fn check_privileges() -> Result<(), ProbeError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(ProbeError::NotRoot);
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "loading eBPF probes needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE): run \
         `sudo apiary node …`, or pass --no-probes to run the mesh without probes"
    )]
    NotRoot,
    #[error("cannot load the eBPF probes: {0}")]
    Load(String),
    #[error("cannot update a probe map: {0}")]
    Map(String),
    #[error("{0}")]
    Scope(String),
}
