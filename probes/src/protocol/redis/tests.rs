//! The Redis parser and pairing on bytes as redis-cli, redis-benchmark and redis-server 7 send
//! them (captured with strace -e read,write).

use apiary_span::{Span, SpanKind};

use super::resp::{command, reply, Cut, Reply};
use super::Matcher;
use crate::abi::Direction;
use crate::protocol::{Clock, Message};

// redis-cli 7.0 to redis-server 7.0.15 (strace of the client's sendto/recvfrom).
const LPUSH: &[u8] = b"*3\r\n$5\r\nLPUSH\r\n$1\r\ns\r\n$1\r\nx\r\n";
const WRONGTYPE: &[u8] = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";
const HELLO: &[u8] = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n";
const HELLO_REPLY: &[u8] = b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$6\r\n7.0.15\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:9\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";
const HGETALL: &[u8] = b"*2\r\n$7\r\nHGETALL\r\n$4\r\nnope\r\n";
const MGET: &[u8] = b"*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$1\r\ns\r\n";
const MGET_REPLY: &[u8] = b"*2\r\n$-1\r\n$1\r\nv\r\n";
// A pipelined client (three commands in one write) and the server's one write of the replies.
const PIPELINE: &[u8] =
    b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n";
const PIPELINE_REPLIES: &[u8] = b"+PONG\r\n+OK\r\n-ERR value is not an integer or out of range\r\n";

#[test]
fn walks_real_commands_and_replies() {
    let (parsed, end) = command(LPUSH, 0);
    let parsed = parsed.unwrap();
    assert_eq!(
        (parsed.name.as_str(), parsed.key.as_deref(), parsed.args),
        ("LPUSH", Some("s"), 3)
    );
    assert_eq!(end, Ok(LPUSH.len()));
    assert_eq!(
        reply(WRONGTYPE, 0),
        (Ok(Reply::Error("WRONGTYPE".into())), Ok(WRONGTYPE.len()))
    );
    assert_eq!(
        reply(HELLO_REPLY, 0),
        (Ok(Reply::Ok), Ok(HELLO_REPLY.len()))
    );
    assert_eq!(reply(b"%0\r\n", 0), (Ok(Reply::Ok), Ok(4)));
    assert_eq!(reply(MGET_REPLY, 0), (Ok(Reply::Ok), Ok(MGET_REPLY.len())));
    assert_eq!(command(MGET, 0).0.unwrap().name, "MGET");
    // Inline commands (telnet's) are not followed: no client library sends them.
    assert_eq!(command(b"ping\r\n", 0).1, Err(Cut::Invalid));
    // An error with no code of its own is ERR; a blob error's code is its body's first word.
    assert_eq!(reply(b"-oops\r\n", 0).0, Ok(Reply::Error("ERR".into())));
    assert_eq!(
        reply(b"!21\r\nSYNTAX invalid syntax\r\n", 0).0,
        Ok(Reply::Error("SYNTAX".into()))
    );
    assert_eq!(
        reply(b">2\r\n$7\r\nmessage\r\n$1\r\nx\r\n", 0).0,
        Ok(Reply::Push)
    );
}

#[test]
fn a_cut_value_says_when_its_rest_is_known() {
    // The last string's body is cut: 10 more bytes (8 of body, CRLF).
    assert_eq!(
        skip(b"*2\r\n$3\r\nfoo\r\n$10\r\nab"),
        Err(Cut::Short(Some(10)))
    );
    // Cut in a string that is not the last: the end is unknown.
    assert_eq!(skip(b"*2\r\n$10\r\nab"), Err(Cut::Short(None)));
    assert_eq!(skip(b"$5\r\nhel"), Err(Cut::Short(Some(4))));
    assert_eq!(skip(b"+OK"), Err(Cut::Short(None)));
    assert_eq!(skip(b"?what\r\n"), Err(Cut::Invalid));
    assert_eq!(skip(b"$5\r\nhelloXY"), Err(Cut::Invalid));
    assert_eq!(skip(b"*99999999999\r\n"), Err(Cut::Invalid));
    let deep = "*1\r\n".repeat(40);
    assert_eq!(skip(deep.as_bytes()), Err(Cut::Invalid));
    // A command whose value is cut: its name is known, and so is its end.
    let (head, end) = command(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1048576\r\nxxxx", 0);
    assert_eq!(head.unwrap().name, "SET");
    assert_eq!(end, Err(Cut::Short(Some(1_048_576 - 4 + 2))));
    // Not a command: an array of integers, or a name that is no word.
    assert_eq!(command(b"*1\r\n:1\r\n", 0).1, Err(Cut::Invalid));
    assert_eq!(
        command(b"*1\r\n$3\r\n\x01\x02\x03\r\n", 0).1,
        Err(Cut::Invalid)
    );
}

fn skip(bytes: &[u8]) -> Result<usize, Cut> {
    super::resp::skip_value(bytes, 0, 0)
}

/// A server's view: commands read (ingress), replies written (egress).
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
        let message = Message {
            probe: "redis",
            pid: 7,
            conn_id: 5,
            ts_ns: self.ts,
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
        };
        let service = |_| "redis-server".to_string();
        self.matcher.feed(
            message,
            total as u64,
            request_side,
            service,
            &self.clock,
            &mut self.spans,
        );
    }

    fn command(&mut self, data: &[u8]) {
        self.buffer(true, data, data.len());
    }

    fn reply(&mut self, data: &[u8]) {
        self.buffer(false, data, data.len());
    }

    /// (command, error code) of the spans so far.
    fn seen(&self) -> Vec<(String, Option<String>)> {
        self.spans
            .iter()
            .map(|s| {
                let db = s.db().unwrap();
                (db.operation.clone(), db.status_code.clone())
            })
            .collect()
    }
}

fn ops(list: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    list.iter()
        .map(|(op, code)| (op.to_string(), code.map(str::to_string)))
        .collect()
}

#[test]
fn pipelined_commands_pair_with_their_replies_in_order() {
    let mut server = Server::new();
    server.command(PIPELINE);
    server.reply(PIPELINE_REPLIES);
    assert_eq!(
        server.seen(),
        ops(&[("PING", None), ("SET", None), ("INCR", Some("ERR"))])
    );
    let span = &server.spans[1];
    assert_eq!(
        (span.kind, span.duration_ns, span.service.as_str()),
        (SpanKind::Server, 100, "redis-server")
    );
    assert_eq!(span.db().unwrap().query_text.as_deref(), Some("SET k ?"));
    // Replies one by one, and a command split over two reads.
    server.command(&LPUSH[..9]);
    server.command(&LPUSH[9..]);
    server.command(HGETALL);
    server.reply(&WRONGTYPE[..20]);
    server.reply(&WRONGTYPE[20..]);
    server.reply(b"%0\r\n");
    assert_eq!(
        server.seen()[3..],
        ops(&[("LPUSH", Some("WRONGTYPE")), ("HGETALL", None)])[..]
    );
    // The LPUSH started when its first read came, and ended at its reply's first byte.
    assert_eq!(server.spans[3].duration_ns, 300);
    assert_eq!(server.matcher.unparsed, 0);
    assert_eq!(server.matcher.pending_connections(), 0);
}

#[test]
fn a_reply_split_over_reads_and_pushes_between_replies() {
    let mut server = Server::new();
    server.command(HELLO);
    server.command(MGET);
    let (first, rest) = HELLO_REPLY.split_at(50);
    server.reply(first);
    let mut second = rest.to_vec();
    second.extend_from_slice(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n");
    second.extend_from_slice(MGET_REPLY);
    server.reply(&second);
    assert_eq!(server.seen(), ops(&[("HELLO", None), ("MGET", None)]));
    assert_eq!(server.matcher.unparsed, 0);
}

#[test]
fn a_value_larger_than_the_capture_is_passed_over_exactly() {
    let mut server = Server::new();
    // SET of 1 MiB: the first read holds the head and 16 KiB of the value, captured 1 KiB.
    let mut head = b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$1048576\r\n".to_vec();
    let head_len = head.len();
    head.resize(1024, b'x');
    server.buffer(true, &head, 16 * 1024);
    let mut left = 1_048_576 + 2 + head_len - 16 * 1024;
    while left > 16 * 1024 {
        // The value's bytes; some start like RESP, none must be taken for a command.
        server.buffer(true, b"*1\r\n$4\r\nPING\r\n", 16 * 1024);
        left -= 16 * 1024;
    }
    let mut last = vec![b'x'; left - 2];
    last.extend_from_slice(b"\r\n");
    last.extend_from_slice(HGETALL);
    server.buffer(true, &last[..last.len().min(1024)], last.len());
    assert!(last.len() <= 1024, "the test's last read fits its capture");
    server.reply(b"+OK\r\n");
    // A 1 MiB reply, read in 16 KiB pieces.
    let mut reply = b"$1048576\r\n".to_vec();
    reply.resize(1024, b'y');
    server.buffer(false, &reply, 16 * 1024);
    let mut left = 1_048_576 + 2 + 10 - 16 * 1024;
    while left > 0 {
        let n = left.min(16 * 1024);
        let bytes = b"-ERR not a reply\r\n";
        server.buffer(false, &bytes[..n.min(bytes.len())], n);
        left -= n;
    }
    assert_eq!(server.matcher.unparsed, 0, "{:?}", server.seen());
    assert_eq!(server.seen(), ops(&[("SET", None), ("HGETALL", None)]));
}

#[test]
fn commands_beyond_the_capture_stop_the_connection_rather_than_mis_pair() {
    let mut server = Server::new();
    // Three pipelined commands of which the capture holds one and a half.
    server.buffer(true, &PIPELINE[..20], PIPELINE.len());
    server.reply(PIPELINE_REPLIES);
    server.command(LPUSH);
    server.reply(WRONGTYPE);
    assert!(server.spans.is_empty(), "{:?}", server.seen());
    assert!(server.matcher.unparsed >= 3, "{}", server.matcher.unparsed);
}

#[test]
fn garbage_replies_without_commands_and_subscriptions_give_no_span() {
    let mut server = Server::new();
    server.reply(b"+OK\r\n");
    assert_eq!((server.spans.len(), server.matcher.unparsed), (0, 1));
    server.command(b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n");
    server.reply(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n");
    server.command(LPUSH);
    server.reply(WRONGTYPE);
    assert!(server.spans.is_empty());
    // Garbage on a connection of its own.
    let mut other = Server::new();
    other.command(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n\x00\xff garbage");
    other.reply(b"$-1\r\n");
    assert!(other.spans.is_empty());
    assert!(other.matcher.unparsed >= 1);
}

#[test]
fn random_bytes_never_panic() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"*$+-:%>_|!=~#,(\r\n0123456789-?abcSETGET";
    for _ in 0..2_000 {
        let mut server = Server::new();
        for _ in 0..8 {
            let len = (next() % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let total = len + (next() % 3 == 0) as usize * (next() % 100_000) as usize;
            server.buffer(next() % 2 == 0, &bytes, total);
        }
    }
}

#[test]
fn keys_leave_only_when_asked_for() {
    let mut server = Server::new();
    server.command(b"*3\r\n$3\r\nSET\r\n$7\r\nuser:42\r\n$5\r\nhello\r\n");
    server.reply(b"+OK\r\n");
    let span = server.spans.pop().unwrap();
    let db = span.db().unwrap();
    assert_eq!(
        (db.key.as_deref(), db.query_text.as_deref()),
        (Some("user:42"), Some("SET user:42 ?"))
    );
    let mut kept = span.clone();
    kept.apply_privacy_keeping_db_keys(&[]);
    assert_eq!(kept.db().unwrap().key.as_deref(), Some("user:42"));
    let mut private = span;
    private.apply_privacy(&[]);
    assert_eq!(
        (
            private.db().unwrap().key.as_deref(),
            private.db().unwrap().query_text.as_deref()
        ),
        (None, None)
    );
    let json = serde_json::to_string(&private).unwrap();
    assert!(!json.contains("user:42"), "{json}");
}
