//! The probes' byte-stream protocols (bpf/db.h): Redis, PostgreSQL, MySQL and HTTP/2, through
//! `Parsers::stream` as the kernel's buffers of one connection reach them from any process on
//! the machine: framing across buffers, pairing, the SQL summary, bytes past the capture.
//!
//! Input: a selector byte, then buffers, each a flags byte, a 2-byte little-endian length and
//! that many bytes (the last may be short). Selector bits 0-1: the protocol (0 redis, 1
//! postgres, 2 mysql, 3 http2); bit 2: the client's side (requests written) rather than the
//! server's; bit 3: the requests' buffers are sampled out. Flags bit 0: the buffer is on the
//! requests' side; bit 1: the syscall moved more than was captured (its length times 64 plus
//! one); bit 2: a new connection (another fd) from this buffer on; bit 3: the kernel marked it its
//! connection's first (what was followed under that fd is forgotten); bit 4: a record before it
//! was not sent (the connection is given up).
#![no_main]

use std::sync::LazyLock;

use apiary_probes::abi::Direction;
use apiary_probes::protocol::{Clock, Message, Parsers, StreamBuffer};
use libfuzzer_sys::fuzz_target;

static CLOCK: LazyLock<Clock> = LazyLock::new(Clock::now);

fuzz_target!(|data: &[u8]| {
    let (options, mut rest) = apiary_fuzz::selector(data);
    let probe = match options & 3 {
        0 => "redis",
        1 => "postgres",
        2 => "mysql",
        _ => "http2",
    };
    let client = options & 4 != 0;
    let sampled_out = options & 8 != 0;
    let mut parsers = Parsers::default();
    let mut spans = Vec::new();
    let (mut ts_ns, mut conn_id) = (1_000u64, 3u64);
    while let [flags, lo, hi, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (buffer, next) = tail.split_at(len);
        rest = next;
        let request_side = flags & 1 != 0;
        if flags & 4 != 0 {
            conn_id += 1;
        }
        let total_len = if flags & 2 != 0 {
            len as u64 * 64 + 1
        } else {
            len as u64
        };
        // The requests are read on a server and written by a client.
        let direction = match (request_side, client) {
            (true, false) | (false, true) => Direction::Ingress,
            _ => Direction::Egress,
        };
        ts_ns += 1_000;
        let message = Message {
            probe,
            pid: 7,
            conn_id,
            ts_ns,
            direction,
            flow: None,
            sample_threshold: u32::MAX,
            sampled_out: sampled_out && request_side,
            trace: None,
            data: buffer,
            netns: 1,
            cgroup_id: 1,
        };
        let buffer = StreamBuffer {
            total_len,
            request_side,
            starts: flags & 8 != 0,
            after_gap: flags & 16 != 0,
        };
        parsers.stream(
            message,
            buffer,
            |pid| format!("svc-{pid}"),
            &CLOCK,
            &mut spans,
        );
    }
    // What a node does with a span next: its name and attributes (export), its RED row.
    let mut scratch = String::new();
    for span in &spans {
        span.name(&mut scratch);
        span.for_each_attribute(&mut scratch, |_, _| {});
        let _ = span.red();
    }
    let _ = parsers.unparsed(probe);
    let _ = parsers.pending_connections();
    parsers.forget_process(7);
});
