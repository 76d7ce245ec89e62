//! The OTLP/HTTP sink: protobuf bodies POSTed to `{endpoint}/v1/traces`, `/v1/metrics` and
//! `/v1/logs` (port 4318 by convention), with the OTLP/HTTP retry rules.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::{logs, metrics, trace};
use prost::Message;

use crate::signal::Signal;
use crate::sinks::sink::{Accepted, SendError, Sink};

/// OTLP/HTTP with protobuf bodies (`POST {endpoint}/v1/traces`, `/v1/metrics`, `/v1/logs`).
pub struct OtlpHttp {
    client: reqwest::Client,
    base: String,
    /// `base` with any password in it redacted: what errors (shown by the API, logged) name.
    shown: String,
    headers: Vec<(String, String)>,
}

/// Partial success of any signal: (rejected items, message).
fn partial_success(signal: Signal, body: &[u8]) -> (u64, String) {
    let pair = |rejected: i64, message: String| (rejected.max(0) as u64, message);
    match signal {
        Signal::Traces => trace::v1::ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| pair(p.rejected_spans, p.error_message)),
        Signal::Metrics => metrics::v1::ExportMetricsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| pair(p.rejected_data_points, p.error_message)),
        Signal::Logs => logs::v1::ExportLogsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map(|p| pair(p.rejected_log_records, p.error_message)),
    }
    .unwrap_or_default()
}

impl OtlpHttp {
    /// `endpoint` is the base (`http://collector:4318`); a signal path at its end is ignored
    /// so that `…/v1/traces` works too.
    pub fn new(endpoint: &str, headers: Vec<(String, String)>) -> Result<Self, String> {
        let mut base = endpoint.trim_end_matches('/');
        for signal in Signal::ALL {
            base = base.strip_suffix(signal.path()).unwrap_or(base);
        }
        let base = base.to_string();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(OtlpHttp {
            client,
            shown: apiary_config::redact_endpoint(&base),
            base,
            headers,
        })
    }
}

impl Sink for OtlpHttp {
    async fn send(&self, signal: Signal, payload: Bytes) -> Result<Accepted, SendError> {
        let url = format!("{}{}", self.base, signal.path());
        let mut request = self
            .client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(payload);
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        // The URL may hold a password: errors name the redacted one, and reqwest's own
        // message goes without its URL.
        let shown = format!("{}{}", self.shown, signal.path());
        let response = request.send().await.map_err(|e| SendError::Retryable {
            reason: format!("cannot reach {shown}: {}", e.without_url()),
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
            let (rejected_items, message) = partial_success(signal, &body);
            return Ok(Accepted {
                rejected_items,
                message,
            });
        }
        let reason = format!("{shown} answered {status}");
        match status.as_u16() {
            429 | 502 | 503 | 504 => Err(SendError::Retryable {
                reason,
                retry_after,
            }),
            _ => Err(SendError::Permanent(reason)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint's password never reaches an error, which `/v1/export` and the log show.
    #[tokio::test]
    async fn errors_name_the_endpoint_without_its_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(); // free, so the connection is refused
        let sink =
            OtlpHttp::new(&format!("http://collector:s3cret@127.0.0.1:{port}"), vec![]).unwrap();
        let error = sink.send(Signal::Traces, Bytes::new()).await.unwrap_err();
        let text = format!("{error:?}");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("cannot reach http://collector:"), "{text}");
    }
}
