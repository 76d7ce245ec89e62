//! API tokens over HTTP (admin scope): list, create (the token is shown once), revoke.

use std::sync::Arc;

use apiary_api_types::{TokenCreated, TokenInfo, TokenList, TokenRequest, TokenRevoked};
use apiary_consensus::tokens::{token_hash, Scope, TokenRecord, TokenStep};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;

use super::access::ApiCaller;
use super::{parse_body, ApiError, ApiState};

/// Every token's id, name, scope and creation; never a secret, and not its hash either.
pub(super) async fn list(State(state): State<Arc<ApiState>>) -> Json<TokenList> {
    let tokens = state
        .consensus
        .config_state()
        .tokens()
        .into_iter()
        .map(|t| TokenInfo {
            id: t.id,
            name: t.name,
            scope: t.scope,
            created_at: t.created_at,
            created_by: t.created_by,
        })
        .collect();
    Json(TokenList { tokens })
}

/// The record the cluster keeps of `token`: its hash, never the token.
pub fn record(name: &str, scope: Scope, token: &str, created_by: &str) -> TokenRecord {
    TokenRecord {
        id: hex::encode(rand::random::<[u8; 4]>()),
        name: name.to_string(),
        scope,
        sha256: token_hash(token),
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        created_by: created_by.to_string(),
    }
}

/// Makes a token; the answer is the only place its secret ever appears.
pub(super) async fn create(
    State(state): State<Arc<ApiState>>,
    ApiCaller(caller): ApiCaller,
    body: Bytes,
) -> Result<Json<TokenCreated>, ApiError> {
    let body: TokenRequest = parse_body(
        &body,
        r#"{"name": "prometheus", "scope": "metrics"} (scopes: metrics, read, write, admin)"#,
    )?;
    let id = hex::encode(rand::random::<[u8; 4]>());
    let token = format!("apiary_{id}_{}", hex::encode(rand::random::<[u8; 24]>()));
    let author = body.author.unwrap_or_else(|| "api".into());
    let record = TokenRecord {
        id: id.clone(),
        ..record(&body.name, body.scope, &token, &author)
    };
    let (name, scope) = (record.name.clone(), record.scope);
    state
        .consensus
        .token_step(&caller, TokenStep::Create(record))
        .await?;
    applied_here(&state, |s| {
        s.consensus
            .config_state()
            .tokens()
            .iter()
            .any(|t| t.id == id)
    })
    .await;
    Ok(Json(TokenCreated {
        id,
        name,
        scope,
        token,
        note: "this is the only time the token is shown: keep it now".into(),
    }))
}

pub(super) async fn revoke(
    State(state): State<Arc<ApiState>>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
) -> Result<Json<TokenRevoked>, ApiError> {
    if !state
        .consensus
        .config_state()
        .tokens()
        .iter()
        .any(|t| t.id == id)
    {
        return Err(ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            format!("there is no token {id:?}: GET /v1/tokens lists them"),
        ));
    }
    state
        .consensus
        .token_step(&caller, TokenStep::Revoke { id: id.clone() })
        .await?;
    applied_here(&state, |s| {
        s.consensus
            .config_state()
            .tokens()
            .iter()
            .all(|t| t.id != id)
    })
    .await;
    Ok(Json(TokenRevoked { revoked: id }))
}

/// Waits (a little) until this node has applied a step, so that the caller's next request
/// here sees it; other nodes apply it as fast as Raft replicates.
pub(super) async fn applied_here(state: &ApiState, done: impl Fn(&ApiState) -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while !done(state) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
