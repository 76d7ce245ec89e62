//! The OTLP/gRPC receiver (pipeline/src/sources/otlp_grpc.rs) as apps reach it: its tonic
//! services (`otlp_grpc::routes`, what `serve` runs: gzip accepted, 8 MiB messages), called in
//! memory with one request whose headers the first bytes choose and whose body is the rest.
//! That covers tonic's length-prefixed message framing with its compressed flag, gzip
//! inflation, prost decoding of the three export requests, and re-parenting.
//!
//! First byte, by bits: 0-1 method (trace, metrics or logs Export, or an unknown method), 2-3
//! `grpc-encoding` (none, gzip, identity, deflate), 4 the ingest refuses to store, 5 the
//! harness frames the body itself (flag byte and length, so mutations reach the message; clear,
//! the body is given as it is, framing included), 6 with 5: the harness gzips the message and
//! sets the compressed flag, 7 the body arrives in chunks of the second byte's size (plus one).
#![no_main]

use std::io::Write;
use std::sync::LazyLock;

use apiary_fuzz::otlp::INGEST;
use apiary_pipeline::sources::otlp_grpc::routes;
use axum::body::Body;
use axum::http::{header, Request};
use bytes::Bytes;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

static ROUTES: LazyLock<tonic::service::Routes> = LazyLock::new(|| routes(INGEST.clone()));

const PATHS: [&str; 4] = [
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "/opentelemetry.proto.collector.trace.v1.TraceService/Other",
];

fuzz_target!(|data: &[u8]| {
    let (options, rest) = apiary_fuzz::selector(data);
    let (chunk, body) = apiary_fuzz::selector(rest);
    let path = PATHS[usize::from(options & 3)];
    let encoding =
        [None, Some("gzip"), Some("identity"), Some("deflate")][usize::from((options >> 2) & 3)];
    INGEST.set_refuse(options & 0x10 != 0);
    let body = if options & 0x20 != 0 {
        let (compressed, message) = if options & 0x40 != 0 {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(body).expect("gzip into memory");
            (1u8, encoder.finish().expect("gzip into memory"))
        } else {
            (0u8, body.to_vec())
        };
        let mut framed = Vec::with_capacity(5 + message.len());
        framed.push(compressed);
        framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
        framed.extend_from_slice(&message);
        framed
    } else {
        body.to_vec()
    };
    let body = if options & 0x80 != 0 {
        let pieces: Vec<Result<Bytes, std::io::Error>> = body
            .chunks(usize::from(chunk) + 1)
            .map(|piece| Ok(Bytes::copy_from_slice(piece)))
            .collect();
        Body::from_stream(futures_util::stream::iter(pieces))
    } else {
        Body::from(body)
    };

    let mut request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers");
    if let Some(encoding) = encoding {
        request = request.header("grpc-encoding", encoding);
    }
    let request = request.body(body).expect("a valid request");
    apiary_fuzz::RUNTIME.block_on(async {
        let response = ROUTES.clone().oneshot(request).await.expect("infallible");
        let _ = response.into_body().collect().await;
    });
});
