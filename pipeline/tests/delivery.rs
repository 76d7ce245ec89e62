//! Delivery to a real HTTP receiver that decodes OTLP with the official protobuf definitions:
//! outages, restarts, retry hints, refusals, partial success and a full buffer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apiary_pipeline::{otlp, Delivery, FullPolicy, OtlpHttp, ResourceInfo, Signal};
use apiary_span::{Span, SpanKind};
use apiary_storage::Store;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;

#[derive(Clone, Copy)]
enum Mode {
    Accept,
    /// Answer 503 with Retry-After: 1 this many times, then accept.
    Unavailable(u32),
    BadRequest,
    RejectOne,
    /// Hold the first request this long before accepting it (a batch in flight).
    SlowFirst(Duration),
}

#[derive(Clone)]
struct Receiver {
    spans: Arc<Mutex<Vec<String>>>,
    requests: Arc<AtomicU32>,
}

impl Receiver {
    fn span_names(&self) -> Vec<String> {
        self.spans.lock().unwrap().clone()
    }

    async fn start(addr: SocketAddr, mode: Mode) -> (Receiver, tokio::task::JoinHandle<()>) {
        let receiver = Receiver {
            spans: Arc::default(),
            requests: Arc::default(),
        };
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
                let state = state.clone();
                async move {
                    let n = state.requests.fetch_add(1, Ordering::SeqCst);
                    if let Mode::SlowFirst(delay) = mode {
                        if n == 0 {
                            tokio::time::sleep(delay).await;
                        }
                    }
                    if let Mode::Unavailable(times) = mode {
                        if n < times {
                            return (
                                StatusCode::SERVICE_UNAVAILABLE,
                                [("retry-after", "1")],
                                Vec::new(),
                            )
                                .into_response();
                        }
                    }
                    if matches!(mode, Mode::BadRequest) {
                        return (StatusCode::BAD_REQUEST, Vec::new()).into_response();
                    }
                    assert_eq!(headers["content-type"], "application/x-protobuf");
                    assert_eq!(headers["x-tenant"], "t1");
                    let request =
                        ExportTraceServiceRequest::decode(body.as_ref()).expect("valid OTLP");
                    let mut spans = state.spans.lock().unwrap();
                    for resource in &request.resource_spans {
                        for scope in &resource.scope_spans {
                            spans.extend(scope.spans.iter().map(|s| s.name.clone()));
                        }
                    }
                    let response = ExportTraceServiceResponse {
                        partial_success: matches!(mode, Mode::RejectOne).then(|| {
                            ExportTracePartialSuccess {
                                rejected_spans: 1,
                                error_message: "span too old".into(),
                            }
                        }),
                    };
                    (StatusCode::OK, response.encode_to_vec()).into_response()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (receiver, task)
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn span(i: usize) -> Span {
    let mut span =
        apiary_span::testing::http_span(SpanKind::Server, "GET", &format!("/item/{i}"), 200);
    span.http_mut().route = format!("/r{i}");
    span.http_mut().host = None;
    span.pid = 1;
    span.start_unix_nanos = 1;
    span.duration_ns = 1;
    span.netns = 0;
    span.cgroup_id = 0;
    span
}

fn delivery(store: &Store, addr: SocketAddr, max_bytes: u64) -> Arc<Delivery<OtlpHttp>> {
    let sink = OtlpHttp::new(
        &format!("http://{addr}"),
        vec![("x-tenant".into(), "t1".into())],
    )
    .unwrap();
    Delivery::new(
        "test",
        store.queue("test").unwrap(),
        sink,
        max_bytes,
        FullPolicy::DropOldest,
    )
    .unwrap()
}

async fn enqueue_batches(
    delivery: &Delivery<OtlpHttp>,
    from: usize,
    batches: usize,
    per_batch: usize,
) {
    let resource = ResourceInfo::default();
    for b in 0..batches {
        let spans: Vec<Span> = (0..per_batch)
            .map(|i| span(from + b * per_batch + i))
            .collect();
        delivery
            .enqueue(
                Signal::Traces,
                spans.len() as u32,
                &otlp::encode(&spans, &resource),
            )
            .await
            .unwrap();
    }
}

async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn expected(from: usize, count: usize) -> Vec<String> {
    (from..from + count).map(|i| format!("GET /r{i}")).collect()
}

#[tokio::test]
async fn receiver_down_then_up_gets_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let addr = free_addr();
    let delivery = delivery(&store, addr, 64 << 20);
    tokio::spawn(delivery.clone().run());
    enqueue_batches(&delivery, 0, 20, 50).await; // nobody listening yet
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(delivery.stats.failed_attempts.load(Ordering::Relaxed) >= 1);
    let (receiver, _server) = Receiver::start(addr, Mode::Accept).await;
    enqueue_batches(&delivery, 1000, 5, 50).await; // and more while it catches up
    wait_until("all spans", || receiver.span_names().len() >= 1250).await;
    let mut got = receiver.span_names();
    got.sort();
    let mut want = [expected(0, 1000), expected(1000, 250)].concat();
    want.sort();
    assert_eq!(got, want, "lost or duplicated spans");
    // The receiver holds the spans before the sender hears its answer and counts them.
    wait_until("the last batch counted", || {
        delivery.stats.delivered_items.load(Ordering::Relaxed) >= 1250
    })
    .await;
    assert_eq!(delivery.stats.delivered_items.load(Ordering::Relaxed), 1250);
    assert_eq!(delivery.stats.queued_batches.load(Ordering::Relaxed), 0);
    assert!(store.queue("test").unwrap().is_empty());
}

#[tokio::test]
async fn batches_survive_a_restart_and_are_sent_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    {
        // First life: the destination is down; the process then goes away.
        let store = Store::open(dir.path()).unwrap();
        let delivery = delivery(&store, addr, 64 << 20);
        let worker = tokio::spawn(delivery.clone().run());
        enqueue_batches(&delivery, 0, 10, 10).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        worker.abort();
        let _ = worker.await;
    }
    let store = Store::open(dir.path()).unwrap();
    let delivery = delivery(&store, addr, 64 << 20);
    assert_eq!(delivery.stats.queued_batches.load(Ordering::Relaxed), 10);
    let (receiver, _server) = Receiver::start(addr, Mode::Accept).await;
    tokio::spawn(delivery.clone().run());
    wait_until("the spans queued before the restart", || {
        receiver.span_names().len() >= 100
    })
    .await;
    let mut got = receiver.span_names();
    got.sort();
    let mut want = expected(0, 100);
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn retry_after_is_honoured_and_refusals_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();

    let addr = free_addr();
    let (receiver, _server) = Receiver::start(addr, Mode::Unavailable(2)).await;
    let retrying = delivery(&store, addr, 64 << 20);
    tokio::spawn(retrying.clone().run());
    let start = Instant::now();
    enqueue_batches(&retrying, 0, 1, 3).await;
    wait_until("delivery after two 503s", || {
        receiver.span_names().len() == 3
    })
    .await;
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "Retry-After: 1 was not honoured"
    );
    assert_eq!(retrying.stats.failed_attempts.load(Ordering::Relaxed), 2);

    let addr = free_addr();
    let (_receiver, _server) = Receiver::start(addr, Mode::BadRequest).await;
    let refused = Delivery::new(
        "refused",
        store.queue("refused").unwrap(),
        OtlpHttp::new(&format!("http://{addr}/v1/traces"), vec![]).unwrap(),
        64 << 20,
        FullPolicy::DropOldest,
    )
    .unwrap();
    tokio::spawn(refused.clone().run());
    enqueue_batches(&refused, 0, 1, 4).await;
    wait_until("the refused batch to be dropped", || {
        refused.stats.dropped_items.load(Ordering::Relaxed) == 4
    })
    .await;
    assert!(refused
        .stats
        .last_error
        .lock()
        .unwrap()
        .as_deref()
        .unwrap()
        .contains("400"));

    let addr = free_addr();
    let (_receiver, _server) = Receiver::start(addr, Mode::RejectOne).await;
    let partial = Delivery::new(
        "partial",
        store.queue("partial").unwrap(),
        OtlpHttp::new(
            &format!("http://{addr}"),
            vec![("x-tenant".into(), "t1".into())],
        )
        .unwrap(),
        64 << 20,
        FullPolicy::DropOldest,
    )
    .unwrap();
    tokio::spawn(partial.clone().run());
    enqueue_batches(&partial, 0, 1, 5).await;
    wait_until("partial success", || {
        partial.stats.rejected_items.load(Ordering::Relaxed) == 1
    })
    .await;
    assert_eq!(partial.stats.delivered_items.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn full_buffer_drops_oldest_and_counts_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let addr = free_addr(); // nothing listens: everything stays queued
                            // What one batch of 10 spans takes in the buffer (compressed, framed).
    let measure = delivery(&store, addr, u64::MAX);
    enqueue_batches(&measure, 0, 1, 10).await;
    let one_batch = measure.stats.queued_bytes.load(Ordering::Relaxed);
    store.drop_queue("test").unwrap();
    drop(measure);
    let delivery = delivery(&store, addr, one_batch * 3 + one_batch / 2);
    enqueue_batches(&delivery, 0, 5, 10).await;
    assert_eq!(delivery.stats.queued_batches.load(Ordering::Relaxed), 3);
    assert_eq!(delivery.stats.dropped_items.load(Ordering::Relaxed), 20);
    let (receiver, _server) = Receiver::start(addr, Mode::Accept).await;
    tokio::spawn(delivery.clone().run());
    wait_until("the newest batches", || receiver.span_names().len() >= 30).await;
    let mut got = receiver.span_names();
    got.sort();
    let mut want = expected(20, 30);
    want.sort();
    assert_eq!(got, want, "the oldest batches should be the ones dropped");
}

/// Drop-oldest while the oldest batch is being sent: it drops the next one instead, so every
/// batch is counted once, as delivered or as dropped, never both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_in_flight_is_not_dropped_and_counted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let addr = free_addr();
    let measure = delivery(&store, addr, u64::MAX);
    enqueue_batches(&measure, 0, 1, 10).await;
    let one_batch = measure.stats.queued_bytes.load(Ordering::Relaxed);
    store.drop_queue("test").unwrap();
    drop(measure);

    let (receiver, _server) = Receiver::start(addr, Mode::SlowFirst(Duration::from_secs(1))).await;
    let delivery = delivery(&store, addr, one_batch * 2 + one_batch / 2);
    tokio::spawn(delivery.clone().run());
    enqueue_batches(&delivery, 0, 1, 10).await;
    wait_until("the first batch in flight", || {
        receiver.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    // Batch 0 is at the receiver; these overflow the buffer while it is there.
    enqueue_batches(&delivery, 10, 3, 10).await;
    let stats = &delivery.stats;
    wait_until("the queue to drain", || {
        stats.queued_batches.load(Ordering::Relaxed) == 0
    })
    .await;
    let (delivered, dropped) = (
        stats.delivered_items.load(Ordering::Relaxed),
        stats.dropped_items.load(Ordering::Relaxed),
    );
    assert_eq!(
        delivered + dropped,
        40,
        "delivered {delivered} + dropped {dropped}"
    );
    let got = receiver.span_names();
    assert_eq!(got.len() as u64, delivered, "{got:?}");
    let mut got = got;
    got.sort();
    let mut want = [expected(0, 10), expected(30, 10)].concat();
    want.sort();
    // Room for 2.5 batches: the two batches after the one in flight made room, in turn.
    assert_eq!(
        got, want,
        "the batch in flight and the newest were delivered"
    );
    assert_eq!(dropped, 20);
}

/// Many writers at once while the sender delivers as fast as it can (the node's OTLP receiver
/// with several clients): the counters must not drift, or the buffer would look full and drop
/// acknowledged batches. Once a drift wrapped `queued_bytes` below zero and every later batch
/// was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_lose_nothing_and_the_counters_return_to_zero() {
    let addr = free_addr();
    let (receiver, _task) = Receiver::start(addr, Mode::Accept).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let delivery = delivery(&store, addr, 1 << 30);
    tokio::spawn(delivery.clone().run());
    let (writers, batches, per_batch) = (8, 60, 4);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let delivery = delivery.clone();
        tasks.push(tokio::spawn(async move {
            enqueue_batches(&delivery, w * batches * per_batch, batches, per_batch).await;
        }));
    }
    // A hang here is the failure this test is about (sled's concurrent flushes): fail, not hang.
    let all_written = async {
        for task in tasks {
            task.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all_written)
        .await
        .expect("eight writers finished within 60 s (a sled flush hang?)");
    let total = writers * batches * per_batch;
    wait_until("every span delivered", || {
        receiver.span_names().len() >= total
    })
    .await;
    let stats = &delivery.stats;
    assert_eq!(
        stats.dropped_items.load(Ordering::Relaxed),
        0,
        "nothing dropped"
    );
    let mut names = receiver.span_names();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), total, "every span once");
    wait_until("the counters back at zero", || {
        stats.queued_batches.load(Ordering::Relaxed) == 0
            && stats.queued_bytes.load(Ordering::Relaxed) == 0
    })
    .await;
}
