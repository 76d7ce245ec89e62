//! RESP2 and RESP3 values: where one ends, and the little of it a span keeps.
//!
//! Values are walked, not built: a reply's contents are never needed, only its length and
//! whether it is an error; a command's name and key. A value cut by the end of the bytes at hand
//! says whether the rest of it is known exactly (the cut fell in the last string of the value:
//! its length was given) so that a large value can be passed over without being captured.

/// Nesting deeper than this is refused (Redis itself answers few replies nested past 3).
const MAX_DEPTH: usize = 32;
/// Redis refuses bulk strings over 512 MiB (`proto-max-bulk-len`) and aggregates over 2^31.
const MAX_BULK: i64 = 512 * 1024 * 1024;
const MAX_COUNT: i64 = i32::MAX as i64;

pub use crate::protocol::stream::Cut;

/// The first of a value's types that matter: errors (`-`, `!`) and pushes (`>`), which answer
/// no command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    /// The error's code: its first word (`ERR`, `WRONGTYPE`, `NOSCRIPT`).
    Error(String),
    /// A RESP3 push (pub/sub message, invalidation): out of band, answers no command.
    Push,
}

/// A command: its name (upper-cased), its key (the first argument) and how many arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub name: String,
    pub key: Option<String>,
    pub args: usize,
}

/// The line at `at` (without its CRLF) and where the next begins.
fn line(buf: &[u8], at: usize) -> Result<(&[u8], usize), Cut> {
    let rest = buf.get(at..).ok_or(Cut::Short(None))?;
    match memchr::memchr(b'\n', rest) {
        Some(end) if end > 0 && rest[end - 1] == b'\r' => Ok((&rest[..end - 1], at + end + 1)),
        Some(_) => Err(Cut::Invalid),
        None => Err(Cut::Short(None)),
    }
}

fn integer(text: &[u8]) -> Result<i64, Cut> {
    let (negative, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Cut::Invalid);
    }
    let value = digits
        .iter()
        .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    Ok(if negative { -value } else { value })
}

/// A length-prefixed string's body at `at` of `len` bytes and its CRLF: where it ends.
fn body(buf: &[u8], at: usize, len: i64) -> Result<usize, Cut> {
    if len < 0 {
        return Ok(at); // RESP2 null bulk string or array: no body
    }
    if len > MAX_BULK {
        return Err(Cut::Invalid);
    }
    let end = at + len as usize + 2;
    if end > buf.len() {
        return Err(Cut::Short(Some((end - buf.len().max(at)) as u64)));
    }
    if &buf[end - 2..end] != b"\r\n" {
        return Err(Cut::Invalid);
    }
    Ok(end)
}

/// Where the value starting at `at` ends.
pub fn skip_value(buf: &[u8], at: usize, depth: usize) -> Result<usize, Cut> {
    if depth > MAX_DEPTH {
        return Err(Cut::Invalid);
    }
    let kind = *buf.get(at).ok_or(Cut::Short(None))?;
    let (text, next) = line(buf, at + 1)?;
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(next),
        b'$' | b'!' | b'=' => {
            if text == b"?" {
                return Err(Cut::Invalid); // streamed strings: not followed
            }
            body(buf, next, integer(text)?)
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let count = integer(text)?;
            if count > MAX_COUNT {
                return Err(Cut::Invalid);
            }
            let elements = if matches!(kind, b'%' | b'|') {
                count.saturating_mul(2)
            } else {
                count
            };
            let mut at = next;
            for i in 0..elements.max(0) {
                match skip_value(buf, at, depth + 1) {
                    Ok(end) => at = end,
                    // Only the last element's known rest is the whole value's.
                    Err(Cut::Short(Some(n))) if i == elements - 1 => {
                        return Err(Cut::Short(Some(n)))
                    }
                    Err(Cut::Short(_)) => return Err(Cut::Short(None)),
                    Err(Cut::Invalid) => return Err(Cut::Invalid),
                }
            }
            if kind == b'|' {
                // An attribute map comes before the reply it describes: that reply follows.
                return skip_value(buf, at, depth + 1);
            }
            Ok(at)
        }
        _ => Err(Cut::Invalid),
    }
}

/// The reply starting at `at`: what kind it is, and where it ends (or why not). The kind is
/// known from its first line even when the rest is cut.
pub fn reply(buf: &[u8], at: usize) -> (Result<Reply, Cut>, Result<usize, Cut>) {
    let kind = match buf.get(at) {
        None => return (Err(Cut::Short(None)), Err(Cut::Short(None))),
        Some(kind) => *kind,
    };
    let end = skip_value(buf, at, 0);
    let reply = match kind {
        b'>' => Ok(Reply::Push),
        b'-' => line(buf, at + 1).map(|(text, _)| Reply::Error(error_code(text))),
        b'!' => match end {
            // A blob error's code is the start of its body.
            Ok(_) | Err(Cut::Short(_)) => line(buf, at + 1)
                .map(|(_, body)| Reply::Error(error_code(buf.get(body..).unwrap_or_default()))),
            Err(e) => Err(e),
        },
        b'|' => Err(Cut::Invalid), // replies behind attributes: counted, not followed
        _ => Ok(Reply::Ok),
    };
    (reply, end)
}

/// An error's code: its first word when that is upper case (`WRONGTYPE Operation...`), else
/// `ERR` (Redis's convention for errors without one).
fn error_code(text: &[u8]) -> String {
    let word = text
        .split(|&b| b == b' ' || b == b'\r')
        .next()
        .unwrap_or_default();
    if !word.is_empty()
        && word.len() <= 32
        && word
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
    {
        String::from_utf8_lossy(word).into_owned()
    } else {
        "ERR".to_string()
    }
}

/// Keys longer than this are not kept (nor exported): they are rarely a key a person reads.
const MAX_KEY: usize = 256;

/// The command starting at `at` and where it ends: an array of bulk strings. Its name is known once its first string is whole,
/// even when the rest is cut.
pub fn command(buf: &[u8], at: usize) -> (Result<Command, Cut>, Result<usize, Cut>) {
    match buf.get(at) {
        None => (Err(Cut::Short(None)), Err(Cut::Short(None))),
        Some(b'*') => array_command(buf, at),
        // Inline commands (telnet's `PING\r\n`) are refused: every client library sends
        // arrays, and a line of words is what the middle of a value most often looks like.
        Some(_) => (Err(Cut::Invalid), Err(Cut::Invalid)),
    }
}

fn array_command(buf: &[u8], at: usize) -> (Result<Command, Cut>, Result<usize, Cut>) {
    const INVALID: (Result<Command, Cut>, Result<usize, Cut>) =
        (Err(Cut::Invalid), Err(Cut::Invalid));
    let (count, mut next) = match line(buf, at + 1).and_then(|(text, n)| Ok((integer(text)?, n))) {
        Ok((count, next)) if (1..=MAX_COUNT).contains(&count) => (count, next),
        Ok(_) => return INVALID,
        Err(e) => return (Err(e), Err(e)),
    };
    let mut name = None;
    let mut key = None;
    // What is known when the bytes end inside argument `i`: the command once its name is
    // whole; its end only when the cut is in the last argument's body.
    let cut = |name: Option<String>, key: Option<String>, cut: Cut| {
        let command = name.map(|name| Command {
            name,
            key,
            args: count as usize,
        });
        (command.ok_or(shorten(cut)), Err(cut))
    };
    for i in 0..count {
        let (start, len) = match buf.get(next) {
            None => return cut(name, key, Cut::Short(None)),
            Some(b'$') => match line(buf, next + 1).and_then(|(text, s)| Ok((s, integer(text)?))) {
                Ok((start, len)) if len >= 0 => (start, len),
                Ok(_) => return INVALID,
                Err(e) => return cut(name, key, e),
            },
            Some(_) => return INVALID,
        };
        match body(buf, start, len) {
            Ok(end) => {
                let text = &buf[start..start + len as usize];
                if i == 0 {
                    match command_name(text) {
                        Ok(found) => name = Some(found),
                        Err(_) => return INVALID,
                    }
                } else if i == 1 && text.len() <= MAX_KEY {
                    key = std::str::from_utf8(text).ok().map(str::to_string);
                }
                next = end;
            }
            Err(Cut::Short(Some(n))) if i == count - 1 && name.is_some() => {
                return cut(name, key, Cut::Short(Some(n)))
            }
            Err(e) => return cut(name, key, shorten(e)),
        }
    }
    let command = name.map(|name| Command {
        name,
        key,
        args: count as usize,
    });
    (command.ok_or(Cut::Invalid), Ok(next))
}

/// A known rest inside an argument that is not the last says nothing of the command's end.
fn shorten(cut: Cut) -> Cut {
    match cut {
        Cut::Short(_) => Cut::Short(None),
        Cut::Invalid => Cut::Invalid,
    }
}

/// A command's name, upper-cased: letters (and `|`, `-`, `_`, `.` of module commands) only, so
/// that bytes which are no command never name a RED series.
fn command_name(raw: &[u8]) -> Result<String, Cut> {
    if raw.is_empty()
        || raw.len() > 32
        || !raw[0].is_ascii_alphabetic()
        || !raw
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'|' | b'-' | b'_' | b'.'))
    {
        return Err(Cut::Invalid);
    }
    Ok(String::from_utf8_lossy(raw).to_ascii_uppercase())
}
