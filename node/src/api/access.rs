//! Who may call what: bearer tokens with scopes, and the Host check.
//!
//! Every route names what it needs in the route table ([`Access`]). A token is found by its
//! hash in the replicated state (the cluster's first one, DATA_DIR/api-token on the node that
//! created it, and those made through `POST /v1/tokens`), so a token works on every node and a
//! revocation everywhere; or it is this node's `--token-file` token, admin here only. `api.public_read` lets reads through without a token, for an API only a trusted
//! network reaches; writes always need one.
//!
//! The Host check stops DNS rebinding: a page on another site whose name an attacker points at
//! 127.0.0.1 reaches the API with its own name in `Host`, so a name that is not an IP literal,
//! `localhost`, this machine's host name or one given with `--api-name` is refused.

use std::net::IpAddr;
use std::sync::Arc;

use apiary_consensus::tokens::Scope;
use apiary_consensus::Caller;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;

use super::{ApiError, ApiState};

/// What a route needs of the caller (each route of the table names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: liveness, and the dashboard's page and assets (which hold no data: the page asks
    /// for a token before it reads).
    Public,
    /// A token of this scope or above (reads also pass without one under `api.public_read`).
    Needs(Scope),
}

/// A route's handler behind its access check.
pub(super) fn guard(
    service: MethodRouter<Arc<ApiState>>,
    access: Access,
    state: &Arc<ApiState>,
) -> MethodRouter<Arc<ApiState>> {
    match access {
        Access::Public => service,
        Access::Needs(scope) => service.route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            move |State(state): State<Arc<ApiState>>, request: Request, next: Next| async move {
                match refusal(&state, request.headers(), scope) {
                    None => next.run(request).await,
                    Some(refusal) => refusal,
                }
            },
        )),
    }
}

/// The scope of the token a request presents: `Ok(None)` without one, `Err` for a token the
/// cluster does not know (wrong, or revoked).
pub(super) fn presented_scope(
    state: &ApiState,
    headers: &HeaderMap,
) -> Result<Option<Scope>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the Authorization header must be `Bearer <token>`",
            )
        })?;
    if let Some(local) = &state.local_token {
        if constant_time_eq(token.as_bytes(), local.as_bytes()) {
            return Ok(Some(Scope::Admin));
        }
    }
    match state.consensus.config_state().find_token(token) {
        Some(record) => Ok(Some(record.scope)),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this token is not the cluster's: it is wrong or was revoked (`apiary token list` \
             on an admin token shows the live ones)",
        )),
    }
}

/// The credential a request was made with, which the leader checks again when this node
/// forwards the change: this node's own `--token-file` token makes it [`Caller::Node`].
pub(super) struct ApiCaller(pub Caller);

impl FromRequestParts<Arc<ApiState>> for ApiCaller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, Self::Rejection> {
        // The route's guard has already checked the token; a request without one (a read
        // under `api.public_read`) carries none, which no leader accepts for a change.
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        let local = state
            .local_token
            .as_ref()
            .is_some_and(|local| constant_time_eq(token.as_bytes(), local.as_bytes()));
        Ok(ApiCaller(if local {
            Caller::Node
        } else {
            Caller::Token(token.to_string())
        }))
    }
}

/// The answer refusing a request that needs `needed`, or `None` when it may pass.
fn refusal(state: &ApiState, headers: &HeaderMap, needed: Scope) -> Option<Response> {
    let public_read = needed <= Scope::Read
        && state
            .consensus
            .config_state()
            .history()
            .current()
            .api
            .public_read;
    let refuse = |status, message: String| {
        let mut response = ApiError::new(status, message).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"apiary\""),
            );
        }
        Some(response)
    };
    match presented_scope(state, headers) {
        Err(error) => refuse(StatusCode::UNAUTHORIZED, error.message),
        Ok(None) if public_read => None,
        Ok(None) => refuse(
            StatusCode::UNAUTHORIZED,
            format!(
                "this endpoint needs a `{needed}` token: send `Authorization: Bearer <token>`. \
                 DATA_DIR/api-token on the node that created the cluster is an admin token; \
                 `apiary token create --scope {needed} NAME` makes a narrower one"
            ),
        ),
        Ok(Some(scope)) if scope >= needed => None,
        // What anyone may read, a caller with a narrower token may read too.
        Ok(Some(_)) if public_read => None,
        Ok(Some(scope)) => refuse(
            StatusCode::FORBIDDEN,
            format!(
                "this endpoint needs a `{needed}` token, and this one is `{scope}`: ask an admin \
                 for one (`apiary token create --scope {needed} NAME`)"
            ),
        ),
    }
}

/// Refuses a request whose `Host` is a DNS name this API was not told it is reached by.
pub(super) async fn check_host(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}").to_string());
    match host {
        Some(host) if !host_allowed(&host, &state.api_names) => ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this API does not answer to the name {host:?} (a page on another site may be \
                 trying to reach it): use its address, or start the node with --api-name {}",
                host_name(&host)
            ),
        )
        .into_response(),
        _ => next.run(request).await,
    }
}

/// `name` of `name:port` or `[v6]:port`.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

fn host_allowed(host: &str, names: &[String]) -> bool {
    let name = host_name(host).trim_end_matches('.');
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_ip_literals_localhost_or_named() {
        let names = vec!["apiary.internal".to_string()];
        for ok in [
            "127.0.0.1:7700",
            "10.1.2.3",
            "[::1]:7700",
            "localhost:7700",
            "LOCALHOST",
            "apiary.internal:7700",
            "apiary.internal.",
        ] {
            assert!(host_allowed(ok, &names), "{ok}");
        }
        for refused in [
            "evil.example:7700",
            "127.0.0.1.nip.io",
            "localhost.evil",
            "",
        ] {
            assert!(!host_allowed(refused, &names), "{refused}");
        }
    }
}
