//! Reading OTLP export requests at the protobuf wire level, without building messages.
//!
//! The OTLP/HTTP receiver (`sources::otlp_http`) must validate what apps send, count its items
//! and find the spans it may merge with the probes' own; decoding into `opentelemetry-proto`'s
//! structs for that costs a dozen allocations per span. This reader checks the framing of the
//! envelope and of every item's fields instead, and reports each server span's (trace id,
//! parent span id) so the caller decodes fully only the rare request that needs rewriting.

use crate::signal::Signal;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Value<'a> {
    Varint(u64),
    Fixed,
    Bytes(&'a [u8]),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed protobuf at byte {at}: {what}")]
pub struct WireError {
    pub at: usize,
    pub what: &'static str,
}

struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields { bytes, at: 0 }
    }

    fn error(&self, what: &'static str) -> WireError {
        WireError { at: self.at, what }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(&byte) = self.bytes.get(self.at) else {
                return Err(self.error("truncated varint"));
            };
            self.at += 1;
            if shift == 63 && byte > 1 {
                return Err(self.error("varint overflows 64 bits"));
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(self.error("varint longer than 10 bytes"))
    }

    fn skip(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| self.error("field runs past the end"))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.bytes.len() {
            return None;
        }
        let field = (|| {
            let key = self.varint()?;
            let number = key >> 3;
            if number == 0 || number > (1 << 29) - 1 {
                return Err(self.error("invalid field number"));
            }
            let value = match key & 7 {
                0 => Value::Varint(self.varint()?),
                1 => {
                    self.skip(8)?;
                    Value::Fixed
                }
                5 => {
                    self.skip(4)?;
                    Value::Fixed
                }
                2 => {
                    let len = self.varint()?;
                    let len = usize::try_from(len).map_err(|_| self.error("length too large"))?;
                    Value::Bytes(self.skip(len)?)
                }
                _ => return Err(self.error("unsupported wire type (groups are not OTLP)")),
            };
            Ok((number, value))
        })();
        if field.is_err() {
            // Stop after the first error.
            self.at = self.bytes.len();
        }
        Some(field)
    }
}

/// Embedded messages under `field` of `bytes`, each checked to be a message.
fn messages<'a>(
    bytes: &'a [u8],
    wanted: u64,
    mut each: impl FnMut(&'a [u8]) -> Result<(), WireError>,
) -> Result<(), WireError> {
    for field in Fields::new(bytes) {
        match field? {
            (number, Value::Bytes(body)) if number == wanted => each(body)?,
            (number, _) if number == wanted => {
                return Err(WireError {
                    at: 0,
                    what: "a message field holds a scalar",
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// Trace id, parent span id (if any) and kind of a span.
type SpanIds<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, u64);

/// A span's ids and kind, read while checking its framing.
fn span_ids(span: &[u8]) -> Result<SpanIds<'_>, WireError> {
    let (mut trace, mut parent, mut kind) = (None, None, 0);
    for field in Fields::new(span) {
        match field? {
            (1, Value::Bytes(b)) => trace = Some(b),
            (4, Value::Bytes(b)) => parent = Some(b).filter(|b| !b.is_empty()),
            (6, Value::Varint(v)) => kind = v,
            _ => {}
        }
    }
    Ok((trace, parent, kind))
}

/// Checks the framing of an export request of `signal` and counts its items (spans, metrics,
/// log records). For traces, `server_span` sees the (trace id, parent span id) of every server
/// span that has a parent.
pub fn scan(
    signal: Signal,
    bytes: &[u8],
    mut server_span: impl FnMut(&[u8], &[u8]),
) -> Result<u64, WireError> {
    let mut items = 0u64;
    // Every OTLP signal nests the same way: request.1 → resource item.2 → scope item.2.
    messages(bytes, 1, |resource| {
        messages(resource, 2, |scope| {
            messages(scope, 2, |item| {
                items += 1;
                if signal == Signal::Traces {
                    let (trace, parent, kind) = span_ids(item)?;
                    if let (Some(trace), Some(parent), 2) = (trace, parent, kind) {
                        server_span(trace, parent);
                    }
                } else {
                    for field in Fields::new(item) {
                        field?;
                    }
                }
                Ok(())
            })
        })
    })?;
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::request::OtlpRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    fn request() -> ExportTraceServiceRequest {
        let span = |kind: SpanKind, parent: Vec<u8>| Span {
            trace_id: vec![7; 16],
            span_id: vec![1; 8],
            parent_span_id: parent,
            kind: kind as i32,
            name: "GET /".into(),
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![
                    ScopeSpans {
                        spans: vec![
                            span(SpanKind::Server, vec![9; 8]),
                            span(SpanKind::Client, vec![9; 8]),
                        ],
                        ..Default::default()
                    },
                    ScopeSpans {
                        spans: vec![span(SpanKind::Server, vec![])],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn counts_and_reports_server_spans_with_parents() {
        let bytes = request().encode_to_vec();
        let mut seen = Vec::new();
        let items = scan(Signal::Traces, &bytes, |t, p| {
            seen.push((t.to_vec(), p.to_vec()))
        })
        .unwrap();
        assert_eq!(items, 3);
        assert_eq!(seen, vec![(vec![7; 16], vec![9; 8])]);
        assert_eq!(scan(Signal::Traces, &[], |_, _| {}), Ok(0));
    }

    #[test]
    fn agrees_with_prost_on_counts_and_refuses_garbage() {
        let bytes = request().encode_to_vec();
        let full = OtlpRequest::decode_protobuf(Signal::Traces, &bytes).unwrap();
        assert_eq!(
            scan(Signal::Traces, &bytes, |_, _| {}).unwrap(),
            full.items()
        );
        for garbage in [
            &b"\xff\xff\xff not protobuf"[..],
            &b"\x0a\x05\x12\x03"[..],
            &b"\x0a"[..],
            &b"\x0b\x00"[..],
        ] {
            assert!(
                scan(Signal::Traces, garbage, |_, _| {}).is_err(),
                "{garbage:?}"
            );
        }
        // Every truncation of a valid request is refused or reads fewer items.
        for cut in 1..bytes.len() {
            if let Ok(items) = scan(Signal::Traces, &bytes[..cut], |_, _| {}) {
                assert!(items < 3, "cut at {cut}");
            }
        }
    }
}
