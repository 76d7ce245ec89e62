//! The HTTP API every node serves (JSON), and `/metrics` in Prometheus text.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use apiary_config::{ConfigError, Intent, Proposal, Setting};
use apiary_consensus::{Consensus, WriteError};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::export::Export;
use crate::metrics;
use crate::probes::ProbeRuntime;

pub struct ApiState {
    pub consensus: Arc<Consensus>,
    pub intensity: Arc<crate::intensity::Intensity>,
    pub node_name: String,
    pub api_token: String,
    pub probes: Option<Arc<ProbeRuntime>>,
    pub export: Arc<Export>,
    pub ca: Arc<crate::ca::CaRuntime>,
}

impl ApiState {
    fn probe_reports(&self) -> Vec<apiary_probes::ProbeReport> {
        match &self.probes {
            Some(probes) => probes.reports(),
            None => crate::probes::reports_without_probes("this node was started with --no-probes"),
        }
    }
}

/// Every route of the API; `docs/api.md` is checked against this list by a test.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/v1/cluster"),
    ("GET", "/v1/config"),
    ("PATCH", "/v1/config"),
    ("GET", "/v1/config/history"),
    ("POST", "/v1/config/revert"),
    ("DELETE", "/v1/members/{id}"),
    ("GET", "/v1/ca"),
    ("POST", "/v1/ca/rotate"),
    ("GET", "/v1/probes"),
    ("GET", "/v1/spans"),
    ("GET", "/v1/spans/stream"),
    ("GET", "/v1/export"),
    ("GET", "/v1/intensity"),
    ("GET", "/v1/red"),
    ("GET", "/"),
];

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(prometheus))
        .route("/v1/cluster", get(cluster))
        .route("/v1/config", get(get_config).patch(patch_config))
        .route("/v1/config/history", get(history))
        .route("/v1/config/revert", post(revert))
        .route("/v1/probes", get(probes))
        .route("/v1/spans", get(spans))
        .route("/v1/spans/stream", get(stream_spans))
        .route("/v1/export", get(export_status))
        .route("/v1/intensity", get(intensity))
        .route("/v1/red", get(red))
        .route("/v1/members/{id}", axum::routing::delete(remove_member))
        .route("/v1/ca", get(ca_status))
        .route("/v1/ca/rotate", post(rotate_ca))
        .route("/", get(crate::dashboard::index))
        .route("/assets/{*file}", get(crate::dashboard::asset))
        .fallback(|| async {
            let served: Vec<String> = ROUTES.iter().map(|(m, p)| format!("{m} {p}")).collect();
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

async fn healthz(State(state): State<Arc<ApiState>>) -> Json<Value> {
    let status = state.consensus.status();
    Json(json!({
        "status": "ok",
        "node": state.node_name,
        "leader_known": status.leader_id.is_some(),
        "version": status.committed_version,
    }))
}

async fn prometheus(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    let mut text = metrics::render(&state.node_name, &state.consensus.status());
    let observer = state.probes.as_ref().map(|p| p.observer.as_ref());
    text.push_str(&metrics::render_probes(
        &state.node_name,
        &state.probe_reports(),
        observer,
    ));
    text.push_str(&metrics::render_export(&state.node_name, &state.export));
    state
        .export
        .red
        .render_prometheus(&state.node_name, &mut text);
    text.push_str(&metrics::render_intensity(
        &state.node_name,
        &state.intensity.status(),
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Live spans as server-sent events, one JSON span per event (`?service=NAME` filters), for
/// `apiary tail` and the dashboard. A client that falls behind is told how many it missed.
async fn stream_spans(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<
    axum::response::Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>>,
    ApiError,
> {
    let Some(probes) = &state.probes else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "this node runs without probes (--no-probes): it has no spans to stream",
        ));
    };
    let receiver = probes.observer.subscribe();
    let service = query.get("service").cloned();
    let stream = futures_util::stream::unfold(receiver, move |mut receiver| {
        let service = service.clone();
        async move {
            loop {
                match receiver.recv().await {
                    Ok(span) if service.as_ref().is_some_and(|s| s != &span.service) => continue,
                    Ok(span) => {
                        let event = Event::default()
                            .event("span")
                            .json_data(&span)
                            .unwrap_or_default();
                        return Some((Ok(event), receiver));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        let event = Event::default().event("missed").data(missed.to_string());
                        return Some((Ok(event), receiver));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    });
    Ok(axum::response::Sse::new(stream).keep_alive(axum::response::sse::KeepAlive::default()))
}

async fn export_status(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(json!(state.export.status()))
}

/// Removes a member (by id) from the cluster, through the leader.
async fn remove_member(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult {
    authorize(&state, &headers)?;
    let id: u64 = id.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "{id:?} is not a member id: GET /v1/cluster lists the members and their ids"
        ))
    })?;
    state.consensus.remove(id).await?;
    Ok(Json(json!({ "removed": id })))
}

/// The CA fingerprint and each member's applied rotation step.
async fn ca_status(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(json!(crate::ca::report(&state.consensus, &state.ca).await))
}

/// Runs (or continues) a CA rotation to the end; answers with the steps taken and the result.
async fn rotate_ca(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> ApiResult {
    authorize(&state, &headers)?;
    let steps = std::sync::Mutex::new(Vec::<String>::new());
    let on_step = |step: &str| {
        tracing::info!("CA rotation: {step}");
        steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(step.to_string());
    };
    crate::ca::rotate(&state.consensus, &state.ca, on_step)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    let mut report = json!(crate::ca::report(&state.consensus, &state.ca).await);
    report["steps"] = json!(steps.into_inner().unwrap_or_else(|p| p.into_inner()));
    Ok(Json(report))
}

/// RED per service and route since the node started, counted before sampling.
async fn red(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(json!({
        "bounds_seconds": apiary_pipeline::red::DURATION_BOUNDS_SECONDS,
        "routes": state.export.red.routes(),
    }))
}

async fn intensity(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(json!(state.intensity.status()))
}

async fn probes(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(json!(state.probe_reports()))
}

/// The most recent spans this node's probes built, newest last (`?limit=N`, default 100, and
/// optional `service=NAME`).
async fn spans(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let limit = match query.get("limit") {
        None => 100,
        Some(text) => text.parse::<usize>().map_err(|_| {
            ApiError::bad_request(format!(
                "limit={text:?} is not a count: give a positive integer"
            ))
        })?,
    };
    let Some(probes) = &state.probes else {
        return Ok(Json(json!([])));
    };
    let mut spans = probes.observer.recent_spans();
    if let Some(service) = query.get("service") {
        spans.retain(|s| &s.service == service);
    }
    let skip = spans.len().saturating_sub(limit);
    Ok(Json(json!(spans[skip..])))
}

async fn cluster(State(state): State<Arc<ApiState>>) -> ApiResult {
    let mut status = serde_json::to_value(state.consensus.status()).map_err(internal)?;
    status["node_name"] = json!(state.node_name);
    Ok(Json(status))
}

async fn get_config(State(state): State<Arc<ApiState>>) -> ApiResult {
    let history = state.consensus.config_state().history();
    Ok(Json(
        json!({ "version": history.version(), "config": history.current() }),
    ))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Changes {
    List(Vec<Setting>),
    Map(BTreeMap<String, Value>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    changes: Changes,
    #[serde(default)]
    comment: String,
    author: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevertBody {
    version: u64,
    #[serde(default)]
    comment: String,
    author: Option<String>,
}

const PATCH_SHAPE: &str = r#"{"changes": [{"key": "probe.http.sample_rate", "value": 0.2}], "comment": "why"} or {"changes": {"probe.http.sample_rate": 0.2}}"#;

async fn patch_config(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    authorize(&state, &headers)?;
    let body: PatchBody = parse_body(&body, PATCH_SHAPE)?;
    let settings = match body.changes {
        Changes::List(list) => list,
        Changes::Map(map) => map
            .into_iter()
            .map(|(key, value)| Setting { key, value })
            .collect(),
    };
    let intent = Intent::Set { settings };
    commit(&state, intent, body.comment, body.author).await
}

async fn revert(State(state): State<Arc<ApiState>>, headers: HeaderMap, body: Bytes) -> ApiResult {
    authorize(&state, &headers)?;
    let body: RevertBody = parse_body(&body, r#"{"version": 3, "comment": "why"}"#)?;
    let intent = Intent::Revert {
        to_version: body.version,
    };
    commit(&state, intent, body.comment, body.author).await
}

/// Checks the change here first (a clear 400 without a round trip), then commits it through
/// the leader and waits until this node has applied it, so a read that follows sees it.
/// A proposal stamped now, as this node makes it.
pub(crate) fn proposal(origin: &str, author: String, comment: String, intent: Intent) -> Proposal {
    Proposal {
        origin_node: origin.to_string(),
        author,
        comment,
        at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        intent,
    }
}

async fn commit(
    state: &ApiState,
    intent: Intent,
    comment: String,
    author: Option<String>,
) -> ApiResult {
    let author = author.unwrap_or_else(|| "api".into());
    let proposal = proposal(&state.node_name, author, comment, intent);
    let config_state = state.consensus.config_state();
    config_state.history().check(&proposal)?;
    let mut applied = config_state.subscribe();
    let version = state.consensus.propose(proposal).await?;
    let caught_up = applied.wait_for(|v| *v >= version);
    let _ = tokio::time::timeout(Duration::from_secs(2), caught_up).await;
    let history = config_state.history();
    let event = history.since(version.saturating_sub(1)).first().cloned();
    Ok(Json(json!({ "version": version, "event": event })))
}

async fn history(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    let since = match query.get("since") {
        None => 0,
        Some(text) => text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "since={text:?} is not a version: give a non-negative integer"
            ))
        })?,
    };
    let history = state.consensus.config_state().history();
    // Each event with the keys it changed, old and new: the dashboard's per-version diff.
    let mut before = history.config_at(since.min(history.version()))?;
    let mut events = Vec::new();
    for event in history.since(since) {
        let after = before.apply(&event.change)?;
        let mut value = serde_json::to_value(event).map_err(internal)?;
        value["diff"] = json!(apiary_config::diff(&before, &after));
        events.push(value);
        before = after;
    }
    Ok(Json(
        json!({ "version": history.version(), "events": events }),
    ))
}

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

#[cfg(test)]
mod tests {
    use super::ROUTES;

    /// docs/api.md documents exactly the routes the router serves.
    #[test]
    fn api_doc_lists_every_route() {
        let doc = include_str!("../../docs/api.md");
        let documented: Vec<(String, String)> = doc
            .lines()
            .filter_map(|line| line.strip_prefix("### `")?.strip_suffix('`'))
            .filter_map(|heading| {
                let (method, path) = heading.split_once(' ')?;
                Some((method.to_string(), path.to_string()))
            })
            .collect();
        let served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(method, path)| (method.to_string(), path.to_string()))
            .collect();
        assert_eq!(documented, served, "docs/api.md and api::ROUTES differ");
    }
}
