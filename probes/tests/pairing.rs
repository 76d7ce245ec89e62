//! Requests and responses paired in the kernel: one ring record per exchange, and pipelined
//! requests that still get their own responses. Needs root; skipped with one message otherwise.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use crate::common::{config, get, load, root, rust_server, wait_spans};
use apiary_probes::{Span, SpanKind};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_and_its_response_leave_the_kernel_as_one_record() {
    require_root!("a_request_and_its_response_leave_the_kernel_as_one_record");
    let port = rust_server();
    let probes = load(&config(&[(
        "probe.http.filters.include_ports",
        json!([port]),
    )]));
    let requests = 50;
    tokio::task::spawn_blocking(move || {
        for i in 0..requests {
            get(port, &format!("/one/{i}"));
        }
    })
    .await
    .unwrap();
    let spans = wait_spans(&probes.observer, port, 2 * requests).await;
    assert_eq!(spans.len(), 2 * requests, "a server and a client span each");
    let http = probes
        .set
        .reports()
        .into_iter()
        .find(|r| r.name == "http")
        .unwrap();
    // Four messages a request (two per side), but one record per side.
    assert_eq!(http.events, 2 * requests as u64, "{http:?}");
    assert_eq!(http.offered, 2 * requests as u64, "{http:?}");
}

const RESPONSES: [&[u8]; 3] = [
    b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
];

/// Serves one connection: reads two requests (two reads), answers both, then reads and
/// answers a third. Messages are spaced so that each is its own syscall on both sides.
fn pipelining_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let read_request = |stream: &mut TcpStream| {
            let mut buf = [0u8; 512];
            let mut have = 0;
            while !buf[..have].ends_with(b"\r\n\r\n") {
                match stream.read(&mut buf[have..]) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => have += n,
                }
            }
        };
        read_request(&mut stream);
        read_request(&mut stream);
        for response in &RESPONSES[..2] {
            stream.write_all(response).unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        read_request(&mut stream);
        stream.write_all(RESPONSES[2]).unwrap();
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_keep_their_own_responses() {
    require_root!("pipelined_requests_keep_their_own_responses");
    let port = pipelining_server();
    let probes = load(&config(&[(
        "probe.http.filters.include_ports",
        json!([port]),
    )]));
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let request = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        // The second request goes out before the first's response comes back.
        stream.write_all(request("/first").as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        stream.write_all(request("/second").as_bytes()).unwrap();
        for response in &RESPONSES[..2] {
            let mut buf = vec![0u8; response.len()];
            stream.read_exact(&mut buf).unwrap();
        }
        // Both answered: the next request pairs in the kernel again.
        stream.write_all(request("/third").as_bytes()).unwrap();
        let mut buf = vec![0u8; RESPONSES[2].len()];
        stream.read_exact(&mut buf).unwrap();
    })
    .await
    .unwrap();
    let spans = wait_spans(&probes.observer, port, 6).await;
    for kind in [SpanKind::Server, SpanKind::Client] {
        let mut seen: Vec<(String, u16)> = spans
            .iter()
            .filter(|s: &&Span| s.kind == kind)
            .map(|s| (s.expect_http().target.clone(), s.expect_http().status))
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("/first".to_string(), 201),
                ("/second".to_string(), 404),
                ("/third".to_string(), 202)
            ],
            "{kind:?} spans: {spans:#?}"
        );
    }
}
