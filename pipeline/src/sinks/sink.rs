//! Sinks: where batches go. OTLP over HTTP/protobuf here; gRPC is the next sink.

use std::future::Future;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::{logs, metrics, trace};
use prost::Message;

use crate::Signal;

/// What the destination said about a batch it took.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// OTLP partial success: items it would not keep, and why.
    pub rejected_items: u64,
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
    fn send(
        &self,
        signal: Signal,
        payload: &[u8],
    ) -> impl Future<Output = Result<Accepted, SendError>> + Send;
}

/// OTLP/HTTP with protobuf bodies (`POST {endpoint}/v1/traces`, `/v1/metrics`, `/v1/logs`).
pub struct OtlpHttp {
    client: reqwest::Client,
    base: String,
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
            base,
            headers,
        })
    }
}

impl Sink for OtlpHttp {
    async fn send(&self, signal: Signal, payload: &[u8]) -> Result<Accepted, SendError> {
        let url = format!("{}{}", self.base, signal.path());
        let mut request = self
            .client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(payload.to_vec());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| SendError::Retryable {
            reason: format!("cannot reach {url}: {e}"),
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
        let reason = format!("{url} answered {status}");
        match status.as_u16() {
            429 | 502 | 503 | 504 => Err(SendError::Retryable {
                reason,
                retry_after,
            }),
            _ => Err(SendError::Permanent(reason)),
        }
    }
}

/// OTLP/JSON lines (one export request per line, as the OpenTelemetry Collector's file exporter
/// writes them) to a file or to standard output; the dev default.
pub struct JsonLines {
    target: JsonTarget,
    /// The file is rotated to `PATH.1` when it grows past this.
    max_bytes: u64,
}

enum JsonTarget {
    Stdout,
    File(std::path::PathBuf),
}

impl JsonLines {
    /// `-` means standard output.
    pub fn new(path: &std::path::Path, max_bytes: u64) -> Self {
        let target = if path == std::path::Path::new("-") {
            JsonTarget::Stdout
        } else {
            JsonTarget::File(path.to_path_buf())
        };
        JsonLines { target, max_bytes }
    }

    pub fn describe(&self) -> String {
        match &self.target {
            JsonTarget::Stdout => "stdout".into(),
            JsonTarget::File(path) => path.display().to_string(),
        }
    }

    fn line(signal: Signal, payload: &[u8]) -> Result<String, SendError> {
        let json = match signal {
            Signal::Traces => serde_json::to_string(
                &trace::v1::ExportTraceServiceRequest::decode(payload)
                    .map_err(|e| SendError::Permanent(format!("undecodable batch: {e}")))?,
            ),
            Signal::Metrics => serde_json::to_string(
                &metrics::v1::ExportMetricsServiceRequest::decode(payload)
                    .map_err(|e| SendError::Permanent(format!("undecodable batch: {e}")))?,
            ),
            Signal::Logs => serde_json::to_string(
                &logs::v1::ExportLogsServiceRequest::decode(payload)
                    .map_err(|e| SendError::Permanent(format!("undecodable batch: {e}")))?,
            ),
        };
        json.map(|mut line| {
            line.push('\n');
            line
        })
        .map_err(|e| SendError::Permanent(format!("cannot write OTLP/JSON: {e}")))
    }
}

impl Sink for JsonLines {
    async fn send(&self, signal: Signal, payload: &[u8]) -> Result<Accepted, SendError> {
        use tokio::io::AsyncWriteExt;
        let line = Self::line(signal, payload)?;
        let retry = |what: &str, e: std::io::Error| SendError::Retryable {
            reason: format!("cannot {what}: {e}"),
            retry_after: None,
        };
        match &self.target {
            JsonTarget::Stdout => {
                let mut out = tokio::io::stdout();
                out.write_all(line.as_bytes())
                    .await
                    .map_err(|e| retry("write to stdout", e))?;
                out.flush().await.map_err(|e| retry("write to stdout", e))?;
            }
            JsonTarget::File(path) => {
                let size = tokio::fs::metadata(path)
                    .await
                    .map(|m| m.len())
                    .unwrap_or(0);
                if size > 0 && size + line.len() as u64 > self.max_bytes {
                    let mut rotated = path.clone().into_os_string();
                    rotated.push(".1");
                    tokio::fs::rename(path, &rotated)
                        .await
                        .map_err(|e| retry(&format!("rotate {}", path.display()), e))?;
                }
                let mut file = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await
                    .map_err(|e| retry(&format!("open {}", path.display()), e))?;
                file.write_all(line.as_bytes())
                    .await
                    .map_err(|e| retry(&format!("write {}", path.display()), e))?;
                file.flush()
                    .await
                    .map_err(|e| retry(&format!("write {}", path.display()), e))?;
            }
        }
        Ok(Accepted::default())
    }
}

/// Any of the sinks, so one delivery type serves every destination.
pub enum AnySink {
    Http(OtlpHttp),
    Grpc(crate::grpc::OtlpGrpc),
    JsonLines(JsonLines),
}

impl Sink for AnySink {
    async fn send(&self, signal: Signal, payload: &[u8]) -> Result<Accepted, SendError> {
        match self {
            AnySink::Http(sink) => sink.send(signal, payload).await,
            AnySink::Grpc(sink) => sink.send(signal, payload).await,
            AnySink::JsonLines(sink) => sink.send(signal, payload).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn json_lines_append_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spans.jsonl");
        let sink = JsonLines::new(&path, 200);
        let request = trace::v1::ExportTraceServiceRequest {
            resource_spans: vec![Default::default()],
        };
        let payload = request.encode_to_vec();
        for _ in 0..12 {
            sink.send(Signal::Traces, &payload).await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        let parsed: serde_json::Value = serde_json::from_str(first).unwrap();
        assert!(parsed["resourceSpans"].is_array(), "{first}");
        assert!(dir.path().join("spans.jsonl.1").exists(), "rotated");
        assert!(std::fs::metadata(&path).unwrap().len() <= 200);
        assert!(matches!(
            sink.send(Signal::Traces, b"\xff\xff").await,
            Err(SendError::Permanent(_))
        ));
    }
}
