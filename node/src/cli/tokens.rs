//! `apiary token create|list|revoke`: the cluster's API tokens (an admin token is needed).

use anyhow::Result;
use serde_json::json;

use super::client::{print_json, table, text, Client, ClientArgs};

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is printed once and never shown again.
    Create {
        /// What the token is for (e.g. `prometheus`, `grafana`, `ci`).
        name: String,
        /// What it may do: metrics (GET /metrics only), read, write (config), admin.
        #[arg(long, default_value = "read")]
        scope: apiary_consensus::tokens::Scope,
    },
    /// List the tokens (ids, names, scopes; never the tokens themselves).
    List,
    /// Revoke a token by id; it stops working on every node.
    Revoke { id: String },
}

pub async fn run(args: &ClientArgs, command: &TokenCommand) -> Result<()> {
    let client = Client::new(args)?;
    match command {
        TokenCommand::Create { name, scope } => {
            let body = json!({ "name": name, "scope": scope, "author": whoami() });
            let answer = client
                .send(reqwest::Method::POST, "/v1/tokens", Some(body))
                .await?;
            if args.json {
                return print_json(&answer);
            }
            println!("{}", text(&answer["token"]));
            eprintln!(
                "token {} ({}, scope {}): shown this once; keep it now",
                text(&answer["id"]),
                text(&answer["name"]),
                text(&answer["scope"])
            );
        }
        TokenCommand::List => {
            let answer = client.get("/v1/tokens").await?;
            if args.json {
                return print_json(&answer);
            }
            let mut rows = table(&["id", "name", "scope", "created", "by"]);
            for token in answer["tokens"].as_array().into_iter().flatten() {
                rows.add_row(
                    ["id", "name", "scope", "created_at", "created_by"].map(|k| text(&token[k])),
                );
            }
            println!("{rows}");
            println!("(DATA_DIR/api-token, the cluster's first token, is admin and not listed)");
        }
        TokenCommand::Revoke { id } => {
            let answer = client
                .send(reqwest::Method::DELETE, &format!("/v1/tokens/{id}"), None)
                .await?;
            if args.json {
                return print_json(&answer);
            }
            println!("revoked token {id}: it is refused on every node once they apply it");
        }
    }
    Ok(())
}

fn whoami() -> String {
    std::env::var("USER").unwrap_or_else(|_| "cli".into())
}
