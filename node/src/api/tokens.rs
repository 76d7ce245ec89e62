//! API tokens over HTTP (admin scope): list, create (the token is shown once), revoke.

use std::sync::Arc;

use apiary_consensus::tokens::{token_hash, Scope, TokenRecord, TokenStep};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{parse_body, ApiError, ApiResult, ApiState};

/// Every token's id, name, scope and creation; never a secret, and not its hash either.
pub(super) async fn list(State(state): State<Arc<ApiState>>) -> ApiResult {
    let tokens: Vec<_> = state
        .consensus
        .config_state()
        .tokens()
        .into_iter()
        .map(|t| {
            json!({
                "id": t.id, "name": t.name, "scope": t.scope,
                "created_at": t.created_at, "created_by": t.created_by,
            })
        })
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    scope: Scope,
    author: Option<String>,
}

/// Makes a token; the answer is the only place its secret ever appears.
pub(super) async fn create(State(state): State<Arc<ApiState>>, body: Bytes) -> ApiResult {
    let body: CreateBody = parse_body(
        &body,
        r#"{"name": "prometheus", "scope": "metrics"} (scopes: metrics, read, write, admin)"#,
    )?;
    let id = hex::encode(rand::random::<[u8; 4]>());
    let token = format!("apiary_{id}_{}", hex::encode(rand::random::<[u8; 24]>()));
    let record = TokenRecord {
        id: id.clone(),
        name: body.name,
        scope: body.scope,
        sha256: token_hash(&token),
        created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        created_by: body.author.unwrap_or_else(|| "api".into()),
    };
    let (name, scope) = (record.name.clone(), record.scope);
    state
        .consensus
        .token_step(TokenStep::Create(record))
        .await?;
    applied_here(&state, |tokens| tokens.iter().any(|t| t.id == id)).await;
    Ok(Json(json!({
        "id": id, "name": name, "scope": scope, "token": token,
        "note": "this is the only time the token is shown: keep it now",
    })))
}

pub(super) async fn revoke(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> ApiResult {
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
        .token_step(TokenStep::Revoke { id: id.clone() })
        .await?;
    applied_here(&state, |tokens| tokens.iter().all(|t| t.id != id)).await;
    Ok(Json(json!({ "revoked": id })))
}

/// Waits (a little) until this node has applied the step, so that the caller's next request
/// here sees it; other nodes apply it as fast as Raft replicates.
async fn applied_here(state: &ApiState, done: impl Fn(&[TokenRecord]) -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while !done(&state.consensus.config_state().tokens()) && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
