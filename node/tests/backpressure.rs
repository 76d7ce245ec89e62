//! Backpressure at a node: with its destination down and its disk buffer full, the OTLP/HTTP
//! receiver answers 429 with Retry-After instead of taking spans it could not keep; when the
//! collector comes up, every span the node acknowledged arrives, and none it refused. No root.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::{free_ports, Cluster, Collector};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::json;

fn request(first: usize, count: usize) -> ExportTraceServiceRequest {
    let spans = (first..first + count)
        .map(|i| Span {
            trace_id: vec![9; 16],
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            name: format!("flood-{i}"),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn names(bodies: Vec<Vec<u8>>) -> Vec<String> {
    bodies
        .iter()
        .flat_map(|b| {
            let request = ExportTraceServiceRequest::decode(b.as_slice()).expect("valid OTLP");
            request
                .resource_spans
                .into_iter()
                .flat_map(|r| r.scope_spans)
                .flat_map(|s| s.spans)
                .map(|s| s.name)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_answers_429_and_every_acknowledged_span_arrives_later() {
    let max_bytes = 200_000;
    let cluster = Cluster::start_with(
        1,
        &[
            "--no-probes",
            "--export-buffer-bytes",
            &max_bytes.to_string(),
        ],
    )
    .await;
    // A collector's port, free now: nothing answers there until it starts below.
    let (_, collector_port, _, _) = free_ports();
    let (status, body) = cluster
        .set(
            0,
            "destination.main.endpoint",
            json!(format!("http://127.0.0.1:{collector_port}")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let url = format!("http://{}/v1/traces", cluster.nodes[0].otlp);
    let per = 200;
    let mut acknowledged = Vec::new();
    let mut refusal = None;
    for r in 0..400 {
        let response = cluster
            .http
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(request(r * per, per).encode_to_vec())
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => acknowledged.extend((r * per..(r + 1) * per).map(|i| format!("flood-{i}"))),
            429 => {
                let retry_after = response.headers().get("retry-after").cloned();
                refusal = Some((retry_after, response.text().await.unwrap()));
                break;
            }
            other => panic!("answered {other}: {}", response.text().await.unwrap()),
        }
    }
    let (retry_after, message) = refusal.expect("400 requests of 200 spans never pushed back");
    let seconds: u64 = retry_after
        .expect("a 429 without Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&seconds), "Retry-After: {seconds}");
    assert!(message.contains("export buffer full"), "{message}");
    assert!(!acknowledged.is_empty());

    let export = cluster.get(0, "/v1/export").await.unwrap();
    let main = export
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "main")
        .unwrap()
        .clone();
    assert_eq!(main["full_policy"], "refuse");
    assert_eq!(main["dropped_items"], 0);
    assert_eq!(main["accepted_items"], acknowledged.len());
    assert_eq!(main["pushed_back_items"], per);
    assert!(
        main["queued_bytes"].as_u64().unwrap() <= max_bytes,
        "{main}"
    );
    assert!(main["drain_seconds"].is_null(), "nothing drains: {main}");
    let metrics = cluster.metrics(0).await;
    assert!(
        metrics.contains(
            "apiary_export_pushed_back_items_total{node=\"n0\",destination=\"main\"} 200"
        ),
        "{metrics}"
    );

    // The collector comes up: the backlog drains, and what was refused never shows up.
    let collector = Collector::default();
    collector.start_on(collector_port).await;
    cluster
        .wait_for(
            Duration::from_secs(60),
            "every acknowledged span at the collector",
            |_| {
                let got = names(collector.bodies("/v1/traces"));
                let want = acknowledged.len();
                async move { (got.len() >= want).then_some(()) }
            },
        )
        .await;
    let got: BTreeSet<String> = names(collector.bodies("/v1/traces")).into_iter().collect();
    let want: BTreeSet<String> = acknowledged.into_iter().collect();
    assert_eq!(got, want, "delivered exactly what was acknowledged");
}
