//! The replicated config over HTTP: read it, change it, revert it, and its history with a diff
//! per version.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use apiary_api_types::{
    Committed, ConfigPatch, ConfigView, HistoryEntry, HistoryView, RevertRequest,
    CONFIG_PATCH_SHAPE,
};
use apiary_config::{Intent, Proposal};
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::Json;

use super::access::{presented_scope, ApiCaller};
use super::{parse_body, ApiError, ApiState};
use apiary_consensus::caller::scope_for_change;
use apiary_consensus::tokens::Scope;
use apiary_consensus::Caller;
use axum::http::{HeaderMap, StatusCode};

/// `?consistency=local` (the default) reads what this node has applied, which a partitioned or
/// lagging follower may hold stale; `?consistency=linearizable` first asks the leader for a
/// ReadIndex (it confirms its leadership with a quorum) and waits until this node has applied
/// it, so the answer reflects every change acknowledged before the request.
pub(super) async fn get_config(
    State(state): State<Arc<ApiState>>,
    ApiCaller(caller): ApiCaller,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<ConfigView>, ApiError> {
    match query.get("consistency").map(String::as_str) {
        None | Some("local") => {}
        Some("linearizable") => state.consensus.read_barrier(&caller).await?,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "consistency={other:?}: give `local` (this node's applied state, the default) or \
                 `linearizable` (confirmed with the leader and a quorum first)"
            )))
        }
    }
    let history = state.consensus.config_state().history();
    Ok(Json(ConfigView {
        version: history.version(),
        config: history.current().redacted(),
    }))
}

pub(super) async fn patch_config(
    State(state): State<Arc<ApiState>>,
    ApiCaller(caller): ApiCaller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Committed>, ApiError> {
    let body: ConfigPatch = parse_body(&body, CONFIG_PATCH_SHAPE)?;
    let intent = Intent::Set {
        settings: body.changes.into_settings(),
    };
    commit(&state, &headers, caller, intent, body.comment, body.author).await
}

pub(super) async fn revert(
    State(state): State<Arc<ApiState>>,
    ApiCaller(caller): ApiCaller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Committed>, ApiError> {
    let body: RevertRequest = parse_body(&body, r#"{"version": 3, "comment": "why"}"#)?;
    let intent = Intent::Revert {
        to_version: body.version,
    };
    commit(&state, &headers, caller, intent, body.comment, body.author).await
}

/// Keys a `write` token may not change: where secrets are sent (`destination.*`: a new endpoint
/// would carry the stored API keys to it), who may read (`api.*`) and whose profiles are
/// trusted (`trust.*`). They need `admin`. The leader checks this again ([`scope_for_change`]); here it gives the caller a clear 403
/// before a round trip.
fn admin_for_guarded_keys(
    state: &ApiState,
    headers: &HeaderMap,
    proposal: &Proposal,
) -> Result<(), ApiError> {
    let (_, Some(key)) = scope_for_change(&state.consensus.config_state().history(), proposal)
    else {
        return Ok(());
    };
    match presented_scope(state, headers)? {
        Some(Scope::Admin) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "changing `{key}` needs an `admin` token: destinations and the prediction \
                 webhook receive the cluster's data and secrets, api.* decides who reads and \
                 trust.* whose profiles apply, so a `write` token may not change them"
            ),
        )),
    }
}

/// A proposal stamped now, as this node makes it (the agent's `[cluster]` seed is one too).
pub(crate) fn proposal(origin: &str, author: String, comment: String, intent: Intent) -> Proposal {
    Proposal {
        origin_node: origin.to_string(),
        author,
        comment,
        at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        intent,
        request_id: None,
    }
}

/// The change's idempotency key: the client's `Idempotency-Key` header, else one made here, so
/// that this node's own retries (a forward whose answer was lost) commit once too.
fn request_id(state: &ApiState, headers: &HeaderMap) -> Result<String, ApiError> {
    match headers.get("idempotency-key") {
        Some(value) => value.to_str().map(str::to_string).map_err(|_| {
            ApiError::bad_request(
                "the Idempotency-Key header is not printable ASCII: give a UUID, say".to_string(),
            )
        }),
        None => Ok(format!(
            "{}-{}",
            state.node_name,
            hex::encode(rand::random::<[u8; 12]>())
        )),
    }
}

/// Checks the change here first (a clear 400 without a round trip), then commits it through
/// the leader and waits until this node has applied it, so a read that follows sees it.
pub(super) async fn commit(
    state: &ApiState,
    headers: &HeaderMap,
    caller: Caller,
    intent: Intent,
    comment: String,
    author: Option<String>,
) -> Result<Json<Committed>, ApiError> {
    let author = author.unwrap_or_else(|| "api".into());
    let mut proposal = proposal(&state.node_name, author, comment, intent);
    proposal.request_id = Some(request_id(state, headers)?);
    let config_state = state.consensus.config_state();
    config_state.history().check(&proposal)?;
    admin_for_guarded_keys(state, headers, &proposal)?;
    let mut applied = config_state.subscribe();
    let version = state.consensus.propose(&caller, proposal).await?;
    let caught_up = applied.wait_for(|v| *v >= version);
    let _ = tokio::time::timeout(Duration::from_secs(2), caught_up).await;
    let history = config_state.history();
    let event = history
        .since(version.saturating_sub(1))
        .first()
        .map(apiary_config::ConfigEvent::redacted);
    Ok(Json(Committed { version, event }))
}

pub(super) async fn history(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<HistoryView>, ApiError> {
    let since = match query.get("since") {
        None => 0,
        Some(text) => text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "since={text:?} is not a version: give a non-negative integer"
            ))
        })?,
    };
    // A long history (a busy cluster's, or a soak's: 100 000 events) is read in pages.
    let limit = match query.get("limit") {
        None => usize::MAX,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if limit > 0 => limit,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit={text:?} is not a page size: give a positive integer (then ask again \
                     with since= the last version you got)"
                )))
            }
        },
    };
    // The page is copied out under the state machine's lock and diffed without it, on a
    // blocking thread: a soak's history of 100 000 events, folded whole for each page, held the
    // lock Raft applies under, and an async worker its heartbeats run on, for seconds a page (an
    // election storm while the chaos suite read histories). The configuration before the page
    // comes from the history's nearest checkpoint (a bounded replay).
    let config_state = state.consensus.config_state().clone();
    let view = tokio::task::spawn_blocking(move || -> Result<HistoryView, ApiError> {
        let (version, mut before, page) = {
            let history = config_state.history();
            let page: Vec<apiary_config::ConfigEvent> =
                history.since(since).iter().take(limit).cloned().collect();
            let before = history.config_at(since.min(history.version()))?;
            (history.version(), before, page)
        };
        // Each event with the keys it changed, old and new: the dashboard's per-version diff.
        let mut events = Vec::with_capacity(page.len());
        for event in &page {
            let after = before.apply(&event.change)?;
            let diff = apiary_config::diff(&before, &after)
                .iter()
                .map(apiary_config::KeyChange::redacted)
                .collect();
            events.push(HistoryEntry {
                event: event.redacted(),
                diff,
            });
            before = after;
        }
        Ok(HistoryView { version, events })
    })
    .await
    .map_err(|e| ApiError::internal(format!("reading the history failed: {e}")))??;
    Ok(Json(view))
}
