//! HTTP/2 frames (RFC 9113 §4.1) walked in one direction's byte stream: the client's preface,
//! then 9-byte headers and their payloads. Only what pairing needs is kept: header block
//! fragments whole, the stream and flags of the rest.

use crate::protocol::stream::Cut;

/// The client's connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const HEADER_LEN: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// SETTINGS_HEADER_TABLE_SIZE: the largest HPACK table the sender's decoder keeps, so the
/// largest its peer's encoder may use.
const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;

/// What a frame says, as far as pairing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Preface,
    /// HEADERS, PUSH_PROMISE (`push`) or CONTINUATION (`continuation`): a piece of a header
    /// block; `None` when the capture cut it (the block cannot be decoded).
    Headers {
        stream: u32,
        fragment: Option<Vec<u8>>,
        end_headers: bool,
        end_stream: bool,
        push: bool,
        continuation: bool,
    },
    Data {
        stream: u32,
        end_stream: bool,
    },
    Reset {
        stream: u32,
        code: u32,
    },
    /// SETTINGS (not an ACK), with its header table size if it sets one.
    Settings {
        header_table_size: Option<u32>,
    },
    /// Any other frame (PING, WINDOW_UPDATE, GOAWAY, PRIORITY, unknown types), ignored.
    Other,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The frame at `at` of `buf`, for [`crate::protocol::stream::Stream::feed`].
pub fn frame(buf: &[u8], at: usize) -> (Result<Frame, Cut>, Result<usize, Cut>) {
    let rest = buf.get(at..).unwrap_or_default();
    if rest.first() == Some(&b'P') {
        let n = rest.len().min(PREFACE.len());
        if rest[..n] != PREFACE[..n] {
            return (Err(Cut::Invalid), Err(Cut::Invalid));
        }
        if n < PREFACE.len() {
            return (Err(Cut::Short(None)), Err(Cut::Short(None)));
        }
        return (Ok(Frame::Preface), Ok(at + PREFACE.len()));
    }
    let Some(header) = rest.get(..HEADER_LEN) else {
        return (Err(Cut::Short(None)), Err(Cut::Short(None)));
    };
    let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let (kind, flags) = (header[3], header[4]);
    let stream = u32_at(header, 5).unwrap_or(0) & 0x7fff_ffff;
    let end = at + HEADER_LEN + length;
    let payload = rest.get(HEADER_LEN..HEADER_LEN + length);
    let frame = parse(kind, flags, stream, length, payload);
    let end = if payload.is_some() {
        Ok(end)
    } else {
        Err(Cut::Short(Some((end - buf.len()) as u64)))
    };
    match frame {
        Ok(frame) => (Ok(frame), end),
        Err(()) => (Err(Cut::Invalid), Err(Cut::Invalid)),
    }
}

/// A frame from its header and its payload (`None`: beyond what was captured).
fn parse(
    kind: u8,
    flags: u8,
    stream: u32,
    length: usize,
    payload: Option<&[u8]>,
) -> Result<Frame, ()> {
    let headers = |fragment: Option<Vec<u8>>| Frame::Headers {
        stream,
        fragment,
        end_headers: flags & END_HEADERS != 0,
        end_stream: kind == HEADERS && flags & END_STREAM != 0,
        push: kind == PUSH_PROMISE,
        continuation: kind == CONTINUATION,
    };
    Ok(match kind {
        DATA if stream == 0 => return Err(()),
        DATA => Frame::Data {
            stream,
            end_stream: flags & END_STREAM != 0,
        },
        HEADERS | PUSH_PROMISE | CONTINUATION if stream == 0 => return Err(()),
        HEADERS | PUSH_PROMISE | CONTINUATION => headers(match payload {
            Some(payload) => Some(fragment(kind, flags, payload)?.to_vec()),
            None => None,
        }),
        RST_STREAM if stream == 0 || length != 4 => return Err(()),
        RST_STREAM => Frame::Reset {
            stream,
            code: payload.and_then(|p| u32_at(p, 0)).unwrap_or(0),
        },
        SETTINGS if stream != 0 || !length.is_multiple_of(6) => return Err(()),
        SETTINGS if flags & ACK != 0 => Frame::Other,
        SETTINGS => Frame::Settings {
            header_table_size: payload.and_then(|p| {
                p.chunks_exact(6)
                    .filter(|s| u16::from_be_bytes([s[0], s[1]]) == SETTINGS_HEADER_TABLE_SIZE)
                    .filter_map(|s| u32_at(s, 2))
                    .next_back()
            }),
        },
        _ => Frame::Other,
    })
}

/// The header block fragment of a HEADERS, PUSH_PROMISE or CONTINUATION payload: without
/// padding, priority fields or the promised stream id.
fn fragment(kind: u8, flags: u8, payload: &[u8]) -> Result<&[u8], ()> {
    if kind == CONTINUATION {
        return Ok(payload);
    }
    let (pad, mut start) = if flags & PADDED != 0 {
        (usize::from(*payload.first().ok_or(())?), 1)
    } else {
        (0, 0)
    };
    if kind == HEADERS && flags & PRIORITY != 0 {
        start += 5;
    }
    if kind == PUSH_PROMISE {
        start += 4;
    }
    let end = payload.len().checked_sub(pad).ok_or(())?;
    payload.get(start..end).ok_or(())
}
