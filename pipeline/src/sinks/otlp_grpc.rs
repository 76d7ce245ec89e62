//! The OTLP/gRPC sink (`opentelemetry.proto.collector.*.v1.*Service/Export`, port 4317).
//!
//! The disk buffer holds each batch as an encoded export request, so the sink sends those bytes
//! as they are (no decode and re-encode) through tonic with prost's codec.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::{logs, metrics, trace};
use prost::bytes::{Buf, BufMut};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::otlp::retry_info::retry_delay;
use crate::signal::Signal;
use crate::sinks::sink::{Accepted, SendError, Sink};

/// An already-encoded protobuf message: encoding it writes its bytes unchanged.
#[derive(Clone, Default, PartialEq)]
struct Encoded(Bytes);

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encoded({} bytes)", self.0.len())
    }
}

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Never decoded into; skipping keeps the trait's contract if it ever is.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

pub struct OtlpGrpc {
    channel: Channel,
    metadata: MetadataMap,
    /// The endpoint as errors name it (any password redacted).
    endpoint: String,
}

impl OtlpGrpc {
    /// `endpoint` is `http://host:4317` or `https://host:4317` (TLS with the web PKI roots).
    /// Connects lazily: a destination that is down is retried by delivery, not refused here.
    pub fn new(endpoint: &str, headers: Vec<(String, String)>) -> Result<Self, String> {
        // The endpoint may hold a password: what errors (shown by the API, logged) name is
        // the redacted one.
        let shown = apiary_config::redact_endpoint(endpoint);
        let bad = |e: &dyn std::fmt::Display| {
            format!("OTLP/gRPC endpoint {shown:?}: {e}; use http://HOST:4317 or https://HOST:4317")
        };
        let mut builder = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| bad(&e))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        if endpoint.starts_with("https://") {
            builder = builder
                .tls_config(ClientTlsConfig::new().with_webpki_roots())
                .map_err(|e| bad(&e))?;
        }
        let mut metadata = MetadataMap::new();
        for (name, value) in headers {
            let key = MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("header {name:?} is not a valid gRPC metadata name"))?;
            let value = MetadataValue::try_from(value.as_str())
                .map_err(|_| format!("header {name:?} has a value gRPC metadata cannot carry"))?;
            metadata.insert(key, value);
        }
        Ok(OtlpGrpc {
            channel: builder.connect_lazy(),
            metadata,
            endpoint: shown.clone(),
        })
    }

    async fn export<Response: prost::Message + Default + 'static>(
        &self,
        path: &'static str,
        payload: Bytes,
    ) -> Result<Response, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("not connected: {e}")))?;
        let mut request = tonic::Request::new(Encoded(payload));
        *request.metadata_mut() = self.metadata.clone();
        let codec = tonic_prost::ProstCodec::<Encoded, Response>::default();
        grpc.unary(request, PathAndQuery::from_static(path), codec)
            .await
            .map(tonic::Response::into_inner)
    }
}

impl Sink for OtlpGrpc {
    async fn send(&self, signal: Signal, payload: Bytes) -> Result<Accepted, SendError> {
        let result = match signal {
            Signal::Traces => self
                .export::<trace::v1::ExportTraceServiceResponse>(
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                    payload,
                )
                .await
                .map(|r| {
                    r.partial_success
                        .map(|p| (p.rejected_spans, p.error_message))
                }),
            Signal::Metrics => self
                .export::<metrics::v1::ExportMetricsServiceResponse>(
                    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                    payload,
                )
                .await
                .map(|r| {
                    r.partial_success
                        .map(|p| (p.rejected_data_points, p.error_message))
                }),
            Signal::Logs => self
                .export::<logs::v1::ExportLogsServiceResponse>(
                    "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                    payload,
                )
                .await
                .map(|r| {
                    r.partial_success
                        .map(|p| (p.rejected_log_records, p.error_message))
                }),
        };
        match result {
            Ok(partial) => {
                let (rejected, message) = partial.unwrap_or_default();
                Ok(Accepted {
                    rejected_items: rejected.max(0) as u64,
                    message,
                })
            }
            Err(status) => Err(classify(&self.endpoint, &status)),
        }
    }
}

/// OTLP/gRPC: these codes are retryable; RESOURCE_EXHAUSTED only when the server sent a
/// RetryInfo (it can recover); everything else is permanent for this batch.
fn classify(endpoint: &str, status: &Status) -> SendError {
    let reason = format!(
        "{endpoint} answered {:?}: {}",
        status.code(),
        status.message()
    );
    let retry_after = retry_delay(status.details());
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => SendError::Retryable {
            reason,
            retry_after,
        },
        Code::ResourceExhausted if retry_after.is_some() => SendError::Retryable {
            reason,
            retry_after,
        },
        _ => SendError::Permanent(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn status_with_delay(code: Code, seconds: u64) -> Status {
        crate::otlp::retry_info::status_with_retry(
            code,
            "busy".into(),
            Duration::from_secs(seconds),
        )
    }

    #[test]
    fn codes_map_to_the_otlp_retry_rules() {
        assert!(matches!(
            classify("e", &Status::unavailable("down")),
            SendError::Retryable {
                retry_after: None,
                ..
            }
        ));
        assert!(matches!(
            classify("e", &Status::resource_exhausted("full")),
            SendError::Permanent(_)
        ));
        assert_eq!(
            classify("e", &status_with_delay(Code::ResourceExhausted, 7)),
            SendError::Retryable {
                reason: "e answered ResourceExhausted: busy".into(),
                retry_after: Some(Duration::from_secs(7)),
            }
        );
        assert!(matches!(
            classify("e", &Status::invalid_argument("bad")),
            SendError::Permanent(_)
        ));
        assert!(matches!(
            classify("e", &Status::unauthenticated("who")),
            SendError::Permanent(_)
        ));
    }

    #[test]
    fn encoded_payload_is_sent_unchanged() {
        let request = trace::v1::ExportTraceServiceRequest::default();
        let bytes = vec![10, 0];
        let encoded = Encoded(Bytes::from(bytes.clone()));
        assert_eq!(encoded.encode_to_vec(), bytes);
        assert!(trace::v1::ExportTraceServiceRequest::decode(bytes.as_slice()).is_ok());
        assert_eq!(request.encode_to_vec().len(), 0);
        assert!(OtlpGrpc::new("not a uri", vec![]).is_err());
        assert!(OtlpGrpc::new(
            "http://127.0.0.1:4317",
            vec![("Bad Name".into(), "x".into())]
        )
        .is_err());
    }

    /// An endpoint's password never reaches an error, which `/v1/export` and the log show.
    #[tokio::test]
    async fn errors_name_the_endpoint_without_its_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let sink = OtlpGrpc::new(&format!("http://collector:s3cret@127.0.0.1:{port}"), vec![]);
        let text = match sink {
            Ok(sink) => format!(
                "{:?}",
                sink.send(Signal::Traces, Bytes::new()).await.unwrap_err()
            ),
            Err(refused) => refused,
        };
        assert!(!text.contains("s3cret"), "{text}");
    }
}
