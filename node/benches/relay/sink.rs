//! The benches' OTLP/HTTP sink: trace export requests (gzip inflated) counted at the protobuf
//! wire level, answered 200, or 503 while [`SINK_DOWN`] is set and after [`SINK_LATENCY_MS`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use apiary_pipeline::otlp::wire;
use apiary_pipeline::Signal;
use axum::body::Bytes;
use axum::http::StatusCode;

/// While set, the OTLP/HTTP sink answers 503: a destination that is down (the drain round).
pub static SINK_DOWN: AtomicBool = AtomicBool::new(false);

/// The HTTP sink's answer waits this long (ms): a destination that far away.
pub static SINK_LATENCY_MS: AtomicU64 = AtomicU64::new(0);

/// Whether any export request reached the sink compressed.
pub static COMPRESSED_SEEN: AtomicBool = AtomicBool::new(false);

/// The sink: OTLP/HTTP traces (gzip inflated), counted at the wire level, always 200.
pub async fn start_sink(spans: Arc<AtomicU64>) -> u16 {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let spans = spans.clone();
            async move {
                if SINK_DOWN.load(Ordering::Relaxed) {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let latency = SINK_LATENCY_MS.load(Ordering::Relaxed);
                if latency > 0 {
                    tokio::time::sleep(Duration::from_millis(latency)).await;
                }
                let gzip = headers
                    .get("content-encoding")
                    .is_some_and(|v| v.as_bytes() == b"gzip");
                if gzip {
                    COMPRESSED_SEEN.store(true, Ordering::Relaxed);
                }
                let body = if gzip {
                    let mut inflated = Vec::new();
                    let mut decoder = flate2::read::GzDecoder::new(body.as_ref());
                    if std::io::Read::read_to_end(&mut decoder, &mut inflated).is_err() {
                        return StatusCode::BAD_REQUEST;
                    }
                    Bytes::from(inflated)
                } else {
                    body
                };
                match wire::scan(Signal::Traces, &body, |_, _| {}) {
                    Ok(n) => {
                        spans.fetch_add(n, Ordering::Relaxed);
                        StatusCode::OK
                    }
                    Err(_) => StatusCode::BAD_REQUEST,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}
