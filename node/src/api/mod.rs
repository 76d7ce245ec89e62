//! The HTTP API every node serves (JSON), with `/metrics` in Prometheus text and the embedded
//! dashboard: one router, built from the route table in `routes.rs`.

mod config;
mod dashboard;
mod handlers;
pub mod metrics;
pub mod routes;

use std::sync::Arc;

use apiary_config::ConfigError;
use apiary_consensus::{Consensus, WriteError};
use axum::http::{header, HeaderMap, StatusCode};
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
    pub api_token: String,
    pub probes: Option<Arc<ProbeRuntime>>,
    pub export: Arc<Export>,
    pub ca: Arc<CaRuntime>,
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

/// Every route of [`ROUTES`]; anything else is a 404 that lists the documented ones.
pub fn router(state: Arc<ApiState>) -> Router {
    ROUTES
        .iter()
        .fold(Router::new(), |router, route| {
            router.route(route.path, route.service())
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

fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this endpoint needs `Authorization: Bearer <token>`; the token is in DATA_DIR/api-token",
        ));
    };
    if !constant_time_eq(presented.as_bytes(), state.api_token.as_bytes()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the bearer token is wrong; the cluster's token is in DATA_DIR/api-token on any node",
        ));
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}
