//! BPF ring-buffer records, as the probes' reader hands them to userspace: each record is
//! decoded (`apiary_probes::abi::decode`) and handled by an `Assembler` (probes/src/observer.rs),
//! which pairs HTTP requests with responses into spans, counts TCP flows and names processes.
//! Then, as on a node, every request it saw is counted into RED metrics (exported as OTLP and
//! rendered for Prometheus) and every span it published is written as OTLP by the pipeline's
//! writer.
//!
//! Input: records one after another, each a 2-byte little-endian length and that many bytes
//! (a shorter tail is one last record), so one input can hold a request, its response, an exec
//! and an exit for one connection or process.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;

use apiary_pipeline::{RedMetrics, ResourceInfo};
use apiary_probes::{Assembler, KeepRule, Observer, Span};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

thread_local! {
    /// The requests the observer saw (sampled or not) for the current input.
    static SEEN: RefCell<Vec<Span>> = const { RefCell::new(Vec::new()) };
    /// The spans the observer published for the current input.
    static PUBLISHED: RefCell<Vec<Span>> = const { RefCell::new(Vec::new()) };
}

/// An observer as a node with `budget.always_keep` and `privacy.keep_query_params` set runs
/// it. One per input, like the assembler: a shared one would keep the last 4096 spans, and
/// LeakSanitizer would scan them after every input that added one.
fn observer() -> Arc<Observer> {
    let observer = Arc::new(Observer::default());
    observer.set_keep_rule(KeepRule {
        errors: true,
        slower_than_ns: 1_000_000,
        max_per_second: 1_000_000,
    });
    observer.set_kept_query_params(vec!["page".into()]);
    observer.set_request_tap(Box::new(|span| {
        SEEN.with(|seen| seen.borrow_mut().push(span.clone()))
    }));
    observer.set_export_tap(Box::new(|span| {
        PUBLISHED.with(|published| published.borrow_mut().push(span.clone()))
    }));
    observer
}

fuzz_target!(|data: &[u8]| {
    // A fresh assembler per input: no connection or process state carries over.
    let mut assembler = Assembler::new(observer());
    let mut rest = data;
    while !rest.is_empty() {
        let record = match rest {
            [lo, hi, tail @ ..] => {
                let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
                let (record, tail) = tail.split_at(len);
                rest = tail;
                record
            }
            tail => {
                rest = &[];
                tail
            }
        };
        let _ = apiary_probes::abi::decode(record);
        assembler.handle(record);
    }
    let resource = ResourceInfo::default();
    let seen = SEEN.with(|seen| std::mem::take(&mut *seen.borrow_mut()));
    if !seen.is_empty() {
        let red = RedMetrics::new();
        for span in &seen {
            red.record(span);
        }
        let _ = red.to_otlp(&resource);
        red.render_prometheus("fuzz", &mut String::new());
    }
    let spans = PUBLISHED.with(|published| std::mem::take(&mut *published.borrow_mut()));
    if !spans.is_empty() {
        let encoded = apiary_pipeline::otlp::encode(&spans, &resource);
        // The writer's output must be an export request that any OTLP receiver decodes.
        let decoded =
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                encoded.as_slice(),
            );
        assert!(
            decoded.is_ok(),
            "the OTLP writer wrote an undecodable request for {spans:?}: {decoded:?}"
        );
    }
});
