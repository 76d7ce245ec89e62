//! Sinks: where batches go. OTLP over HTTP/protobuf here; gRPC is the next sink.

use std::future::Future;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

/// What the destination said about a batch it took.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// OTLP partial success: spans it would not keep, and why.
    pub rejected_spans: u64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Try again later (unreachable, 429, 502, 503, 504), after `retry_after` if it said so.
    #[error("{reason}")]
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Sending the same batch again cannot succeed (400, 401, 403, 404, 413, …).
    #[error("{0}")]
    Permanent(String),
}

pub trait Sink: Send + Sync + 'static {
    fn send(&self, payload: &[u8]) -> impl Future<Output = Result<Accepted, SendError>> + Send;
}

/// OTLP/HTTP with protobuf bodies (`POST {endpoint}/v1/traces`).
pub struct OtlpHttp {
    client: reqwest::Client,
    url: String,
    headers: Vec<(String, String)>,
}

impl OtlpHttp {
    /// `endpoint` is the base (`http://collector:4318`) unless it already ends in `/v1/traces`.
    pub fn new(endpoint: &str, headers: Vec<(String, String)>) -> Result<Self, String> {
        let base = endpoint.trim_end_matches('/');
        let url = if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(OtlpHttp {
            client,
            url,
            headers,
        })
    }
}

impl Sink for OtlpHttp {
    async fn send(&self, payload: &[u8]) -> Result<Accepted, SendError> {
        let mut request = self
            .client
            .post(&self.url)
            .header("content-type", "application/x-protobuf")
            .body(payload.to_vec());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| SendError::Retryable {
            reason: format!("cannot reach {}: {e}", self.url),
            retry_after: None,
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|seconds| Duration::from_secs(seconds.min(300)));
        let body = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            let parsed = ExportTraceServiceResponse::decode(body.as_ref()).unwrap_or_default();
            return Ok(match parsed.partial_success {
                Some(partial) => Accepted {
                    rejected_spans: partial.rejected_spans.max(0) as u64,
                    message: partial.error_message,
                },
                None => Accepted::default(),
            });
        }
        let reason = format!("{} answered {status}", self.url);
        match status.as_u16() {
            429 | 502 | 503 | 504 => Err(SendError::Retryable {
                reason,
                retry_after,
            }),
            _ => Err(SendError::Permanent(reason)),
        }
    }
}
