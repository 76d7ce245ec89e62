//! The OTLP/HTTP receiver (pipeline/src/sources/otlp_http.rs) as apps reach it: its axum
//! router, called in memory with one POST whose headers the first byte chooses and whose body
//! is the rest. That covers the content-type and content-encoding checks, gzip inflation, the
//! protobuf wire-level scan, full protobuf and OTLP/JSON decoding, and re-parenting under the
//! probe span the in-memory ingest knows.
//!
//! First byte, by bits: 0-1 signal (traces, metrics, logs, traces), 2-3 content type
//! (protobuf, JSON, JSON with a charset, text/plain), 4-5 content encoding (none, gzip,
//! identity, br), 6 the ingest refuses to store, 7 the harness gzips the body first (so that
//! mutations reach the decoders behind gzip; clear, a gzip body is given as it is).
#![no_main]

use std::io::Write;
use std::sync::LazyLock;

use apiary_fuzz::otlp::INGEST;
use apiary_pipeline::sources::otlp_http::router;
use apiary_pipeline::Signal;
use axum::body::Body;
use axum::http::{header, Request};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

static ROUTER: LazyLock<axum::Router> = LazyLock::new(|| router(INGEST.clone()));

fuzz_target!(|data: &[u8]| {
    let (options, body) = apiary_fuzz::selector(data);
    let signal = [
        Signal::Traces,
        Signal::Metrics,
        Signal::Logs,
        Signal::Traces,
    ][usize::from(options & 3)];
    let content_type = [
        "application/x-protobuf",
        "application/json",
        "application/json; charset=utf-8",
        "text/plain",
    ][usize::from((options >> 2) & 3)];
    let encoding =
        [None, Some("gzip"), Some("identity"), Some("br")][usize::from((options >> 4) & 3)];
    INGEST.set_refuse(options & 0x40 != 0);
    let body = if options & 0x80 != 0 {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(body).expect("gzip into memory");
        encoder.finish().expect("gzip into memory")
    } else {
        body.to_vec()
    };

    let mut request = Request::post(signal.path()).header(header::CONTENT_TYPE, content_type);
    if let Some(encoding) = encoding {
        request = request.header(header::CONTENT_ENCODING, encoding);
    }
    let request = request.body(Body::from(body)).expect("a valid request");
    apiary_fuzz::RUNTIME.block_on(async {
        let response = ROUTER.clone().oneshot(request).await.expect("infallible");
        let _ = response.into_body().collect().await;
    });
});
