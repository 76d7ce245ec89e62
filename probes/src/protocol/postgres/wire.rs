//! PostgreSQL protocol 3 messages: where one ends, and the little of it a span needs.
//!
//! Every message but the first of a connection is a type byte and a big-endian length that
//! counts itself, not the type: once five bytes are seen, the message's end is known exactly,
//! so a message longer than the capture is passed over without being captured. The untyped
//! packets a connection opens with (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest)
//! start with a zero byte, which no typed frontend message does, so the frontend parser needs
//! no state to tell them apart.

use std::sync::Arc;

use crate::protocol::sql::{self, Dialect, Statement};
use crate::protocol::stream::Cut;

/// PostgreSQL refuses messages over 1 GiB (`PQ_LARGE_MESSAGE_LIMIT`); a larger length is not
/// the protocol.
const MAX_LENGTH: u32 = 0x4000_0000;
/// Statement and portal names longer than this are not followed (PostgreSQL's NAMEDATALEN is 64).
const MAX_NAME: usize = 256;

/// A message the client sends, as far as pairing needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Frontend {
    /// StartupMessage (protocol 3.x): the server answers up to its first ReadyForQuery.
    Startup,
    /// SSLRequest or GSSENCRequest: the server answers one untyped byte.
    EncryptionRequest,
    /// CancelRequest, on a connection of its own: nothing answers it.
    Cancel,
    /// Query ('Q'): one or more statements, answered up to ReadyForQuery.
    Query(Arc<Statement>),
    /// Parse ('P'): a statement's text, under a name ("" the unnamed one).
    Parse {
        name: String,
        statement: Arc<Statement>,
    },
    /// Bind ('B'): a portal ("" the unnamed one) made from a named statement.
    Bind { portal: String, statement: String },
    /// Execute ('E') of a portal.
    Execute { portal: String },
    /// Close ('C') of a statement (`b'S'`) or a portal (`b'P'`).
    Close { kind: u8, name: String },
    /// Sync ('S'): ends an extended-query batch; answered by ReadyForQuery.
    Sync,
    /// FunctionCall ('F'): answered by FunctionCallResponse and ReadyForQuery.
    FunctionCall,
    /// What needs no pairing: Describe, Flush, Terminate, passwords, COPY data.
    Other,
}

/// A message the server sends, as far as pairing needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// CommandComplete, EmptyQueryResponse or PortalSuspended: an Execute or a statement of a
    /// Query is done.
    Done,
    /// ErrorResponse, with its SQLSTATE (field 'C') when it was captured.
    Error(Option<String>),
    /// ReadyForQuery: a Query, a Sync or the startup is answered.
    Ready,
    /// Anything else the server sends (rows, descriptions, notices, parameters, auth).
    Other,
}

fn length_at(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// A typed message: its type, its body (as much as is at hand) and where it ends.
type Typed<'a> = (u8, &'a [u8], Result<usize, Cut>);

/// The typed message at `at`.
fn typed<'a>(buf: &'a [u8], at: usize, valid: &[u8]) -> Result<Typed<'a>, Cut> {
    let kind = *buf.get(at).ok_or(Cut::Short(None))?;
    if !valid.contains(&kind) {
        return Err(Cut::Invalid);
    }
    let length = length_at(buf, at + 1).ok_or(Cut::Short(None))?;
    if !(4..=MAX_LENGTH).contains(&length) {
        return Err(Cut::Invalid);
    }
    let end = at + 1 + length as usize;
    let body = &buf[at + 5..end.min(buf.len())];
    if end > buf.len() {
        return Ok((kind, body, Err(Cut::Short(Some((end - buf.len()) as u64)))));
    }
    Ok((kind, body, Ok(end)))
}

/// A NUL-terminated string at the start of `bytes` and the bytes after it; `None` when its end
/// was not captured.
fn cstr(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = memchr::memchr(0, bytes)?;
    Some((&bytes[..end], &bytes[end + 1..]))
}

fn name(bytes: &[u8]) -> Result<String, Cut> {
    if bytes.len() > MAX_NAME {
        return Err(Cut::Invalid);
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// Frontend message types (protocol 3): Bind, Close, CopyData, CopyDone, Describe, Execute,
/// CopyFail, FunctionCall, Flush, Parse, Query, Sync, Terminate, and the authentication
/// responses ('p': password, SASL).
const FRONTEND_TYPES: &[u8] = b"BCcdDEfFHPpQSX";

/// The frontend message at `at`, and where it ends.
pub fn frontend(buf: &[u8], at: usize) -> (Result<Frontend, Cut>, Result<usize, Cut>) {
    match buf.get(at) {
        None => (Err(Cut::Short(None)), Err(Cut::Short(None))),
        Some(0) => untyped(buf, at),
        Some(_) => match typed(buf, at, FRONTEND_TYPES) {
            Err(cut) => (Err(cut), Err(cut)),
            Ok((kind, body, end)) => {
                let whole = end.is_ok();
                (frontend_head(kind, body, whole), end)
            }
        },
    }
}

/// What a typed frontend message says, from its body (`whole`: all of it is at hand).
fn frontend_head(kind: u8, body: &[u8], whole: bool) -> Result<Frontend, Cut> {
    // A name cut by the capture cannot be followed: a later Bind or Execute would be paired
    // with a guess.
    let cut = Cut::Short(None);
    Ok(match kind {
        b'Q' => {
            let (text, whole) = match cstr(body) {
                Some((text, _)) => (text, true),
                None if whole => return Err(Cut::Invalid),
                None => (body, false),
            };
            Frontend::Query(Arc::new(sql::summarize(text, whole, Dialect::Postgres)))
        }
        b'P' => {
            let (statement_name, rest) = cstr(body).ok_or(cut)?;
            let (text, whole) = match cstr(rest) {
                Some((text, _)) => (text, true),
                None if whole => return Err(Cut::Invalid),
                None => (rest, false),
            };
            Frontend::Parse {
                name: name(statement_name)?,
                statement: Arc::new(sql::summarize(text, whole, Dialect::Postgres)),
            }
        }
        b'B' => {
            let (portal, rest) = cstr(body).ok_or(cut)?;
            let (statement, _) = cstr(rest).ok_or(cut)?;
            Frontend::Bind {
                portal: name(portal)?,
                statement: name(statement)?,
            }
        }
        b'E' => {
            let (portal, _) = cstr(body).ok_or(cut)?;
            Frontend::Execute {
                portal: name(portal)?,
            }
        }
        b'C' => {
            let (&target, rest) = body.split_first().ok_or(cut)?;
            let (closed, _) = cstr(rest).ok_or(cut)?;
            if target != b'S' && target != b'P' {
                return Err(Cut::Invalid);
            }
            Frontend::Close {
                kind: target,
                name: name(closed)?,
            }
        }
        b'S' => Frontend::Sync,
        b'F' => Frontend::FunctionCall,
        _ => Frontend::Other,
    })
}

/// StartupMessage, SSLRequest, GSSENCRequest or CancelRequest.
fn untyped(buf: &[u8], at: usize) -> (Result<Frontend, Cut>, Result<usize, Cut>) {
    let (Some(length), Some(code)) = (length_at(buf, at), length_at(buf, at + 4)) else {
        return (Err(Cut::Short(None)), Err(Cut::Short(None)));
    };
    let head = match (length, code) {
        (8, 80_877_103 | 80_877_104) => Frontend::EncryptionRequest,
        (16, 80_877_102) => Frontend::Cancel,
        // Protocol 3.0, or a later 3.x minor (PostgreSQL 18 offers 3.2).
        (9..=10_000, code) if code >> 16 == 3 => Frontend::Startup,
        _ => return (Err(Cut::Invalid), Err(Cut::Invalid)),
    };
    let end = at + length as usize;
    if end > buf.len() {
        let rest = Err(Cut::Short(Some((end - buf.len()) as u64)));
        return (Ok(head), rest);
    }
    (Ok(head), Ok(end))
}

/// Backend message types (protocol 3): ParseComplete, BindComplete, CloseComplete,
/// NotificationResponse, CommandComplete, CopyDone, DataRow, CopyData, ErrorResponse,
/// CopyInResponse, CopyOutResponse, EmptyQueryResponse, BackendKeyData, NoticeResponse,
/// NoData, Authentication, ParameterStatus, PortalSuspended, RowDescription,
/// ParameterDescription, FunctionCallResponse, NegotiateProtocolVersion, CopyBothResponse,
/// ReadyForQuery.
const BACKEND_TYPES: &[u8] = b"123ACcDdEGHIKNnRSsTtVvWZ";

/// The backend message at `at`, and where it ends.
pub fn backend(buf: &[u8], at: usize) -> (Result<Backend, Cut>, Result<usize, Cut>) {
    match typed(buf, at, BACKEND_TYPES) {
        Err(cut) => (Err(cut), Err(cut)),
        Ok((kind, body, end)) => {
            let head = match kind {
                b'C' | b'I' | b's' => Backend::Done,
                b'E' => Backend::Error(sqlstate(body)),
                b'Z' => Backend::Ready,
                _ => Backend::Other,
            };
            (Ok(head), end)
        }
    }
}

/// The SQLSTATE of an ErrorResponse body: its 'C' field, five digits or upper-case letters.
/// `None` when the field was not captured (it comes third, after severity; rarely cut).
fn sqlstate(mut body: &[u8]) -> Option<String> {
    while let Some((&field, rest)) = body.split_first() {
        if field == 0 {
            return None;
        }
        let (value, rest) = cstr(rest)?;
        if field == b'C' {
            let valid = value.len() == 5
                && value
                    .iter()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
            return valid.then(|| String::from_utf8_lossy(value).into_owned());
        }
        body = rest;
    }
    None
}
