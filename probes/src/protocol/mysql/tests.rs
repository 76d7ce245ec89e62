//! The MySQL framing, pairing and sanitising on bytes as the mariadb 10.11 command-line client
//! and Perl's DBD::MariaDB (libmariadb 3.3) send them and MariaDB 10.11 answers (captured with
//! strace -e sendto,recvfrom on the clients), and on packets built by hand where MySQL 8
//! differs (CLIENT_DEPRECATE_EOF).

use apiary_span::{Protocol, Span, SpanKind};

use super::Matcher;
use crate::abi::Direction;
use crate::protocol::sql::{summarize, Dialect};
use crate::protocol::{Clock, Message};

/// MariaDB 10.11's greeting: "5.5.5-10.11.19-MariaDB-0+deb12u1", capabilities with
/// CLIENT_DEPRECATE_EOF among the server's.
const GREETING: &[u8] = b"\x64\x00\x00\x00\x0a\x35\x2e\x35\x2e\x35\x2d\x31\x30\x2e\x31\x31\x2e\x31\x39\x2d\x4d\x61\x72\x69\x61\x44\x42\x2d\x30\x2b\x64\x65\x62\x31\x32\x75\x31\x00\x05\x00\x00\x00\x7a\x31\x21\x52\x5a\x4f\x5b\x5c\x00\xfe\xf7\x08\x02\x00\xff\x81\x15\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00\x3c\x54\x74\x6d\x44\x49\x25\x7b\x5c\x3e\x5d\x3c\x00\x6d\x79\x73\x71\x6c\x5f\x6e\x61\x74\x69\x76\x65\x5f\x70\x61\x73\x73\x77\x6f\x72\x64\x00";
/// The mariadb client's handshake response (no CLIENT_DEPRECATE_EOF, no SSL).
const HANDSHAKE: &[u8] = b"\xbd\x00\x00\x01\x8c\xa2\xbf\x00\x00\x00\x10\x00\x21\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x1d\x00\x00\x00\x72\x6f\x6f\x74\x00\x00\x74\x00\x6d\x79\x73\x71\x6c\x5f\x6e\x61\x74\x69\x76\x65\x5f\x70\x61\x73\x73\x77\x6f\x72\x64\x00\x7e\x03\x5f\x6f\x73\x05\x4c\x69\x6e\x75\x78\x0c\x5f\x63\x6c\x69\x65\x6e\x74\x5f\x6e\x61\x6d\x65\x0a\x6c\x69\x62\x6d\x61\x72\x69\x61\x64\x62\x04\x5f\x70\x69\x64\x04\x33\x30\x32\x36\x0f\x5f\x63\x6c\x69\x65\x6e\x74\x5f\x76\x65\x72\x73\x69\x6f\x6e\x06\x33\x2e\x33\x2e\x32\x30\x09\x5f\x70\x6c\x61\x74\x66\x6f\x72\x6d\x06\x78\x38\x36\x5f\x36\x34\x0c\x70\x72\x6f\x67\x72\x61\x6d\x5f\x6e\x61\x6d\x65\x05\x6d\x79\x73\x71\x6c\x0c\x5f\x73\x65\x72\x76\x65\x72\x5f\x68\x6f\x73\x74\x09\x31\x32\x37\x2e\x30\x2e\x30\x2e\x31";
/// The login's OK (sequence 2), with session-state tracking.
const LOGIN_OK: &[u8] = b"\x0d\x00\x00\x02\x00\x00\x00\x02\x40\x00\x00\x00\x04\x01\x02\x01\x74";
const SELECT: &[u8] = b"\x2c\x00\x00\x00\x03SELECT id, name FROM items WHERE name = 'a'";
/// Column count 2 with MariaDB's metadata-follows byte, two definitions, EOF, one row, EOF.
const SELECT_RESULT: &[u8] = b"\x02\x00\x00\x01\x02\x01\x26\x00\x00\x02\x03\x64\x65\x66\x01\x74\x05\x69\x74\x65\x6d\x73\x05\x69\x74\x65\x6d\x73\x02\x69\x64\x02\x69\x64\x00\x0c\x3f\x00\x0b\x00\x00\x00\x03\x03\x50\x00\x00\x00\x2a\x00\x00\x03\x03\x64\x65\x66\x01\x74\x05\x69\x74\x65\x6d\x73\x05\x69\x74\x65\x6d\x73\x04\x6e\x61\x6d\x65\x04\x6e\x61\x6d\x65\x00\x0c\x21\x00\x3c\x00\x00\x00\xfd\x00\x00\x00\x00\x00\x05\x00\x00\x04\xfe\x00\x00\x22\x00\x04\x00\x00\x05\x01\x31\x01\x61\x05\x00\x00\x06\xfe\x00\x00\x22\x00";
const BAD_SELECT: &[u8] = b"\x17\x00\x00\x00\x03SELECT nope FROM items";
/// ERR 1054 (42S22) Unknown column 'nope' in 'SELECT'.
const BAD_SELECT_ERR: &[u8] = b"\x2a\x00\x00\x01\xff\x1e\x04\x23\x34\x32\x53\x32\x32\x55\x6e\x6b\x6e\x6f\x77\x6e\x20\x63\x6f\x6c\x75\x6d\x6e\x20\x27\x6e\x6f\x70\x65\x27\x20\x69\x6e\x20\x27\x53\x45\x4c\x45\x43\x54\x27";
const QUIT: &[u8] = b"\x01\x00\x00\x00\x01";

// DBD::MariaDB with mariadb_server_prepare=1.
const PREPARE_SELECT: &[u8] = b"\x24\x00\x00\x00\x16SELECT name FROM items WHERE id = ?";
/// PREPARE_OK (statement 1, one column, one parameter), their definitions, each with its EOF.
const PREPARE_SELECT_OK: &[u8] = b"\x0c\x00\x00\x01\x00\x01\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00\x18\x00\x00\x02\x03\x64\x65\x66\x00\x00\x00\x01\x3f\x00\x00\x0c\x3f\x00\x00\x00\x00\x00\x06\x80\x00\x00\x00\x00\x05\x00\x00\x03\xfe\x00\x00\x02\x00\x2a\x00\x00\x04\x03\x64\x65\x66\x01\x74\x05\x69\x74\x65\x6d\x73\x05\x69\x74\x65\x6d\x73\x04\x6e\x61\x6d\x65\x04\x6e\x61\x6d\x65\x00\x0c\x2d\x00\x50\x00\x00\x00\xfd\x00\x00\x00\x00\x00\x05\x00\x00\x05\xfe\x00\x00\x02\x00";
const EXECUTE_1: &[u8] =
    b"\x10\x00\x00\x00\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\xfe\x00\x01\x31";
/// Column count 1 with metadata-follows 0 (cached from the prepare), EOF, a binary row, EOF.
const EXECUTE_RESULT: &[u8] = b"\x02\x00\x00\x01\x01\x00\x05\x00\x00\x02\xfe\x00\x00\x02\x00\x04\x00\x00\x03\x00\x00\x01\x61\x05\x00\x00\x04\xfe\x00\x00\x02\x00";
const PREPARE_INSERT: &[u8] = b"\x20\x00\x00\x00\x16INSERT INTO items VALUES (?, ?)";
const PREPARE_INSERT_OK: &[u8] = b"\x0c\x00\x00\x01\x00\x02\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x18\x00\x00\x02\x03\x64\x65\x66\x00\x00\x00\x01\x3f\x00\x00\x0c\x3f\x00\x00\x00\x00\x00\x06\x80\x00\x00\x00\x00\x18\x00\x00\x03\x03\x64\x65\x66\x00\x00\x00\x01\x3f\x00\x00\x0c\x3f\x00\x00\x00\x00\x00\x06\x80\x00\x00\x00\x00\x05\x00\x00\x04\xfe\x00\x00\x02\x00";
const EXECUTE_INSERT: &[u8] = b"\x14\x00\x00\x00\x17\x02\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\xfe\x00\xfe\x00\x01\x33\x01\x63";
const INSERT_OK: &[u8] = b"\x07\x00\x00\x01\x00\x01\x00\x02\x00\x00\x00";
const PREPARE_BAD: &[u8] = b"\x17\x00\x00\x00\x16SELECT nope FROM items";

/// A packet: payload length, sequence number, payload.
fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_le_bytes()[..3].to_vec();
    out.push(seq);
    out.extend_from_slice(payload);
    out
}

fn query(text: &str) -> Vec<u8> {
    packet(0, &[b"\x03", text.as_bytes()].concat())
}

/// One side of connections (a client: commands written, replies read; a server the other way).
struct Side {
    matcher: Matcher,
    clock: Clock,
    commands: Direction,
    ts: u64,
    conn_id: u64,
    spans: Vec<Span>,
}

impl Side {
    fn client() -> Self {
        Side {
            matcher: Matcher::default(),
            clock: Clock::with_offset(0),
            commands: Direction::Egress,
            ts: 0,
            conn_id: 5,
            spans: Vec::new(),
        }
    }

    fn server() -> Self {
        Side {
            commands: Direction::Ingress,
            ..Side::client()
        }
    }

    /// A connection logged in with the mariadb client's greeting and handshake.
    fn logged_in(mut self) -> Self {
        self.reply(GREETING);
        self.command(HANDSHAKE);
        self.reply(LOGIN_OK);
        assert!(self.spans.is_empty());
        assert_eq!(self.matcher.unparsed, 0);
        self
    }

    fn buffer(&mut self, request_side: bool, data: &[u8], total: usize) {
        self.ts += 100;
        let direction = match (request_side, self.commands) {
            (true, d) => d,
            (false, Direction::Egress) => Direction::Ingress,
            (false, Direction::Ingress) => Direction::Egress,
        };
        let message = Message {
            probe: "mysql",
            pid: 7,
            conn_id: self.conn_id,
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
        self.matcher.feed(
            message,
            total as u64,
            request_side,
            |_| "mariadb".to_string(),
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

    /// (system, operation, collection, status) of each span so far.
    fn seen(&self) -> Vec<(&'static str, String, Option<String>, Option<String>)> {
        self.spans
            .iter()
            .map(|s| match &s.protocol {
                Protocol::Mysql(db) => (
                    db.system,
                    db.operation.clone(),
                    db.collection.clone(),
                    db.status_code.clone(),
                ),
                other => panic!("not a MySQL span: {other:?}"),
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
) -> (&'static str, String, Option<String>, Option<String>) {
    (
        "mariadb",
        operation.to_string(),
        collection.map(str::to_string),
        status.map(str::to_string),
    )
}

#[test]
fn text_queries_pair_with_their_results_and_errors() {
    let mut client = Side::client().logged_in();
    client.command(SELECT);
    client.reply(SELECT_RESULT);
    client.command(BAD_SELECT);
    client.reply(BAD_SELECT_ERR);
    client.command(QUIT);
    assert_eq!(
        client.seen(),
        [
            op("SELECT", Some("items"), None),
            op("SELECT", Some("items"), Some("1054")),
        ]
    );
    assert_eq!(
        client.texts(),
        [
            "SELECT id, name FROM items WHERE name = ?",
            "SELECT nope FROM items"
        ]
    );
    assert!(client.spans.iter().all(|s| s.kind == SpanKind::Client));
    assert!(client.spans.iter().all(|s| s.duration_ns == 100));
    assert_eq!(client.matcher.unparsed, 0);
    assert_eq!(client.matcher.pending_connections(), 0);
}

#[test]
fn prepared_statements_pair_by_id_and_a_failed_prepare_is_its_span() {
    let mut client = Side::client().logged_in();
    client.command(PREPARE_SELECT);
    client.reply(PREPARE_SELECT_OK);
    for _ in 0..2 {
        client.command(EXECUTE_1);
        client.reply(EXECUTE_RESULT);
    }
    client.command(PREPARE_INSERT);
    client.reply(PREPARE_INSERT_OK);
    client.command(EXECUTE_INSERT);
    client.reply(INSERT_OK);
    client.command(PREPARE_BAD);
    client.reply(BAD_SELECT_ERR);
    assert_eq!(
        client.seen(),
        [
            op("SELECT", Some("items"), None),
            op("SELECT", Some("items"), None),
            op("INSERT", Some("items"), None),
            op("SELECT", Some("items"), Some("1054")),
        ]
    );
    assert_eq!(client.texts()[2], "INSERT INTO items VALUES (?, ?)");
    // A closed statement is forgotten: its execute gives no span, and is counted.
    client.command(&packet(0, b"\x19\x01\x00\x00\x00"));
    client.command(EXECUTE_1);
    client.reply(EXECUTE_RESULT);
    assert_eq!(client.spans.len(), 4);
    assert_eq!(client.matcher.unparsed, 1);
    // ...and the connection is still followed.
    client.command(SELECT);
    client.reply(SELECT_RESULT);
    assert_eq!(client.spans.len(), 5);
}

#[test]
fn a_server_reading_header_and_body_apart_and_replies_split_anywhere() {
    let mut server = Side::server();
    server.reply(GREETING);
    let (header, body) = HANDSHAKE.split_at(4);
    server.command(header);
    server.command(body);
    server.reply(LOGIN_OK);
    let (header, body) = SELECT.split_at(4);
    server.command(header);
    server.command(body);
    for part in SELECT_RESULT.chunks(7) {
        server.reply(part);
    }
    assert_eq!(server.seen(), [op("SELECT", Some("items"), None)]);
    assert_eq!(server.spans[0].kind, SpanKind::Server);
    // The span starts when the command's header was read and ends when the reply's last
    // packet began (its EOF starts in the 16th part of 7 bytes).
    assert_eq!(server.spans[0].duration_ns, 100 * (16 + 1));
    assert_eq!(server.matcher.unparsed, 0);
}

#[test]
fn a_query_longer_than_the_capture_is_passed_over_and_never_shows_its_literals() {
    let mut client = Side::client().logged_in();
    let value = "x".repeat(1 << 20);
    let big = query(&format!("INSERT INTO blobs VALUES ('{value}')"));
    // The kernel captured 256 bytes of the 1 MiB write.
    client.buffer(true, &big[..256], big.len());
    client.reply(&packet(1, b"\x00\x01\x00\x02\x00\x00\x00"));
    assert_eq!(client.seen(), [op("INSERT", Some("blobs"), None)]);
    assert_eq!(client.texts(), ["INSERT INTO blobs VALUES (?…"]);
    client.command(SELECT);
    client.reply(SELECT_RESULT);
    assert_eq!(client.spans.len(), 2);
    assert_eq!(client.matcher.unparsed, 0);
}

#[test]
fn mysql_8_results_end_with_ok_packets_under_deprecate_eof() {
    // A MySQL 8 greeting: CLIENT_PROTOCOL_41 and CLIENT_DEPRECATE_EOF, no MariaDB.
    let mut greeting = b"\x0a8.0.40\x00\x09\x00\x00\x00abcdefgh\x00".to_vec();
    greeting.extend_from_slice(&0xffffu16.to_le_bytes()[..]);
    greeting.extend_from_slice(b"\xff\x02\x00");
    greeting.extend_from_slice(&0x01ffu16.to_le_bytes()[..]); // bits 16..24 and DEPRECATE_EOF
    greeting.extend_from_slice(&[0x15; 11]);
    greeting.extend_from_slice(b"ijklmnopqrst\x00caching_sha2_password\x00");
    let client_caps: u32 = 0x0100_0000 | 0x0200 | 0x8000 | 0x0008;
    let mut handshake = client_caps.to_le_bytes().to_vec();
    handshake.extend_from_slice(&[0; 28]);
    handshake.extend_from_slice(b"app\x00\x00");
    let mut client = Side::client();
    client.reply(&packet(0, &greeting));
    client.command(&packet(1, &handshake));
    client.reply(&packet(2, b"\x01\x03")); // caching_sha2 fast auth
    client.reply(&packet(3, b"\x00\x00\x00\x02\x00\x00\x00"));
    client.command(&query("SELECT a FROM t WHERE b = \"secret\""));
    let mut result = packet(1, b"\x01");
    result.extend(packet(
        2,
        b"\x03def\x00\x01t\x01t\x01a\x01a\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00",
    ));
    result.extend(packet(3, b"\x011"));
    result.extend(packet(4, b"\x012"));
    result.extend(packet(5, b"\xfe\x00\x00\x02\x00\x00\x00"));
    client.reply(&result);
    client.command(&query("CALL two_results()"));
    // An OK that says more results follow, then a result set, then the final OK.
    let mut results = packet(1, b"\x00\x00\x00\x0a\x00\x00\x00");
    results.extend(packet(2, b"\x01"));
    results.extend(packet(
        3,
        b"\x03def\x00\x01t\x01t\x01a\x01a\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00",
    ));
    results.extend(packet(4, b"\x011"));
    results.extend(packet(5, b"\xfe\x00\x00\x02\x00\x00\x00"));
    client.reply(&results);
    let systems: Vec<_> = client.seen().into_iter().map(|s| (s.0, s.1)).collect();
    assert_eq!(
        systems,
        [
            ("mysql", "SELECT".to_string()),
            ("mysql", "CALL".to_string())
        ]
    );
    assert_eq!(client.texts()[0], "SELECT a FROM t WHERE b = ?");
    assert_eq!(client.matcher.unparsed, 0);
    assert_eq!(client.matcher.pending_connections(), 0);
}

#[test]
fn mariadb_direct_execute_pipelines_prepare_and_execute() {
    let mut client = Side::client().logged_in();
    // mariadb_stmt_execute_direct: the prepare, then an execute of "the last prepared" (id
    // 0xFFFFFFFF), in one write; the two replies in one read.
    let execute_last = packet(
        0,
        b"\x17\xff\xff\xff\xff\x00\x01\x00\x00\x00\x00\x01\xfe\x00\x01\x31",
    );
    client.command(&[PREPARE_SELECT, &execute_last].concat());
    client.reply(&[PREPARE_SELECT_OK, EXECUTE_RESULT].concat());
    assert_eq!(client.seen(), [op("SELECT", Some("items"), None)]);
    assert_eq!(client.matcher.unparsed, 0);
}

#[test]
fn garbage_and_out_of_sequence_replies_give_the_connection_up() {
    // A reply numbered wrong.
    let mut client = Side::client().logged_in();
    client.command(SELECT);
    let mut wrong = SELECT_RESULT.to_vec();
    wrong[3] = 2;
    client.reply(&wrong);
    assert!(client.spans.is_empty());
    assert!(client.matcher.unparsed >= 1);
    client.command(SELECT);
    client.reply(SELECT_RESULT);
    assert!(
        client.spans.is_empty(),
        "a given-up connection pairs nothing"
    );
    // Garbage where a command should be.
    let mut client = Side::client().logged_in();
    client.command(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    client.reply(SELECT_RESULT);
    assert!(client.spans.is_empty());
    assert!(client.matcher.unparsed >= 1);
    // A reply where a column definition should be.
    let mut client = Side::client().logged_in();
    client.command(SELECT);
    let mut result = packet(1, b"\x02");
    result.extend(packet(2, b"\x00\x00\x00\x02\x00\x00\x00"));
    client.reply(&result);
    assert!(client.spans.is_empty());
    // A connection not seen from its greeting.
    let mut client = Side::client();
    client.command(SELECT);
    client.reply(SELECT_RESULT);
    assert!(client.spans.is_empty());
    // The command; its reply is no command of its own.
    assert_eq!(client.matcher.unparsed, 1);
}

#[test]
fn encrypted_and_compressed_connections_are_not_followed() {
    // An SSLRequest: the client's capabilities with CLIENT_SSL, then TLS.
    let mut client = Side::client();
    client.reply(GREETING);
    let mut ssl = HANDSHAKE[4..36].to_vec();
    ssl[1] |= 0x08;
    client.command(&packet(1, &ssl));
    client.command(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    assert!(client.spans.is_empty());
    assert_eq!(client.matcher.unparsed, 2);
    // CLIENT_COMPRESS.
    let mut client = Side::client();
    client.reply(GREETING);
    let mut compressed = HANDSHAKE.to_vec();
    compressed[4] |= 0x20;
    client.command(&compressed);
    assert_eq!(client.matcher.unparsed, 1);
}

#[test]
fn a_connection_closed_mid_reply_is_forgotten_with_its_process() {
    let mut client = Side::client().logged_in();
    client.command(SELECT);
    client.reply(&SELECT_RESULT[..30]);
    assert_eq!(client.matcher.pending_connections(), 1);
    client.matcher.forget_process(7);
    assert_eq!(client.matcher.pending_connections(), 0);
    assert!(client.spans.is_empty());
}

#[test]
fn mysql_literals_never_survive_sanitising() {
    for (raw, text) in [
        (
            "SELECT * FROM t WHERE a = 'it''s' AND b = \"q\"\"x\" AND c = 0x1F AND d = 'a\\\\'",
            "SELECT * FROM t WHERE a = ? AND b = ? AND c = ? AND d = ?",
        ),
        // A backslash before a quote: escaped by default, the literal's end under
        // NO_BACKSLASH_ESCAPES or in sjis/gbk/big5. The text stops there.
        (
            "SELECT * FROM t WHERE a = 'it\\'s' AND b = 'hunter2'",
            "SELECT * FROM t WHERE a = ?…",
        ),
        (
            "INSERT INTO f VALUES ('C:\\', 'hunter2')",
            "INSERT INTO f VALUES (?…",
        ),
        // `--` is a comment only before a space: here it is two minus signs.
        ("SELECT 1--'\n', 'hunter2'", "SELECT ?--?, ?"),
        ("SELECT 1 -- 'x'\n", "SELECT ?"),
        (
            "select `weird name` from `Orders` where id=_utf8mb4'x' # a comment 'x'\n",
            "select `weird name` from `Orders` where id=?",
        ),
        (
            "INSERT INTO T1 VALUES (1.5e3, -2, X'ff')",
            "INSERT INTO T1 VALUES (?, -?, ?)",
        ),
    ] {
        let statement = summarize(raw.as_bytes(), true, Dialect::Mysql);
        assert_eq!(statement.text, text, "{raw}");
    }
    // Shift-JIS 表 is 0x95 0x5C: the backslash ends a character, not an escape.
    let sjis = summarize(
        b"INSERT INTO f VALUES ('\x95\x5c', 'hunter2')",
        true,
        Dialect::Mysql,
    );
    assert_eq!(sjis.text, "INSERT INTO f VALUES (?…");
    let statement = summarize(b"UPDATE `Orders` SET a = 1", true, Dialect::Mysql);
    assert_eq!(statement.operation, "UPDATE");
    assert_eq!(statement.collection.as_deref(), Some("Orders"));
    let statement = summarize(b"SELECT 1 FROM Mixed", true, Dialect::Mysql);
    assert_eq!(statement.collection.as_deref(), Some("Mixed"));
}

#[test]
fn a_prepare_reply_cut_by_the_capture_gives_the_connection_up() {
    let mut client = Side::client().logged_in();
    client.command(PREPARE_SELECT);
    // 10 of its bytes captured: the header and 6 of PREPARE_OK's 12.
    client.buffer(false, &PREPARE_SELECT_OK[..10], PREPARE_SELECT_OK.len());
    client.command(EXECUTE_1);
    client.reply(EXECUTE_RESULT);
    assert!(client.spans.is_empty());
    assert!(client.matcher.unparsed >= 1);
}

#[test]
fn a_bulk_execute_carries_its_prepared_statement() {
    let mut client = Side::client().logged_in();
    client.command(PREPARE_INSERT);
    client.reply(PREPARE_INSERT_OK);
    // COM_STMT_BULK_EXECUTE of statement 2, parameter types sent, two rows.
    let bulk = packet(
        0,
        b"\xfa\x02\x00\x00\x00\x80\x00\x03\x00\xfe\x00\x00\x01\x00\x00\x00\x00\x01\x61\x00\x02\x00\x00\x00\x00\x01\x62",
    );
    client.command(&bulk);
    client.reply(b"\x07\x00\x00\x01\x00\x02\x00\x02\x00\x00\x00");
    assert_eq!(client.seen(), [op("INSERT", Some("items"), None)]);
    assert_eq!(client.matcher.unparsed, 0);
}

#[test]
fn mutated_exchanges_never_panic() {
    let session: Vec<&[u8]> = vec![
        GREETING,
        HANDSHAKE,
        LOGIN_OK,
        PREPARE_SELECT,
        PREPARE_SELECT_OK,
        EXECUTE_1,
        EXECUTE_RESULT,
        SELECT,
        SELECT_RESULT,
    ];
    let sides = [false, true, false, true, false, true, false, true, false];
    for (i, at) in (0..session.len()).flat_map(|i| (0..session[i].len()).map(move |at| (i, at))) {
        for byte in [0x00, 0xfe, 0xff, 0x03] {
            let mut client = Side::client();
            for (j, (data, request_side)) in session.iter().zip(sides).enumerate() {
                let mut data = data.to_vec();
                if j == i {
                    data[at] = byte;
                }
                client.buffer(request_side, &data, data.len());
            }
            assert!(client.spans.len() <= 2);
        }
    }
}
