//! Pairing PostgreSQL results with the statements that asked for them, per connection and in
//! order, and their spans.
//!
//! The server answers a connection's messages in the order they came. A Query ('Q') is
//! answered up to its ReadyForQuery; an extended-query batch (Parse, Bind, Describe, Execute
//! ..., then Sync) up to the Sync's ReadyForQuery, each Execute by one CommandComplete (or
//! EmptyQueryResponse, PortalSuspended). After an ErrorResponse the server skips the rest of
//! the batch until Sync. So each batch waits in a queue with its Executes in order: a
//! completion ends the first Execute of the first batch, an error ends it with the SQLSTATE
//! and drops the batch's others (never run), ReadyForQuery ends the batch. Statement names
//! (Parse) and portals (Bind) are remembered per connection, so an Execute of a prepared
//! statement carries its text. Anything that does not fit this order (a completion with
//! nothing waiting, bytes that are no message, a message begun beyond the capture, an
//! encrypted connection) stops the pairing of that connection for good: its messages are
//! counted as unparsed, never paired with a guess.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use apiary_span::{Db, Protocol, Span, SpanKind};

use super::wire::{self, Backend, Frontend};
use crate::abi::Direction;
use crate::protocol::connections::{Followed, Table};
use crate::protocol::sql::Statement;
use crate::protocol::stream::Stream;
use crate::protocol::{Clock, DbRequest, Message};

/// Executes and batches waiting on one connection; more and the connection is given up.
const MAX_PENDING: usize = 4_096;
/// Prepared statements and portals remembered per connection; past it they are forgotten
/// (a DEALLOCATE in SQL, or a transaction's end for portals, drops them without a message),
/// and a later Bind or Execute naming a forgotten one gives the connection up.
const MAX_NAMES: usize = 4_096;

/// An Execute, or a whole Query, waiting for its result.
struct Operation {
    statement: Arc<Statement>,
    request: DbRequest,
}

/// What one ReadyForQuery answers: a Query, an extended batch up to its Sync, the startup.
#[derive(Default)]
struct Batch {
    /// A Query's one operation, ended by ReadyForQuery (its statements may be several).
    query: Option<Operation>,
    /// A Query's first error.
    query_error: Option<Option<String>>,
    /// The batch's Executes, in order.
    executes: VecDeque<Operation>,
    /// A Parse with no Execute after it in the batch (a PREPARE): an error on it is its span.
    parse: Option<Operation>,
    /// The Sync (or Query, FunctionCall, startup) that ends it was sent.
    closed: bool,
    /// An error was answered: the server skips the rest until Sync.
    failed: bool,
}

#[derive(Default)]
pub(in crate::protocol) struct Connection {
    requests: Stream,
    responses: Stream,
    /// SSLRequests and GSSENCRequests sent, each answered by one untyped byte.
    encryption_answers: u32,
    /// The StartupMessage was seen, or the connection was resynced on: typed messages follow.
    started: bool,
    /// Met mid-stream on a server that read one whole Query: followed once its first answer
    /// proves the boundary (see [`Connection::resync_on`]).
    resyncing: bool,
    batches: VecDeque<Batch>,
    pending: usize,
    statements: HashMap<String, Arc<Statement>>,
    portals: HashMap<String, Arc<Statement>>,
    /// Given up: nothing more is paired on it.
    lost: bool,
}

/// What one buffer brought, for the spans: an ended operation and its error, if any.
struct Ended {
    operation: Operation,
    error: Option<Option<String>>,
    ts_ns: u64,
}

/// Every PostgreSQL connection's streams and waiting statements. Bounded: the connection seen
/// least recently is forgotten first.
#[derive(Default)]
pub struct Matcher {
    pub(in crate::protocol) connections: Table<Connection>,
    /// Messages that gave no span: on connections given up or met mid-stream, results with
    /// nothing waiting, bytes that are not the protocol.
    pub unparsed: u64,
}

impl Matcher {
    /// One buffer of a PostgreSQL connection: `total_len` bytes of which `message.data` were
    /// captured, on the requests' side or the responses'. Spans of the operations it ends go
    /// to `out`.
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
            self.unparsed += 1;
            return;
        }
        let mut ended = Vec::new();
        let fed = if request_side {
            connection.requests(&message, total_len)
        } else {
            connection.responses(&message, total_len, &mut ended)
        };
        if fed.is_err() {
            self.unparsed += connection.give_up();
        }
        if ended.is_empty() {
            return;
        }
        let service = service(message.pid);
        for Ended {
            operation,
            error,
            ts_ns,
        } in ended
        {
            out.push(span_of(
                operation,
                error,
                ts_ns,
                &message,
                service.clone(),
                clock,
            ));
        }
    }

    /// Forgets the connections of a process that exited.
    pub fn forget_process(&mut self, pid: u32) {
        self.connections.forget_process(pid);
    }

    /// Connections with statements waiting for their results.
    pub fn pending_connections(&self) -> usize {
        self.connections.states().filter(|c| c.pending > 0).count()
    }
}

/// Why a connection is no longer followed.
struct Lost;

impl Followed for Connection {
    /// Stops following the connection: its waiting statements and the buffer at hand are
    /// unparsed (returned: how many).
    fn give_up(&mut self) -> u64 {
        let unparsed = self.pending as u64 + 1;
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
    /// The batch the next extended-query message belongs to (a new one after a Sync).
    fn open_batch(&mut self) -> &mut Batch {
        if self.batches.back().is_none_or(|b| b.closed) {
            self.batches.push_back(Batch::default());
        }
        self.batches.back_mut().expect("a batch was just pushed")
    }

    fn closed_batch(&mut self, batch: Batch) -> Result<(), Lost> {
        if self.batches.back().is_some_and(|b| !b.closed) {
            // A Query or FunctionCall inside an unsynced extended batch: which ReadyForQuery
            // answers what is then the server's business; not followed.
            return Err(Lost);
        }
        self.batches.push_back(Batch {
            closed: true,
            ..batch
        });
        Ok(())
    }

    fn requests(&mut self, message: &Message, total: u64) -> Result<(), Lost> {
        let kind = match message.direction {
            Direction::Ingress => SpanKind::Server,
            Direction::Egress => SpanKind::Client,
        };
        let operation = |statement: Arc<Statement>, ts_ns: u64| Operation {
            statement,
            request: DbRequest::at(message, ts_ns),
        };
        let whole = message.data.len() as u64 == total;
        let mut frontend = Vec::new();
        let fed = self.requests.feed(
            message.data,
            total,
            message.ts_ns,
            wire::frontend,
            |m, ts| frontend.push((m, ts)),
        );
        if !self.started && self.batches.is_empty() {
            if let [(Frontend::Query(statement), ts_ns)] = &frontend[..] {
                if kind == SpanKind::Server && whole && fed.is_ok() {
                    self.started = true;
                    self.resyncing = true;
                    let query = Some(operation(statement.clone(), *ts_ns));
                    self.closed_batch(Batch {
                        query,
                        ..Batch::default()
                    })?;
                    self.pending += 1;
                    return Ok(());
                }
            }
        }
        for (m, ts_ns) in frontend {
            match m {
                // An untyped packet after the startup is not the protocol.
                Frontend::Startup | Frontend::EncryptionRequest | Frontend::Cancel
                    if self.started =>
                {
                    return Err(Lost)
                }
                Frontend::Startup => {
                    self.started = true;
                    self.closed_batch(Batch::default())?;
                }
                Frontend::EncryptionRequest => self.encryption_answers += 1,
                // A cancel connection sends one packet and is answered by none.
                Frontend::Cancel => {}
                // Met mid-stream, and not on a Query a server read whole: not followed.
                _ if !self.started => return Err(Lost),
                Frontend::Query(statement) => {
                    let query = Some(operation(statement, ts_ns));
                    self.closed_batch(Batch {
                        query,
                        ..Batch::default()
                    })?;
                    self.pending += 1;
                }
                Frontend::FunctionCall => self.closed_batch(Batch::default())?,
                Frontend::Parse { name, statement } => {
                    if self.statements.len() >= MAX_NAMES && !self.statements.contains_key(&name) {
                        self.statements.clear();
                    }
                    self.statements.insert(name, statement.clone());
                    let batch = self.open_batch();
                    if batch.parse.is_none() {
                        batch.parse = Some(operation(statement, ts_ns));
                    }
                }
                Frontend::Bind { portal, statement } => {
                    // A statement this connection never prepared (before the probe saw it):
                    // its Executes cannot be named.
                    let statement = self.statements.get(&statement).ok_or(Lost)?.clone();
                    if self.portals.len() >= MAX_NAMES && !self.portals.contains_key(&portal) {
                        self.portals.clear();
                    }
                    self.portals.insert(portal, statement);
                    self.open_batch();
                }
                Frontend::Execute { portal } => {
                    let statement = self.portals.get(&portal).ok_or(Lost)?.clone();
                    let execute = operation(statement, ts_ns);
                    let batch = self.open_batch();
                    batch.parse = None;
                    batch.executes.push_back(execute);
                    self.pending += 1;
                }
                Frontend::Close { kind, name } => {
                    match kind {
                        b'S' => self.statements.remove(&name),
                        _ => self.portals.remove(&name),
                    };
                    self.open_batch();
                }
                Frontend::Sync => {
                    self.open_batch().closed = true;
                }
                Frontend::Other => {}
            }
        }
        if self.pending > MAX_PENDING || self.batches.len() > MAX_PENDING {
            return Err(Lost);
        }
        fed.map_err(|_| Lost)
    }

    fn responses(
        &mut self,
        message: &Message,
        total: u64,
        ended: &mut Vec<Ended>,
    ) -> Result<(), Lost> {
        let mut data = message.data;
        let mut total = total;
        if self.encryption_answers > 0 {
            // The one byte answering an SSLRequest or GSSENCRequest, written alone (the server
            // waits for the client's next packet): 'N' goes on in plaintext; 'S' or 'G'
            // means TLS or GSSAPI from here, which this path cannot read.
            match data.split_first() {
                Some((b'N', rest)) => {
                    self.encryption_answers -= 1;
                    data = rest;
                    total = total.saturating_sub(1);
                    if total == 0 {
                        return Ok(());
                    }
                }
                _ => return Err(Lost),
            }
        }
        if self.resyncing {
            self.resync_on(data, total)?;
        }
        let mut backend = Vec::new();
        let fed = self
            .responses
            .feed(data, total, message.ts_ns, wire::backend, |m, ts| {
                backend.push((m, ts))
            });
        for (m, ts_ns) in backend {
            self.answer(m, ts_ns, ended)?;
        }
        fed.map_err(|_| Lost)
    }

    /// The first answer on a connection met mid-stream, to the one whole Query its server read
    /// (bpf/protocol_postgres.h): followed only if it is whole and a chain of messages ending
    /// exactly with ReadyForQuery. The backend reads a socket only once it has answered, and
    /// flushed, all it read before (it is one process, reading when its input is empty), so
    /// the Query started at a message boundary and what it writes next answers that Query. A
    /// client's side is never resynced: a client may still be reading an earlier answer when
    /// it sends.
    fn resync_on(&mut self, data: &[u8], total: u64) -> Result<(), Lost> {
        if data.len() as u64 != total {
            return Err(Lost);
        }
        let mut at = 0;
        let mut last = None;
        while at < data.len() {
            match wire::backend(data, at) {
                (Ok(m), Ok(end)) => {
                    last = Some(m);
                    at = end;
                }
                _ => return Err(Lost),
            }
        }
        if last != Some(Backend::Ready) {
            return Err(Lost);
        }
        self.resyncing = false;
        Ok(())
    }

    /// One backend message, against the first batch waiting.
    fn answer(&mut self, m: Backend, ts_ns: u64, ended: &mut Vec<Ended>) -> Result<(), Lost> {
        if m == Backend::Other {
            return Ok(());
        }
        let Some(batch) = self.batches.front_mut() else {
            // An error with nothing asked (a FATAL at shutdown) ends no statement; any other
            // answer with nothing waiting means the pairing is off.
            return match m {
                Backend::Error(_) => Ok(()),
                _ => Err(Lost),
            };
        };
        match m {
            Backend::Other => {}
            Backend::Done => {
                if batch.query.is_some() {
                    return Ok(()); // one of the Query's statements
                }
                let operation = batch.executes.pop_front().ok_or(Lost)?;
                self.pending -= 1;
                ended.push(Ended {
                    operation,
                    error: None,
                    ts_ns,
                });
            }
            Backend::Error(code) => {
                if batch.query.is_some() {
                    batch.query_error.get_or_insert(code);
                    return Ok(());
                }
                if batch.failed {
                    return Err(Lost); // the server skips to Sync: a second error is not its
                }
                batch.failed = true;
                // The first Execute, or a PREPARE's Parse, failed (or a Parse or Bind before
                // it, which the client sees as the same statement failing).
                let operation = match batch.executes.pop_front() {
                    Some(operation) => {
                        self.pending -= 1;
                        operation
                    }
                    None => match batch.parse.take() {
                        Some(parse) => parse,
                        None => return Ok(()), // the startup's error, or a Sync's alone
                    },
                };
                ended.push(Ended {
                    operation,
                    error: Some(code),
                    ts_ns,
                });
            }
            Backend::Ready => {
                let mut batch = self.batches.pop_front().ok_or(Lost)?;
                if !batch.closed {
                    return Err(Lost);
                }
                if let Some(operation) = batch.query.take() {
                    self.pending -= 1;
                    ended.push(Ended {
                        operation,
                        error: batch.query_error,
                        ts_ns,
                    });
                }
                if !batch.executes.is_empty() {
                    if !batch.failed {
                        return Err(Lost); // Executes with no completion: the order is off
                    }
                    // Skipped by the server after the batch's error: never run, no span.
                    self.pending -= batch.executes.len();
                }
            }
        }
        Ok(())
    }
}

fn span_of(
    operation: Operation,
    error: Option<Option<String>>,
    end_ts_ns: u64,
    message: &Message,
    service: String,
    clock: &Clock,
) -> Span {
    let Statement {
        operation: name,
        collection,
        text,
    } = (*operation.statement).clone();
    // An error whose SQLSTATE was not captured is still an error.
    let status_code = error.map(|code| code.unwrap_or_else(|| "ERROR".to_string()));
    let db = Db {
        system: "postgresql",
        operation: name,
        collection,
        query_text: Some(text),
        key: None,
        status_code,
    };
    operation
        .request
        .span(end_ts_ns, message, service, clock, Protocol::Postgres(db))
}
