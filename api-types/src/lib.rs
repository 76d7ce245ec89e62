//! The bodies of Apiary's HTTP API: what the node's handlers answer and take, what the CLI reads
//! and sends, and what the tests check, in one place. A renamed or retyped field breaks the
//! build of all three instead of a client at run time.
//!
//! Routes whose answers are another crate's types (`/v1/probes`, `/v1/spans`, `/v1/red`,
//! `/v1/intensity`, `/v1/export`) answer those types' JSON; this crate covers the rest.

use std::collections::BTreeMap;

pub use apiary_config::{ClusterConfig, ConfigEvent, KeyChange, Setting};
pub use apiary_consensus::tokens::Scope;
pub use apiary_consensus::{ClusterStatus, MemberStatus, Role};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Every error: what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`; `degraded` (still 200) while `warnings` is not empty; or `failing` (answered with
    /// 503) while `problems` is not empty.
    pub status: String,
    pub node: String,
    pub leader_known: bool,
    pub version: u64,
    /// What stops this node from doing its part, each with what to do (for example: its Raft
    /// log cannot be written because the data dir's disk is full).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// What makes this node slow at its part, each with what to do (for example: a flush of
    /// its Raft log took longer than an election timeout).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `GET /v1/cluster`: the consensus status as this node sees it, with this node's name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    #[serde(flatten)]
    pub status: ClusterStatus,
    pub node_name: String,
}

/// `GET /v1/config`: the applied config, secrets redacted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigView {
    pub version: u64,
    pub config: ClusterConfig,
}

/// The settings of a change, as a list or as a map of dotted keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Changes {
    List(Vec<Setting>),
    Map(BTreeMap<String, Value>),
}

impl Changes {
    pub fn into_settings(self) -> Vec<Setting> {
        match self {
            Changes::List(list) => list,
            Changes::Map(map) => map
                .into_iter()
                .map(|(key, value)| Setting { key, value })
                .collect(),
        }
    }
}

/// `PATCH /v1/config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigPatch {
    pub changes: Changes,
    #[serde(default)]
    pub comment: String,
    pub author: Option<String>,
}

/// How a `PATCH /v1/config` body looks, for the error that refuses another.
pub const CONFIG_PATCH_SHAPE: &str = r#"{"changes": [{"key": "probe.http.sample_rate", "value": 0.2}], "comment": "why"} or {"changes": {"probe.http.sample_rate": 0.2}}"#;

/// `POST /v1/config/revert`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevertRequest {
    pub version: u64,
    #[serde(default)]
    pub comment: String,
    pub author: Option<String>,
}

/// The answer to a change or a revert: the version it committed as, and its event (redacted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Committed {
    pub version: u64,
    pub event: Option<ConfigEvent>,
}

/// `GET /v1/config/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryView {
    pub version: u64,
    pub events: Vec<HistoryEntry>,
}

/// One event with the keys it changed, old and new (the dashboard's per-version diff).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(flatten)]
    pub event: ConfigEvent,
    pub diff: Vec<KeyChange>,
}

/// `GET /v1/profiles`: the catalogue built into this node, judged against the running config,
/// the time-limited profiles still active, and the keys the cluster trusts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfilesView {
    pub catalogue: Vec<CatalogueProfile>,
    pub active: Vec<apiary_config::ActiveProfile>,
    pub trusted_keys: Vec<TrustedKey>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogueProfile {
    #[serde(flatten)]
    pub metadata: apiary_profile::Metadata,
    /// How its signature checks out with this cluster's trusted keys.
    pub signer: Option<apiary_config::Signer>,
    /// Why it could not be applied here now (an untrusted signature, a setting the running
    /// config refuses), or empty.
    pub problems: Vec<String>,
    /// What applying it would change on the running config.
    pub diff: Vec<KeyChange>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustedKey {
    pub key_id: Option<String>,
    pub public_key: String,
}

/// `POST /v1/profiles/apply`: a catalogue profile by `name`, or a profile file's text with its
/// `.minisig`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProfileApplyRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Only check and answer the diff; commit nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Apply even without a signature by a trusted key (recorded as unverified).
    #[serde(default)]
    pub allow_unsigned: bool,
    /// How long it stays (`15m`): it then ends by itself. Overrides the profile's time_limit.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub author: Option<String>,
}

pub const PROFILE_APPLY_SHAPE: &str = r#"{"name": "nginx-frontend", "dry_run": true} or {"profile": "<the TOML text>", "signature": "<the .minisig text>", "for": "15m", "comment": "why"}"#;

/// The answer to `POST /v1/profiles/apply`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileApplied {
    pub dry_run: bool,
    pub name: String,
    pub version: String,
    pub signer: apiary_config::Signer,
    pub expires_at_unix: Option<u64>,
    /// What it changes (or would) on the running config.
    pub diff: Vec<KeyChange>,
    /// The event it committed as; `None` for a dry run.
    pub committed: Option<Committed>,
}

/// `DELETE /v1/members/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRemoved {
    pub removed: u64,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub name: String,
    pub scope: Scope,
    pub author: Option<String>,
}

/// The answer to `POST /v1/tokens`: the only place a token's secret appears.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub token: String,
    pub note: String,
}

/// A token as `GET /v1/tokens` lists it: never the secret, nor its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub created_at: String,
    pub created_by: String,
}

/// `GET /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// `DELETE /v1/tokens/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRevoked {
    pub revoked: String,
}

/// `POST /v1/join-tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinTokenRequest {
    pub name: String,
    /// How long the token admits nodes, e.g. `1h`, `30days` (default 1h).
    pub ttl: Option<String>,
    /// The token admits one node, then no more.
    #[serde(default)]
    pub single_use: bool,
    pub author: Option<String>,
}

/// The answer to `POST /v1/join-tokens`: the only place a join token's secret appears.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinTokenCreated {
    pub id: String,
    pub name: String,
    pub token: String,
    pub expires_at: String,
    pub single_use: bool,
    pub note: String,
}

/// A node that joined with a token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinTokenUse {
    pub node_id: u64,
    pub node_name: String,
    pub at: String,
}

/// A join token as `GET /v1/join-tokens` lists it: never the secret, nor its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinTokenInfo {
    pub id: String,
    pub name: String,
    pub created_at: String,
    pub created_by: String,
    pub expires_at: String,
    /// Expired, or single-use and used: it admits no one, but stays listed until revoked.
    pub spent: bool,
    pub single_use: bool,
    pub uses: Vec<JoinTokenUse>,
}

/// `GET /v1/join-tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinTokenList {
    pub join_tokens: Vec<JoinTokenInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_entry_reads_back_what_the_node_writes() {
        let mut history = apiary_config::History::default();
        let proposal = apiary_config::Proposal {
            origin_node: "n".into(),
            request_id: None,
            author: "a".into(),
            comment: "c".into(),
            at: "2026-12-01T00:00:00Z".into(),
            intent: apiary_config::Intent::Set {
                settings: vec![Setting {
                    key: "probe.http.sample_rate".into(),
                    value: serde_json::json!(0.5),
                }],
            },
        };
        let event = history.commit(&proposal).unwrap().clone();
        let entry = HistoryEntry {
            event,
            diff: apiary_config::diff(&ClusterConfig::default(), history.current()),
        };
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(
            json["version"], 1,
            "the event's fields sit at the top: {json}"
        );
        assert_eq!(json["change"]["kind"], "set");
        let back: HistoryEntry = serde_json::from_value(json).unwrap();
        assert_eq!(back, entry);
        let patch: ConfigPatch =
            serde_json::from_str(r#"{"changes": {"probe.http.sample_rate": 0.2}}"#).unwrap();
        assert_eq!(
            patch.changes.into_settings()[0].key,
            "probe.http.sample_rate"
        );
    }
}

/// `GET /v1/traces/{trace_id}`: the spans of one trace that the members still hold, gathered
/// over the mesh. `missing` names the members that did not answer (the answer is then partial).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TraceView {
    pub trace_id: String,
    /// Every span found, oldest first, each as `GET /v1/spans` shows it plus `node`: the member
    /// that exported it.
    pub spans: Vec<Value>,
    /// The members that answered (this node first).
    pub answered: Vec<String>,
    pub missing: Vec<MissingMember>,
}

/// A member whose spans are not in a trace answer, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MissingMember {
    pub node: String,
    pub error: String,
}
