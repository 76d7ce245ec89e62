//! The OTLP/HTTP receiver (default 127.0.0.1:4318): instrumented apps send traces, metrics and
//! logs here, and they go to every export destination beside the probes' spans. A request is
//! answered 200 only once it is in every destination's disk buffer.

use std::sync::Arc;

use apiary_pipeline::Signal;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use crate::export::Export;

/// Requests larger than this are refused with 413 (the OTLP/HTTP way to say "split it").
pub const MAX_REQUEST_BYTES: usize = 8 << 20;

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

async fn receive(export: Arc<Export>, signal: Signal, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/x-protobuf") {
        let hint = if content_type.starts_with("application/json") {
            "OTLP/JSON is not supported yet"
        } else {
            "unsupported content type"
        };
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("{hint} ({content_type:?}): send OTLP protobuf with Content-Type: application/x-protobuf"),
        );
    }
    if let Some(encoding) = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        if encoding != "identity" {
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {encoding:?} is not supported yet: send uncompressed"),
            );
        }
    }
    let items = match signal.count_items(&body) {
        Ok(items) => items,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is not a valid OTLP {} export request: {e}",
                    signal.path()
                ),
            )
        }
    };
    match export
        .accept(signal, items.min(u32::MAX as u64) as u32, &body)
        .await
    {
        // An empty Export*ServiceResponse: no partial success to report.
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            Vec::<u8>::new(),
        )
            .into_response(),
        Err(reason) => {
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
