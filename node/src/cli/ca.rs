//! `apiary ca status` and `apiary ca rotate`: the cluster CA, from any node's API.

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use super::client::{print_json, table, text, Client, ClientArgs};
use super::progress::Progress;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum CaCommand {
    /// Show the CA fingerprint and which rotation step each member has applied.
    Status,
    /// Replace the cluster CA in place: every member trusts a new CA, switches its certificate
    /// to it, then stops trusting the old one. Every member must be reachable; run it again to
    /// continue a rotation that stopped part way.
    Rotate,
}

pub async fn run(args: &ClientArgs, command: &CaCommand) -> Result<()> {
    let client = Client::new(args)?;
    match command {
        CaCommand::Status => {
            let report = client.get("/v1/ca").await?;
            if args.json {
                return print_json(&report);
            }
            print_report(&report);
            Ok(())
        }
        CaCommand::Rotate => {
            let progress = (!args.json).then(|| {
                Progress::spinner("rotating the cluster CA (stage, switch, finish; every member)")
            });
            let answer = client
                .send_within(
                    reqwest::Method::POST,
                    "/v1/ca/rotate",
                    None,
                    Duration::from_secs(180),
                )
                .await;
            let report = match answer {
                Ok(report) => report,
                Err(e) => {
                    if let Some(progress) = progress {
                        progress.finish("the rotation stopped");
                    }
                    return Err(e);
                }
            };
            if args.json {
                return print_json(&report);
            }
            if let Some(progress) = progress {
                progress.finish(&format!(
                    "the cluster CA is now {}",
                    text(&report["fingerprint"])
                ));
            }
            for step in report["steps"].as_array().into_iter().flatten() {
                println!("  {}", text(step));
            }
            print_report(&report);
            println!(
                "Every old join token is void. New nodes join with this one (1 h; also in the \
                 DATA_DIR/join-token of the node that ran the rotation):\n{}",
                text(&report["join_token"])
            );
            Ok(())
        }
    }
}

fn print_report(report: &Value) {
    println!(
        "CA fingerprint {}  (rotation {}, {})",
        text(&report["fingerprint"]),
        text(&report["epoch"]),
        match &report["phase"] {
            Value::Null => "never rotated".to_string(),
            phase => text(phase),
        }
    );
    let mut members = table(&["MEMBER", "ROTATION", "STEP", "ERROR"]);
    for member in report["members"].as_array().into_iter().flatten() {
        members.add_row(vec![
            text(&member["name"]),
            text(&member["epoch"]),
            text(&member["phase"]),
            text(&member["error"]),
        ]);
    }
    println!("{members}");
}
