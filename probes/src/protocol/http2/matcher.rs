//! Pairing HTTP/2 responses with requests by stream id, per connection, and their spans.

use std::collections::HashMap;

use apiary_span::{Grpc, Http, Protocol, Span};
use loona_hpack::Decoder;

use super::frame::{self, Frame};
use crate::protocol::connections::{Followed, Table};
use crate::protocol::http1::{route_template, valid_traceparent};
use crate::protocol::stream::Stream;
use crate::protocol::{Clock, DbRequest, Message, ServiceName};

/// Streams open at once on one connection (servers allow 100 to 250); more and the connection
/// is given up.
const MAX_OPEN_STREAMS: usize = 1_024;

/// The largest HPACK table an encoder may ask its peer's decoder to keep (RFC 7541 §4.2): a
/// header block asking more gives the connection up. Clients and servers use 4 KiB, the
/// default; this bounds what one connection can make the agent hold.
const MAX_TABLE_BYTES: usize = 64 * 1024;

/// A header block (HEADERS and its CONTINUATIONs) longer than this gives the connection up:
/// a peer that never ends one must not make the agent hold it whole.
const MAX_BLOCK_BYTES: usize = 64 * 1024;

/// The fields pairing and spans read; every other field is decoded (the table needs it) and
/// dropped, so a block of many references to one large table entry copies nothing.
const KEPT_FIELDS: [&[u8]; 7] = [
    b":method",
    b":path",
    b":authority",
    b":status",
    b"content-type",
    b"grpc-status",
    b"traceparent",
];

/// A kept value is cut here: it bounds what the open streams of a connection hold.
const MAX_VALUE_BYTES: usize = 2048;

/// A header block being received (HEADERS or PUSH_PROMISE, then CONTINUATIONs).
struct Block {
    stream: u32,
    bytes: Vec<u8>,
    end_stream: bool,
    push: bool,
    ts_ns: u64,
}

/// One direction: its bytes, its HPACK table, and the block it is in the middle of.
struct Side {
    stream: Stream,
    decoder: Decoder<'static>,
    block: Option<Block>,
}

impl Default for Side {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(MAX_TABLE_BYTES);
        Side {
            stream: Stream::default(),
            decoder,
            block: None,
        }
    }
}

/// A request waiting for its response (and, for gRPC, for its status).
struct Exchange {
    request: DbRequest,
    method: String,
    path: String,
    authority: Option<String>,
    traceparent: Option<String>,
    /// The request said `content-type: application/grpc…` and named a method.
    grpc: Option<(String, String)>,
    /// The response's status, once its headers came (gRPC waits on for `grpc-status`).
    status: Option<u16>,
    grpc_status: Option<u16>,
    /// The response said something that is not HTTP/2 or gRPC: it gives no span.
    broken: bool,
}

#[derive(Default)]
pub(in crate::protocol) struct Connection {
    requests: Side,
    responses: Side,
    open: HashMap<u32, Exchange>,
    lost: bool,
}

/// A header block decoded, with where it came from.
struct Headers {
    stream: u32,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    end_stream: bool,
    push: bool,
    ts_ns: u64,
}

/// What one direction's frames did.
enum Event {
    Headers(Headers),
    /// The stream ended on this side with a DATA frame.
    Ended(u32),
    Reset(u32),
    /// SETTINGS_HEADER_TABLE_SIZE from this side: the other side's encoder may use that much.
    TableSize(u32),
}

/// Every HTTP/2 connection's HPACK tables and open streams. Bounded: the connection seen
/// least recently is forgotten first.
#[derive(Default)]
pub struct Matcher {
    pub(in crate::protocol) connections: Table<Connection>,
    /// Requests and responses that gave no span: streams reset or never answered, responses
    /// to requests never seen, connections given up (a header block beyond the capture or that
    /// does not decode, bytes that are not HTTP/2).
    pub unparsed: u64,
}

impl Matcher {
    /// One buffer of an HTTP/2 connection: `total_len` bytes of which `message.data` were
    /// captured, on the requests' side (the client's) or the responses'. Spans of the
    /// exchanges it completes go to `out`.
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
        let side = if request_side {
            &mut connection.requests
        } else {
            &mut connection.responses
        };
        let mut events = Vec::new();
        let walked = walk(side, &message, total_len, &mut events);
        let mut unparsed = 0;
        let mut service = ServiceName::new(service, message.pid);
        let mut table_too_large = false;
        for event in events {
            match event {
                Event::TableSize(size) => {
                    let other = if request_side {
                        &mut connection.responses
                    } else {
                        &mut connection.requests
                    };
                    if size as usize > MAX_TABLE_BYTES {
                        table_too_large = true;
                        break;
                    }
                    other.decoder.set_max_allowed_table_size(size as usize);
                }
                Event::Headers(headers) if headers.push => {} // decoded for the table only
                Event::Headers(headers) if request_side => {
                    // A stream already open: the request's trailers, nothing to pair.
                    if let std::collections::hash_map::Entry::Vacant(entry) =
                        connection.open.entry(headers.stream)
                    {
                        entry.insert(exchange_of(&headers, &message));
                    }
                }
                Event::Headers(headers) => {
                    let Some(exchange) = connection.open.get_mut(&headers.stream) else {
                        unparsed += 1; // a response to a request never seen
                        continue;
                    };
                    if !respond(exchange, &headers) {
                        continue;
                    }
                    let exchange = connection.open.remove(&headers.stream);
                    if let Some(span) = exchange
                        .and_then(|e| span_of(e, headers.ts_ns, &message, service.get(), clock))
                    {
                        out.push(span);
                    } else {
                        unparsed += 1; // gRPC ended without a status
                    }
                }
                Event::Ended(stream) if !request_side => {
                    // A response ended with its body and no trailers: for gRPC, no status.
                    if connection.open.remove(&stream).is_some() {
                        unparsed += 1;
                    }
                }
                Event::Ended(_) => {}
                Event::Reset(stream) => {
                    if connection.open.remove(&stream).is_some() {
                        unparsed += 1;
                    }
                }
            }
        }
        if walked.is_err() || table_too_large || connection.open.len() > MAX_OPEN_STREAMS {
            unparsed += connection.give_up();
        }
        self.unparsed += unparsed;
    }

    /// Forgets the connections of a process that exited.
    pub fn forget_process(&mut self, pid: u32) {
        self.connections.forget_process(pid);
    }

    /// Connections with requests waiting for their responses.
    pub fn pending_connections(&self) -> usize {
        self.connections
            .states()
            .filter(|c| !c.open.is_empty())
            .count()
    }
}

/// Walks one buffer of a side's frames into `events`; `Err` when the side can no longer be
/// followed (bytes beyond the capture that hold a frame's start or a header block, bytes that
/// are not HTTP/2, a header block that does not decode).
fn walk(
    side: &mut Side,
    message: &Message,
    total_len: u64,
    events: &mut Vec<Event>,
) -> Result<(), ()> {
    let mut frames = Vec::new();
    let fed = side.stream.feed(
        message.data,
        total_len,
        message.ts_ns,
        frame::frame,
        |frame, ts_ns| frames.push((frame, ts_ns)),
    );
    for (frame, ts_ns) in frames {
        match frame {
            Frame::Preface | Frame::Other => {}
            Frame::Settings { header_table_size } => {
                if let Some(size) = header_table_size {
                    events.push(Event::TableSize(size));
                }
            }
            Frame::Headers {
                stream,
                fragment,
                end_headers,
                end_stream,
                push,
                continuation,
            } => {
                let fragment = fragment.ok_or(())?;
                let block = match (side.block.take(), continuation) {
                    (None, false) => Block {
                        stream,
                        bytes: fragment,
                        end_stream,
                        push,
                        ts_ns,
                    },
                    (Some(mut block), true) if block.stream == stream => {
                        if block.bytes.len() + fragment.len() > MAX_BLOCK_BYTES {
                            return Err(());
                        }
                        block.bytes.extend_from_slice(&fragment);
                        block
                    }
                    // A CONTINUATION out of place, or a block interrupted (RFC 9113 §6.10).
                    _ => return Err(()),
                };
                if !end_headers {
                    side.block = Some(block);
                    continue;
                }
                let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
                side.decoder
                    .decode_with_cb(&block.bytes, |name, value| {
                        let name: &[u8] = &name;
                        if KEPT_FIELDS.contains(&name) && !fields.iter().any(|(n, _)| n == name) {
                            let value = &value[..value.len().min(MAX_VALUE_BYTES)];
                            fields.push((name.to_vec(), value.to_vec()));
                        }
                    })
                    .map_err(|_| ())?;
                events.push(Event::Headers(Headers {
                    stream: block.stream,
                    fields,
                    end_stream: block.end_stream,
                    push: block.push,
                    ts_ns: block.ts_ns,
                }));
            }
            _ if side.block.is_some() => return Err(()), // a block interrupted
            Frame::Data { stream, end_stream } => {
                if end_stream {
                    events.push(Event::Ended(stream));
                }
            }
            Frame::Reset { stream, .. } => events.push(Event::Reset(stream)),
        }
    }
    fed.map_err(|_| ())
}

fn field<'a>(fields: &'a [(Vec<u8>, Vec<u8>)], name: &[u8]) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|(n, _)| n.as_slice() == name)
        .map(|(_, v)| v.as_slice())
}

fn text(bytes: Option<&[u8]>) -> Option<String> {
    bytes.map(|b| String::from_utf8_lossy(b).into_owned())
}

/// A request from its header block.
fn exchange_of(headers: &Headers, message: &Message) -> Exchange {
    let fields = &headers.fields;
    let path = text(field(fields, b":path")).unwrap_or_default();
    let grpc = field(fields, b"content-type")
        .is_some_and(|t| t.starts_with(b"application/grpc"))
        .then(|| grpc_method(&path))
        .flatten();
    Exchange {
        request: DbRequest::at(message, headers.ts_ns),
        method: text(field(fields, b":method")).unwrap_or_default(),
        path,
        authority: text(field(fields, b":authority")),
        traceparent: text(field(fields, b"traceparent")).filter(|t| valid_traceparent(t)),
        grpc,
        status: None,
        grpc_status: None,
        broken: false,
    }
}

/// `/helloworld.Greeter/SayHello` → (`helloworld.Greeter`, `SayHello`).
fn grpc_method(path: &str) -> Option<(String, String)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then(|| (service.to_string(), method.to_string()))
}

/// Takes a response header block; true when it ends the exchange (HTTP: the final status;
/// gRPC: the status, from trailers or a trailers-only response, or the stream's end).
fn respond(exchange: &mut Exchange, headers: &Headers) -> bool {
    let number = |bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
    };
    let fields = &headers.fields;
    if let Some(status) = field(fields, b":status") {
        match number(status) {
            Some(100..=199) => return false, // informational: the final status follows
            Some(status @ 200..=599) => exchange.status = Some(status),
            _ => {
                exchange.broken = true;
                return true;
            }
        }
    }
    if exchange.grpc.is_none() {
        return exchange.status.is_some();
    }
    if let Some(code) = field(fields, b"grpc-status") {
        match number(code) {
            Some(code @ 0..=16) => exchange.grpc_status = Some(code),
            _ => exchange.broken = true,
        }
        return true;
    }
    headers.end_stream
}

/// The span of an exchange its response ended at `end_ts_ns`; `None` when what ended it says
/// nothing sure (no status, a status that is no number, gRPC without `grpc-status`).
fn span_of(
    exchange: Exchange,
    end_ts_ns: u64,
    message: &Message,
    service: String,
    clock: &Clock,
) -> Option<Span> {
    if exchange.broken {
        return None;
    }
    let protocol = match exchange.grpc {
        Some((grpc_service, method)) => Protocol::Grpc(Grpc {
            service: grpc_service,
            method,
            status: exchange.grpc_status?,
            host: exchange.authority,
        }),
        None => Protocol::Http2(Http {
            method: exchange.method,
            route: route_template(&exchange.path),
            target: exchange.path,
            status: exchange.status?,
            host: exchange.authority,
        }),
    };
    let mut span = exchange
        .request
        .span(end_ts_ns, message, service, clock, protocol);
    span.traceparent = exchange.traceparent;
    Some(span)
}

impl Followed for Connection {
    /// Its open streams and the buffer at hand are unparsed.
    fn give_up(&mut self) -> u64 {
        let unparsed = self.open.len() as u64 + 1;
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
