//! An OTLP export request of any signal, decoded from protobuf or OTLP/JSON.

use opentelemetry_proto::tonic::collector::{logs, metrics, trace};
use prost::Message;

use crate::signal::Signal;

#[derive(Debug, Clone, PartialEq)]
pub enum OtlpRequest {
    Traces(trace::v1::ExportTraceServiceRequest),
    Metrics(metrics::v1::ExportMetricsServiceRequest),
    Logs(logs::v1::ExportLogsServiceRequest),
}

impl OtlpRequest {
    pub fn decode_protobuf(signal: Signal, bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        Ok(match signal {
            Signal::Traces => OtlpRequest::Traces(Message::decode(bytes)?),
            Signal::Metrics => OtlpRequest::Metrics(Message::decode(bytes)?),
            Signal::Logs => OtlpRequest::Logs(Message::decode(bytes)?),
        })
    }

    /// OTLP/JSON: field names in lowerCamelCase, trace and span ids in hex.
    pub fn decode_json(signal: Signal, bytes: &[u8]) -> Result<Self, serde_json::Error> {
        Ok(match signal {
            Signal::Traces => OtlpRequest::Traces(serde_json::from_slice(bytes)?),
            Signal::Metrics => OtlpRequest::Metrics(serde_json::from_slice(bytes)?),
            Signal::Logs => OtlpRequest::Logs(serde_json::from_slice(bytes)?),
        })
    }

    pub fn signal(&self) -> Signal {
        match self {
            OtlpRequest::Traces(_) => Signal::Traces,
            OtlpRequest::Metrics(_) => Signal::Metrics,
            OtlpRequest::Logs(_) => Signal::Logs,
        }
    }

    /// Spans, metrics or log records it carries.
    pub fn items(&self) -> u64 {
        match self {
            OtlpRequest::Traces(r) => r
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len() as u64)
                .sum(),
            OtlpRequest::Metrics(r) => r
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .map(|s| s.metrics.len() as u64)
                .sum(),
            OtlpRequest::Logs(r) => r
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len() as u64)
                .sum(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            OtlpRequest::Traces(r) => r.encode_to_vec(),
            OtlpRequest::Metrics(r) => r.encode_to_vec(),
            OtlpRequest::Logs(r) => r.encode_to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_protobuf_decode_to_the_same_request() {
        let json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"shop"}}]},
            "scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
            "name":"GET /","kind":2,"startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#;
        let from_json = OtlpRequest::decode_json(Signal::Traces, json).unwrap();
        assert_eq!(from_json.items(), 1);
        let OtlpRequest::Traces(request) = &from_json else {
            panic!("not traces")
        };
        let span = &request.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(
            span.span_id,
            vec![0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74]
        );
        assert_eq!(span.end_time_unix_nano, 2);
        let from_protobuf =
            OtlpRequest::decode_protobuf(Signal::Traces, &from_json.encode()).unwrap();
        assert_eq!(from_protobuf, from_json);
        assert!(OtlpRequest::decode_json(Signal::Logs, b"{\"resourceLogs\": 7}").is_err());
        assert!(OtlpRequest::decode_protobuf(Signal::Metrics, b"\xff\xff\xff").is_err());
    }
}
