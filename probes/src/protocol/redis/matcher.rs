//! Pairing Redis replies with commands, per connection and in order, and their spans.

use std::collections::{HashMap, VecDeque};

use apiary_span::{Db, Protocol, Span, SpanKind};

use super::resp::{self, Command, Reply};
use crate::abi::{rate_of_threshold, Direction};
use crate::protocol::stream::Stream;
use crate::protocol::{Clock, Message};

/// A connection: the process, its fd, and the ports, so that a reused fd on a new connection
/// starts afresh (a stream given up stays given up until its connection ends).
type Key = (u32, u64, u16, u16);

const MAX_CONNECTIONS: usize = 65_536;
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
    ts_ns: u64,
    kind: SpanKind,
    sampled_out: bool,
    sample_threshold: u32,
}

#[derive(Default)]
struct Connection {
    commands: Stream,
    replies: Stream,
    pending: VecDeque<Pending>,
    /// Given up: nothing more is paired on it.
    lost: bool,
    last_ts_ns: u64,
}

/// Every Redis connection's streams and waiting commands. Bounded: the connection seen least
/// recently is forgotten first.
#[derive(Default)]
pub struct Matcher {
    connections: HashMap<Key, Connection>,
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
        let ports = message
            .flow
            .map_or((0, 0), |f| (f.local.port(), f.remote.port()));
        let key = (message.pid, message.conn_id, ports.0, ports.1);
        if self.connections.len() >= MAX_CONNECTIONS && !self.connections.contains_key(&key) {
            self.evict_oldest();
        }
        let connection = self.connections.entry(key).or_default();
        connection.last_ts_ns = message.ts_ns;
        if connection.lost {
            self.unparsed += 1;
            return;
        }
        let mut unparsed = 0;
        if request_side {
            let kind = match message.direction {
                Direction::Ingress => SpanKind::Server,
                Direction::Egress => SpanKind::Client,
            };
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
                        ts_ns,
                        kind,
                        sampled_out: message.sampled_out,
                        sample_threshold: message.sample_threshold,
                    });
                },
            );
            if fed.is_err() || leaves || connection.pending.len() > MAX_PENDING {
                give_up(connection, &mut unparsed);
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
            let (mut service, mut name) = (Some(service), None::<String>);
            for (reply, ts_ns) in replies {
                if reply == Reply::Push {
                    continue;
                }
                let Some(pending) = connection.pending.pop_front() else {
                    unparsed += 1; // a reply to a command never seen
                    continue;
                };
                let service = name
                    .get_or_insert_with(|| {
                        service.take().map_or_else(String::new, |f| f(message.pid))
                    })
                    .clone();
                out.push(span_of(pending, reply, ts_ns, &message, service, clock));
            }
            if fed.is_err() {
                give_up(connection, &mut unparsed);
            }
        }
        self.unparsed += unparsed;
    }

    /// Forgets the connections of a process that exited.
    pub fn forget_process(&mut self, pid: u32) {
        self.connections.retain(|(p, ..), _| *p != pid);
    }

    /// Connections with commands waiting for their replies.
    pub fn pending_connections(&self) -> usize {
        self.connections
            .values()
            .filter(|c| !c.pending.is_empty())
            .count()
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .connections
            .iter()
            .min_by_key(|(_, c)| c.last_ts_ns)
            .map(|(key, _)| *key);
        if let Some(key) = oldest {
            self.connections.remove(&key);
        }
    }
}

/// Stops following a connection: its waiting commands and the buffer at hand are unparsed.
fn give_up(connection: &mut Connection, unparsed: &mut u64) {
    *unparsed += connection.pending.len() as u64 + 1;
    connection.pending = VecDeque::new();
    connection.commands = Stream::default();
    connection.replies = Stream::default();
    connection.lost = true;
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
    Span {
        kind: pending.kind,
        probe: message.probe,
        service,
        pid: message.pid,
        start_unix_nanos: clock.to_unix_nanos(pending.ts_ns),
        duration_ns: reply_ts_ns.saturating_sub(pending.ts_ns),
        peer: message.flow.map(|f| f.remote),
        local: message.flow.map(|f| f.local),
        traceparent: None,
        sample_rate: rate_of_threshold(pending.sample_threshold),
        sampled: !pending.sampled_out,
        kept_by: None,
        netns: message.netns,
        cgroup_id: message.cgroup_id,
        // Database calls are not joined into traces yet (the kernel's DB path gives no context).
        trace: None,
        protocol: Protocol::Redis(Db {
            system: "redis",
            operation: name,
            collection: None,
            query_text,
            key,
            status_code,
        }),
    }
}
