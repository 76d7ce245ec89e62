//! The JSON-lines sink: OTLP/JSON, one export request per line, to a file (rotated) or to
//! standard output.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::{logs, metrics, trace};
use prost::Message;

use crate::signal::Signal;
use crate::sinks::sink::{Accepted, SendError, Sink};

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
    async fn send(&self, signal: Signal, payload: Bytes) -> Result<Accepted, SendError> {
        use tokio::io::AsyncWriteExt;
        let line = Self::line(signal, &payload)?;
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
            sink.send(Signal::Traces, payload.clone().into())
                .await
                .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let first = text.lines().next().unwrap();
        let parsed: serde_json::Value = serde_json::from_str(first).unwrap();
        assert!(parsed["resourceSpans"].is_array(), "{first}");
        assert!(dir.path().join("spans.jsonl.1").exists(), "rotated");
        assert!(std::fs::metadata(&path).unwrap().len() <= 200);
        assert!(matches!(
            sink.send(Signal::Traces, Bytes::from_static(b"\xff\xff"))
                .await,
            Err(SendError::Permanent(_))
        ));
    }
}
