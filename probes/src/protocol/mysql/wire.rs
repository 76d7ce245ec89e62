//! MySQL client/server protocol packets: where one ends, and the first bytes a pairing needs.
//!
//! Every packet, both ways, is a 3-byte little-endian payload length, a sequence number, then
//! the payload: once four bytes are seen the packet's end is known exactly, so a payload longer
//! than the capture (a 1 MiB query) is passed over without being captured. A payload of
//! 0xFFFFFF bytes is continued by the next packet. Nothing in the header can be checked by
//! itself; the matcher checks the sequence numbers and what the payloads say.

use crate::protocol::stream::Cut;

/// A payload this long is continued in the next packet.
pub const CONTINUED: u32 = 0xFF_FFFF;
/// Bytes of a command's payload kept: a statement's text, as much as a span may show.
const COMMAND_HEAD: usize = 8 * 1024;
/// Bytes of a reply's payload kept: an OK, EOF, ERR or column-count packet is shorter, the
/// greeting's capability flags lie within.
const REPLY_HEAD: usize = 160;

/// One packet as far as it was captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub seq: u8,
    /// The payload's length, from the header.
    pub len: u32,
    /// The payload's first bytes (all of it when short).
    pub head: Vec<u8>,
}

impl Packet {
    /// Whether `head` is the whole payload.
    pub fn whole(&self) -> bool {
        self.head.len() == self.len as usize
    }

    pub fn first(&self) -> Option<u8> {
        self.head.first().copied()
    }
}

fn packet(buf: &[u8], at: usize, keep: usize) -> (Result<Packet, Cut>, Result<usize, Cut>) {
    let Some(header) = buf.get(at..at + 4) else {
        return (Err(Cut::Short(None)), Err(Cut::Short(None)));
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]);
    let start = at + 4;
    let end = start + len as usize;
    let captured = &buf[start..end.min(buf.len())];
    let head = Packet {
        seq: header[3],
        len,
        head: captured[..captured.len().min(keep)].to_vec(),
    };
    if end > buf.len() {
        return (Ok(head), Err(Cut::Short(Some((end - buf.len()) as u64))));
    }
    (Ok(head), Ok(end))
}

/// A packet the client sends (a command, its continuation, the handshake response, auth data).
pub fn command(buf: &[u8], at: usize) -> (Result<Packet, Cut>, Result<usize, Cut>) {
    packet(buf, at, COMMAND_HEAD)
}

/// A packet the server sends.
pub fn reply(buf: &[u8], at: usize) -> (Result<Packet, Cut>, Result<usize, Cut>) {
    packet(buf, at, REPLY_HEAD)
}

/// A length-encoded integer at the start of `bytes`: its value and its size in bytes. `None`
/// when it was not captured whole, or for 0xFB (NULL) and 0xFF, which no count can be.
pub fn lenenc(bytes: &[u8]) -> Option<(u64, usize)> {
    let (&first, rest) = bytes.split_first()?;
    let size = match first {
        0..=0xFA => return Some((u64::from(first), 1)),
        0xFC => 2,
        0xFD => 3,
        0xFE => 8,
        _ => return None,
    };
    let value = rest.get(..size)?;
    let mut le = [0u8; 8];
    le[..size].copy_from_slice(value);
    Some((u64::from_le_bytes(le), size + 1))
}

pub fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at + 2)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

pub fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Capability flags (`CLIENT_*`) the pairing depends on.
pub mod caps {
    pub const COMPRESS: u32 = 0x20;
    pub const PROTOCOL_41: u32 = 0x200;
    pub const SSL: u32 = 0x800;
    pub const DEPRECATE_EOF: u32 = 1 << 24;
    /// MySQL 8's optional result-set metadata (`resultset_metadata=NONE` leaves it out).
    pub const OPTIONAL_RESULTSET_METADATA: u32 = 1 << 25;
    /// MySQL 8's zstd compression.
    pub const ZSTD: u32 = 1 << 26;
    /// MySQL 8.0.23's query attributes: COM_QUERY then starts with their count.
    pub const QUERY_ATTRIBUTES: u32 = 1 << 27;
}

/// `SERVER_MORE_RESULTS_EXISTS`: another result follows this one.
pub const MORE_RESULTS: u16 = 0x0008;
/// `SERVER_STATUS_CURSOR_EXISTS`: an execute opened a cursor; its rows come by COM_STMT_FETCH.
pub const CURSOR_EXISTS: u16 = 0x0040;

/// The server's greeting (Initial Handshake, protocol 10): which server, and what it can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub mariadb: bool,
    pub capabilities: u32,
}

pub fn greeting(payload: &[u8]) -> Option<Greeting> {
    let (&10, rest) = payload.split_first()? else {
        return None;
    };
    let version_end = memchr::memchr(0, rest)?;
    let version = &rest[..version_end];
    // After the version: thread id (4), salt (8), filler (1), capabilities' low half (2),
    // charset (1), status (2), their high half (2).
    let at = 1 + version_end + 1 + 4 + 8 + 1;
    let low = u16_at(payload, at)?;
    let high = u16_at(payload, at + 5)?;
    Some(Greeting {
        // MariaDB 10+ greets with "5.5.5-10.x.y-MariaDB" (11+ may drop the 5.5.5- prefix).
        mariadb: memchr::memmem::find(version, b"MariaDB").is_some(),
        capabilities: u32::from(low) | u32::from(high) << 16,
    })
}

/// What the end of a result (or a simple command) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// OK, or EOF, with the server's status flags.
    Ok(u16),
    /// ERR with its error number.
    Err(u16),
}

/// An OK packet (0x00, or 0xFE ending rows under DEPRECATE_EOF): affected rows and insert id
/// (length-encoded), then the status flags.
pub fn ok_status(payload: &[u8]) -> Option<u16> {
    let rest = payload.get(1..)?;
    let (_, a) = lenenc(rest)?;
    let (_, b) = lenenc(rest.get(a..)?)?;
    u16_at(rest, a + b)
}

/// An EOF packet (0xFE, under five bytes of payload): warnings, then the status flags.
pub fn eof_status(payload: &[u8]) -> Option<u16> {
    u16_at(payload, 3)
}

/// An ERR packet's error number.
pub fn err_code(payload: &[u8]) -> Option<u16> {
    u16_at(payload, 1)
}

/// Whether a packet is the 0xFE packet ending rows or a definition list (not a row or a
/// definition: those begin with a length-encoded string, and one starting 0xFE would hold
/// 16 MiB, more than a payload that is not continued).
pub fn is_end(packet: &Packet) -> bool {
    packet.first() == Some(0xFE) && packet.len < CONTINUED
}
