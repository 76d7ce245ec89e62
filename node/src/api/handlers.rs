//! The API's handlers but the config's (`config.rs`): health, cluster, members, CA, probes,
//! spans, export, tuning and RED, each answering from this node's state.

use std::collections::HashMap;
use std::sync::Arc;

use apiary_api_types::{ClusterView, Health, MemberRemoved};
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::Event;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::{metrics, ApiError, ApiResult, ApiState};

/// 200 while the node can do its part; 503 with the problems when it cannot (a load balancer
/// or `apiary doctor` then sees it), such as a Raft log it cannot write.
pub(super) async fn healthz(State(state): State<Arc<ApiState>>) -> (StatusCode, Json<Health>) {
    let status = state.consensus.status();
    let problems: Vec<String> = state.consensus.storage_problem().into_iter().collect();
    let code = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // A slow disk degrades the node but it still takes part: 200, with what is wrong.
    let warnings: Vec<String> = state.consensus.slow_disk().into_iter().collect();
    let health = Health {
        status: match (problems.is_empty(), warnings.is_empty()) {
            (false, _) => "failing",
            (true, false) => "degraded",
            (true, true) => "ok",
        }
        .into(),
        warnings,
        node: state.node_name.clone(),
        // A stopped Raft's leader is only the last one it knew.
        leader_known: status.leader_id.is_some() && status.state != "stopped",
        version: status.committed_version,
        problems,
    };
    (code, Json(health))
}

pub(super) async fn prometheus(State(state): State<Arc<ApiState>>) -> impl IntoResponse {
    let mut text = metrics::render(&state.node_name, &state.consensus.status());
    let observer = state.probes.as_ref().map(|p| p.observer.as_ref());
    text.push_str(&metrics::render_probes(
        &state.node_name,
        &state.probe_reports(),
        observer,
    ));
    text.push_str(&metrics::render_export(&state.node_name, &state.export));
    text.push_str(&metrics::render_trace_store(
        &state.node_name,
        &state.traces,
    ));
    state
        .export
        .red
        .render_prometheus(&state.node_name, &mut text);
    state
        .predictor
        .render_prometheus(&state.node_name, &mut text);
    text.push_str(&metrics::render_intensity(
        &state.node_name,
        &state.intensity.status(),
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Live spans as server-sent events, one JSON span per event (`?service=NAME` filters), for
/// `apiary tail` and the dashboard. A client that falls behind is told how many it missed.
pub(super) async fn stream_spans(
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

pub(super) async fn export_status(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(json!(state.export.status()))
}

/// Removes a member (by id) from the cluster, through the leader.
pub(super) async fn remove_member(
    State(state): State<Arc<ApiState>>,
    super::access::ApiCaller(caller): super::access::ApiCaller,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<MemberRemoved>, ApiError> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "{id:?} is not a member id: GET /v1/cluster lists the members and their ids"
        ))
    })?;
    state.consensus.remove(&caller, id).await?;
    Ok(Json(MemberRemoved { removed: id }))
}

/// The CA fingerprint and each member's applied rotation step.
pub(super) async fn ca_status(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(json!(
        crate::agent::ca::report(&state.consensus, &state.ca).await
    ))
}

/// Runs (or continues) a CA rotation to the end; answers with the steps taken and the result.
pub(super) async fn rotate_ca(State(state): State<Arc<ApiState>>) -> ApiResult {
    let steps = std::sync::Mutex::new(Vec::<String>::new());
    let on_step = |step: &str| {
        tracing::info!("CA rotation: {step}");
        steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(step.to_string());
    };
    crate::agent::ca::rotate(&state.consensus, &state.ca, on_step)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e:#}")))?;
    // The finish cleared every join token (they pin the old CA): one for the new CA, for an
    // hour, shown here once and kept in this node's DATA_DIR/join-token.
    let (token, _) = crate::agent::admission::create_join_token(
        &state.consensus,
        &apiary_consensus::Caller::Node,
        &state.ca,
        "after CA rotation".into(),
        crate::agent::admission::DEFAULT_JOIN_TOKEN_TTL,
        false,
        state.node_name.clone(),
    )
    .await?;
    state
        .data_dir
        .save_join_token(&token)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
    let mut report = json!(crate::agent::ca::report(&state.consensus, &state.ca).await);
    report["steps"] = json!(steps.into_inner().unwrap_or_else(|p| p.into_inner()));
    report["join_token"] = json!(token.to_string());
    Ok(Json(report))
}

/// RED per service and route since the node started, counted before sampling.
pub(super) async fn red(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(json!({
        "bounds_seconds": apiary_pipeline::transforms::red::DURATION_BOUNDS_SECONDS,
        "routes": state.export.red.routes(),
    }))
}

/// `GET /v1/predictions`: this node's; with `?scope=cluster`, every member's, gathered over
/// the mesh (members that did not answer in time are named in `missing`).
pub(super) async fn predictions(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult {
    use crate::agent::predict_fleet;
    match query.get("scope").map(String::as_str) {
        None | Some("node") => Ok(Json(predict_fleet::local(
            &state.predictor,
            &state.node_name,
        ))),
        Some("cluster") => Ok(Json(
            predict_fleet::gather(&state.consensus, &state.predictor, &state.node_name).await,
        )),
        Some(other) => Err(ApiError::bad_request(format!(
            "scope={other:?}: give scope=node (this node's, the default) or scope=cluster \
             (every member's)"
        ))),
    }
}

pub(super) async fn intensity(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(json!(state.intensity.status()))
}

pub(super) async fn probes(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(json!(state.probe_reports()))
}

/// The most recent spans this node's probes built, newest last (`?limit=N`, default 100, and
/// optional `service=NAME`).
pub(super) async fn spans(
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

/// `GET /v1/traces/{trace_id}`: the trace's spans from every member that answers in time.
pub(super) async fn trace(
    State(state): State<Arc<ApiState>>,
    axum::extract::Path(trace_id): axum::extract::Path<String>,
) -> ApiResult {
    use crate::agent::traces;
    let trace = traces::parse_trace_id(&trace_id).map_err(ApiError::bad_request)?;
    let view = traces::gather(&state.consensus, &state.traces, &state.node_name, trace).await;
    Ok(Json(json!(view)))
}

pub(super) async fn cluster(State(state): State<Arc<ApiState>>) -> Json<ClusterView> {
    Json(ClusterView {
        status: state.consensus.status(),
        node_name: state.node_name.clone(),
    })
}
