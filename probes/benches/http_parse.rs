//! The HTTP/1 request parser every request the probes see goes through, against `httparse`
//! (hyper's parser) doing the same job: method, target, and the `Host` and `traceparent`
//! headers of a captured request head. Alternating rounds, medians, ratios in one run.
//!
//! `cargo bench -p apiary-probes --bench http_parse` (APIARY_BENCH_ROUNDS, default 9).

use std::hint::black_box;
use std::time::Instant;

use apiary_probes::protocol::http1::{parse_request, Request};

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// The hand parser's output built with httparse, so that both do the same work (owned strings,
/// as spans hold them). httparse gives no headers of a head cut by the capture limit (`Partial`),
/// so a cut head is first copied up to its last complete line and closed with an empty line —
/// the hand parser reads the complete lines of a cut head as they are.
fn with_httparse(data: &[u8], scratch: &mut Vec<u8>) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    if request.parse(data).ok()?.is_partial() {
        let last_line = memchr::memmem::rfind(data, b"\r\n")?;
        scratch.clear();
        scratch.extend_from_slice(&data[..last_line + 2]);
        scratch.extend_from_slice(b"\r\n");
        request = httparse::Request::new(&mut headers);
        request.parse(scratch).ok()?;
    }
    let mut parsed = Request {
        method: request.method?.to_string(),
        target: request.path?.to_string(),
        host: None,
        traceparent: None,
    };
    for header in request.headers.iter() {
        let text = || {
            std::str::from_utf8(header.value)
                .ok()
                .map(|v| v.trim().to_string())
        };
        if header.name.eq_ignore_ascii_case("host") {
            parsed.host = text();
        } else if header.name.eq_ignore_ascii_case("traceparent") {
            parsed.traceparent = text();
        }
    }
    Some(parsed)
}

fn heads() -> Vec<(&'static str, Vec<u8>)> {
    let curl = b"GET /api/orders/42 HTTP/1.1\r\nHost: shop\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n".to_vec();
    let browser = format!(
        "GET /api/orders/42?page=2 HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive\r\n\
         sec-ch-ua: \"Chromium\";v=\"156\"\r\nsec-ch-ua-mobile: ?0\r\nUser-Agent: Mozilla/5.0 \
         (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36\r\n\
         Accept: application/json\r\nSec-Fetch-Site: same-origin\r\nSec-Fetch-Mode: cors\r\n\
         Referer: https://shop.example/orders\r\nAccept-Encoding: gzip, deflate, br\r\n\
         Accept-Language: en-GB,en;q=0.9\r\ntraceparent: {TRACEPARENT}\r\n\r\n"
    )
    .into_bytes();
    let cut = browser[..256].to_vec();
    vec![
        ("curl, 3 headers", curl),
        ("browser, 12 headers", browser),
        ("browser, cut at 256 B", cut),
    ]
}

fn main() {
    // `cargo test` runs this without --bench: a smoke run that checks both parsers agree.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds: usize = std::env::var("APIARY_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 9 });
    let per_round = if quick { 1_000 } else { 200_000 };
    println!("HTTP/1 request heads, {rounds} alternating rounds of {per_round} parses, medians");
    println!(
        "{:<24} {:>12} {:>12} {:>10}",
        "head", "hand ns", "httparse ns", "hand/httparse"
    );
    for (name, head) in heads() {
        // Both must agree before their speed means anything.
        let mut scratch = Vec::with_capacity(4096);
        let hand = parse_request(&head).expect("hand parser reads the head");
        let other = with_httparse(&head, &mut scratch).expect("httparse reads the head");
        assert_eq!(hand, other, "{name}: both parsers must read the same");
        let (mut hand_ns, mut httparse_ns) = (Vec::new(), Vec::new());
        for round in 0..rounds * 2 {
            let start = Instant::now();
            if round % 2 == 0 {
                for _ in 0..per_round {
                    black_box(parse_request(black_box(&head)));
                }
                hand_ns.push(start.elapsed().as_nanos() as f64 / per_round as f64);
            } else {
                for _ in 0..per_round {
                    black_box(with_httparse(black_box(&head), &mut scratch));
                }
                httparse_ns.push(start.elapsed().as_nanos() as f64 / per_round as f64);
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (h, o) = (median(&mut hand_ns), median(&mut httparse_ns));
        println!("{name:<24} {h:>12.1} {o:>12.1} {:>10.2}x", h / o);
    }
    println!("(below 1.00x the hand parser is faster; both produce the same owned Request)");
}
