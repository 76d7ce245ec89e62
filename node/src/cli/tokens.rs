//! `apiary token create|list|revoke`: the cluster's API tokens (an admin token is needed).

use anyhow::Result;
use apiary_api_types::{TokenCreated, TokenList, TokenRequest};

use super::client::{default_author, parse, print_json, table, Client, ClientArgs};

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
            let body = TokenRequest {
                name: name.clone(),
                scope: *scope,
                author: Some(default_author()),
            };
            let answer = client
                .send(
                    reqwest::Method::POST,
                    "/v1/tokens",
                    Some(serde_json::to_value(body)?),
                )
                .await?;
            if args.json {
                return print_json(&answer);
            }
            let created: TokenCreated = parse(&answer, "POST /v1/tokens")?;
            println!("{}", created.token);
            eprintln!(
                "token {} ({}, scope {}): shown this once; keep it now",
                created.id, created.name, created.scope
            );
        }
        TokenCommand::List => {
            let answer = client.get("/v1/tokens").await?;
            if args.json {
                return print_json(&answer);
            }
            let list: TokenList = parse(&answer, "GET /v1/tokens")?;
            let mut rows = table(&["ID", "NAME", "SCOPE", "CREATED", "BY"]);
            for token in list.tokens {
                rows.add_row(vec![
                    token.id,
                    token.name,
                    token.scope.to_string(),
                    token.created_at,
                    token.created_by,
                ]);
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
