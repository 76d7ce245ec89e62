//! Pairing MySQL replies with the commands that asked for them, per connection, and their
//! spans.
//!
//! A connection is followed from the server's greeting: the greeting names the server (MySQL or
//! MariaDB) and its capabilities, the client's handshake response its own, and the two decide
//! how results end (EOF packets, or OK packets under `CLIENT_DEPRECATE_EOF`). After the login
//! the client sends commands, each starting a new sequence at 0, and the server answers them in
//! order, its packets numbered on from the command's. Every reply packet is checked against
//! the sequence number it must carry and against what may come at its place (a column
//! definition starts with the catalog `def`), so bytes that do not fit stop the pairing of the
//! connection for good: its commands are counted as unparsed, never paired with a guess.
//! Encrypted (SSL) and compressed connections, LOAD DATA LOCAL and replication streams are not
//! followed, and say so the same way.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use apiary_span::{Db, Protocol, Span};

use super::wire::{self, caps, Packet, Status, CONTINUED, CURSOR_EXISTS, MORE_RESULTS};
use crate::protocol::connections::{Followed, Table};
use crate::protocol::sql::{self, Dialect, Statement};
use crate::protocol::stream::{Parse, Stream};
use crate::protocol::{Clock, DbRequest, Message};

/// Commands waiting for replies on one connection; more and the connection is given up.
const MAX_PENDING: usize = 4_096;
/// Prepared statements remembered per connection; past it they are forgotten, and an execute
/// of a forgotten one gives no span (counted as unparsed).
const MAX_STATEMENTS: usize = 4_096;

/// Command bytes (`COM_*`).
mod com {
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const REFRESH: u8 = 0x07;
    pub const STATISTICS: u8 = 0x09;
    pub const PROCESS_INFO: u8 = 0x0a;
    pub const PROCESS_KILL: u8 = 0x0c;
    pub const DEBUG: u8 = 0x0d;
    pub const PING: u8 = 0x0e;
    pub const CHANGE_USER: u8 = 0x11;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1a;
    pub const SET_OPTION: u8 = 0x1b;
    pub const STMT_FETCH: u8 = 0x1c;
    pub const RESET_CONNECTION: u8 = 0x1f;
    /// MariaDB's execute of one prepared statement for many rows of parameters.
    pub const STMT_BULK_EXECUTE: u8 = 0xfa;
}

/// MariaDB's execute of the statement prepared last on the connection (sent before its id is
/// known, right after the prepare).
const LAST_PREPARED: u32 = u32::MAX;
/// The error number of MariaDB's progress reports, which end nothing.
const PROGRESS_REPORT: u16 = 0xFFFF;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// Waiting for the server's greeting.
    #[default]
    Greeting,
    /// Waiting for the client's handshake response.
    Handshake,
    /// Authentication packets, up to the server's OK.
    Auth,
    Commands,
}

/// How a command's reply is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// OK, ERR, or result sets (several while `SERVER_MORE_RESULTS_EXISTS`).
    Result,
    /// PREPARE_OK then its parameter and column definitions, or ERR.
    Prepare,
    /// Rows up to their end, or ERR (COM_STMT_FETCH).
    Rows,
    /// Column definitions up to an EOF, or ERR (COM_FIELD_LIST).
    Definitions,
    /// Any one packet.
    One,
}

/// What follows a list of definitions (and its EOF, where the connection sends one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Rows,
    /// A prepared statement's column definitions, after its parameters'.
    Columns(u16),
    Done,
}

/// Where the reading of a command's reply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    Start,
    Definitions { left: u64, next: Next },
    DefinitionsEof { next: Next },
    Rows,
    Done,
}

/// A command waiting for its reply.
struct Command {
    reply: Reply,
    reading: Reading,
    /// The statement it runs; `None` gives no span (protocol chatter, an unknown statement).
    statement: Option<Arc<Statement>>,
    request: DbRequest,
    /// The sequence number the reply's next packet carries.
    seq: u8,
}

#[derive(Default)]
pub(in crate::protocol) struct Connection {
    requests: Stream,
    responses: Stream,
    phase: Phase,
    mariadb: bool,
    server_capabilities: u32,
    /// Results end with OK packets, not EOF (`CLIENT_DEPRECATE_EOF` on both sides).
    deprecate_eof: bool,
    /// A prepare's definitions may be left out (MySQL 8's `CLIENT_OPTIONAL_RESULTSET_METADATA`).
    optional_metadata: bool,
    /// COM_QUERY starts with query attributes (MySQL 8's `CLIENT_QUERY_ATTRIBUTES`).
    query_attributes: bool,
    /// The next sequence number of the login's (or COM_CHANGE_USER's) exchange.
    auth_seq: u8,
    commands: VecDeque<Command>,
    statements: HashMap<u32, Arc<Statement>>,
    last_prepared: Option<Arc<Statement>>,
    /// The last request packet was 16 MiB - 1 long: the next one continues it (its sequence
    /// number, and whether its command waits for a reply).
    request_continued: Option<(u8, bool)>,
    /// The same for the last reply packet.
    reply_continued: bool,
    /// Given up: nothing more is paired on it.
    lost: bool,
}

/// A command its reply ended, for its span.
struct Ended {
    statement: Arc<Statement>,
    request: DbRequest,
    status: Status,
    ts_ns: u64,
}

/// Why a connection is no longer followed.
struct Lost;

/// Every MySQL connection's streams and waiting commands. Bounded: the connection seen least
/// recently is forgotten first.
#[derive(Default)]
pub struct Matcher {
    pub(in crate::protocol) connections: Table<Connection>,
    /// Commands that gave no span: on connections given up or never seen from their greeting,
    /// executes of statements never seen prepared, bytes that are not the protocol.
    pub unparsed: u64,
}

impl Matcher {
    /// One buffer of a MySQL connection: `total_len` bytes of which `message.data` were
    /// captured, on the commands' side or the replies'. Spans of the commands it ends go to
    /// `out`.
    pub fn feed(
        &mut self,
        message: Message,
        total_len: u64,
        request_side: bool,
        service: impl FnOnce(u32) -> String,
        clock: &Clock,
        out: &mut Vec<Span>,
    ) {
        let connection = self.connections.of(&message);
        if connection.lost {
            // Commands, not the replies' buffers, are what went unparsed.
            self.unparsed += u64::from(request_side);
            return;
        }
        let (stream, parse): (_, Parse<Packet>) = if request_side {
            (&mut connection.requests, wire::command)
        } else {
            (&mut connection.responses, wire::reply)
        };
        let mut packets = Vec::new();
        let fed = stream.feed(message.data, total_len, message.ts_ns, parse, |p, ts| {
            packets.push((p, ts))
        });
        let mut ended = Vec::new();
        let mut followed = fed.map_err(|_| Lost);
        for (packet, ts_ns) in packets {
            let step = if request_side {
                connection.request(packet, ts_ns, &message, &mut self.unparsed)
            } else {
                connection.reply(packet, ts_ns, &mut ended)
            };
            if step.is_err() {
                followed = step;
                break;
            }
        }
        if followed.is_err() {
            self.unparsed += connection.give_up();
        }
        if ended.is_empty() {
            return;
        }
        let system = if connection.mariadb {
            "mariadb"
        } else {
            "mysql"
        };
        let service = service(message.pid);
        for Ended {
            statement,
            request,
            status,
            ts_ns,
        } in ended
        {
            let Statement {
                operation,
                collection,
                text,
            } = (*statement).clone();
            let db = Db {
                system,
                operation,
                collection,
                query_text: Some(text),
                key: None,
                status_code: match status {
                    Status::Ok(_) => None,
                    Status::Err(code) => Some(code.to_string()),
                },
            };
            let protocol = Protocol::Mysql(db);
            out.push(request.span(ts_ns, &message, service.clone(), clock, protocol));
        }
    }

    /// Forgets the connections of a process that exited.
    pub fn forget_process(&mut self, pid: u32) {
        self.connections.forget_process(pid);
    }

    /// Connections with commands waiting for their replies.
    pub fn pending_connections(&self) -> usize {
        self.connections
            .states()
            .filter(|c| !c.commands.is_empty())
            .count()
    }
}

impl Followed for Connection {
    /// Stops following the connection: its waiting commands and the buffer at hand are
    /// unparsed (returned: how many).
    fn give_up(&mut self) -> u64 {
        let unparsed = self.commands.len() as u64 + 1;
        *self = Connection {
            lost: true,
            ..Connection::default()
        };
        unparsed
    }

    fn lost(&self) -> bool {
        self.lost
    }
}

impl Connection {
    /// One packet the client sent.
    fn request(
        &mut self,
        packet: Packet,
        ts_ns: u64,
        message: &Message,
        unparsed: &mut u64,
    ) -> Result<(), Lost> {
        if let Some((seq, queued)) = self.request_continued.take() {
            // The rest of a command over 16 MiB: its reply is numbered on from the last part.
            if packet.seq != seq.wrapping_add(1) {
                return Err(Lost);
            }
            if packet.len == CONTINUED {
                self.request_continued = Some((packet.seq, queued));
            }
            // Not another command's: a long COM_STMT_SEND_LONG_DATA waits for nothing.
            if let (true, Some(command)) = (queued, self.commands.back_mut()) {
                command.seq = packet.seq.wrapping_add(1);
            }
            return Ok(());
        }
        let (continued, seq, waiting) = (packet.len == CONTINUED, packet.seq, self.commands.len());
        let followed = match self.phase {
            Phase::Greeting => Err(Lost), // the server speaks first
            Phase::Handshake => self.handshake_response(&packet),
            Phase::Auth => self.auth_packet(&packet),
            Phase::Commands => self.command(packet, ts_ns, message, unparsed),
        };
        if continued {
            self.request_continued = Some((seq, self.commands.len() > waiting));
        }
        followed
    }

    fn handshake_response(&mut self, packet: &Packet) -> Result<(), Lost> {
        if packet.seq != 1 {
            return Err(Lost);
        }
        let client = wire::u32_at(&packet.head, 0).ok_or(Lost)?;
        let both = client & self.server_capabilities;
        // An SSLRequest (the capabilities alone, then TLS), a pre-4.1 client, or compression:
        // the bytes from here are not readable packets.
        if client & caps::SSL != 0 || both & caps::PROTOCOL_41 == 0 {
            return Err(Lost);
        }
        if both & (caps::COMPRESS | caps::ZSTD) != 0 {
            return Err(Lost);
        }
        self.deprecate_eof = both & caps::DEPRECATE_EOF != 0;
        self.optional_metadata = both & caps::OPTIONAL_RESULTSET_METADATA != 0;
        self.query_attributes = both & caps::QUERY_ATTRIBUTES != 0;
        self.phase = Phase::Auth;
        self.auth_seq = 2;
        Ok(())
    }

    /// A packet of the login's exchange, either way: they are numbered on across both.
    fn auth_packet(&mut self, packet: &Packet) -> Result<(), Lost> {
        if packet.seq != self.auth_seq {
            return Err(Lost);
        }
        self.auth_seq = self.auth_seq.wrapping_add(1);
        Ok(())
    }

    fn command(
        &mut self,
        packet: Packet,
        ts_ns: u64,
        message: &Message,
        unparsed: &mut u64,
    ) -> Result<(), Lost> {
        if packet.seq != 0 {
            return Err(Lost);
        }
        let whole = packet.whole() && packet.len != CONTINUED;
        let body = packet.head.get(1..).unwrap_or_default();
        let summarize = |text: &[u8]| Arc::new(sql::summarize(text, whole, Dialect::Mysql));
        let (reply, statement) = match packet.first().ok_or(Lost)? {
            com::QUERY => match self.query_text(body) {
                Some(text) => (Reply::Result, Some(summarize(text))),
                None => {
                    *unparsed += 1; // attributes hide where the text starts
                    (Reply::Result, None)
                }
            },
            com::STMT_PREPARE => {
                let statement = summarize(body);
                self.last_prepared = Some(statement.clone());
                (Reply::Prepare, Some(statement))
            }
            com::STMT_EXECUTE | com::STMT_BULK_EXECUTE => {
                let id = wire::u32_at(body, 0).ok_or(Lost)?;
                let statement = match id {
                    LAST_PREPARED => self.last_prepared.clone(),
                    id => self.statements.get(&id).cloned(),
                };
                if statement.is_none() {
                    *unparsed += 1; // prepared before it was seen, or forgotten
                }
                (Reply::Result, statement)
            }
            com::STMT_FETCH => (Reply::Rows, None),
            com::STMT_CLOSE => {
                let id = wire::u32_at(body, 0).ok_or(Lost)?;
                self.statements.remove(&id);
                return Ok(());
            }
            // Answered by nothing.
            com::STMT_SEND_LONG_DATA | com::QUIT => return Ok(()),
            com::CHANGE_USER => {
                if !self.commands.is_empty() {
                    return Err(Lost); // which answer is whose is then unclear
                }
                self.statements.clear();
                self.last_prepared = None;
                self.phase = Phase::Auth;
                self.auth_seq = 1;
                return Ok(());
            }
            com::RESET_CONNECTION => {
                self.statements.clear();
                self.last_prepared = None;
                (Reply::One, None)
            }
            com::PING
            | com::INIT_DB
            | com::STMT_RESET
            | com::SET_OPTION
            | com::REFRESH
            | com::DEBUG
            | com::STATISTICS
            | com::PROCESS_KILL => (Reply::One, None),
            com::FIELD_LIST => (Reply::Definitions, None),
            com::PROCESS_INFO => (Reply::Result, None),
            // Replication (binlog dumps), daemon commands: not request and reply.
            _ => return Err(Lost),
        };
        let reading = match reply {
            Reply::Rows => Reading::Rows,
            _ => Reading::Start,
        };
        self.commands.push_back(Command {
            reply,
            reading,
            statement,
            request: DbRequest::at(message, ts_ns),
            seq: packet.seq.wrapping_add(1),
        });
        if self.commands.len() > MAX_PENDING {
            return Err(Lost);
        }
        Ok(())
    }

    /// A COM_QUERY's text, after the query attributes where the connection sends them; `None`
    /// when attributes are set (their values' sizes depend on their types).
    fn query_text<'a>(&self, body: &'a [u8]) -> Option<&'a [u8]> {
        if !self.query_attributes {
            return Some(body);
        }
        let (count, a) = wire::lenenc(body)?;
        let (_sets, b) = wire::lenenc(body.get(a..)?)?;
        (count == 0).then(|| &body[a + b..])
    }

    /// One packet the server sent.
    fn reply(&mut self, packet: Packet, ts_ns: u64, ended: &mut Vec<Ended>) -> Result<(), Lost> {
        if self.reply_continued {
            // The rest of a row over 16 MiB.
            self.reply_continued = packet.len == CONTINUED;
            let command = self.commands.front_mut().ok_or(Lost)?;
            if packet.seq != command.seq {
                return Err(Lost);
            }
            command.seq = command.seq.wrapping_add(1);
            return Ok(());
        }
        match self.phase {
            Phase::Greeting => {
                let greeting = match (packet.seq, wire::greeting(&packet.head)) {
                    (0, Some(greeting)) => greeting,
                    _ => return Err(Lost), // an ERR (too many connections), or not MySQL
                };
                self.mariadb = greeting.mariadb;
                self.server_capabilities = greeting.capabilities;
                self.phase = Phase::Handshake;
                return Ok(());
            }
            Phase::Handshake => return Err(Lost),
            Phase::Auth => {
                self.auth_packet(&packet)?;
                match packet.first() {
                    Some(0x00) => self.phase = Phase::Commands,
                    // Refused: the server closes the connection.
                    Some(0xFF) => return Err(Lost),
                    // An auth switch or more data: the exchange goes on.
                    _ => {}
                }
                return Ok(());
            }
            Phase::Commands => {}
        }
        let Some(command) = self.commands.front_mut() else {
            // An ERR with nothing asked (the server closing an idle connection) ends nothing.
            return match packet.first() {
                Some(0xFF) => Ok(()),
                _ => Err(Lost),
            };
        };
        if packet.seq != command.seq {
            return Err(Lost);
        }
        command.seq = command.seq.wrapping_add(1);
        self.reply_continued = packet.len == CONTINUED;
        let ending = Ending {
            deprecate_eof: self.deprecate_eof,
            optional_metadata: self.optional_metadata,
        };
        let Some(status) = step(command, &packet, ending, &mut self.statements)? else {
            return Ok(());
        };
        let command = self.commands.pop_front().ok_or(Lost)?;
        let failed = matches!(status, Status::Err(_));
        // A prepare's span is its error: a prepared statement's time is its executes'.
        let spanned = command.reply != Reply::Prepare || failed;
        if let (Some(statement), true) = (command.statement, spanned) {
            ended.push(Ended {
                statement,
                request: command.request,
                status,
                ts_ns,
            });
        }
        Ok(())
    }
}

/// What the login agreed on that says where replies end.
#[derive(Clone, Copy)]
struct Ending {
    deprecate_eof: bool,
    optional_metadata: bool,
}

/// One packet of a command's reply: the status when it ends the reply.
fn step(
    command: &mut Command,
    packet: &Packet,
    ending: Ending,
    statements: &mut HashMap<u32, Arc<Statement>>,
) -> Result<Option<Status>, Lost> {
    let deprecate_eof = ending.deprecate_eof;
    let first = packet.first().ok_or(Lost)?;
    if first == 0xFF {
        // An error ends any reply (mid-rows too); none comes inside a list of definitions.
        if let Reading::Definitions { .. } | Reading::DefinitionsEof { .. } = command.reading {
            return Err(Lost);
        }
        return match wire::err_code(&packet.head).ok_or(Lost)? {
            PROGRESS_REPORT => Ok(None),
            code => Ok(Some(Status::Err(code))),
        };
    }
    let end_status = |packet: &Packet| {
        if deprecate_eof {
            wire::ok_status(&packet.head)
        } else {
            wire::eof_status(&packet.head)
        }
    };
    command.reading = match (command.reading, command.reply) {
        (Reading::Start, Reply::One) => return Ok(Some(Status::Ok(0))),
        (Reading::Start, Reply::Definitions) => {
            return Ok(wire::is_end(packet).then_some(Status::Ok(0)));
        }
        (Reading::Start, Reply::Prepare) => {
            if first != 0x00 || packet.len < 12 {
                return Err(Lost);
            }
            // The capture may end inside it: each field is read only if it was captured.
            let head = &packet.head;
            let id = wire::u32_at(head, 1).ok_or(Lost)?;
            let columns = wire::u16_at(head, 5).ok_or(Lost)?;
            let params = wire::u16_at(head, 7).ok_or(Lost)?;
            // MySQL 8 with resultset_metadata=NONE: no definitions follow.
            let no_metadata =
                ending.optional_metadata && packet.len >= 13 && head.get(12) == Some(&0);
            if let Some(statement) = &command.statement {
                if statements.len() >= MAX_STATEMENTS && !statements.contains_key(&id) {
                    statements.clear();
                }
                statements.insert(id, statement.clone());
            }
            match (params, columns) {
                _ if no_metadata => Reading::Done,
                (0, 0) => Reading::Done,
                (0, columns) => definitions(u64::from(columns), Next::Done),
                (params, columns) => definitions(u64::from(params), Next::Columns(columns)),
            }
        }
        (Reading::Start, _) => match first {
            0x00 => {
                let status = wire::ok_status(&packet.head).ok_or(Lost)?;
                if status & MORE_RESULTS != 0 {
                    return Ok(None);
                }
                return Ok(Some(Status::Ok(status)));
            }
            // LOCAL INFILE: the client sends a file; not followed.
            0xFB => return Err(Lost),
            _ => {
                let (count, size) = wire::lenenc(&packet.head).ok_or(Lost)?;
                // MariaDB's metadata cache and MySQL 8's optional metadata add one byte: 0
                // when the column definitions are left out.
                let metadata = match packet.len as usize - size.min(packet.len as usize) {
                    0 => true,
                    1 => *packet.head.get(size).ok_or(Lost)? != 0,
                    _ => return Err(Lost),
                };
                if count == 0 {
                    return Err(Lost);
                }
                if metadata {
                    definitions(count, Next::Rows)
                } else {
                    after_definitions(Next::Rows, deprecate_eof)
                }
            }
        },
        (Reading::Definitions { left, next }, _) => {
            // A column or parameter definition starts with its catalog, always "def".
            if !packet.head.starts_with(b"\x03def") {
                return Err(Lost);
            }
            match left {
                1 => after_definitions(next, deprecate_eof),
                left => Reading::Definitions {
                    left: left - 1,
                    next,
                },
            }
        }
        (Reading::DefinitionsEof { next }, _) => {
            if !wire::is_end(packet) {
                return Err(Lost);
            }
            let status = wire::eof_status(&packet.head).ok_or(Lost)?;
            if next == Next::Rows && status & CURSOR_EXISTS != 0 {
                return Ok(Some(Status::Ok(status))); // rows come by COM_STMT_FETCH
            }
            enter(next)
        }
        (Reading::Rows, _) => {
            if !wire::is_end(packet) {
                return Ok(None); // a row
            }
            let status = end_status(packet).ok_or(Lost)?;
            if status & MORE_RESULTS != 0 {
                Reading::Start
            } else {
                return Ok(Some(Status::Ok(status)));
            }
        }
        (Reading::Done, _) => return Err(Lost),
    };
    Ok((command.reading == Reading::Done).then_some(Status::Ok(0)))
}

fn definitions(left: u64, next: Next) -> Reading {
    Reading::Definitions { left, next }
}

fn after_definitions(next: Next, deprecate_eof: bool) -> Reading {
    if deprecate_eof {
        enter(next)
    } else {
        Reading::DefinitionsEof { next }
    }
}

fn enter(next: Next) -> Reading {
    match next {
        Next::Rows => Reading::Rows,
        Next::Columns(0) | Next::Done => Reading::Done,
        Next::Columns(columns) => definitions(u64::from(columns), Next::Done),
    }
}
