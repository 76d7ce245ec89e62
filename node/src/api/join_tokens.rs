//! Join tokens over HTTP (admin scope): list, create (the token is shown once), revoke.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use apiary_api_types::{
    JoinTokenCreated, JoinTokenInfo, JoinTokenList, JoinTokenRequest, JoinTokenUse, TokenRevoked,
};
use apiary_consensus::join_tokens::JoinTokenStep;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::access::ApiCaller;
use super::tokens::applied_here;
use super::{parse_body, ApiError, ApiState};
use crate::agent::admission::{create_join_token, DEFAULT_JOIN_TOKEN_TTL};

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(unix))
        .to_string()
}

/// Every join token's id, name, expiry and uses; never a secret, nor its hash.
pub(super) async fn list(State(state): State<Arc<ApiState>>) -> Json<JoinTokenList> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let join_tokens = state
        .consensus
        .config_state()
        .join_tokens()
        .into_iter()
        .map(|t| JoinTokenInfo {
            spent: now > t.expires_at_unix || (t.single_use && !t.uses.is_empty()),
            id: t.id,
            name: t.name,
            created_at: t.created_at,
            created_by: t.created_by,
            expires_at: rfc3339(t.expires_at_unix),
            single_use: t.single_use,
            uses: t
                .uses
                .into_iter()
                .map(|u| JoinTokenUse {
                    node_id: u.node_id,
                    node_name: u.node_name,
                    at: rfc3339(u.at_unix),
                })
                .collect(),
        })
        .collect();
    Json(JoinTokenList { join_tokens })
}

/// Makes a join token; the answer is the only place its secret ever appears.
pub(super) async fn create(
    State(state): State<Arc<ApiState>>,
    ApiCaller(caller): ApiCaller,
    body: Bytes,
) -> Result<Json<JoinTokenCreated>, ApiError> {
    let body: JoinTokenRequest = parse_body(
        &body,
        r#"{"name": "rack 4", "ttl": "1h", "single_use": true}"#,
    )?;
    let ttl = match body.ttl.as_deref() {
        None => DEFAULT_JOIN_TOKEN_TTL,
        Some(text) => text
            .parse::<humantime::Duration>()
            .map(Into::into)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("ttl {text:?} is not a duration (e.g. 1h, 30min, 7days): {e}"),
                )
            })?,
    };
    if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(366 * 24 * 3600) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ttl must be between 1s and 366days: join tokens always expire",
        ));
    }
    let author = body.author.unwrap_or_else(|| "api".into());
    let (token, record) = create_join_token(
        &state.consensus,
        &caller,
        &state.ca,
        body.name,
        ttl,
        body.single_use,
        author,
    )
    .await?;
    applied_here(&state, |s| has_join_token(s, &record.id)).await;
    Ok(Json(JoinTokenCreated {
        id: record.id,
        name: record.name,
        token: token.to_string(),
        expires_at: rfc3339(record.expires_at_unix),
        single_use: record.single_use,
        note: "this is the only time the join token is shown: give it to the new node now".into(),
    }))
}

pub(super) async fn revoke(
    State(state): State<Arc<ApiState>>,
    ApiCaller(caller): ApiCaller,
    Path(id): Path<String>,
) -> Result<Json<TokenRevoked>, ApiError> {
    if !has_join_token(&state, &id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("there is no join token {id:?}: GET /v1/join-tokens lists them"),
        ));
    }
    state
        .consensus
        .join_token_step(&caller, JoinTokenStep::Revoke { id: id.clone() })
        .await?;
    applied_here(&state, |s| !has_join_token(s, &id)).await;
    Ok(Json(TokenRevoked { revoked: id }))
}

fn has_join_token(state: &ApiState, id: &str) -> bool {
    state
        .consensus
        .config_state()
        .join_tokens()
        .iter()
        .any(|t| t.id == id)
}
