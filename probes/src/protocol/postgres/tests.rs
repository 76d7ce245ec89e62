//! The PostgreSQL framing, pairing and sanitising on bytes as pgbench and psql 15 send them
//! and postgres 15 answers (captured with strace -e recvfrom,sendto on the backend).

use apiary_span::{Protocol, Span, SpanKind};

use super::Matcher;
use crate::abi::Direction;
use crate::protocol::sql::{summarize, Dialect};
use crate::protocol::{Clock, Message};

const SSL_REQUEST: &[u8] = b"\0\0\0\x08\x04\xd2\x16/";
const STARTUP: &[u8] =
    b"\0\0\0B\0\x03\0\0user\0postgres\0database\0postgres\0application_name\0pgbench\0\0";
/// AuthenticationOk, one ParameterStatus, BackendKeyData, ReadyForQuery (idle).
const STARTUP_REPLY: &[u8] = b"R\0\0\0\x08\0\0\0\0S\0\0\0\x19client_encoding\0UTF8\0K\0\0\0\x0c\0\0\x4e\x20\x12\x34\x56\x78Z\0\0\0\x05I";
const BEGIN: &[u8] = b"Q\0\0\0\x0bBEGIN;\0";
const BEGIN_REPLY: &[u8] = b"C\0\0\0\nBEGIN\0Z\0\0\0\x05T";
const UPDATE: &[u8] =
    b"Q\0\0\0OUPDATE pgbench_accounts SET abalance = abalance + -2613 WHERE aid = 46708;\0";
const UPDATE_REPLY: &[u8] = b"C\0\0\0\rUPDATE 1\0Z\0\0\0\x05T";
const SELECT: &[u8] = b"Q\0\0\0=SELECT abalance FROM pgbench_accounts WHERE aid = 46708;\0";
const SELECT_REPLY: &[u8] = b"T\0\0\0!\0\x01abalance\0\0\0@\x06\0\x03\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0D\0\0\0\x0f\0\x01\0\0\0\x05-2613C\0\0\0\rSELECT 1\0Z\0\0\0\x05T";
// pgbench -M extended: Parse (unnamed), Bind, Describe portal, Execute, Sync in one send.
const EXTENDED_BEGIN: &[u8] = b"P\0\0\0\x0e\0BEGIN;\0\0\0B\0\0\0\x0e\0\0\0\0\0\0\0\x01\0\0D\0\0\0\x06P\0E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04";
const EXTENDED_BEGIN_REPLY: &[u8] =
    b"1\0\0\0\x042\0\0\0\x04n\0\0\0\x04C\0\0\0\nBEGIN\0Z\0\0\0\x05T";
// pgbench -M prepared: Parse "P_0" + Sync, then Bind/Describe/Execute/Sync of it.
const PREPARE: &[u8] = b"P\0\0\0\x11P_0\0BEGIN;\0\0\0S\0\0\0\x04";
const PREPARE_REPLY: &[u8] = b"1\0\0\0\x04Z\0\0\0\x05I";
const EXECUTE_PREPARED: &[u8] =
    b"B\0\0\0\x11\0P_0\0\0\0\0\0\0\x01\0\0D\0\0\0\x06P\0E\0\0\0\t\0\0\0\0\0S\0\0\0\x04";
const EXECUTE_PREPARED_REPLY: &[u8] = b"2\0\0\0\x04n\0\0\0\x04C\0\0\0\nBEGIN\0Z\0\0\0\x05T";

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn query(text: &str) -> Vec<u8> {
    message(b'Q', &[text.as_bytes(), b"\0"].concat())
}

/// An ErrorResponse as postgres 15 writes one for a missing table.
fn error(sqlstate: &str) -> Vec<u8> {
    let body = format!(
        "SERROR\0VERROR\0C{sqlstate}\0Mrelation \"nope\" does not exist\0P15\0Fparse_relation.c\0L1392\0RparserOpenTable\0\0"
    );
    message(b'E', body.as_bytes())
}

const READY: &[u8] = b"Z\0\0\0\x05I";

/// A server's view: messages read (ingress), results written (egress).
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

    /// A started connection (SSLRequest refused, startup, its answer).
    fn started() -> Self {
        let mut server = Server::new();
        server.read(SSL_REQUEST);
        server.write(b"N");
        server.read(STARTUP);
        server.write(STARTUP_REPLY);
        assert!(server.spans.is_empty());
        assert_eq!(server.matcher.unparsed, 0);
        server
    }

    fn buffer(&mut self, request_side: bool, data: &[u8], total: usize) {
        let direction = if request_side {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        self.buffer_with(direction, request_side, data, total);
    }

    /// A whole buffer going `direction`, on the requests' side or the responses'.
    fn buffer_as(&mut self, direction: Direction, request_side: bool, data: &[u8]) {
        self.buffer_with(direction, request_side, data, data.len());
    }

    fn buffer_with(&mut self, direction: Direction, request_side: bool, data: &[u8], total: usize) {
        self.ts += 100;
        let message = Message {
            probe: "postgres",
            pid: 7,
            conn_id: 5,
            ts_ns: self.ts,
            direction,
            flow: None,
            sample_threshold: u32::MAX,
            sampled_out: false,
            data,
            netns: 1,
            cgroup_id: 1,
            trace: None,
        };
        let service = |_| "postgres".to_string();
        self.matcher.feed(
            message,
            total as u64,
            request_side,
            service,
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

    /// (operation, collection, status) of each span so far.
    fn seen(&self) -> Vec<(String, Option<String>, Option<String>)> {
        self.spans
            .iter()
            .map(|s| match &s.protocol {
                Protocol::Postgres(db) => (
                    db.operation.clone(),
                    db.collection.clone(),
                    db.status_code.clone(),
                ),
                other => panic!("not a PostgreSQL span: {other:?}"),
            })
            .collect()
    }

    fn texts(&self) -> Vec<String> {
        self.spans
            .iter()
            .filter_map(|s| s.db().and_then(|db| db.query_text.clone()))
            .collect()
    }
}

fn op(
    operation: &str,
    collection: Option<&str>,
    status: Option<&str>,
) -> (String, Option<String>, Option<String>) {
    (
        operation.to_string(),
        collection.map(str::to_string),
        status.map(str::to_string),
    )
}

#[test]
fn simple_queries_pair_with_their_results() {
    let mut server = Server::started();
    for (q, reply) in [
        (BEGIN, BEGIN_REPLY),
        (UPDATE, UPDATE_REPLY),
        (SELECT, SELECT_REPLY),
    ] {
        server.read(q);
        server.write(reply);
    }
    assert_eq!(
        server.seen(),
        [
            op("BEGIN", None, None),
            op("UPDATE", Some("pgbench_accounts"), None),
            op("SELECT", Some("pgbench_accounts"), None),
        ]
    );
    assert_eq!(
        server.texts()[1],
        "UPDATE pgbench_accounts SET abalance = abalance + -? WHERE aid = ?;"
    );
    assert!(server.spans.iter().all(|s| s.kind == SpanKind::Server));
    assert!(server.spans.iter().all(|s| s.duration_ns == 100));
    assert_eq!(server.matcher.unparsed, 0);
    assert_eq!(server.matcher.pending_connections(), 0);
}

#[test]
fn extended_and_prepared_statements_pair_by_name() {
    let mut server = Server::started();
    server.read(EXTENDED_BEGIN);
    server.write(EXTENDED_BEGIN_REPLY);
    // A PREPARE (Parse and Sync alone) is no operation of its own.
    server.read(PREPARE);
    server.write(PREPARE_REPLY);
    assert_eq!(server.spans.len(), 1);
    server.read(EXECUTE_PREPARED);
    server.write(EXECUTE_PREPARED_REPLY);
    // The prepared statement again, its Bind naming it: same text.
    server.read(EXECUTE_PREPARED);
    server.write(EXECUTE_PREPARED_REPLY);
    assert_eq!(server.seen(), vec![op("BEGIN", None, None); 3]);
    assert_eq!(server.matcher.unparsed, 0);

    // Pipelined: two Executes in one batch, their results in one write.
    let mut batch = message(b'P', b"s1\0SELECT * FROM t WHERE id = $1\0\0\0");
    for _ in 0..2 {
        batch.extend(message(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x013\0\0"));
        batch.extend(message(b'E', b"\0\0\0\0\0"));
    }
    batch.extend(message(b'S', b""));
    server.read(&batch);
    let mut reply = message(b'1', b"");
    for _ in 0..2 {
        reply.extend(message(b'2', b""));
        reply.extend(message(b'C', b"SELECT 0\0"));
    }
    reply.extend_from_slice(READY);
    server.write(&reply);
    assert_eq!(server.seen()[3..], vec![op("SELECT", Some("t"), None); 2]);
    assert_eq!(server.texts()[3], "SELECT * FROM t WHERE id = $1");
}

#[test]
fn errors_carry_their_sqlstate_and_end_their_batch() {
    let mut server = Server::started();
    server.read(&query("SELECT * FROM nope WHERE name = 'alice'"));
    server.write(&[error("42P01"), READY.to_vec()].concat());
    // Extended: the first Execute fails; the server skips the second until Sync.
    let mut batch = Vec::new();
    for text in ["INSERT INTO nope VALUES (1)", "SELECT 1"] {
        batch.extend(message(b'P', &[b"\0", text.as_bytes(), b"\0\0\0"].concat()));
        batch.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
        batch.extend(message(b'E', b"\0\0\0\0\0"));
    }
    batch.extend(message(b'S', b""));
    server.read(&batch);
    server.write(&[error("42P01"), READY.to_vec()].concat());
    // A PREPARE that fails is its own span.
    server.read(&[message(b'P', b"bad\0SELEC 1\0\0\0"), message(b'S', b"")].concat());
    server.write(&[error("42601"), READY.to_vec()].concat());
    // The connection goes on.
    server.read(BEGIN);
    server.write(BEGIN_REPLY);
    assert_eq!(
        server.seen(),
        [
            op("SELECT", Some("nope"), Some("42P01")),
            op("INSERT", Some("nope"), Some("42P01")),
            op("SELEC", None, Some("42601")),
            op("BEGIN", None, None),
        ]
    );
    assert!(server.spans.iter().take(3).all(Span::is_error));
    assert_eq!(server.matcher.unparsed, 0);
    assert_eq!(server.matcher.pending_connections(), 0);
    assert!(!server.texts().iter().any(|t| t.contains("alice")));
}

#[test]
fn messages_split_over_buffers_and_beyond_the_capture_are_followed() {
    let mut server = Server::started();
    // A query split over two reads, its result over two writes.
    let (a, b) = UPDATE.split_at(7);
    server.read(a);
    server.read(b);
    let (a, b) = UPDATE_REPLY.split_at(3);
    server.write(a);
    server.write(b);
    // A 1 MiB query of which 1024 bytes are captured, then a result of 1 MiB of rows of which
    // only the start is: both lengths are known, so the next exchange pairs.
    let big = format!("SELECT '{}' FROM t", "x".repeat(1 << 20));
    let big = query(&big);
    server.buffer(true, &big[..1024], big.len());
    let mut rows = message(b'D', &vec![7u8; 1 << 20]);
    rows.extend(message(b'C', b"SELECT 1\0"));
    rows.extend_from_slice(READY);
    // The row's end is known, but messages start after it in bytes never captured.
    let mut server2 = Server::started();
    server2.buffer(true, &big[..1024], big.len());
    server2.buffer(false, &rows[..1024], rows.len());
    assert_eq!(server2.spans.len(), 0);
    assert!(server2.matcher.unparsed > 0, "given up, not guessed");
    // Written as the backend does when a message is larger than its buffer: the row alone.
    let row = message(b'D', &vec![7u8; 1 << 20]);
    server.buffer(false, &row[..1024], row.len());
    server.write(&[message(b'C', b"SELECT 1\0"), READY.to_vec()].concat());
    server.read(BEGIN);
    server.write(BEGIN_REPLY);
    assert_eq!(
        server.seen(),
        [
            op("UPDATE", Some("pgbench_accounts"), None),
            op("SELECT", None, None),
            op("BEGIN", None, None),
        ]
    );
    let text = &server.texts()[1];
    assert!(
        text.starts_with("SELECT ?") && text.ends_with('…'),
        "{text}"
    );
    assert_eq!(server.matcher.unparsed, 0);
}

#[test]
fn a_server_met_mid_stream_resyncs_on_a_whole_query_and_its_whole_answer() {
    let mut server = Server::new();
    server.read(BEGIN);
    server.write(BEGIN_REPLY);
    server.read(SELECT);
    server.write(SELECT_REPLY);
    assert_eq!(
        server.seen(),
        [
            op("BEGIN", None, None),
            op("SELECT", Some("pgbench_accounts"), None)
        ]
    );
    assert_eq!(server.matcher.unparsed, 0);

    // The first answer not a whole chain ending in ReadyForQuery: not followed.
    for answer in [&SELECT_REPLY[..20], &BEGIN_REPLY[..BEGIN_REPLY.len() - 6]] {
        let mut server = Server::new();
        server.read(BEGIN);
        server.write(answer);
        server.read(BEGIN);
        server.write(BEGIN_REPLY);
        assert!(server.spans.is_empty());
        assert_eq!(server.matcher.unparsed, 4);
    }
    // An extended batch (or any other message) first: not followed.
    let mut server = Server::new();
    server.read(EXTENDED_BEGIN);
    server.write(EXTENDED_BEGIN_REPLY);
    assert!(server.spans.is_empty());
    assert_eq!(server.matcher.unparsed, 2);
}

#[test]
fn a_client_met_mid_stream_is_counted_never_paired() {
    // A client may still be reading an earlier answer when it sends: no resync on its side.
    let mut client = Server::new();
    client.buffer_as(Direction::Egress, true, BEGIN);
    client.buffer_as(Direction::Ingress, false, BEGIN_REPLY);
    assert!(client.spans.is_empty());
    assert_eq!(client.matcher.unparsed, 2);
}

#[test]
fn garbage_is_counted_never_paired() {
    // Garbage after a good start, then anything more on that connection.
    let mut server = Server::started();
    server.read(b"\x01\x02garbage that is no message");
    server.write(BEGIN_REPLY);
    server.read(BEGIN);
    assert!(server.spans.is_empty());
    assert_eq!(server.matcher.unparsed, 3);

    // A result with nothing asked; an absurd length; TLS accepted: given up, no panic.
    for bytes in [
        BEGIN_REPLY.to_vec(),
        b"C\xff\xff\xff\xffx".to_vec(),
        b"C\0\0\0\x01".to_vec(),
    ] {
        let mut server = Server::started();
        server.write(&bytes);
        server.read(BEGIN);
        server.write(BEGIN_REPLY);
        assert!(server.spans.is_empty(), "{bytes:?}");
        assert!(server.matcher.unparsed >= 2, "{bytes:?}");
    }
    let mut server = Server::new();
    server.read(SSL_REQUEST);
    server.write(b"S");
    server.read(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    assert!(server.spans.is_empty());
    assert_eq!(server.matcher.unparsed, 2);

    // Every prefix of a good exchange, each on a fresh connection: no panic, no span.
    let whole = [STARTUP, BEGIN, EXTENDED_BEGIN].concat();
    for cut in 0..whole.len() {
        let mut server = Server::new();
        server.read(&whole[..cut]);
        server.buffer(true, &whole[..cut], whole.len() + 10);
        server.write(BEGIN_REPLY);
        assert!(server.spans.len() <= 1);
    }
}

#[test]
fn literals_never_survive_sanitising() {
    let cases = [
        (
            "SELECT * FROM users WHERE email = 'a@b.c' AND id = 42",
            "SELECT * FROM users WHERE email = ? AND id = ?",
        ),
        (
            "INSERT INTO t (a, b) VALUES (E'it\\'s', 1.5e3), (X'ff', -.5)",
            "INSERT INTO t (a, b) VALUES (?, ?), (?, -?)",
        ),
        ("SELECT $$secret$$, $tag$x$y$tag$, $1", "SELECT ?, ?, $1"),
        (
            "SELECT 'it''s' -- a comment 'x'\n, /* c /* nested */ */ 2",
            "SELECT ? , ?",
        ),
        (
            "UPDATE \"Users\" SET n = U&'d\\0061t' WHERE x1 = 0x1F",
            "UPDATE \"Users\" SET n = ? WHERE x1 = ?",
        ),
        ("SELECT 'unterminated", "SELECT ?"),
    ];
    for (raw, sanitized) in cases {
        assert_eq!(
            summarize(raw.as_bytes(), true, Dialect::Postgres).text,
            sanitized,
            "{raw}"
        );
    }
    assert_eq!(
        summarize(b"SELECT 'abc", false, Dialect::Postgres).text,
        "SELECT ?…"
    );
}

#[test]
fn operations_and_the_one_table_a_statement_names() {
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "select count(*) from pgbench_branches",
            "SELECT",
            Some("pgbench_branches"),
        ),
        (
            "INSERT INTO pgbench_history (tid, bid) VALUES (1, 2);",
            "INSERT",
            Some("pgbench_history"),
        ),
        (
            "DELETE FROM public.t AS x WHERE 1 = 1",
            "DELETE",
            Some("public.t"),
        ),
        (
            "truncate pgbench_history",
            "TRUNCATE",
            Some("pgbench_history"),
        ),
        (
            "UPDATE t SET a = 1 FROM u WHERE t.id = u.id",
            "UPDATE",
            None,
        ),
        ("SELECT * FROM a JOIN b ON a.id = b.id", "SELECT", None),
        ("SELECT * FROM a, b", "SELECT", None),
        (
            "SELECT * FROM a WHERE id IN (SELECT id FROM b)",
            "SELECT",
            None,
        ),
        (
            "SELECT extract(epoch FROM ts) FROM events",
            "SELECT",
            Some("events"),
        ),
        ("SELECT * FROM generate_series(1, 3)", "SELECT", None),
        ("SELECT * FROM t FOR UPDATE", "SELECT", Some("t")),
        (
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            "INSERT",
            None,
        ),
        ("(SELECT 1)", "SELECT", None),
        ("BEGIN; SELECT 1; COMMIT;", "BATCH", None),
        ("END;", "END", None),
        ("", "UNKNOWN", None),
    ];
    for (raw, operation, collection) in cases {
        let statement = summarize(raw.as_bytes(), true, Dialect::Postgres);
        assert_eq!(
            (
                statement.operation.as_str(),
                statement.collection.as_deref()
            ),
            (*operation, *collection),
            "{raw}"
        );
    }
}

/// Real exchanges with random bytes flipped, cut and split, on both sides: nothing panics, and
/// every span names an operation that was in the input.
#[test]
fn mutated_exchanges_never_panic() {
    let exchanges: [&[u8]; 10] = [
        STARTUP,
        STARTUP_REPLY,
        BEGIN,
        BEGIN_REPLY,
        EXTENDED_BEGIN,
        EXTENDED_BEGIN_REPLY,
        PREPARE,
        PREPARE_REPLY,
        EXECUTE_PREPARED,
        EXECUTE_PREPARED_REPLY,
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..2000 {
        let mut server = Server::new();
        for (i, bytes) in exchanges.iter().enumerate() {
            let mut bytes = bytes.to_vec();
            for _ in 0..next() % 3 {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            let cut = (next() as usize) % (bytes.len() + 1);
            let total = bytes.len() + (next() % 2) as usize * 7;
            let request_side = i % 2 == 0;
            server.buffer(request_side, &bytes[..cut], cut);
            server.buffer(request_side, &bytes[cut..], total - cut);
        }
        for (operation, ..) in server.seen() {
            assert!(
                ["BEGIN", "UNKNOWN"].contains(&operation.as_str()) || operation.len() <= 6,
                "{operation}"
            );
        }
    }
}
