//! `google.rpc.RetryInfo` in a gRPC status's details (`grpc-status-details-bin`): how OTLP/gRPC
//! says "retry after this long". The receivers send it with the backpressure they answer; the
//! gRPC sink reads it from its destination's answers.

use std::time::Duration;

use prost::Message;

/// `google.rpc.Status` as carried in `grpc-status-details-bin`, just enough for RetryInfo.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<RpcAny>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RpcAny {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<RpcDuration>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RpcDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// A status with `code`, `message` and a RetryInfo of `delay`, as OTLP clients read it.
pub fn status_with_retry(code: tonic::Code, message: String, delay: Duration) -> tonic::Status {
    let details = RpcStatus {
        code: code as i32,
        message: message.clone(),
        details: vec![RpcAny {
            type_url: RETRY_INFO_TYPE.into(),
            value: RetryInfo {
                retry_delay: Some(RpcDuration {
                    seconds: delay.as_secs().min(i64::MAX as u64) as i64,
                    nanos: delay.subsec_nanos() as i32,
                }),
            }
            .encode_to_vec(),
        }],
    };
    tonic::Status::with_details(code, message, details.encode_to_vec().into())
}

/// The retry hint in a status's details, capped at five minutes; `None` without one.
pub fn retry_delay(details: &[u8]) -> Option<Duration> {
    let status = RpcStatus::decode(details).ok()?;
    let info = status
        .details
        .iter()
        .find(|any| any.type_url == RETRY_INFO_TYPE)?;
    let delay = RetryInfo::decode(info.value.as_slice()).ok()?.retry_delay?;
    let delay = Duration::from_secs(delay.seconds.clamp(0, 300) as u64)
        + Duration::from_nanos(delay.nanos.clamp(0, 999_999_999) as u64);
    Some(delay.min(Duration::from_secs(300)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_hint_survives_the_round_trip_and_garbage_has_none() {
        let status = status_with_retry(
            tonic::Code::Unavailable,
            "full".into(),
            Duration::from_millis(2500),
        );
        assert_eq!(
            retry_delay(status.details()),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(retry_delay(b"\xff\xff"), None);
        assert_eq!(retry_delay(&[]), None);
    }
}
