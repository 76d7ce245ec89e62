//! HTTP/2 framing, HPACK and pairing, on bytes nginx 1.22 and h2load 1.52 exchanged (strace
//! of nginx's recvfrom and writev, each iovec as the kernel sends it) and on frames built here
//! with an HPACK encoder for what those tools do not send (gRPC, resets, streams answered out
//! of order).

use apiary_span::{Protocol, Span, SpanKind};
use loona_hpack::Encoder;

use super::frame::{frame, Frame, PREFACE};
use super::Matcher;
use crate::abi::Direction;
use crate::protocol::stream::Cut;
use crate::protocol::{Clock, Message};

/// Bytes as strace -xx prints them (`\x50\x52...`).
fn hex(escaped: &str) -> Vec<u8> {
    escaped
        .split("\\x")
        .filter(|s| !s.is_empty())
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

// h2load's first read by nginx: preface, SETTINGS, WINDOW_UPDATE, two GETs of /api/x.
const H2LOAD_OPEN: &str = r"\x50\x52\x49\x20\x2a\x20\x48\x54\x54\x50\x2f\x32\x2e\x30\x0d\x0a\x0d\x0a\x53\x4d\x0d\x0a\x0d\x0a\x00\x00\x0c\x04\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x04\x3f\xff\xff\xff\x00\x00\x04\x08\x00\x00\x00\x00\x00\x3f\xff\x00\x00\x00\x00\x27\x01\x05\x00\x00\x00\x01\x04\x85\x60\x75\x99\x8f\x3f\x86\x41\x8b\x08\x9d\x5c\x0b\x81\x70\xdc\x0b\xcd\x3c\x0f\x82\x7a\x8f\x9c\x54\x1c\x72\x29\x54\xd3\xa5\x35\x89\x80\xae\xd8\x97\x07\x00\x00\x0b\x01\x05\x00\x00\x00\x03\x04\x85\x60\x75\x99\x8f\x3f\x86\xbf\x82\xbe";
// Its third request (SETTINGS ACK, stream 5), its table entries indexed.
const H2LOAD_THIRD: &str = r"\x00\x00\x00\x04\x01\x00\x00\x00\x00\x00\x00\x0b\x01\x05\x00\x00\x00\x05\x04\x85\x60\x75\x99\x8f\x3f\x86\xbf\x82\xbe";
// nginx's SETTINGS, WINDOW_UPDATE, SETTINGS ACK; the HEADERS frame header of stream 1 and
// its block (:status 200, server, date, content-type, content-length) in another iovec.
const NGINX_SETTINGS: &str = r"\x00\x00\x12\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x80\x00\x04\x00\x01\x00\x00\x00\x05\x00\xff\xff\xff";
const NGINX_WINDOW: &str = r"\x00\x00\x04\x08\x00\x00\x00\x00\x00\x7f\xff\x00\x00";
const NGINX_ACK: &str = r"\x00\x00\x00\x04\x01\x00\x00\x00\x00";
const NGINX_BLOCK: &str = r"\x88\x76\x89\xaa\x63\x55\xe5\x80\xae\x21\x2e\x1f\x61\x96\xdf\x3d\xbf\x4a\x01\x95\x2f\x94\x8a\x08\x02\x71\x40\xb7\x70\x2c\xdc\x69\xe5\x31\x68\xdf\x5f\x87\x49\x7c\xa5\x8a\xe8\x19\xaa\x5c\x01\x33";

fn headers_frame_header(stream: u8, len: u8, flags: u8) -> Vec<u8> {
    vec![0, 0, len, 0x1, flags, 0, 0, 0, stream]
}

fn data_frame(stream: u8, body: &[u8], end_stream: bool) -> Vec<u8> {
    let mut f = vec![
        0,
        0,
        body.len() as u8,
        0x0,
        u8::from(end_stream),
        0,
        0,
        0,
        stream,
    ];
    f.extend_from_slice(body);
    f
}

/// A HEADERS frame of `fields`, encoded with `encoder` (END_HEADERS; END_STREAM if `end`).
fn headers(encoder: &mut Encoder, stream: u8, fields: &[(&str, &str)], end: bool) -> Vec<u8> {
    let block = encoder.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    let mut f = headers_frame_header(stream, block.len() as u8, 0x4 | u8::from(end));
    f.extend_from_slice(&block);
    f
}

/// A buffer of connection `conn_id` of a server (pid 7): requests read, responses written.
fn server_buffer(conn_id: u64, ts_ns: u64, request_side: bool, data: &[u8]) -> Message<'_> {
    Message {
        probe: "http2",
        pid: 7,
        conn_id,
        ts_ns,
        direction: if request_side {
            Direction::Ingress
        } else {
            Direction::Egress
        },
        flow: None,
        sample_threshold: u32::MAX,
        sampled_out: false,
        data,
        netns: 1,
        cgroup_id: 1,
        trace: None,
    }
}

/// A server's view of one connection: requests read (ingress), responses written (egress).
struct Server {
    matcher: Matcher,
    clock: Clock,
    ts: u64,
    spans: Vec<Span>,
}

impl Server {
    fn new() -> Self {
        Server {
            matcher: Matcher::default(),
            clock: Clock::with_offset(0),
            ts: 0,
            spans: Vec::new(),
        }
    }

    fn buffer(&mut self, request_side: bool, data: &[u8], total: usize) {
        self.ts += 100;
        let message = server_buffer(5, self.ts, request_side, data);
        self.matcher.feed(
            message,
            total as u64,
            request_side,
            |_| "nginx".to_string(),
            &self.clock,
            &mut self.spans,
        );
    }

    fn read(&mut self, data: &[u8]) {
        self.buffer(true, data, data.len());
    }

    fn write(&mut self, data: &[u8]) {
        self.buffer(false, data, data.len());
    }

    /// (what the span names, its status) for each span so far.
    fn seen(&self) -> Vec<(String, u16)> {
        self.spans
            .iter()
            .map(|span| match &span.protocol {
                Protocol::Http2(http) => (format!("{} {}", http.method, http.target), http.status),
                Protocol::Grpc(grpc) => (format!("{}/{}", grpc.service, grpc.method), grpc.status),
                other => panic!("not HTTP/2: {other:?}"),
            })
            .collect()
    }
}

/// nginx answering h2load as the kernel sends it: each writev iovec a buffer.
fn nginx_answers(server: &mut Server, stream: u8) {
    server.write(&headers_frame_header(stream, 0x30, 0x4));
    server.write(&hex(NGINX_BLOCK));
    server.write(&data_frame(stream, b"ok\n", true)[..9]);
    server.write(b"ok\n");
}

#[test]
fn walks_the_preface_and_real_frames() {
    let open = hex(H2LOAD_OPEN);
    assert_eq!(frame(&open, 0), (Ok(Frame::Preface), Ok(PREFACE.len())));
    let (settings, end) = frame(&open, PREFACE.len());
    assert_eq!(
        settings,
        Ok(Frame::Settings {
            header_table_size: None
        })
    );
    let (window, end) = frame(&open, end.unwrap());
    assert_eq!(window, Ok(Frame::Other));
    let (headers, _) = frame(&open, end.unwrap());
    assert!(
        matches!(headers, Ok(Frame::Headers { stream: 1, end_stream: true, end_headers: true, fragment: Some(ref f), .. }) if f.len() == 0x27),
        "{headers:?}"
    );
    // A frame header alone: the rest is known to follow (48 bytes of block).
    let (cut, end) = frame(&headers_frame_header(1, 0x30, 0x4), 0);
    assert!(matches!(cut, Ok(Frame::Headers { fragment: None, .. })));
    assert_eq!(end, Err(Cut::Short(Some(0x30))));
    // A preface that is not one; a HEADERS frame on stream 0.
    assert_eq!(frame(b"PRI * HTTP/1.1\r\n", 0).1, Err(Cut::Invalid));
    assert_eq!(
        frame(&headers_frame_header(0, 0, 0x4), 0).1,
        Err(Cut::Invalid)
    );
}

#[test]
fn pairs_h2load_requests_with_nginx_responses_across_iovecs() {
    let mut server = Server::new();
    server.read(&hex(H2LOAD_OPEN));
    server.write(&hex(NGINX_SETTINGS));
    server.write(&hex(NGINX_WINDOW));
    server.write(&hex(NGINX_ACK));
    nginx_answers(&mut server, 1);
    nginx_answers(&mut server, 3);
    // The third request is all indexed fields: only the table h2load's first request built
    // decodes it.
    server.read(&hex(H2LOAD_THIRD));
    nginx_answers(&mut server, 5);
    assert_eq!(
        server.seen(),
        vec![("GET /api/x".to_string(), 200); 3],
        "{:?}",
        server.spans
    );
    let span = &server.spans[0];
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(span.service, "nginx");
    assert_eq!(span.server_address(), Some("127.0.0.1:18480"));
    assert_eq!(server.matcher.unparsed, 0);
    assert_eq!(server.matcher.pending_connections(), 0);
}

#[test]
fn concurrent_streams_pair_by_id_whatever_the_order() {
    let mut server = Server::new();
    let (mut client, mut nginx) = (Encoder::new(), Encoder::new());
    let mut open = PREFACE.to_vec();
    for (stream, path) in [(1, "/orders/1"), (3, "/orders/3"), (5, "/orders/5")] {
        open.extend(headers(
            &mut client,
            stream,
            &[(":method", "GET"), (":path", path), (":scheme", "http")],
            true,
        ));
    }
    server.read(&open);
    // Answered 5, 1, 3, with a status of their own each, in one write.
    let mut answers = Vec::new();
    for (stream, status) in [(5, "503"), (1, "200"), (3, "404")] {
        answers.extend(headers(&mut nginx, stream, &[(":status", status)], false));
        answers.extend(data_frame(stream, b"x", true));
    }
    server.write(&answers);
    assert_eq!(
        server.seen(),
        [
            ("GET /orders/5".to_string(), 503),
            ("GET /orders/1".to_string(), 200),
            ("GET /orders/3".to_string(), 404)
        ]
    );
    assert!(server.spans[0].is_error());
    assert_eq!(server.spans[0].red().route, "/orders/{id}");
}

#[test]
fn grpc_calls_end_at_their_trailers() {
    let mut server = Server::new();
    let (mut client, mut grpc) = (Encoder::new(), Encoder::new());
    let call = |client: &mut Encoder, stream, method| {
        headers(
            client,
            stream,
            &[
                (":method", "POST"),
                (":path", method),
                (":scheme", "http"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
            false,
        )
    };
    let mut open = PREFACE.to_vec();
    open.extend(call(&mut client, 1, "/helloworld.Greeter/SayHello"));
    open.extend(data_frame(1, b"\0\0\0\0\x02\x0a\x00", true));
    open.extend(call(&mut client, 3, "/helloworld.Greeter/Missing"));
    open.extend(data_frame(3, b"\0\0\0\0\x00", true));
    server.read(&open);
    // Stream 1: headers, a message, trailers with OK. Stream 3: trailers-only NOT_FOUND(5).
    server.write(&headers(
        &mut grpc,
        1,
        &[(":status", "200"), ("content-type", "application/grpc")],
        false,
    ));
    assert!(server.spans.is_empty(), "a gRPC call ends at its status");
    server.write(&data_frame(1, b"\0\0\0\0\x02\x0a\x00", false));
    server.write(&headers(&mut grpc, 1, &[("grpc-status", "0")], true));
    server.write(&headers(
        &mut grpc,
        3,
        &[
            (":status", "200"),
            ("content-type", "application/grpc"),
            ("grpc-status", "5"),
        ],
        true,
    ));
    assert_eq!(
        server.seen(),
        [
            ("helloworld.Greeter/SayHello".to_string(), 0),
            ("helloworld.Greeter/Missing".to_string(), 5)
        ]
    );
    // NOT_FOUND is the caller's mistake: no server error.
    assert!(!server.spans[1].is_error());
    assert_eq!(server.spans[1].red().operation, "helloworld.Greeter");
}

#[test]
fn resets_and_unanswered_statuses_give_no_span() {
    let mut server = Server::new();
    let (mut client, mut nginx) = (Encoder::new(), Encoder::new());
    let mut open = PREFACE.to_vec();
    for stream in [1, 3] {
        open.extend(headers(
            &mut client,
            stream,
            &[
                (":method", "POST"),
                (":path", "/svc.Slow/Wait"),
                ("content-type", "application/grpc"),
            ],
            true,
        ));
    }
    server.read(&open);
    // The client cancels stream 1; stream 3's response ends with no grpc-status.
    server.read(&[0, 0, 4, 0x3, 0, 0, 0, 0, 1, 0, 0, 0, 8]);
    server.write(&headers(&mut nginx, 3, &[(":status", "200")], false));
    server.write(&data_frame(3, b"", true));
    assert!(server.spans.is_empty(), "{:?}", server.spans);
    assert_eq!(server.matcher.unparsed, 2);
    assert_eq!(server.matcher.pending_connections(), 0);
}

#[test]
fn a_header_block_beyond_the_capture_gives_the_connection_up() {
    let mut server = Server::new();
    let mut client = Encoder::new();
    let mut open = PREFACE.to_vec();
    open.extend(headers(
        &mut client,
        1,
        &[(":method", "GET"), (":path", "/a")],
        true,
    ));
    server.read(&open);
    // The response's HEADERS frame is cut by the capture: its table is unknown from here on.
    let response = headers(
        &mut Encoder::new(),
        1,
        &[(":status", "200"), ("server", "nginx/1.22.1")],
        true,
    );
    server.buffer(false, &response[..10], response.len());
    assert!(server.spans.is_empty());
    assert_eq!(server.matcher.unparsed, 2, "the open stream and the buffer");
    // Later buffers of that connection are counted, never paired.
    server.read(&headers(
        &mut client,
        3,
        &[(":method", "GET"), (":path", "/b")],
        true,
    ));
    assert_eq!(server.matcher.unparsed, 3);
    // Bytes after the preface that are no frame (HEADERS on the connection's stream 0): given
    // up at once.
    let mut other = Server::new();
    other.read(&[PREFACE, b"\0\0\x07\x01\x05\0\0\0\0garbage".as_slice()].concat());
    assert_eq!(other.matcher.unparsed, 1);
}

#[test]
fn a_header_block_that_never_ends_is_not_held() {
    let mut server = Server::new();
    let mut open = PREFACE.to_vec();
    // HEADERS without END_HEADERS, then CONTINUATIONs without it: 70 KiB of block.
    open.extend_from_slice(&[0, 0, 1, 0x1, 0x1, 0, 0, 0, 1, 0x82]);
    server.read(&open);
    let mut continuation = vec![0, 0x10, 0, 0x9, 0, 0, 0, 0, 1];
    continuation.extend(std::iter::repeat_n(0x82u8, 0x1000));
    for _ in 0..17 {
        server.read(&continuation);
    }
    assert!(server.spans.is_empty());
    assert!(server.matcher.unparsed >= 1, "the connection was given up");
    // Nothing more is held for it: later buffers only count.
    let before = server.matcher.unparsed;
    server.read(&continuation);
    assert_eq!(server.matcher.unparsed, before + 1);
}

/// Feeds buffers of one connection (one key) through `Parsers::stream`, as the observer does.
struct Stream {
    parsers: crate::protocol::Parsers,
    clock: Clock,
    spans: Vec<Span>,
    ts: u64,
}

impl Stream {
    fn new() -> Self {
        Stream {
            parsers: crate::protocol::Parsers::default(),
            clock: Clock::with_offset(0),
            spans: Vec::new(),
            ts: 0,
        }
    }

    fn feed(&mut self, request_side: bool, starts: bool, after_gap: bool, data: &[u8]) {
        self.ts += 100;
        let message = server_buffer(0x5555_0000_1230, self.ts, request_side, data);
        let buffer = crate::protocol::StreamBuffer {
            total_len: data.len() as u64,
            request_side,
            starts,
            after_gap,
        };
        let spans = &mut self.spans;
        self.parsers
            .stream(message, buffer, |_| "nginx".into(), &self.clock, spans);
    }

    /// h2load's opening and request (stream 1), nginx's answer.
    fn exchange(&mut self, starts: bool) {
        self.feed(true, starts, false, &hex(H2LOAD_OPEN));
        for part in [
            headers_frame_header(1, 0x30, 0x4),
            hex(NGINX_BLOCK),
            data_frame(1, b"ok\n", true),
        ] {
            self.feed(false, false, false, &part);
        }
    }
}

#[test]
fn a_connection_marked_as_starting_is_followed_afresh_under_an_old_key() {
    // OpenSSL often gives a new connection the address of a freed SSL object, the key a TLS
    // stream is followed by: the kernel marks the new connection's first buffer.
    let mut stream = Stream::new();
    // The first connection ends in bytes that are not frames: given up.
    stream.feed(true, true, false, &hex(H2LOAD_OPEN)[..PREFACE.len()]);
    stream.feed(true, false, false, b"\0\0\x07\x01\x05\0\0\0\0garbage");
    stream.exchange(false);
    assert!(stream.spans.is_empty(), "{:?}", stream.spans);
    stream.exchange(true);
    assert_eq!(stream.spans.len(), 1, "{:?}", stream.spans);
    assert!(stream.parsers.unparsed("http2") > 0);
}

#[test]
fn a_hole_in_the_stream_gives_the_connection_up() {
    let mut stream = Stream::new();
    stream.exchange(true);
    assert_eq!(stream.spans.len(), 1);
    // A record the ring had no room for: the next one says so. A header block in the hole
    // would have changed the table the next blocks are decoded with.
    let before = stream.parsers.unparsed("http2");
    stream.feed(true, false, true, &headers_frame_header(3, 0x10, 0x5));
    stream.feed(false, false, false, &headers_frame_header(3, 0x30, 0x4));
    stream.feed(false, false, false, &hex(NGINX_BLOCK));
    assert_eq!(stream.spans.len(), 1, "{:?}", stream.spans);
    assert!(stream.parsers.unparsed("http2") >= before + 3);
    // Switched off and on: every connection it followed is given up alike.
    let mut stream = Stream::new();
    stream.exchange(true);
    stream.parsers.switched_off("http2");
    stream.feed(false, false, false, &headers_frame_header(1, 0x30, 0x4));
    assert!(stream.parsers.unparsed("http2") >= 2);
}
