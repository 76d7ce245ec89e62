//! The OTLP/HTTP receiver (default 127.0.0.1:4318): instrumented apps send traces, metrics and
//! logs here (protobuf or OTLP/JSON, optionally gzip), and they go to every export destination
//! beside the probes' spans. A request is answered 200 only once it is in every destination's
//! disk buffer. The gRPC receiver (`receiver_grpc`) shares `ingest`.

use std::io::Read;
use std::sync::Arc;

use apiary_pipeline::{wire, OtlpRequest, Signal};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use crate::agent::export::Export;

/// Requests larger than this (after decompression) are refused: 413 over HTTP (the OTLP way to
/// say "split it"), RESOURCE_EXHAUSTED-style errors over gRPC.
pub const MAX_REQUEST_BYTES: usize = 8 << 20;

/// Re-parents app spans under the probes' spans of the same requests, then queues the request
/// for every destination. `Err` means not stored: the app should retry.
pub async fn ingest(export: &Export, mut request: OtlpRequest) -> Result<(), String> {
    if let OtlpRequest::Traces(traces) = &mut request {
        if export.server_spans.reparent(traces).unknown_callers > 0
            && sync_with_probes(export).await
        {
            export.server_spans.reparent(traces);
        }
    }
    let items = request.items().min(u32::MAX as u64) as u32;
    export
        .accept(request.signal(), items, &request.encode())
        .await
}

/// The probes' reader drains on a timer; an app's span can arrive before the probe span of the
/// same request was read from the ring. When an app span names a caller the index does not
/// know, a drain on demand (well under a millisecond when the ring is quiet) puts any such probe
/// span in the index before a second look. False when the node runs no probes.
async fn sync_with_probes(export: &Export) -> bool {
    match &export.observer {
        Some(observer) => {
            observer.sync(SYNC_TIMEOUT).await;
            true
        }
        None => false,
    }
}

const SYNC_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

/// Why a request was not taken.
enum Refusal {
    Invalid(String),
    NotStored(String),
}

/// The protobuf fast path: the framing is checked and items counted at the wire level; only a
/// request holding an app span to re-parent is decoded and re-encoded.
async fn ingest_protobuf(export: &Export, signal: Signal, bytes: &[u8]) -> Result<(), Refusal> {
    let scan = |merge: &mut bool, unknown: &mut bool| {
        wire::scan(signal, bytes, |trace, parent| {
            let known = export.server_spans.contains(trace, parent);
            *merge |= known;
            *unknown |= !known;
        })
        .map_err(|e| Refusal::Invalid(e.to_string()))
    };
    let (mut merge, mut unknown) = (false, false);
    let items = scan(&mut merge, &mut unknown)?;
    // A caller not known yet may be a probe span still in the ring: drain, look again. Only a
    // request with a span to re-parent is decoded; the rest goes on as it came.
    if !merge && unknown && sync_with_probes(export).await {
        scan(&mut merge, &mut unknown)?;
    }
    if merge {
        let request = OtlpRequest::decode_protobuf(signal, bytes)
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        return ingest(export, request).await.map_err(Refusal::NotStored);
    }
    export
        .accept(signal, items.min(u32::MAX as u64) as u32, bytes)
        .await
        .map_err(Refusal::NotStored)
}

pub fn router(export: Arc<Export>) -> Router {
    let route = |signal: Signal| {
        post(
            move |State(export): State<Arc<Export>>, headers: HeaderMap, body: Bytes| async move {
                receive(export, signal, headers, body).await
            },
        )
    };
    Router::new()
        .route(Signal::Traces.path(), route(Signal::Traces))
        .route(Signal::Metrics.path(), route(Signal::Metrics))
        .route(Signal::Logs.path(), route(Signal::Logs))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(export)
}

fn refuse(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

/// Inflates a gzip body, refusing what would grow past the limit.
fn gunzip(body: &[u8]) -> Result<Vec<u8>, Box<Response>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            Box::new(refuse(
                StatusCode::BAD_REQUEST,
                format!("Content-Encoding is gzip but the body is not valid gzip: {e}"),
            ))
        })?;
    if out.len() > MAX_REQUEST_BYTES {
        return Err(Box::new(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request inflates past {MAX_REQUEST_BYTES} bytes: send smaller batches"),
        )));
    }
    Ok(out)
}

async fn receive(export: Arc<Export>, signal: Signal, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let json = if content_type.starts_with("application/x-protobuf") {
        false
    } else if content_type.starts_with("application/json") {
        true
    } else {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("unsupported content type {content_type:?}: send OTLP as application/x-protobuf or application/json"),
        );
    };
    let inflated;
    let body: &[u8] = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None | Some("identity") => &body,
        Some("gzip") => match gunzip(&body) {
            Ok(bytes) => {
                inflated = bytes;
                &inflated
            }
            Err(response) => return *response,
        },
        Some(other) => {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {other:?} is not supported: send gzip or uncompressed"),
            )
        }
    };
    let outcome = if json {
        match OtlpRequest::decode_json(signal, body) {
            Ok(request) => ingest(&export, request).await.map_err(Refusal::NotStored),
            Err(e) => Err(Refusal::Invalid(e.to_string())),
        }
    } else {
        ingest_protobuf(&export, signal, body).await
    };
    match outcome {
        Err(Refusal::Invalid(e)) => refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "the body is not a valid OTLP {} export request ({}): {e}",
                signal.path(),
                if json { "JSON" } else { "protobuf" }
            ),
        ),
        Ok(()) if json => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response(),
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            Vec::<u8>::new(),
        )
            .into_response(),
        Err(Refusal::NotStored(reason)) => {
            let mut response = refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not stored, retry: {reason}"),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            response
        }
    }
}
