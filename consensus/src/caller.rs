//! Who asked for a change that is forwarded to the leader, and the leader's check of it.
//!
//! A member's certificate proves which node forwards a request, not that anyone with the
//! right to make the change asked for it: a compromised learner could otherwise mint admin
//! tokens or remove voters by forwarding made-up requests. So a forwarded change carries the
//! credential of its caller, and the leader checks it again: an API token against the
//! replicated (hashed) tokens and the scope the change needs, or "this node itself" (its own
//! duties, and callers holding its node-local `--token-file` token), which the leader takes only
//! from a voter, a CA holder that could sign itself any certificate anyway.

use std::fmt;

use apiary_config::{History, Intent, Proposal};
use serde::{Deserialize, Serialize};

use crate::tokens::Scope;
use crate::types::NodeId;
use crate::{ConfigState, WriteError};

/// The credential a change is made with.
#[derive(Clone, Serialize, Deserialize)]
pub enum Caller {
    /// An API token as presented (a leader needs the secret: members replicate only hashes,
    /// so a hash proves nothing).
    Token(String),
    /// The node itself: its own duties (bootstrap, admissions, CA steps) or its node-local
    /// admin token.
    Node,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Token(_) => f.write_str("Caller::Token(<secret>)"),
            Caller::Node => f.write_str("Caller::Node"),
        }
    }
}

/// A request forwarded to the leader with its caller's credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forwarded<R> {
    pub caller: Caller,
    pub request: R,
}

/// The scope a config change needs, and the key that makes it need `admin` if one does:
/// `destination.*` (a new endpoint would carry the stored secrets to it), `api.*` (who reads)
/// and `trust.*` (whose profiles are trusted). The keys are those the change would change, so a
/// revert or a profile that touches one of them needs `admin` as a set does.
pub fn scope_for_change(history: &History, proposal: &Proposal) -> (Scope, Option<String>) {
    let guarded = |key: &str| {
        let first = key.split('.').next().unwrap_or(key);
        // predict.webhook: like a destination, it decides where this cluster's data is sent.
        matches!(first, "api" | "trust")
            || first.starts_with("destination")
            || key.starts_with("predict.webhook")
            || key == "predict"
    };
    let changed = history
        .check(proposal)
        .and_then(|event| history.current().apply(&event.change));
    let keys: Vec<String> = match (changed, &proposal.intent) {
        (Ok(after), _) => apiary_config::diff(history.current(), &after)
            .into_iter()
            .map(|change| change.key)
            .collect(),
        // A change that does not apply is refused when it is committed; the keys it names
        // still decide who may try.
        (Err(_), Intent::Set { settings }) => settings.iter().map(|s| s.key.clone()).collect(),
        (Err(_), _) => Vec::new(),
    };
    match keys.into_iter().find(|k| guarded(k)) {
        Some(key) => (Scope::Admin, Some(key)),
        None => (Scope::Write, None),
    }
}

/// Whether the leader takes a change that needs `needed` from `caller`, forwarded by member
/// `sender`; `Err` says why not, for the refusal the API caller sees.
pub(crate) fn authorize(
    state: &ConfigState,
    sender: NodeId,
    sender_is_voter: bool,
    caller: &Caller,
    needed: Scope,
) -> Result<(), WriteError> {
    match caller {
        Caller::Node if sender_is_voter => Ok(()),
        Caller::Node => Err(WriteError::Forbidden(format!(
            "node {sender} is a learner: its own token (--token-file) and its own duties do not \
             authorize cluster changes; use a cluster token with the `{needed}` scope (`apiary \
             token create --scope {needed} NAME` on an admin token)"
        ))),
        Caller::Token(secret) => match state.find_token(secret) {
            Some(record) if record.scope >= needed => Ok(()),
            Some(record) => Err(WriteError::Forbidden(format!(
                "this change needs a `{needed}` token, and this one is `{}`",
                record.scope
            ))),
            None => Err(WriteError::Forbidden(
                "the leader does not know this token: it was revoked, or its creation has not \
                 reached the leader yet (retry in a second)"
                    .into(),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: serde_json::Value) -> Proposal {
        Proposal {
            origin_node: "n0".into(),
            request_id: None,
            author: "t".into(),
            comment: String::new(),
            at: "2026-12-01T00:00:00Z".into(),
            intent: Intent::Set {
                settings: vec![apiary_config::Setting {
                    key: key.into(),
                    value,
                }],
            },
        }
    }

    /// A revert that brings back a destination needs `admin` as setting it does (the keys a
    /// change changes decide, not only the keys it names).
    #[test]
    fn destinations_need_admin_however_they_change() {
        let mut history = History::default();
        let probe = set("probe.http.sample_rate", serde_json::json!(0.5));
        assert_eq!(scope_for_change(&history, &probe), (Scope::Write, None));
        let destination = set(
            "destination.main.endpoint",
            serde_json::json!("http://c:4318"),
        );
        assert_eq!(scope_for_change(&history, &destination).0, Scope::Admin);
        history.commit(&destination).unwrap();
        history
            .commit(&set("destination.main", serde_json::Value::Null))
            .unwrap();
        let revert = Proposal {
            intent: Intent::Revert { to_version: 1 },
            ..probe.clone()
        };
        let (scope, key) = scope_for_change(&history, &revert);
        assert_eq!(scope, Scope::Admin);
        let key = key.unwrap();
        assert!(key.starts_with("destination"), "{key}");
        let api = set("api.public_read", serde_json::json!(true));
        assert_eq!(scope_for_change(&history, &api).0, Scope::Admin);
        // The prediction webhook is sent the cluster's predictions, as a destination its spans.
        let webhook = set(
            "predict.webhook.url",
            serde_json::json!("https://hooks.example.com/x"),
        );
        assert_eq!(scope_for_change(&history, &webhook).0, Scope::Admin);
        assert!(apiary_config::profile_may_not_set("predict.webhook.url").is_some());
    }

    #[test]
    fn the_token_secret_never_shows_in_debug_output() {
        let text = format!("{:?}", Caller::Token("s3cr3t".into()));
        assert!(!text.contains("s3cr3t"), "{text}");
    }
}
