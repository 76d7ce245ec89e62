//! The OTLP/HTTP receiver (default 127.0.0.1:4318): instrumented apps send traces, metrics and
//! logs here (protobuf or OTLP/JSON, optionally gzip), and they go to the [`Ingest`] (on a node,
//! every export destination, beside the probes' spans). A request is answered 200 only once
//! the `Ingest` stored it (in every destination's disk buffer). The gRPC receiver
//! (`sources::otlp_grpc`) shares [`ingest`].

use std::io::Read;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use crate::otlp::request::OtlpRequest;
use crate::signal::Signal;
use crate::sources::ingest::{
    ingest, ingest_protobuf, Ingest, NotTaken, Refusal, MAX_REQUEST_BYTES,
};

/// The routes `/v1/traces`, `/v1/metrics` and `/v1/logs`, handing requests to `target`.
pub fn router<I: Ingest>(target: Arc<I>) -> Router {
    let route = |signal: Signal| {
        post(
            move |State(target): State<Arc<I>>, headers: HeaderMap, body: Bytes| async move {
                receive(target, signal, headers, body).await
            },
        )
    };
    Router::new()
        .route(Signal::Traces.path(), route(Signal::Traces))
        .route(Signal::Metrics.path(), route(Signal::Metrics))
        .route(Signal::Logs.path(), route(Signal::Logs))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(target)
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

async fn receive<I: Ingest>(
    target: Arc<I>,
    signal: Signal,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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
            Ok(request) => ingest(&*target, request).await.map_err(Refusal::NotTaken),
            Err(e) => Err(Refusal::Invalid(e.to_string())),
        }
    } else {
        ingest_protobuf(&*target, signal, body).await
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
        Err(Refusal::NotTaken(not_taken)) => {
            // OTLP/HTTP: 429 is backpressure ("too many requests, slow down"), 503 a failure
            // on this side; clients retry both, after Retry-After.
            let status = match not_taken {
                NotTaken::Backpressure { .. } => StatusCode::TOO_MANY_REQUESTS,
                NotTaken::NotStored(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            let seconds = not_taken.retry_after().as_secs().max(1);
            let mut response = refuse(status, format!("not stored, retry: {not_taken}"));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind as OtlpKind;
    use prost::Message;

    use super::*;
    use crate::otlp::ids::probe_span_id;
    use crate::sources::testing::{app_traces, probe_span, FakeIngest, TRACEPARENT};

    /// Serves the receiver for `target` on a free port; returns its base URL.
    async fn start(target: Arc<FakeIngest>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router(target)).await });
        format!("http://{addr}")
    }

    async fn post(
        base: &str,
        signal: Signal,
        headers: &[Header],
        body: Vec<u8>,
    ) -> reqwest::Response {
        let mut request = reqwest::Client::new()
            .post(format!("{base}{}", signal.path()))
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.unwrap()
    }

    type Header = (&'static str, &'static str);
    const PROTOBUF: Header = ("content-type", "application/x-protobuf");
    const JSON: Header = ("content-type", "application/json");

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn parent_of_first(payload: &[u8]) -> Vec<u8> {
        let request = ExportTraceServiceRequest::decode(payload).unwrap();
        request.resource_spans[0].scope_spans[0].spans[0]
            .parent_span_id
            .clone()
    }

    #[tokio::test]
    async fn protobuf_json_and_gzip_are_stored_and_answered_in_kind() {
        let target = Arc::new(FakeIngest::default());
        let base = start(target.clone()).await;
        let traces = app_traces(OtlpKind::Internal, vec![]);
        let bytes = traces.encode_to_vec();

        let response = post(&base, Signal::Traces, &[PROTOBUF], bytes.clone()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-protobuf");
        assert!(response.bytes().await.unwrap().is_empty());

        let json = serde_json::to_vec(&traces).unwrap();
        let response = post(&base, Signal::Traces, &[JSON], json).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.text().await.unwrap(), "{}");

        let gzipped = gzip(&bytes);
        let response = post(
            &base,
            Signal::Traces,
            &[PROTOBUF, ("content-encoding", "gzip")],
            gzipped,
        )
        .await;
        assert_eq!(response.status(), 200);

        let accepted = target.accepted();
        assert_eq!(accepted.len(), 3);
        for (signal, items, payload) in &accepted {
            assert_eq!((*signal, *items), (Signal::Traces, 3));
            assert_eq!(
                ExportTraceServiceRequest::decode(payload.as_slice()).unwrap(),
                traces
            );
        }
        assert_eq!(accepted[0].2, bytes, "protobuf goes on as it came");
    }

    #[tokio::test]
    async fn bad_input_gets_the_otlp_status_and_nothing_is_stored() {
        let target = Arc::new(FakeIngest::default());
        let base = start(target.clone()).await;
        let bytes = app_traces(OtlpKind::Internal, vec![]).encode_to_vec();
        let cases: [(&[Header], Vec<u8>, u16); 6] = [
            (&[PROTOBUF], b"\xff\xff\xff not protobuf".to_vec(), 400),
            (&[JSON], b"{\"resourceSpans\": 7}".to_vec(), 400),
            (&[("content-type", "text/plain")], bytes.clone(), 415),
            (&[PROTOBUF, ("content-encoding", "br")], bytes.clone(), 415),
            (
                &[PROTOBUF, ("content-encoding", "gzip")],
                bytes.clone(),
                400,
            ),
            (
                &[PROTOBUF, ("content-encoding", "gzip")],
                gzip(&vec![0; MAX_REQUEST_BYTES + 1]),
                413,
            ),
        ];
        for (headers, body, status) in cases {
            let response = post(&base, Signal::Traces, headers, body).await;
            assert_eq!(response.status(), status, "{headers:?}");
            assert!(response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain"));
        }
        let response = post(
            &base,
            Signal::Logs,
            &[PROTOBUF],
            vec![0; MAX_REQUEST_BYTES + 1],
        )
        .await;
        assert_eq!(response.status(), 413, "past the body limit");
        assert!(target.accepted().is_empty());
    }

    #[tokio::test]
    async fn not_stored_is_503_with_retry_after() {
        let target = Arc::new(FakeIngest {
            refuse: Some(NotTaken::NotStored("disk full".into())),
            ..Default::default()
        });
        let base = start(target).await;
        let bytes = app_traces(OtlpKind::Internal, vec![]).encode_to_vec();
        for (headers, body) in [
            ([PROTOBUF], bytes),
            ([JSON], b"{\"resourceLogs\": []}".to_vec()),
        ] {
            let signal = if headers == [JSON] {
                Signal::Logs
            } else {
                Signal::Traces
            };
            let response = post(&base, signal, &headers, body).await;
            assert_eq!(response.status(), 503);
            assert_eq!(response.headers()["retry-after"], "1");
            assert!(response.text().await.unwrap().contains("disk full"));
        }
    }

    #[tokio::test]
    async fn backpressure_is_429_with_the_retry_after_it_was_given() {
        let target = Arc::new(FakeIngest {
            refuse: Some(NotTaken::Backpressure {
                reason: "export buffer full".into(),
                retry_after: std::time::Duration::from_secs(4),
            }),
            ..Default::default()
        });
        let base = start(target.clone()).await;
        let bytes = app_traces(OtlpKind::Internal, vec![]).encode_to_vec();
        let response = post(&base, Signal::Traces, &[PROTOBUF], bytes).await;
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "4");
        assert!(response
            .text()
            .await
            .unwrap()
            .contains("export buffer full"));
        assert!(target.accepted().is_empty());
    }

    #[tokio::test]
    async fn app_server_spans_are_reparented_under_known_probe_spans() {
        let target = Arc::new(FakeIngest::default());
        let probe = probe_span(TRACEPARENT);
        target.server_spans.remember(&probe);
        let base = start(target.clone()).await;
        let known = app_traces(OtlpKind::Server, vec![1; 8]);
        for headers in [[PROTOBUF], [JSON]] {
            let body = if headers == [JSON] {
                serde_json::to_vec(&known).unwrap()
            } else {
                known.encode_to_vec()
            };
            assert_eq!(
                post(&base, Signal::Traces, &headers, body).await.status(),
                200
            );
        }
        // A caller no probe span is known for: one sync (no probes here), then as it came.
        let unknown = app_traces(OtlpKind::Server, vec![2; 8]).encode_to_vec();
        let response = post(&base, Signal::Traces, &[PROTOBUF], unknown.clone()).await;
        assert_eq!(response.status(), 200);
        let accepted = target.accepted();
        assert_eq!(parent_of_first(&accepted[0].2), probe_span_id(&probe));
        assert_eq!(parent_of_first(&accepted[1].2), probe_span_id(&probe));
        assert_eq!(accepted[0].1, 3);
        assert_eq!(accepted[2].2, unknown);
        assert_eq!(target.syncs.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_probe_span_still_in_the_ring_is_found_after_a_sync() {
        let probe = probe_span(TRACEPARENT);
        let target = Arc::new(FakeIngest {
            ring: Some(std::sync::Mutex::new(vec![probe.clone()])),
            ..Default::default()
        });
        let base = start(target.clone()).await;
        let body = app_traces(OtlpKind::Server, vec![1; 8]).encode_to_vec();
        assert_eq!(
            post(&base, Signal::Traces, &[PROTOBUF], body)
                .await
                .status(),
            200
        );
        assert_eq!(target.syncs.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(
            parent_of_first(&target.accepted()[0].2),
            probe_span_id(&probe)
        );
    }
}
