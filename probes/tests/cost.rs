//! What the probes cost when they are not wanted: a disabled probe's programs are detached (and
//! attached again, without a reload, when it is enabled), and a request sampling dropped is
//! counted in the kernel without a ring record while RED still counts every request.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{config, get, load, root, rust_server, spans_on_port, wait_spans};
use apiary_probes::{ProbeSet, SpanKind};
use serde_json::json;

const HTTP_PROGRAMS: [&str; 9] = [
    "http_enter_write",
    "http_enter_sendto",
    "http_enter_writev",
    "http_enter_sendmsg",
    "http_exit_read",
    "http_exit_recvfrom",
    "http_exit_readv",
    "http_exit_recvmsg",
    "http_enter_close",
];

/// The program ids the kernel has links for (`bpftool link`), as the kernel reports them.
fn linked_program_ids() -> HashSet<u64> {
    let output = std::process::Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .expect("bpftool (Debian package bpftool, which the build needs too)");
    assert!(output.status.success(), "bpftool link show failed");
    let links: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["prog_id"].as_u64())
        .collect()
}

fn http_runs(set: &ProbeSet) -> u64 {
    set.program_stats()
        .iter()
        .filter(|(name, _, _)| name.starts_with("http_"))
        .map(|(_, runs, _)| runs)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_probe_is_detached_and_attached_again_without_a_reload() {
    require_root!("a_disabled_probe_is_detached_and_attached_again_without_a_reload");
    let port = rust_server();
    let on = config(&[("probe.http.filters.include_ports", json!([port]))]);
    // The database probes ride the http probe's socket tracepoints: they stay while any is on.
    let db_switches: Vec<String> = apiary_probes::DB_PROBES
        .iter()
        .map(|probe| format!("probe.{probe}.enabled"))
        .collect();
    let mut off = vec![
        ("probe.http.filters.include_ports", json!([port])),
        ("probe.http.enabled", json!(false)),
    ];
    off.extend(db_switches.iter().map(|key| (key.as_str(), json!(false))));
    let off = config(&off);
    let mut probes = load(&on);
    let ids: Vec<u32> = HTTP_PROGRAMS
        .iter()
        .map(|p| probes.set.program_id(p).expect("loaded"))
        .collect();
    let tcp_id = probes.set.program_id("tcp_state").unwrap() as u64;
    let linked = linked_program_ids();
    assert!(ids.iter().all(|id| linked.contains(&(*id as u64))));
    get(port, "/before");
    assert_eq!(wait_spans(&probes.observer, port, 2).await.len(), 2);

    probes.set.apply(&off).unwrap();
    let linked = linked_program_ids();
    for (program, id) in HTTP_PROGRAMS.iter().zip(&ids) {
        assert!(
            !linked.contains(&(*id as u64)),
            "{program} still has a link while http is disabled"
        );
    }
    assert!(
        linked.contains(&tcp_id),
        "the tcp probe lost its link with http's"
    );
    assert!(!probes
        .set
        .attached_programs()
        .iter()
        .any(|p| p.starts_with("http_")));
    let runs = http_runs(&probes.set);
    let flows_before = probes.observer.recent_flows().len();
    for _ in 0..50 {
        get(port, "/off");
    }
    // Not run at all (the kernel's own run counts), not merely told to do nothing.
    assert_eq!(http_runs(&probes.set), runs, "a detached program ran");
    // The other probes' events kept coming through the same ring: the tcp probe saw the
    // connections close.
    let start = Instant::now();
    while probes.observer.recent_flows().len() < flows_before + 50 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "tcp flows stopped while http was detached"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    probes.observer.sync(Duration::from_secs(5)).await;
    assert!(spans_on_port(&probes.observer, port)
        .iter()
        .all(|s| s.expect_http().target != "/off"));

    probes.set.apply(&on).unwrap();
    let linked = linked_program_ids();
    for (program, id) in HTTP_PROGRAMS.iter().zip(&ids) {
        // The same program ids: attached again, not reloaded.
        assert_eq!(probes.set.program_id(program), Some(*id));
        assert!(
            linked.contains(&(*id as u64)),
            "{program} not attached again"
        );
    }
    get(port, "/after");
    let start = Instant::now();
    while !spans_on_port(&probes.observer, port)
        .iter()
        .any(|s| s.expect_http().target == "/after")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no span after re-enabling"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(http_runs(&probes.set) > runs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_out_requests_are_counted_in_the_kernel_and_red_stays_exact() {
    require_root!("sampled_out_requests_are_counted_in_the_kernel_and_red_stays_exact");
    let port = rust_server();
    let probes = load(&config(&[
        ("probe.http.filters.include_ports", json!([port])),
        ("probe.http.sample_rate", json!(0.01)),
    ]));
    // What RED would count: requests one by one (records), and those the kernel counted.
    let (one_by_one, in_kernel, histogram) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let wanted = |kind: SpanKind, route: &str, status: u16| {
        kind == SpanKind::Server && route == "/items/{id}" && status == 200
    };
    let tap = one_by_one.clone();
    probes.observer.set_request_tap(Box::new(move |span| {
        let http = span.expect_http();
        if wanted(span.kind, &http.route, http.status) {
            tap.fetch_add(1, Ordering::Relaxed);
        }
    }));
    let (tap, buckets) = (in_kernel.clone(), histogram.clone());
    probes
        .observer
        .set_counted_tap(Box::new(move |span, counted| {
            let http = span.expect_http();
            if wanted(span.kind, &http.route, http.status) {
                tap.fetch_add(counted.count, Ordering::Relaxed);
                buckets.fetch_add(counted.buckets.iter().sum(), Ordering::Relaxed);
            }
        }));
    let requests = 2000u64;
    tokio::task::spawn_blocking(move || {
        for i in 0..requests {
            // Two paths of one route: each path is learnt once, then counted in the kernel.
            get(port, &format!("/items/{}", i % 2));
        }
    })
    .await
    .unwrap();
    let start = Instant::now();
    loop {
        probes.observer.sync(Duration::from_secs(5)).await;
        let counted = one_by_one.load(Ordering::Relaxed) + in_kernel.load(Ordering::Relaxed);
        if counted >= requests || start.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kernel = in_kernel.load(Ordering::Relaxed);
    assert_eq!(
        one_by_one.load(Ordering::Relaxed) + kernel,
        requests,
        "RED must count every request whatever the sampling"
    );
    assert_eq!(histogram.load(Ordering::Relaxed), kernel);
    // The first requests of each path go as records until the reader (on its 100 ms timer)
    // has learnt the path's route.
    assert!(
        kernel > requests / 2,
        "only {kernel} of {requests} sampled-out requests were counted in the kernel"
    );
    let reports = probes.set.reports();
    let http = reports.iter().find(|r| r.name == "http").unwrap();
    assert!(http.counted >= kernel, "{http:?}");
    // Sampling still keeps about 1 % of the traces.
    let kept = spans_on_port(&probes.observer, port)
        .iter()
        .filter(|s| s.kind == SpanKind::Server && s.expect_http().route == "/items/{id}")
        .count() as u64;
    assert!(
        (3..=60).contains(&kept),
        "{kept} server spans of {requests} at sample_rate 0.01"
    );
    assert_eq!(
        probes.observer.counted_unresolved.load(Ordering::Relaxed),
        0
    );
}
