//! Join tokens: what lets a new node in, created, revoked and used as replicated steps.
//!
//! A join token is `apiary1.<CA fingerprint>.<secret>`; the cluster keeps only the secret's
//! SHA-256, when the token expires, whether it may be used once, and who used it. Any member
//! checks a presented token against the same set; using a single-use token is a replicated
//! step too, so two nodes racing with one token through two members cannot both get in. A CA
//! rotation's finish clears every join token: the old ones pin a CA no longer in use.

use std::collections::BTreeMap;

use apiary_config::ConfigError;
use serde::{Deserialize, Serialize};

use crate::tokens::MAX_NAME_LEN;
/// A node id (as [`crate::types::NodeId`], which imports this module).
type NodeId = u64;

/// The most join tokens a cluster holds at once.
pub const MAX_JOIN_TOKENS: usize = 100;
/// The uses a token remembers (the latest ones), so a long-lived token stays small.
const MAX_USES_KEPT: usize = 100;

/// A join token as the cluster stores it: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    /// Short and public: names the token in lists and revocations.
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the token's secret (hex).
    pub sha256: String,
    pub created_at: String,
    pub created_by: String,
    /// Seconds since the epoch after which the token admits no one.
    pub expires_at_unix: u64,
    pub single_use: bool,
    /// Who joined with it, latest last.
    pub uses: Vec<JoinUse>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinUse {
    pub node_id: NodeId,
    pub node_name: String,
    pub at_unix: u64,
    /// Hex SHA-256 of the joiner's public key, so a joiner whose answer was lost gets its
    /// certificate again on retry rather than finding its single-use token spent.
    #[serde(default)]
    pub key_sha256: String,
}

/// A change to the set of join tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JoinTokenStep {
    Create(JoinTokenRecord),
    Revoke {
        id: String,
    },
    /// A CA holder is about to sign a joining node's certificate with this token. `at_unix` is
    /// the holder's clock, carried in the entry so every member judges expiry alike.
    Use {
        id: String,
        node_id: NodeId,
        node_name: String,
        at_unix: u64,
        #[serde(default)]
        key_sha256: String,
    },
}

fn invalid(key: &str, value: impl std::fmt::Display, expected: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, value, expected.into())
}

/// Applies a step to the join tokens; deterministic, so every member accepts or refuses alike.
pub fn apply_join_token_step(
    tokens: &mut BTreeMap<String, JoinTokenRecord>,
    step: JoinTokenStep,
) -> Result<(), ConfigError> {
    match step {
        JoinTokenStep::Create(record) => {
            if record.name.is_empty() || record.name.chars().count() > MAX_NAME_LEN {
                return Err(invalid(
                    "join_token.name",
                    &record.name,
                    format!("a name of 1 to {MAX_NAME_LEN} characters"),
                ));
            }
            if tokens.contains_key(&record.id) || tokens.values().any(|t| t.sha256 == record.sha256)
            {
                return Err(invalid(
                    "join_token.id",
                    &record.id,
                    "an id no other join token has (create the token again)",
                ));
            }
            if tokens.len() >= MAX_JOIN_TOKENS {
                return Err(invalid(
                    "join_token",
                    tokens.len(),
                    format!("at most {MAX_JOIN_TOKENS} join tokens: revoke unused ones first"),
                ));
            }
            tokens.insert(record.id.clone(), record);
            Ok(())
        }
        JoinTokenStep::Revoke { id } => match tokens.remove(&id) {
            Some(_) => Ok(()),
            None => Err(invalid(
                "join_token.id",
                &id,
                "the id of an existing join token (see `apiary join-token list`)",
            )),
        },
        JoinTokenStep::Use {
            id,
            node_id,
            node_name,
            at_unix,
            key_sha256,
        } => {
            if tokens
                .values()
                .any(|t| t.uses.iter().any(|u| u.node_id == node_id))
            {
                return Err(invalid(
                    "join_token.node_id",
                    node_id,
                    "an id no join granted before (the holder picks a new one)",
                ));
            }
            let Some(token) = tokens.get_mut(&id) else {
                return Err(invalid(
                    "join_token",
                    &id,
                    "a join token that exists: this one was revoked (or cleared by a CA \
                     rotation); ask an operator for a new one (`apiary join-token create`)",
                ));
            };
            if at_unix > token.expires_at_unix {
                return Err(invalid(
                    "join_token",
                    &id,
                    "a join token that has not expired: ask an operator for a new one \
                     (`apiary join-token create`)",
                ));
            }
            if token.single_use && !token.uses.is_empty() {
                return Err(invalid(
                    "join_token",
                    &id,
                    "an unused token: this single-use join token was already used; ask an \
                     operator for a new one (`apiary join-token create`)",
                ));
            }
            token.uses.push(JoinUse {
                node_id,
                node_name,
                at_unix,
                key_sha256,
            });
            if token.uses.len() > MAX_USES_KEPT {
                token.uses.remove(0);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, single_use: bool) -> JoinTokenRecord {
        JoinTokenRecord {
            id: id.into(),
            name: format!("for {id}"),
            sha256: format!("hash of {id}"),
            created_at: "2026-12-01T00:00:00Z".into(),
            created_by: "test".into(),
            expires_at_unix: 1000,
            single_use,
            uses: Vec::new(),
        }
    }

    fn use_at(id: &str, node_id: NodeId, at_unix: u64) -> JoinTokenStep {
        JoinTokenStep::Use {
            id: id.into(),
            node_id,
            node_name: format!("n{node_id}"),
            at_unix,
            key_sha256: format!("key of {node_id}"),
        }
    }

    #[test]
    fn single_use_tokens_admit_once_and_every_token_expires() {
        let mut tokens = BTreeMap::new();
        apply_join_token_step(&mut tokens, JoinTokenStep::Create(record("once", true))).unwrap();
        apply_join_token_step(&mut tokens, JoinTokenStep::Create(record("many", false))).unwrap();
        apply_join_token_step(&mut tokens, use_at("once", 1, 10)).unwrap();
        let error = apply_join_token_step(&mut tokens, use_at("once", 2, 11)).unwrap_err();
        assert!(error.to_string().contains("already used"), "{error}");
        apply_join_token_step(&mut tokens, use_at("many", 3, 12)).unwrap();
        apply_join_token_step(&mut tokens, use_at("many", 4, 1000)).unwrap();
        let error = apply_join_token_step(&mut tokens, use_at("many", 5, 1001)).unwrap_err();
        assert!(error.to_string().contains("expired"), "{error}");
        assert_eq!(tokens["many"].uses.len(), 2);
        apply_join_token_step(&mut tokens, JoinTokenStep::Revoke { id: "many".into() }).unwrap();
        let error = apply_join_token_step(&mut tokens, use_at("many", 6, 13)).unwrap_err();
        assert!(error.to_string().contains("revoked"), "{error}");
    }

    #[test]
    fn uses_kept_are_bounded() {
        let mut tokens = BTreeMap::new();
        apply_join_token_step(&mut tokens, JoinTokenStep::Create(record("t", false))).unwrap();
        for node in 0..(MAX_USES_KEPT as u64 + 5) {
            apply_join_token_step(&mut tokens, use_at("t", node, 1)).unwrap();
        }
        assert_eq!(tokens["t"].uses.len(), MAX_USES_KEPT);
        assert_eq!(tokens["t"].uses[0].node_id, 5);
    }
}
