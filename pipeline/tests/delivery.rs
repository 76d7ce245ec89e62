//! Delivery to a real HTTP receiver that decodes OTLP with the official protobuf definitions:
//! outages, restarts, retry hints, refusals, partial success, several sends in flight, merged
//! requests and the opt-in drop policy.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use apiary_pipeline::{Delivery, Framed, FullPolicy, OtlpHttp, SendLimits, Signal};
use apiary_storage::SegmentQueue;
use common::{
    encoded, enqueue_batches, expected, free_addr, http_delivery, load, wait_until, Mode, Receiver,
};

#[tokio::test]
async fn receiver_down_then_up_gets_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let delivery = http_delivery(dir.path(), "test", addr, 64 << 20, FullPolicy::Refuse);
    tokio::spawn(delivery.clone().run());
    enqueue_batches(&delivery, 0, 20, 50).await; // nobody listening yet
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(load(&delivery.stats.failed_attempts) >= 1);
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
        load(&delivery.stats.delivered_items) >= 1250
    })
    .await;
    let stats = &delivery.stats;
    assert_eq!(load(&stats.delivered_items), 1250);
    assert_eq!(load(&stats.accepted_items), 1250);
    assert_eq!(load(&stats.queued_batches), 0);
    assert_eq!(load(&stats.queued_items), 0);
    // 25 stored batches went out merged, in fewer requests than batches.
    assert!(
        receiver.requests.load(Ordering::SeqCst) < 25 + load(&stats.failed_attempts) as u32,
        "{} requests",
        receiver.requests.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn batches_survive_a_restart_and_are_sent_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    {
        // First life: the destination is down; the process then goes away.
        let delivery = http_delivery(dir.path(), "test", addr, 64 << 20, FullPolicy::Refuse);
        let worker = tokio::spawn(delivery.clone().run());
        enqueue_batches(&delivery, 0, 10, 10).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        worker.abort();
        let _ = worker.await;
    }
    let delivery = http_delivery(dir.path(), "test", addr, 64 << 20, FullPolicy::Refuse);
    assert_eq!(load(&delivery.stats.queued_batches), 10);
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

    let addr = free_addr();
    let (receiver, _server) = Receiver::start(addr, Mode::Unavailable(2)).await;
    let retrying = http_delivery(dir.path(), "retrying", addr, 64 << 20, FullPolicy::Refuse);
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
    assert_eq!(load(&retrying.stats.failed_attempts), 2);

    let addr = free_addr();
    let (_receiver, _server) = Receiver::start(addr, Mode::BadRequest).await;
    let refused = http_delivery(dir.path(), "refused", addr, 64 << 20, FullPolicy::Refuse);
    tokio::spawn(refused.clone().run());
    enqueue_batches(&refused, 0, 1, 4).await;
    wait_until("the refused batch counted", || {
        load(&refused.stats.refused_items) == 4
    })
    .await;
    assert_eq!(
        load(&refused.stats.dropped_items),
        0,
        "refused, not dropped"
    );
    assert!(refused.stats.last_error().unwrap().contains("400"));
    wait_until("the refused batch out of the buffer", || {
        load(&refused.stats.queued_batches) == 0
    })
    .await;

    let addr = free_addr();
    let (_receiver, _server) = Receiver::start(addr, Mode::RejectOne).await;
    let partial = http_delivery(dir.path(), "partial", addr, 64 << 20, FullPolicy::Refuse);
    tokio::spawn(partial.clone().run());
    enqueue_batches(&partial, 0, 1, 5).await;
    wait_until("partial success", || {
        load(&partial.stats.refused_items) == 1
    })
    .await;
    assert_eq!(load(&partial.stats.delivered_items), 4);
}

/// A merged request refused for good goes again batch by batch: only the stored batch the
/// destination will not take is counted refused, the others' spans arrive.
#[tokio::test]
async fn a_merged_request_refused_for_good_costs_only_the_refused_batch() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let (receiver, _server) = Receiver::start(addr, Mode::RefuseSpan(23)).await;
    let delivery = http_delivery(dir.path(), "strict", addr, 64 << 20, FullPolicy::Refuse);
    // Stored before the delivery runs, so that the five batches go as one merged request.
    enqueue_batches(&delivery, 0, 5, 10).await;
    tokio::spawn(delivery.clone().run());
    wait_until("all acknowledged", || {
        load(&delivery.stats.queued_batches) == 0
    })
    .await;
    assert_eq!(
        load(&delivery.stats.refused_items),
        10,
        "the batch holding r23"
    );
    assert_eq!(load(&delivery.stats.delivered_items), 40);
    let mut got = receiver.span_names();
    got.sort();
    let mut want = [expected(0, 20), expected(30, 20)].concat();
    want.sort();
    assert_eq!(got, want);
    assert!(
        receiver.requests.load(Ordering::SeqCst) >= 6,
        "one merged request, then one per batch"
    );
}

/// A stored batch that does not decompress (damaged on disk) is left out of the request it
/// was merged into and counted refused; the batches around it, and after a batch with no
/// readable header at all, still arrive.
#[tokio::test]
async fn a_damaged_stored_batch_is_counted_refused_and_the_rest_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let (receiver, _server) = Receiver::start(addr, Mode::Accept).await;
    {
        let queue = SegmentQueue::open_for_cap(&dir.path().join("damaged"), 64 << 20).unwrap();
        let good = |from| Framed::new(Signal::Traces, 10, &encoded(from, 10));
        queue.push(good(0).stored_bytes()).await.unwrap();
        let cut = good(10).stored_bytes().to_vec();
        queue.push(&cut[..cut.len() - 5]).await.unwrap();
        queue.push(good(20).stored_bytes()).await.unwrap();
        queue.push(b"\x7f").await.unwrap();
        queue.push(good(30).stored_bytes()).await.unwrap();
    }
    let delivery = http_delivery(dir.path(), "damaged", addr, 64 << 20, FullPolicy::Refuse);
    tokio::spawn(delivery.clone().run());
    wait_until("the damaged batch counted", || {
        load(&delivery.stats.refused_items) == 10 && load(&delivery.stats.delivered_items) == 30
    })
    .await;
    let mut got = receiver.span_names();
    got.sort();
    let mut want = [expected(0, 10), expected(20, 10), expected(30, 10)].concat();
    want.sort();
    assert_eq!(got, want);
}

/// A slow destination gets several requests at once (up to the window, never more), and the
/// acknowledgements, in order, leave nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_sends_in_flight_up_to_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let (receiver, _server) = Receiver::start(addr, Mode::Slow(Duration::from_millis(100))).await;
    let sink = OtlpHttp::new(
        &format!("http://{addr}"),
        vec![("x-tenant".into(), "t1".into())],
    )
    .unwrap();
    // One stored batch per request (no merging), so that 24 batches make 24 requests.
    let limits = SendLimits {
        window: 3,
        max_bytes: 1,
        max_items: 1,
    };
    let delivery = Delivery::with_limits(
        "window",
        SegmentQueue::open(&dir.path().join("window")).unwrap(),
        sink,
        64 << 20,
        FullPolicy::Refuse,
        limits,
    )
    .unwrap();
    enqueue_batches(&delivery, 0, 24, 10).await;
    tokio::spawn(delivery.clone().run());
    wait_until("every span", || receiver.span_names().len() >= 240).await;
    wait_until("all acknowledged", || {
        load(&delivery.stats.queued_batches) == 0
    })
    .await;
    let most = receiver.max_concurrent.load(Ordering::SeqCst);
    assert_eq!(most, 3, "requests held at once by the destination");
    let mut got = receiver.span_names();
    got.sort();
    let mut want = expected(0, 240);
    want.sort();
    assert_eq!(got, want);
    assert_eq!(load(&delivery.stats.delivered_items), 240);
}

/// The opt-in `drop` policy: a batch that does not fit is dropped and counted; the default,
/// `refuse`, says so to the writer instead and stores nothing.
#[tokio::test]
async fn a_full_buffer_refuses_by_default_and_drops_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr(); // nothing listens: everything stays queued
    let one_batch = apiary_pipeline::Framed::new(Signal::Traces, 10, &encoded(0, 10)).disk_bytes();
    let cap = one_batch * 3 + one_batch / 2;

    let refusing = http_delivery(dir.path(), "refusing", addr, cap, FullPolicy::Refuse);
    enqueue_batches(&refusing, 0, 3, 10).await;
    let full = refusing
        .enqueue(Signal::Traces, 10, &encoded(30, 10))
        .await
        .unwrap_err();
    assert!(full.is_full(), "{full}");
    assert!(full.to_string().contains("export buffer full"), "{full}");
    let stats = &refusing.stats;
    assert_eq!(
        (load(&stats.accepted_items), load(&stats.pushed_back_items)),
        (30, 10)
    );
    assert_eq!(load(&stats.dropped_items), 0);
    assert!(load(&stats.queued_bytes) <= cap, "measured on disk");

    let dropping = http_delivery(dir.path(), "dropping", addr, cap, FullPolicy::Drop);
    enqueue_batches(&dropping, 0, 5, 10).await;
    let stats = &dropping.stats;
    assert_eq!(load(&stats.queued_batches), 3);
    assert_eq!(load(&stats.dropped_items), 20);
    let (receiver, _server) = Receiver::start(addr, Mode::Accept).await;
    tokio::spawn(dropping.clone().run());
    wait_until("the batches that fitted", || {
        receiver.span_names().len() >= 30
    })
    .await;
    let mut got = receiver.span_names();
    got.sort();
    let mut want = expected(0, 30);
    want.sort();
    assert_eq!(
        got, want,
        "the batches that did not fit are the ones dropped"
    );
}

/// Many writers at once while the sender delivers as fast as it can (the node's OTLP receiver
/// with several clients): nothing lost, and the counters return to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_lose_nothing_and_the_counters_return_to_zero() {
    let addr = free_addr();
    let (receiver, _task) = Receiver::start(addr, Mode::Accept).await;
    let dir = tempfile::tempdir().unwrap();
    let delivery = http_delivery(dir.path(), "test", addr, 1 << 30, FullPolicy::Refuse);
    tokio::spawn(delivery.clone().run());
    let (writers, batches, per_batch) = (8, 60, 4);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let delivery = delivery.clone();
        tasks.push(tokio::spawn(async move {
            enqueue_batches(&delivery, w * batches * per_batch, batches, per_batch).await;
        }));
    }
    let all_written = async {
        for task in tasks {
            task.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all_written)
        .await
        .expect("eight writers finished within 60 s");
    let total = writers * batches * per_batch;
    wait_until("every span delivered", || {
        receiver.span_names().len() >= total
    })
    .await;
    let stats = &delivery.stats;
    let mut names = receiver.span_names();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), total, "every span once");
    wait_until("the counters back at zero", || {
        load(&stats.queued_batches) == 0 && load(&stats.queued_items) == 0
    })
    .await;
    assert_eq!(load(&stats.dropped_items), 0, "nothing dropped");
    assert_eq!(load(&stats.delivered_items), total as u64);
}
