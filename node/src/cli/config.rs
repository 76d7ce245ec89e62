//! `apiary config get|set|history|revert`: the replicated config, through any node.

use anyhow::Result;
use apiary_api_types::{Changes, Committed, ConfigPatch, ConfigView, HistoryView, RevertRequest};
use apiary_config::{parse_cli_assignment, Change};

use super::client::{default_author, parse, print_json, table, Client, ClientArgs};

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
    let author = |given: &Option<String>| given.clone().unwrap_or_else(default_author);
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
            let body = ConfigPatch {
                changes: Changes::List(changes),
                comment: comment.clone(),
                author: Some(author(who)),
            };
            client
                .send(
                    reqwest::Method::PATCH,
                    "/v1/config",
                    Some(serde_json::to_value(body)?),
                )
                .await?
        }
        ConfigCommand::Revert {
            version,
            comment,
            author: who,
        } => {
            let body = RevertRequest {
                version: *version,
                comment: comment.clone(),
                author: Some(author(who)),
            };
            client
                .send(
                    reqwest::Method::POST,
                    "/v1/config/revert",
                    Some(serde_json::to_value(body)?),
                )
                .await?
        }
    };
    if args.json {
        return print_json(&answer);
    }
    match command {
        ConfigCommand::Get => {
            let view: ConfigView = parse(&answer, "GET /v1/config")?;
            println!("config version {}", view.version);
            let mut rows = table(&["KEY", "VALUE"]);
            for (key, value) in apiary_config::flatten(&serde_json::to_value(&view.config)?) {
                rows.add_row(vec![key, value.to_string()]);
            }
            println!("{rows}");
        }
        ConfigCommand::History { .. } => {
            let history: HistoryView = parse(&answer, "GET /v1/config/history")?;
            let mut rows = table(&["VERSION", "AT", "ORIGIN", "AUTHOR", "CHANGE", "COMMENT"]);
            for entry in history.events {
                let event = entry.event;
                rows.add_row(vec![
                    event.version.to_string(),
                    event.at,
                    event.origin_node,
                    event.author,
                    describe_change(&event.change),
                    event.comment,
                ]);
            }
            println!("{rows}");
        }
        ConfigCommand::Set { .. } | ConfigCommand::Revert { .. } => {
            let committed: Committed = parse(&answer, "the change")?;
            println!("committed: config version {}", committed.version);
        }
    }
    Ok(())
}

fn describe_change(change: &Change) -> String {
    match change {
        Change::Revert { to_version, .. } => format!("revert to version {to_version}"),
        Change::Set { settings } => assignments(settings),
        Change::Profile { settings, profile } => {
            let until = profile
                .expires_at_unix
                .map(|at| {
                    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(at);
                    format!(" until {}", humantime::format_rfc3339_seconds(at))
                })
                .unwrap_or_default();
            format!(
                "profile {} v{} {}{until}: {}",
                profile.name,
                profile.version,
                profile.signer,
                assignments(settings)
            )
        }
        Change::ProfileEnded {
            profile_version,
            settings,
        } if settings.is_empty() => {
            format!("end of the profile of version {profile_version} (nothing left to restore)")
        }
        Change::ProfileEnded {
            profile_version,
            settings,
        } => format!(
            "end of the profile of version {profile_version}: {}",
            assignments(settings)
        ),
    }
}

fn assignments(settings: &[apiary_config::Setting]) -> String {
    settings
        .iter()
        .map(|s| format!("{}={}", s.key, s.value))
        .collect::<Vec<_>>()
        .join(" ")
}
