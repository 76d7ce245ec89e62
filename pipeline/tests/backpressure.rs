//! Backpressure end to end, with the real OTLP/HTTP and OTLP/gRPC receivers in front of real
//! deliveries (disk buffers on disk, OTLP/HTTP to a real destination): a flood larger than the
//! buffer, and two destinations of which one is down.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apiary_pipeline::sources::{otlp_grpc, otlp_http, Ingest, NotTaken};
use apiary_pipeline::{store_everywhere, Delivery, FullPolicy, OtlpHttp, ServerSpanIndex, Signal};
use common::{encoded, expected, free_addr, http_delivery, load, wait_until, Mode, Receiver};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

/// What a node's export is to the receivers: every destination's buffer, all or none.
struct Destinations {
    deliveries: Vec<Arc<Delivery<OtlpHttp>>>,
    server_spans: ServerSpanIndex,
}

impl Ingest for Destinations {
    fn server_spans(&self) -> &ServerSpanIndex {
        &self.server_spans
    }

    async fn sync_with_probes(&self, _timeout: Duration) -> bool {
        false
    }

    async fn accept(&self, signal: Signal, items: u32, payload: &[u8]) -> Result<(), NotTaken> {
        store_everywhere(&self.deliveries, signal, items, payload).await
    }
}

async fn serve_http(target: Arc<Destinations>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, otlp_http::router(target)).await });
    format!("http://{addr}/v1/traces")
}

async fn serve_grpc(target: Arc<Destinations>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(otlp_grpc::serve(listener, target));
    format!("http://{addr}")
}

/// What the apps saw: spans acknowledged, and refusals with their retry hints.
#[derive(Default)]
struct Apps {
    acknowledged: Mutex<Vec<String>>,
    refusals: AtomicU64,
    hints_missing: AtomicU64,
}

/// One OTLP/HTTP app: posts `requests` requests of `per` spans from `from`, each until it
/// is taken. It honours the refusal's kind but not its Retry-After (seconds), to keep the
/// test short: a shorter wait only makes the flood harder.
async fn http_app(url: String, apps: Arc<Apps>, from: usize, requests: usize, per: usize) {
    let client = reqwest::Client::new();
    for r in 0..requests {
        let first = from + r * per;
        let body = encoded(first, per);
        loop {
            let response = client
                .post(&url)
                .header("content-type", "application/x-protobuf")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            match response.status().as_u16() {
                200 => break,
                429 | 503 => {
                    apps.refusals.fetch_add(1, Ordering::Relaxed);
                    if response.headers().get("retry-after").is_none() {
                        apps.hints_missing.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!("answered {other}: {}", response.text().await.unwrap()),
            }
        }
        apps.acknowledged
            .lock()
            .unwrap()
            .extend(expected(first, per));
    }
}

/// One OTLP/gRPC app, as [`http_app`].
async fn grpc_app(endpoint: String, apps: Arc<Apps>, from: usize, requests: usize, per: usize) {
    let mut client = TraceServiceClient::connect(endpoint).await.unwrap();
    for r in 0..requests {
        let first = from + r * per;
        let request = ExportTraceServiceRequest::decode(encoded(first, per).as_slice()).unwrap();
        loop {
            match client.export(request.clone()).await {
                Ok(_) => break,
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    apps.refusals.fetch_add(1, Ordering::Relaxed);
                    if apiary_pipeline::otlp::retry_info::retry_delay(status.details()).is_none() {
                        apps.hints_missing.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(status) => panic!("answered {status}"),
            }
        }
        apps.acknowledged
            .lock()
            .unwrap()
            .extend(expected(first, per));
    }
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

/// Apps send ten times what the buffer holds to a slow destination: they are told to retry
/// (429 / UNAVAILABLE, with a hint), every span they were told was taken arrives once, and
/// nothing is dropped; the buffer on disk stays within its cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_the_buffer_is_pushed_back_and_every_acknowledged_span_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let (receiver, _server) = Receiver::start(addr, Mode::Slow(Duration::from_millis(30))).await;
    let per = 100;
    let one_request = apiary_pipeline::Framed::new(Signal::Traces, 100, &encoded(0, per));
    let cap = one_request.disk_bytes() * 6;
    let delivery = http_delivery(dir.path(), "slow", addr, cap, FullPolicy::Refuse);
    tokio::spawn(delivery.clone().run());
    let target = Arc::new(Destinations {
        deliveries: vec![delivery.clone()],
        server_spans: ServerSpanIndex::default(),
    });
    let (http, grpc) = (serve_http(target.clone()).await, serve_grpc(target).await);
    let apps = Arc::new(Apps::default());
    let requests = 20;
    let mut tasks = Vec::new();
    for a in 0..3 {
        let from = a * requests * per;
        tasks.push(tokio::spawn(http_app(
            http.clone(),
            apps.clone(),
            from,
            requests,
            per,
        )));
    }
    tasks.push(tokio::spawn(grpc_app(
        grpc,
        apps.clone(),
        3 * requests * per,
        requests,
        per,
    )));
    // The cap holds while the flood lasts: sampled from the files on disk.
    let watched = delivery.clone();
    let most_on_disk = Arc::new(AtomicU64::new(0));
    let most = most_on_disk.clone();
    let watcher = tokio::spawn(async move {
        loop {
            most.fetch_max(load(&watched.stats.queued_bytes), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    for task in tasks {
        task.await.unwrap();
    }
    watcher.abort();
    let total = 4 * requests * per;
    assert!(
        apps.refusals.load(Ordering::Relaxed) > 0,
        "never pushed back"
    );
    assert_eq!(
        apps.hints_missing.load(Ordering::Relaxed),
        0,
        "a refusal without a retry hint"
    );
    wait_until("every acknowledged span", || {
        receiver.span_names().len() >= total
    })
    .await;
    let acknowledged = sorted(apps.acknowledged.lock().unwrap().clone());
    assert_eq!(acknowledged.len(), total);
    assert_eq!(
        sorted(receiver.span_names()),
        acknowledged,
        "lost or duplicated"
    );
    let stats = &delivery.stats;
    wait_until("the last acknowledgement", || {
        load(&stats.queued_items) == 0
    })
    .await;
    assert_eq!(load(&stats.dropped_items), 0);
    assert_eq!(load(&stats.accepted_items), total as u64);
    assert_eq!(load(&stats.delivered_items), total as u64);
    assert!(load(&stats.pushed_back_items) > 0);
    let most = most_on_disk.load(Ordering::Relaxed);
    assert!(most <= cap, "{most} bytes on disk past a cap of {cap}");
}

/// Two destinations, one down: the other delivers everything acknowledged meanwhile. Once the
/// down one's buffer is full, apps are pushed back (a refused request reaches neither, so no
/// retry duplicates it at the one that is up); when it comes back, it gets all of it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_destination_down_the_other_still_delivers_and_nothing_is_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    let (up_addr, down_addr) = (free_addr(), free_addr());
    let (up, _server) = Receiver::start(up_addr, Mode::Accept).await;
    let per = 50;
    let one_request = apiary_pipeline::Framed::new(Signal::Traces, 50, &encoded(0, per));
    let up_delivery = http_delivery(dir.path(), "up", up_addr, 64 << 20, FullPolicy::Refuse);
    let down_delivery = http_delivery(
        dir.path(),
        "down",
        down_addr,
        one_request.disk_bytes() * 4,
        FullPolicy::Refuse,
    );
    tokio::spawn(up_delivery.clone().run());
    tokio::spawn(down_delivery.clone().run());
    let target = Arc::new(Destinations {
        deliveries: vec![up_delivery.clone(), down_delivery.clone()],
        server_spans: ServerSpanIndex::default(),
    });
    let url = serve_http(target).await;
    let client = reqwest::Client::new();
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for r in 0..10 {
        let response = client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(encoded(r * per, per))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => acknowledged.extend(expected(r * per, per)),
            429 => refused += 1,
            other => panic!("answered {other}"),
        }
    }
    assert_eq!(
        acknowledged.len(),
        4 * per,
        "four requests fit the down one's buffer"
    );
    assert_eq!(refused, 6);
    wait_until("the up destination delivered what was acknowledged", || {
        up.span_names().len() >= acknowledged.len()
    })
    .await;
    assert_eq!(sorted(up.span_names()), sorted(acknowledged.clone()));
    assert!(load(&down_delivery.stats.failed_attempts) > 0);
    assert_eq!(load(&up_delivery.stats.pushed_back_items), 6 * per as u64);
    assert_eq!(load(&down_delivery.stats.pushed_back_items), 6 * per as u64);

    let (down, _server) = Receiver::start(down_addr, Mode::Accept).await;
    wait_until("the down destination's backlog", || {
        down.span_names().len() >= acknowledged.len()
    })
    .await;
    assert_eq!(sorted(down.span_names()), sorted(acknowledged.clone()));
    assert_eq!(
        sorted(up.span_names()),
        sorted(acknowledged),
        "no duplicates at the up one"
    );
    for stats in [&up_delivery.stats, &down_delivery.stats] {
        assert_eq!(load(&stats.dropped_items), 0);
    }
}
