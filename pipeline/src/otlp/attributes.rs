//! OTLP `KeyValue` attributes built from plain values, for the prost-struct encoders (spans,
//! resources, RED metrics).

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

pub(crate) fn string_attribute(key: &str, value: impl Into<String>) -> KeyValue {
    attribute(key, any_value::Value::StringValue(value.into()))
}

pub(crate) fn int_attribute(key: &str, value: i64) -> KeyValue {
    attribute(key, any_value::Value::IntValue(value))
}

pub(crate) fn double_attribute(key: &str, value: f64) -> KeyValue {
    attribute(key, any_value::Value::DoubleValue(value))
}
