//! What the fuzz targets (`fuzz_targets/`) share: the node's settings module, an in-memory
//! [`Ingest`](apiary_pipeline::sources::Ingest) for the OTLP receivers, and one async runtime.
//!
//! Nothing here decodes anything: every target hands its bytes to the production code.

pub mod agent;
pub mod otlp;

use std::sync::LazyLock;

/// One current-thread runtime for the targets whose code under test is async (the receivers):
/// each input is one `block_on`, so nothing outlives it.
pub static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
});

/// Splits `data` at its first byte: the selector a target reads its options from, and the rest.
pub fn selector(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (first, rest),
        None => (0, &[]),
    }
}
