//! Where each prediction raised or resolved goes beyond the API: one OTLP log record through
//! the node's export (every destination, as the probes' spans), and a JSON POST to
//! `predict.webhook.url` when the replicated config sets one.
//!
//! The detector hands events over a bounded queue and never waits: a full queue drops the
//! event (counted). Webhook calls run on their own tasks, at most [`WEBHOOK_IN_FLIGHT`] at once,
//! each tried [`WEBHOOK_TRIES`] times with a growing pause, so a slow or down receiver holds up
//! neither the detector nor the log records.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use apiary_consensus::Consensus;
use apiary_pipeline::otlp::ResourceInfo;
use apiary_pipeline::signal::Signal;
use apiary_predict::{Event, EventKind};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};

use super::export::Export;

/// Events waiting for the notifier; past this the detector drops them (counted).
const QUEUE: usize = 256;
const WEBHOOK_IN_FLIGHT: usize = 4;
const WEBHOOK_TRIES: u32 = 4;
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause before the second try, doubled before each further one.
const WEBHOOK_FIRST_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, Default, Serialize)]
pub struct NotifyCounts {
    /// Log records queued for export (0 while the cluster has no destination).
    pub log_records: AtomicU64,
    pub webhook_delivered: AtomicU64,
    /// Webhook calls given up after every try, or dropped with every call slot busy.
    pub webhook_failed: AtomicU64,
    /// Events dropped because the notifier's queue was full.
    pub dropped: AtomicU64,
}

/// The detector's side: hands over events without waiting.
#[derive(Clone)]
pub struct Notifier {
    sender: mpsc::Sender<Event>,
    pub counts: Arc<NotifyCounts>,
    last_webhook_error: Arc<std::sync::Mutex<Option<String>>>,
}

impl Notifier {
    /// Starts the notifier's task, which ends when every `Notifier` is gone.
    pub fn start(
        export: Weak<Export>,
        consensus: Arc<Consensus>,
        node: String,
        http: reqwest::Client,
    ) -> Notifier {
        let (sender, mut events) = mpsc::channel::<Event>(QUEUE);
        let notifier = Notifier {
            sender,
            counts: Arc::default(),
            last_webhook_error: Arc::default(),
        };
        let counts = notifier.counts.clone();
        let last_error = notifier.last_webhook_error.clone();
        let slots = Arc::new(Semaphore::new(WEBHOOK_IN_FLIGHT));
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let url = consensus
                    .config_state()
                    .history()
                    .current()
                    .predict
                    .webhook
                    .url
                    .clone();
                if !url.is_empty() {
                    match slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            let body = webhook_body(&event, &node);
                            let (http, counts, last_error) =
                                (http.clone(), counts.clone(), last_error.clone());
                            tokio::spawn(async move {
                                let _slot = slot;
                                match post(&http, &url, &body).await {
                                    Ok(()) => {
                                        counts.webhook_delivered.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Err(e) => {
                                        counts.webhook_failed.fetch_add(1, Ordering::Relaxed);
                                        tracing::warn!("prediction webhook: {e}");
                                        *last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                                            Some(e);
                                    }
                                }
                            });
                        }
                        Err(_) => {
                            counts.webhook_failed.fetch_add(1, Ordering::Relaxed);
                            *last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!(
                                "{WEBHOOK_IN_FLIGHT} calls were still being tried: an event \
                                 was not sent"
                            ));
                        }
                    }
                }
                let Some(export) = export.upgrade() else {
                    continue;
                };
                let request = log_request(&event, export.resource());
                let payload = prost::Message::encode_to_vec(&request);
                export.enqueue_own(Signal::Logs, 1, &payload).await;
                counts.log_records.fetch_add(1, Ordering::Relaxed);
            }
        });
        notifier
    }

    /// Hands a raised or resolved event over (updates are not sent); never waits.
    pub fn send(&self, event: &Event) {
        if event.kind == EventKind::Updated {
            return;
        }
        if self.sender.try_send(event.clone()).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn status(&self) -> serde_json::Value {
        let mut value = json!(self.counts.as_ref());
        value["webhook_last_error"] = json!(*self
            .last_webhook_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()));
        value
    }
}

/// The webhook's body: the event as `GET /v1/predictions` lists it, the node named, the
/// evidence left out (it can be tens of kilobytes; the API has it).
pub fn webhook_body(event: &Event, node: &str) -> serde_json::Value {
    let mut body = json!(event);
    body["node"] = json!(node);
    if let Some(prediction) = body["prediction"].as_object_mut() {
        prediction.remove("evidence");
    }
    body
}

async fn post(http: &reqwest::Client, url: &str, body: &serde_json::Value) -> Result<(), String> {
    let mut pause = WEBHOOK_FIRST_PAUSE;
    let mut last = String::new();
    for attempt in 1..=WEBHOOK_TRIES {
        let sent = http
            .post(url)
            .timeout(WEBHOOK_TIMEOUT)
            .json(body)
            .send()
            .await;
        match sent {
            Ok(answer) if answer.status().is_success() => return Ok(()),
            // A 4xx other than 408/429 will not change by trying again.
            Ok(answer)
                if answer.status().is_client_error()
                    && !matches!(answer.status().as_u16(), 408 | 429) =>
            {
                return Err(format!(
                    "{} answered {}: not retried",
                    apiary_config::redact_webhook(url),
                    answer.status()
                ));
            }
            Ok(answer) => last = format!("answered {}", answer.status()),
            Err(e) => last = e.without_url().to_string(),
        }
        if attempt < WEBHOOK_TRIES {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    Err(format!(
        "{} {last} after {WEBHOOK_TRIES} tries",
        apiary_config::redact_webhook(url)
    ))
}

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    attribute(key, any_value::Value::StringValue(value.to_string()))
}

fn number(key: &str, value: f64) -> KeyValue {
    attribute(key, any_value::Value::DoubleValue(value))
}

/// One log record for one event, under the service's resource: WARN when raised, INFO when
/// resolved, the why as its body, the prediction's numbers as attributes.
pub fn log_request(event: &Event, resource: &ResourceInfo) -> ExportLogsServiceRequest {
    let p = &event.prediction;
    let (severity, name) = match event.kind {
        EventKind::Resolved => (SeverityNumber::Info, "resolved"),
        EventKind::Updated => (SeverityNumber::Info, "updated"),
        EventKind::Raised => (SeverityNumber::Warn, "raised"),
    };
    let nanos = |seconds: f64| (seconds.max(0.0) * 1e9) as u64;
    let record = LogRecord {
        time_unix_nano: nanos(event.at),
        observed_time_unix_nano: nanos(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        ),
        severity_number: severity as i32,
        severity_text: severity
            .as_str_name()
            .trim_start_matches("SEVERITY_NUMBER_")
            .into(),
        event_name: format!("apiary.prediction.{name}"),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(p.why.clone())),
        }),
        attributes: vec![
            text("apiary.prediction.id", &p.id),
            text("apiary.prediction.signal", p.signal.as_str()),
            text("apiary.prediction.model", p.model),
            number("apiary.prediction.breach_at", p.breach_at),
            number("apiary.prediction.seconds_to_breach", p.seconds_to_breach),
            number("apiary.prediction.confidence", p.confidence),
            number("apiary.prediction.limit", p.limit),
            number("apiary.prediction.current", p.current),
            text("apiary.prediction.action", &p.action),
        ],
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: resource.attributes(&p.service, None),
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "apiary.predict".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                log_records: vec![record],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_predict::detector::Evidence;
    use apiary_predict::{Prediction, Signal};

    fn event(kind: EventKind) -> Event {
        Event {
            at: 1_700_000_000.5,
            kind,
            prediction: Prediction {
                id: "web/p99/queueing".into(),
                service: "web".into(),
                signal: Signal::P99,
                model: "queueing",
                breach_at: 1_700_000_060.0,
                seconds_to_breach: 59.5,
                confidence: 0.8,
                limit: 0.1,
                current: 0.04,
                why: "the rate nears the knee".into(),
                action: "add workers".into(),
                evidence: Evidence {
                    series: vec![(1.0, 2.0)],
                    pairs: Vec::new(),
                    fit: json!({"kind": "queue"}),
                },
                raised_at: 1_700_000_000.5,
                updated_at: 1_700_000_000.5,
            },
        }
    }

    #[test]
    fn one_log_record_per_event_under_the_services_resource() {
        let resource = ResourceInfo {
            host_name: "h".into(),
            node: "n1".into(),
            ..Default::default()
        };
        for (kind, severity, name) in [
            (
                EventKind::Raised,
                SeverityNumber::Warn,
                "apiary.prediction.raised",
            ),
            (
                EventKind::Resolved,
                SeverityNumber::Info,
                "apiary.prediction.resolved",
            ),
        ] {
            let request = log_request(&event(kind), &resource);
            let logs = &request.resource_logs[0];
            let attributes = &logs.resource.as_ref().unwrap().attributes;
            assert!(attributes
                .iter()
                .any(|kv| kv.key == "service.name" && format!("{:?}", kv.value).contains("web")));
            let records = &logs.scope_logs[0].log_records;
            assert_eq!(records.len(), 1);
            let record = &records[0];
            assert_eq!(record.severity_number, severity as i32);
            assert_eq!(record.event_name, name);
            assert_eq!(record.time_unix_nano, 1_700_000_000_500_000_000);
            assert!(record
                .attributes
                .iter()
                .any(|kv| kv.key == "apiary.prediction.id"
                    && format!("{:?}", kv.value).contains("web/p99/queueing")));
        }
    }

    #[test]
    fn the_webhook_body_names_the_node_and_leaves_out_the_evidence() {
        let body = webhook_body(&event(EventKind::Raised), "n1");
        assert_eq!(body["node"], "n1");
        assert_eq!(body["kind"], "raised");
        assert_eq!(body["prediction"]["id"], "web/p99/queueing");
        assert!(body["prediction"].get("evidence").is_none());
    }

    /// A real HTTP server that fails the first two calls with 503: the third try lands; one
    /// that answers 400 is not retried.
    #[tokio::test]
    async fn webhook_calls_are_retried_on_server_errors_only() {
        use axum::http::StatusCode;
        let calls = Arc::new(AtomicU64::new(0));
        let app = axum::Router::new()
            .route(
                "/flaky",
                axum::routing::post({
                    let calls = calls.clone();
                    move || async move {
                        if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::OK
                        }
                    }
                }),
            )
            .route(
                "/refuses",
                axum::routing::post(|| async { StatusCode::BAD_REQUEST }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let http = reqwest::Client::new();
        let body = json!({"kind": "raised"});
        post(&http, &format!("http://127.0.0.1:{port}/flaky"), &body)
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let error = post(&http, &format!("http://127.0.0.1:{port}/refuses"), &body)
            .await
            .unwrap_err();
        assert!(error.contains("not retried"), "{error}");
    }
}
