//! The HTTP API every node serves (JSON), with `/metrics` in Prometheus text and the embedded
//! dashboard: one router, built from the route table in `routes.rs`.

pub mod access;
mod config;
mod dashboard;
mod handlers;
mod join_tokens;
pub mod metrics;
mod profiles;
pub mod routes;
pub mod server;
pub mod tokens;

use std::sync::Arc;

use apiary_config::ConfigError;
use apiary_consensus::{Consensus, WriteError};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::agent::ca::CaRuntime;
use crate::agent::export::Export;
use crate::agent::intensity::Intensity;
use crate::agent::probes::ProbeRuntime;
pub(crate) use config::proposal;
use routes::ROUTES;

/// What the handlers answer from: the running node's parts.
pub struct ApiState {
    pub consensus: Arc<Consensus>,
    pub intensity: Arc<Intensity>,
    pub node_name: String,
    /// The admin token of `--token-file`, accepted on this node besides the cluster's tokens.
    pub local_token: Option<String>,
    /// DNS names the API may be reached by besides IP literals and `localhost` (the Host
    /// header check against DNS rebinding): `--api-name` and this machine's host name.
    pub api_names: Vec<String>,
    pub probes: Option<Arc<ProbeRuntime>>,
    pub export: Arc<Export>,
    pub ca: Arc<CaRuntime>,
    pub data_dir: crate::agent::identity::DataDir,
    /// The spans this node exported, by trace, for `GET /v1/traces/{id}`.
    pub traces: Arc<crate::agent::traces::TraceStore>,
    /// This node's predictions (`GET /v1/predictions`).
    pub predictor: Arc<crate::agent::predict::Predictor>,
}

impl ApiState {
    fn probe_reports(&self) -> Vec<apiary_probes::ProbeReport> {
        match &self.probes {
            Some(probes) => probes.reports(),
            None => crate::agent::probes::reports_without_probes(
                "this node was started with --no-probes",
            ),
        }
    }
}

/// Every route of [`ROUTES`], each behind its access check; anything else is a 404 that lists
/// the documented ones. Every request passes the Host check first.
pub fn router(state: Arc<ApiState>) -> Router {
    ROUTES
        .iter()
        .fold(Router::new(), |router, route| {
            router.route(
                route.path,
                access::guard(route.service(), route.access, &state),
            )
        })
        .fallback(|| async {
            let served: Vec<String> = ROUTES
                .iter()
                .filter(|route| route.documented)
                .map(|route| route.name())
                .collect();
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no such endpoint; this node serves {} (see docs/api.md)",
                    served.join(", ")
                ),
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::check_host,
        ))
        .with_state(state)
}

pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> Self {
        let status = match error {
            WriteError::Rejected(_) => StatusCode::BAD_REQUEST,
            WriteError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            WriteError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            WriteError::Forbidden(_) => StatusCode::FORBIDDEN,
        };
        ApiError::new(status, error.to_string())
    }
}

impl From<ConfigError> for ApiError {
    fn from(error: ConfigError) -> Self {
        ApiError::bad_request(error.to_string())
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}; expected {shape}")))
}
