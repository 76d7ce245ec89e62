//! API tokens: created and revoked as replicated steps, stored as hashes.
//!
//! A token is shown once, when it is created; the state machine keeps only its SHA-256, its
//! name and its scope, so a copy of a data dir or a snapshot yields no usable credential. Every
//! node checks a presented token against the same replicated set, so a token made through any
//! node works on all of them, and a revocation takes effect everywhere once applied.

use std::collections::BTreeMap;

use apiary_config::ConfigError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token allows; each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `GET /metrics` only (a Prometheus scraper's `bearer_token`).
    Metrics,
    /// Every read: cluster, config, spans, RED, probes, export.
    Read,
    /// Reads and config changes (set, revert).
    Write,
    /// Everything: members, the CA, tokens.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Metrics, Scope::Read, Scope::Write, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Metrics => "metrics",
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Scope::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                format!("unknown scope {text:?}: scopes are metrics, read, write, admin")
            })
    }
}

/// A token as the cluster stores it: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Short and public: names the token in lists and revocations.
    pub id: String,
    pub name: String,
    pub scope: Scope,
    /// Hex SHA-256 of the whole token.
    pub sha256: String,
    pub created_at: String,
    pub created_by: String,
}

/// A change to the set of tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum TokenStep {
    Create(TokenRecord),
    Revoke { id: String },
}

/// The longest token name, so a list stays readable and an entry small.
pub const MAX_NAME_LEN: usize = 64;
/// The most tokens a cluster holds (each request looks one up).
pub const MAX_TOKENS: usize = 1000;

/// Hex SHA-256 of a presented token.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.trim().as_bytes()))
}

/// Applies a step to the token set; deterministic, so every member accepts or refuses alike.
pub fn apply_token_step(
    tokens: &mut BTreeMap<String, TokenRecord>,
    step: TokenStep,
) -> Result<(), ConfigError> {
    match step {
        TokenStep::Create(record) => {
            if record.name.is_empty() || record.name.chars().count() > MAX_NAME_LEN {
                return Err(ConfigError::invalid(
                    "token.name",
                    &record.name,
                    format!("a name of 1 to {MAX_NAME_LEN} characters"),
                ));
            }
            if tokens.contains_key(&record.id) || tokens.values().any(|t| t.sha256 == record.sha256)
            {
                return Err(ConfigError::invalid(
                    "token.id",
                    &record.id,
                    "an id no other token has (create the token again)",
                ));
            }
            if tokens.len() >= MAX_TOKENS {
                return Err(ConfigError::invalid(
                    "token",
                    tokens.len(),
                    format!("at most {MAX_TOKENS} tokens: revoke unused ones first"),
                ));
            }
            tokens.insert(record.id.clone(), record);
            Ok(())
        }
        TokenStep::Revoke { id } => match tokens.remove(&id) {
            Some(_) => Ok(()),
            None => Err(ConfigError::invalid(
                "token.id",
                &id,
                "the id of an existing token (see `apiary token list`)",
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, token: &str) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            name: format!("for {id}"),
            scope: Scope::Read,
            sha256: token_hash(token),
            created_at: "2026-12-01T00:00:00Z".into(),
            created_by: "test".into(),
        }
    }

    #[test]
    fn tokens_are_created_once_and_revoked_once() {
        let mut tokens = BTreeMap::new();
        apply_token_step(&mut tokens, TokenStep::Create(record("a", "secret-a"))).unwrap();
        assert!(apply_token_step(&mut tokens, TokenStep::Create(record("a", "other"))).is_err());
        assert!(apply_token_step(&mut tokens, TokenStep::Create(record("b", "secret-a"))).is_err());
        assert_eq!(tokens["a"].sha256, token_hash(" secret-a\n"));
        apply_token_step(&mut tokens, TokenStep::Revoke { id: "a".into() }).unwrap();
        assert!(apply_token_step(&mut tokens, TokenStep::Revoke { id: "a".into() }).is_err());
        let mut long = record("c", "secret-c");
        long.name = "x".repeat(MAX_NAME_LEN + 1);
        assert!(apply_token_step(&mut tokens, TokenStep::Create(long)).is_err());
    }

    #[test]
    fn scopes_include_the_lesser_ones() {
        assert!(Scope::Admin >= Scope::Write && Scope::Write >= Scope::Read);
        assert!(Scope::Read >= Scope::Metrics);
        assert_eq!("write".parse::<Scope>(), Ok(Scope::Write));
        assert!("root".parse::<Scope>().is_err());
    }
}
