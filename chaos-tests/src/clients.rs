//! The clients: writers that set the register (`budget.always_keep.slower_than_ms`) to values
//! no one else writes, and readers of its version and value, each bound to one node and
//! recording every operation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::history::{Action, Op, ReadOutcome, Recorder, WriteOutcome};

/// The register: a config key with a wide integer range, so every write's value is unique.
pub const KEY: &str = "budget.always_keep.slower_than_ms";

/// How long a client waits for an answer before it calls the outcome unknown: longer than the
/// node's own write timeout (5 s), so most writes end with the node's verdict.
pub const OP_TIMEOUT: Duration = Duration::from_secs(8);

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(OP_TIMEOUT)
        .connect_timeout(Duration::from_secs(1))
        .build()
        .expect("an HTTP client")
}

/// Where a client sends and with what token.
#[derive(Clone)]
pub struct Target {
    pub node: usize,
    pub base: String,
    pub token: String,
}

/// The value a writer's `seq`-th write carries: unique per writer and op, and never the
/// key's default (1000).
pub fn value_of(client: usize, seq: u64) -> u64 {
    (client as u64 + 1) * 1_000_000_000 + seq
}

pub async fn writer(
    client: usize,
    target: Target,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    pause: Duration,
) {
    let http = http_client();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let value = value_of(client, seq);
        let body = json!({
            "changes": [{"key": KEY, "value": value}],
            "comment": format!("chaos client {client} write {seq}"),
        });
        // A write whose outcome is unknown is retried with the same Idempotency-Key, as a
        // careful client does: the attempts are one operation, from the first invocation to
        // the last answer, and the log must hold the value once.
        let key = format!("chaos-{client}-{seq}");
        let invoke = recorder.now();
        let mut outcome = WriteOutcome::Unknown;
        for attempt in 0..=WRITE_RETRIES {
            outcome = match write_once(&http, &target, &key, &body).await {
                // A refusal after an attempt that may have applied proves nothing.
                WriteOutcome::Fail if attempt > 0 => WriteOutcome::Unknown,
                other => other,
            };
            if outcome != WriteOutcome::Unknown || stop.load(Ordering::Relaxed) {
                break;
            }
        }
        let complete = (outcome != WriteOutcome::Unknown).then(|| recorder.now());
        recorder.record(Op {
            client,
            node: target.node,
            invoke,
            complete,
            action: Action::Write { value, outcome },
        });
        tokio::time::sleep(pause).await;
    }
}

/// How often a writer retries a write whose outcome it does not know.
pub const WRITE_RETRIES: usize = 2;

async fn write_once(
    http: &reqwest::Client,
    target: &Target,
    key: &str,
    body: &Value,
) -> WriteOutcome {
    let answer = http
        .patch(format!("{}/v1/config", target.base))
        .bearer_auth(&target.token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await;
    match answer {
        Err(e) if e.is_connect() => WriteOutcome::Fail,
        Err(_) => WriteOutcome::Unknown,
        Ok(response) => {
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            match body["version"].as_u64() {
                Some(version) if status.is_success() => WriteOutcome::Ok { version },
                _ if status.is_client_error() => WriteOutcome::Fail,
                _ => WriteOutcome::Unknown,
            }
        }
    }
}

/// Reads the register's version and value from one node's answer to `GET /v1/config`.
pub fn parse_read(body: &Value) -> Option<(u64, u64)> {
    let version = body["version"].as_u64()?;
    let value = body["config"]["budget"]["always_keep"]["slower_than_ms"].as_u64()?;
    Some((version, value))
}

pub async fn reader(
    client: usize,
    target: Target,
    linearizable: bool,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
    pause: Duration,
) {
    let http = http_client();
    let query = if linearizable {
        "?consistency=linearizable"
    } else {
        ""
    };
    while !stop.load(Ordering::Relaxed) {
        let invoke = recorder.now();
        let answer = http
            .get(format!("{}/v1/config{query}", target.base))
            .bearer_auth(&target.token)
            .send()
            .await;
        let outcome = match answer {
            Ok(response) if response.status().is_success() => {
                match response
                    .json::<Value>()
                    .await
                    .ok()
                    .as_ref()
                    .and_then(parse_read)
                {
                    Some((version, value)) => ReadOutcome::Ok { version, value },
                    None => ReadOutcome::Fail,
                }
            }
            _ => ReadOutcome::Fail,
        };
        recorder.record(Op {
            client,
            node: target.node,
            invoke,
            complete: Some(recorder.now()),
            action: Action::Read {
                linearizable,
                outcome,
            },
        });
        tokio::time::sleep(pause).await;
    }
}
