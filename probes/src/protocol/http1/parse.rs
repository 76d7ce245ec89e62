//! HTTP/1 request and status lines, and the two request headers the spans keep.
//!
//! Hand-written rather than `httparse`: for the same output, httparse took 1.0 to 1.25x the
//! time on complete heads and 2.5x on a head cut by the capture limit (the common case for
//! browsers at the default 256 bytes), where it reads no header at all unless the head is first
//! copied and closed (`cargo bench -p apiary-probes --bench http_parse`, docs/benchmarks.md).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub host: Option<String>,
    pub traceparent: Option<String>,
}

/// Parses a request line and the headers that fit in the captured prefix. Every request the
/// probes see passes here (sampled or not, for RED metrics), so it works on bytes and looks
/// closely only at the two headers it keeps.
pub fn parse_request(data: &[u8]) -> Option<Request> {
    // Lines end at '\n' (a '\r' before it is dropped). Only complete lines count: a header cut
    // by the capture limit is not trusted. The request line alone may be cut.
    let mut ends = memchr::memchr_iter(b'\n', data);
    let first_end = ends.next();
    let (method, target) = request_line(&data[..first_end.unwrap_or(data.len())])?;
    let mut request = Request {
        method: method.to_string(),
        target: target.to_string(),
        host: None,
        traceparent: None,
    };
    let mut start = first_end.map_or(data.len(), |end| end + 1);
    for end in ends {
        let line = without_cr(&data[start..end]);
        start = end + 1;
        if line.is_empty() {
            break; // the end of the headers
        }
        // Most headers are neither: their first letter says so without a search.
        if !matches!(line[0] | 0x20, b'h' | b't') {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case(b"host") {
            request.host = Some(value.to_string());
        } else if name.eq_ignore_ascii_case(b"traceparent") && valid_traceparent(value) {
            request.traceparent = Some(value.to_string());
        }
    }
    Some(request)
}

/// `METHOD SP TARGET SP HTTP/1.x` → (method, target).
pub(super) fn request_line(line: &[u8]) -> Option<(&str, &str)> {
    let line = without_cr(line);
    let method_end = memchr::memchr(b' ', line)?;
    let (method, rest) = (&line[..method_end], &line[method_end + 1..]);
    let target_end = memchr::memchr(b' ', rest)?;
    let (target, version) = (&rest[..target_end], &rest[target_end + 1..]);
    if !version.starts_with(b"HTTP/1.")
        || method.is_empty()
        || !method.iter().all(u8::is_ascii_uppercase)
    {
        return None;
    }
    Some((
        std::str::from_utf8(method).ok()?,
        std::str::from_utf8(target).ok()?,
    ))
}

fn without_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The status code of a response's status line (`HTTP/1.x NNN ...`).
pub fn parse_status(data: &[u8]) -> Option<u16> {
    if !data.starts_with(b"HTTP/1.") {
        return None;
    }
    let line = &data[..memchr::memchr(b'\r', data).unwrap_or(data.len())];
    let code_at = memchr::memchr(b' ', line)? + 1;
    let code = line.get(code_at..code_at + 3)?;
    if !code.iter().all(u8::is_ascii_digit) || line.get(code_at + 3).is_some_and(|&b| b != b' ') {
        return None;
    }
    let code = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    (100..=999).contains(&code).then_some(code)
}

/// W3C trace context: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
pub(crate) fn valid_traceparent(value: &str) -> bool {
    let mut parts = value.split('-');
    let lower_hex = |p: &str, len: usize| {
        p.len() == len
            && p.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    };
    let (Some(version), Some(trace), Some(parent), Some(flags), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    lower_hex(version, 2)
        && lower_hex(trace, 32)
        && lower_hex(parent, 16)
        && lower_hex(flags, 2)
        && trace != "00000000000000000000000000000000"
}
