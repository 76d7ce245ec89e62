//! `apiary tail`: follows a node's live spans, one line each (or one JSON span per line).

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::client::{text, Client, ClientArgs};

/// `apiary tail`: follows the node's live spans, one line each, until interrupted.
pub async fn tail(args: &ClientArgs, service: Option<&str>) -> Result<()> {
    let client = Client::new(args)?;
    // No overall timeout: the stream is meant to last.
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()?;
    let mut url = format!("{}/v1/spans/stream", client.base);
    if let Some(service) = service {
        url.push_str(&format!("?service={service}"));
    }
    let mut response = client
        .authorized(http.get(&url))
        .send()
        .await
        .with_context(|| {
            format!(
                "cannot reach the node at {}: is `apiary node` running there? (--peer URL)",
                client.base
            )
        })?;
    if !response.status().is_success() {
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        bail!(
            "{status}: {}",
            body["error"].as_str().unwrap_or("(no message)")
        );
    }
    if !args.json {
        eprintln!("following spans from {} (Ctrl-C to stop)", client.base);
    }
    let mut buffer = String::new();
    while let Some(chunk) = response.chunk().await.context("the span stream broke")? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            print_event(&event, args.json);
        }
    }
    bail!("the node closed the span stream")
}

fn print_event(event: &str, json: bool) {
    let mut kind = "message";
    let mut data = String::new();
    for line in event.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            kind = value.trim();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.trim_start());
        }
    }
    match kind {
        "span" if json => println!("{data}"),
        "span" => {
            let Ok(span) = serde_json::from_str::<Value>(&data) else {
                return;
            };
            let at = span["start_unix_nanos"].as_u64().unwrap_or(0);
            let time = humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(at),
            )
            .to_string();
            let clock = time.get(11..23).unwrap_or(&time).to_string();
            let millis = span["duration_ns"].as_f64().unwrap_or(0.0) / 1e6;
            let trace = span["traceparent"]
                .as_str()
                .and_then(|t| t.split('-').nth(1))
                .unwrap_or("-");
            println!(
                "{clock}  {:<16} {:<6} {:<6} {:<32} {:>3} {:>9.2} ms  trace {trace}",
                text(&span["service"]),
                text(&span["kind"]),
                text(&span["method"]),
                text(&span["route"]),
                text(&span["status"]),
                millis,
            );
        }
        "missed" => eprintln!("… {data} spans missed (this terminal fell behind)"),
        _ => {}
    }
}
