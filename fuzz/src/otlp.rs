//! An in-memory [`Ingest`] for the OTLP receivers' fuzz targets: it knows one probe server span
//! (so requests that name it as their parent go through decoding and re-parenting), says a
//! sync with the probes happened (so the second look runs too), and stores nothing, or refuses
//! when told to (the "not stored" answers).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use apiary_pipeline::sources::{Ingest, NotTaken};
use apiary_pipeline::{ServerSpanIndex, Signal};
use apiary_span::SpanKind;

/// The probe span's W3C traceparent: trace `ab…ab`, caller span `01…01`. Seeds whose server
/// spans have this trace id and parent span id are re-parented.
pub const TRACEPARENT: &str = "00-abababababababababababababababab-0101010101010101-01";
pub const KNOWN_TRACE_ID: [u8; 16] = [0xab; 16];
pub const KNOWN_PARENT_ID: [u8; 8] = [0x01; 8];

pub struct FuzzIngest {
    index: ServerSpanIndex,
    refuse: AtomicBool,
}

impl FuzzIngest {
    fn new() -> Self {
        let index = ServerSpanIndex::default();
        let mut probe = apiary_span::testing::http_span(SpanKind::Server, "GET", "/a", 200);
        probe.traceparent = Some(TRACEPARENT.into());
        index.remember(&probe);
        FuzzIngest {
            index,
            refuse: AtomicBool::new(false),
        }
    }

    /// Whether `accept` refuses (the receiver then answers "not stored, retry").
    pub fn set_refuse(&self, refuse: bool) {
        self.refuse.store(refuse, Ordering::Relaxed);
    }
}

/// Shared by every input; only `refuse` changes between them.
pub static INGEST: LazyLock<Arc<FuzzIngest>> = LazyLock::new(|| Arc::new(FuzzIngest::new()));

impl Ingest for FuzzIngest {
    fn server_spans(&self) -> &ServerSpanIndex {
        &self.index
    }

    async fn sync_with_probes(&self, _timeout: Duration) -> bool {
        true
    }

    async fn accept(&self, _signal: Signal, _items: u32, payload: &[u8]) -> Result<(), NotTaken> {
        if self.refuse.load(Ordering::Relaxed) {
            return Err(NotTaken::Backpressure {
                reason: format!("refused {} bytes (fuzzing)", payload.len()),
                retry_after: Duration::from_secs(1),
            });
        }
        Ok(())
    }
}
