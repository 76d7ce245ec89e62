//! The probes' HTTP/1 parser (probes/src/protocol/http1/parse.rs) and what runs on its output:
//! request heads, status lines, route templates, and the pairing of requests with responses
//! (`Matcher` for message starts, `exchange` for pairs the kernel matched), as captured bytes
//! from any process on the machine reach them.
//!
//! Input: a selector byte, then the request's bytes, a NUL, and the response's bytes (no NUL:
//! all request, no response). Selector bits: 0 the request was written (a client) rather than
//! read (a server), 1 sampling dropped the request, 2 a keep rule could still keep it, 3 the
//! TLS probe rather than the plain one.
#![no_main]

use std::sync::LazyLock;

use apiary_probes::abi::Direction;
use apiary_probes::protocol::http1::{
    exchange, parse_request, parse_status, route_template, Matcher,
};
use apiary_probes::protocol::{Clock, Message};
use libfuzzer_sys::fuzz_target;

static CLOCK: LazyLock<Clock> = LazyLock::new(Clock::now);

fn message<'a>(
    probe: &'static str,
    direction: Direction,
    sampled_out: bool,
    data: &'a [u8],
) -> Message<'a> {
    Message {
        probe,
        pid: 7,
        conn_id: 3,
        ts_ns: 1_000,
        direction,
        flow: None,
        sample_threshold: u32::MAX,
        sampled_out,
        trace: None,
        data,
        netns: 1,
        cgroup_id: 1,
    }
}

fuzz_target!(|data: &[u8]| {
    let (options, rest) = apiary_fuzz::selector(data);
    let (request, response) = match rest.iter().position(|&b| b == 0) {
        Some(nul) => (&rest[..nul], Some(&rest[nul + 1..])),
        None => (rest, None),
    };
    let (request_direction, response_direction) = if options & 1 == 0 {
        (Direction::Ingress, Direction::Egress)
    } else {
        (Direction::Egress, Direction::Ingress)
    };
    let sampled_out = options & 2 != 0;
    let may_keep = options & 4 != 0;
    let probe = if options & 8 == 0 { "http" } else { "tls" };
    let service = |pid: u32| format!("svc-{pid}");

    // The parsers on their own, on both parts.
    for part in [Some(request), response].into_iter().flatten() {
        if let Some(parsed) = parse_request(part) {
            let _ = route_template(&parsed.target);
        }
        let _ = parse_status(part);
    }
    if let Ok(text) = std::str::from_utf8(request) {
        let _ = route_template(text);
    }

    // A pair the kernel matched.
    if let Some(response) = response {
        let _ = exchange(
            message(probe, request_direction, sampled_out, request),
            response,
            2_000,
            |_, _| may_keep,
            service,
            &CLOCK,
        );
    }

    // Message starts the matcher pairs: the request, then the response, then both again on
    // the same connection (a pipelined pair).
    let mut matcher = Matcher::default();
    for _ in 0..2 {
        let _ = matcher.feed(
            message(probe, request_direction, sampled_out, request),
            service,
            &CLOCK,
        );
        if let Some(response) = response {
            let _ = matcher.feed(
                message(probe, response_direction, false, response),
                service,
                &CLOCK,
            );
        }
    }
    let _ = matcher.pending_connections();
    matcher.forget_process(7);
});
