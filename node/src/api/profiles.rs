//! Profiles over HTTP: the catalogue built into the node, judged against the running config, and
//! applying one (a catalogue profile or a file's text with its signature) as one config event.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apiary_api_types::{
    CatalogueProfile, ProfileApplied, ProfileApplyRequest, ProfilesView, TrustedKey,
    PROFILE_APPLY_SHAPE,
};
use apiary_config::{ClusterConfig, Intent, KeyChange, ProfileStamp};
use apiary_profile::{catalogue, signature, Checked};
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;

use super::access::ApiCaller;
use super::{parse_body, ApiError, ApiState};
use axum::http::HeaderMap;

/// The longest a time-limited profile may be applied for: an incident setting, not a season.
const MAX_TIME_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);

pub(super) async fn list(State(state): State<Arc<ApiState>>) -> Json<ProfilesView> {
    let history = state.consensus.config_state().history();
    let current = history.current();
    let catalogue = catalogue::CATALOGUE
        .iter()
        .filter_map(|entry| {
            // A catalogue profile that does not read is a build the catalogue test refused.
            let profile = apiary_profile::Profile::parse(entry.text).ok()?;
            let (signer, problems, diff) = match check(entry.text, Some(entry.signature), current) {
                Ok(checked) => (
                    Some(checked.signer),
                    Vec::new(),
                    diff(current, &checked.after),
                ),
                Err(error) => (None, vec![error.to_string()], Vec::new()),
            };
            Some(CatalogueProfile {
                metadata: profile.metadata,
                signer,
                problems,
                diff,
            })
        })
        .collect();
    let trusted_keys = current
        .trust
        .profile_keys
        .iter()
        .map(|key| TrustedKey {
            key_id: signature::public_key_id(key),
            public_key: key.clone(),
        })
        .collect();
    Json(ProfilesView {
        catalogue,
        active: history.pending_profile_ends(),
        trusted_keys,
    })
}

fn check(
    text: &str,
    signature: Option<&str>,
    base: &ClusterConfig,
) -> Result<Checked, apiary_profile::ProfileError> {
    apiary_profile::check(text, signature, base, false, env!("CARGO_PKG_VERSION"))
}

fn diff(before: &ClusterConfig, after: &ClusterConfig) -> Vec<KeyChange> {
    apiary_config::diff(before, after)
        .iter()
        .map(KeyChange::redacted)
        .collect()
}

pub(super) async fn apply(
    State(state): State<Arc<ApiState>>,
    ApiCaller(caller): ApiCaller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ProfileApplied>, ApiError> {
    let request: ProfileApplyRequest = parse_body(&body, PROFILE_APPLY_SHAPE)?;
    let (text, signature) = match (&request.name, &request.profile) {
        (Some(name), None) => {
            let entry = catalogue::find(name).ok_or_else(|| {
                let names: Vec<&str> = catalogue::CATALOGUE.iter().map(|e| e.name).collect();
                ApiError::bad_request(format!(
                    "no catalogue profile `{name}`: this node has {} (or send the profile's \
                     text as `profile`)",
                    names.join(", ")
                ))
            })?;
            (entry.text.to_string(), Some(entry.signature.to_string()))
        }
        (None, Some(text)) => (text.clone(), request.signature.clone()),
        _ => {
            return Err(ApiError::bad_request(format!(
                "give either `name` (a catalogue profile) or `profile` (a file's text), not both \
                 nor neither: {PROFILE_APPLY_SHAPE}"
            )))
        }
    };
    let (checked, before) = {
        let history = state.consensus.config_state().history();
        let current = history.current().clone();
        let checked = apiary_profile::check(
            &text,
            signature.as_deref(),
            &current,
            request.allow_unsigned,
            env!("CARGO_PKG_VERSION"),
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        (checked, current)
    };
    let expires_at_unix = expiry(&request, &checked)?;
    let metadata = &checked.profile.metadata;
    let stamp = ProfileStamp {
        name: metadata.name.clone(),
        version: metadata.version.clone(),
        signer: checked.signer.clone(),
        expires_at_unix,
    };
    let mut answer = ProfileApplied {
        dry_run: request.dry_run,
        name: stamp.name.clone(),
        version: stamp.version.clone(),
        signer: stamp.signer.clone(),
        expires_at_unix,
        diff: diff(&before, &checked.after),
        committed: None,
    };
    if request.dry_run {
        return Ok(Json(answer));
    }
    let comment = if request.comment.is_empty() {
        format!("profile {} v{}", stamp.name, stamp.version)
    } else {
        request.comment.clone()
    };
    let intent = Intent::ApplyProfile {
        settings: checked.profile.plain_settings(),
        profile: stamp,
    };
    let Json(committed) =
        super::config::commit(&state, &headers, caller, intent, comment, request.author).await?;
    answer.committed = Some(committed);
    Ok(Json(answer))
}

/// When the profile ends: `for` if given, else its own time limit, else never.
fn expiry(request: &ProfileApplyRequest, checked: &Checked) -> Result<Option<u64>, ApiError> {
    let limit = match &request.duration {
        Some(text) => Some(humantime::parse_duration(text).map_err(|e| {
            ApiError::bad_request(format!(
                "for={text:?} is not a duration ({e}): give e.g. 15m or 2h"
            ))
        })?),
        None => checked.profile.time_limit(),
    };
    let Some(limit) = limit else {
        return Ok(None);
    };
    if limit < Duration::from_secs(1) || limit > MAX_TIME_LIMIT {
        return Err(ApiError::bad_request(format!(
            "a time limit of {} is out of range: from 1s to {}",
            humantime::format_duration(limit),
            humantime::format_duration(MAX_TIME_LIMIT)
        )));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(Some(now + limit.as_secs()))
}
