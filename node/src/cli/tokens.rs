//! `apiary token create|list|revoke` and `apiary join-token create|list|revoke`: the cluster's
//! API tokens and join tokens (an admin token is needed).

use anyhow::Result;
use apiary_api_types::{
    JoinTokenCreated, JoinTokenList, JoinTokenRequest, TokenCreated, TokenList, TokenRequest,
};

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
            println!(
                "(a node's --token-file token is admin on that node and not listed; the first \
                 node's DATA_DIR/api-token is the one named initial)"
            );
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

#[derive(Debug, Clone, clap::Subcommand)]
pub enum JoinTokenCommand {
    /// Make a join token for new nodes; it is printed once and never shown again.
    Create {
        /// What the token is for (e.g. `rack 4`, `edge-eu`).
        #[arg(default_value = "join")]
        name: String,
        /// How long it admits nodes (e.g. 30min, 1h, 7days; at most 366days).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Admit one node, then no more.
        #[arg(long)]
        single_use: bool,
    },
    /// List the join tokens: expiry, whether spent, and which nodes joined with each.
    List,
    /// Revoke a join token by id; no member admits a node with it afterwards.
    Revoke { id: String },
}

pub async fn join(args: &ClientArgs, command: &JoinTokenCommand) -> Result<()> {
    let client = Client::new(args)?;
    match command {
        JoinTokenCommand::Create {
            name,
            ttl,
            single_use,
        } => {
            let body = JoinTokenRequest {
                name: name.clone(),
                ttl: Some(ttl.clone()),
                single_use: *single_use,
                author: Some(default_author()),
            };
            let answer = client
                .send(
                    reqwest::Method::POST,
                    "/v1/join-tokens",
                    Some(serde_json::to_value(body)?),
                )
                .await?;
            if args.json {
                return print_json(&answer);
            }
            let created: JoinTokenCreated = parse(&answer, "POST /v1/join-tokens")?;
            println!("{}", created.token);
            eprintln!(
                "join token {} ({}{}), expires {}: shown this once; start the new node with \
                 --join MEMBER:PORT --join-token TOKEN",
                created.id,
                created.name,
                if created.single_use {
                    ", single use"
                } else {
                    ""
                },
                created.expires_at
            );
        }
        JoinTokenCommand::List => {
            let answer = client.get("/v1/join-tokens").await?;
            if args.json {
                return print_json(&answer);
            }
            let list: JoinTokenList = parse(&answer, "GET /v1/join-tokens")?;
            let mut rows = table(&["ID", "NAME", "EXPIRES", "STATE", "USED BY", "BY"]);
            for token in list.join_tokens {
                let used_by: Vec<String> = token.uses.iter().map(|u| u.node_name.clone()).collect();
                let state = match (token.spent, token.single_use) {
                    (true, _) => "spent",
                    (false, true) => "live, single use",
                    (false, false) => "live",
                };
                rows.add_row(vec![
                    token.id,
                    token.name,
                    token.expires_at,
                    state.to_string(),
                    used_by.join(", "),
                    token.created_by,
                ]);
            }
            println!("{rows}");
        }
        JoinTokenCommand::Revoke { id } => {
            let answer = client
                .send(
                    reqwest::Method::DELETE,
                    &format!("/v1/join-tokens/{id}"),
                    None,
                )
                .await?;
            if args.json {
                return print_json(&answer);
            }
            println!("revoked join token {id}: no member admits a node with it any more");
        }
    }
    Ok(())
}
