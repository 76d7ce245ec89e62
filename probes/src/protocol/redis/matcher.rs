//! Pairing Redis replies with commands, per connection and in order, and their spans.

use std::collections::VecDeque;

use apiary_span::{Db, Protocol, Span};

use super::resp::{self, Command, Reply};
use crate::protocol::connections::{Followed, Table};
use crate::protocol::stream::Stream;
use crate::protocol::{Clock, DbRequest, Message, ServiceName};

/// Commands waiting for replies on one connection; more and the connection is given up.
const MAX_PENDING: usize = 4_096;

/// Commands after which replies no longer answer commands one for one (subscriptions, MONITOR,
/// CLIENT REPLY OFF/SKIP): the connection is not followed further.
fn leaves_request_reply(command: &Command) -> bool {
    match command.name.as_str() {
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "MONITOR" | "SYNC" | "PSYNC" => true,
        "CLIENT" => command
            .key
            .as_deref()
            .is_some_and(|sub| sub.eq_ignore_ascii_case("reply")),
        _ => false,
    }
}

struct Pending {
    command: Command,
    request: DbRequest,
}

#[derive(Default)]
pub(in crate::protocol) struct Connection {
    commands: Stream,
    replies: Stream,
    pending: VecDeque<Pending>,
    /// Given up: nothing more is paired on it.
    lost: bool,
}

/// Every Redis connection's streams and waiting commands. Bounded: the connection seen least
/// recently is forgotten first.
#[derive(Default)]
pub struct Matcher {
    pub(in crate::protocol) connections: Table<Connection>,
    /// Commands and replies that gave no span: on connections given up, replies with no command
    /// waiting, bytes that are not RESP.
    pub unparsed: u64,
}

impl Matcher {
    /// One buffer of a Redis connection: `total_len` bytes of which `message.data` were
    /// captured, on the commands' side or the replies'. Spans of the replies it completes go
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
        let mut unparsed = 0;
        if request_side {
            let mut leaves = false;
            let pending = &mut connection.pending;
            let fed = connection.commands.feed(
                message.data,
                total_len,
                message.ts_ns,
                resp::command,
                |command, ts_ns| {
                    leaves |= leaves_request_reply(&command);
                    pending.push_back(Pending {
                        command,
                        request: DbRequest::at(&message, ts_ns),
                    });
                },
            );
            if fed.is_err() || leaves || connection.pending.len() > MAX_PENDING {
                unparsed += connection.give_up();
            }
        } else {
            let mut replies = Vec::new();
            let fed = connection.replies.feed(
                message.data,
                total_len,
                message.ts_ns,
                resp::reply,
                |reply, ts_ns| replies.push((reply, ts_ns)),
            );
            let mut service = ServiceName::new(service, message.pid);
            for (reply, ts_ns) in replies {
                if reply == Reply::Push {
                    continue;
                }
                let Some(pending) = connection.pending.pop_front() else {
                    unparsed += 1; // a reply to a command never seen
                    continue;
                };
                out.push(span_of(
                    pending,
                    reply,
                    ts_ns,
                    &message,
                    service.get(),
                    clock,
                ));
            }
            if fed.is_err() {
                unparsed += connection.give_up();
            }
        }
        self.unparsed += unparsed;
    }

    /// Forgets the connections of a process that exited.
    pub fn forget_process(&mut self, pid: u32) {
        self.connections.forget_process(pid);
    }

    /// Connections with commands waiting for their replies.
    pub fn pending_connections(&self) -> usize {
        self.connections
            .states()
            .filter(|c| !c.pending.is_empty())
            .count()
    }
}

impl Followed for Connection {
    /// Its waiting commands and the buffer at hand are unparsed.
    fn give_up(&mut self) -> u64 {
        let unparsed = self.pending.len() as u64 + 1;
        self.pending = VecDeque::new();
        self.commands = Stream::default();
        self.replies = Stream::default();
        self.lost = true;
        unparsed
    }

    fn lost(&self) -> bool {
        self.lost
    }
}

fn span_of(
    pending: Pending,
    reply: Reply,
    reply_ts_ns: u64,
    message: &Message,
    service: String,
    clock: &Clock,
) -> Span {
    let Command { name, key, args } = pending.command;
    let query_text = key.as_ref().map(|key| {
        let mut text = format!("{name} {key}");
        for _ in 2..args {
            text.push_str(" ?");
        }
        text
    });
    let status_code = match reply {
        Reply::Error(code) => Some(code),
        Reply::Ok | Reply::Push => None,
    };
    let db = Db {
        system: "redis",
        operation: name,
        collection: None,
        query_text,
        key,
        status_code,
    };
    pending
        .request
        .span(reply_ts_ns, message, service, clock, Protocol::Redis(db))
}
