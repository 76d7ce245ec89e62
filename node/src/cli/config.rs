//! `apiary config get|set|history|revert`: the replicated config, through any node.

use anyhow::Result;
use apiary_config::parse_cli_assignment;
use serde_json::{json, Value};

use super::client::{print_json, table, text, Client, ClientArgs};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConfigCommand {
    /// Show the config applied on the node, one key per line.
    Get,
    /// Change settings: `apiary config set probe.http.sample_rate=0.2 probe.tcp.enabled=false`.
    Set {
        #[arg(required = true, value_name = "KEY=VALUE")]
        assignments: Vec<String>,
        /// Why (kept in the history).
        #[arg(long, short = 'm', default_value = "")]
        comment: String,
        /// Who [default: $USER]
        #[arg(long)]
        author: Option<String>,
    },
    /// Show the change history.
    History {
        /// Only versions above this one.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Restore the config of an earlier version (recorded as a new version).
    Revert {
        version: u64,
        #[arg(long, short = 'm', default_value = "")]
        comment: String,
        #[arg(long)]
        author: Option<String>,
    },
}

pub async fn config(args: &ClientArgs, command: &ConfigCommand) -> Result<()> {
    let client = Client::new(args)?;
    let author = |given: &Option<String>| {
        given
            .clone()
            .unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "cli".into()))
    };
    let answer = match command {
        ConfigCommand::Get => client.get("/v1/config").await?,
        ConfigCommand::History { since } => {
            client
                .get(&format!("/v1/config/history?since={since}"))
                .await?
        }
        ConfigCommand::Set {
            assignments,
            comment,
            author: who,
        } => {
            let changes = assignments
                .iter()
                .map(|arg| parse_cli_assignment(arg))
                .collect::<Result<Vec<_>, _>>()?;
            let body = json!({ "changes": changes, "comment": comment, "author": author(who) });
            client
                .send(reqwest::Method::PATCH, "/v1/config", Some(body))
                .await?
        }
        ConfigCommand::Revert {
            version,
            comment,
            author: who,
        } => {
            let body = json!({ "version": version, "comment": comment, "author": author(who) });
            client
                .send(reqwest::Method::POST, "/v1/config/revert", Some(body))
                .await?
        }
    };
    if args.json {
        return print_json(&answer);
    }
    match command {
        ConfigCommand::Get => {
            println!("config version {}", text(&answer["version"]));
            let mut rows = table(&["KEY", "VALUE"]);
            for (key, value) in apiary_config::flatten(&answer["config"]) {
                rows.add_row(vec![key, value.to_string()]);
            }
            println!("{rows}");
        }
        ConfigCommand::History { .. } => {
            let mut rows = table(&["VERSION", "AT", "ORIGIN", "AUTHOR", "CHANGE", "COMMENT"]);
            for event in answer["events"].as_array().into_iter().flatten() {
                rows.add_row(vec![
                    text(&event["version"]),
                    text(&event["at"]),
                    text(&event["origin_node"]),
                    text(&event["author"]),
                    describe_change(&event["change"]),
                    text(&event["comment"]),
                ]);
            }
            println!("{rows}");
        }
        ConfigCommand::Set { .. } | ConfigCommand::Revert { .. } => {
            println!("committed: config version {}", text(&answer["version"]));
        }
    }
    Ok(())
}

fn describe_change(change: &Value) -> String {
    match change["kind"].as_str() {
        Some("revert") => format!("revert to version {}", text(&change["to_version"])),
        _ => change["settings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| format!("{}={}", text(&s["key"]), s["value"]))
            .collect::<Vec<_>>()
            .join(" "),
    }
}
