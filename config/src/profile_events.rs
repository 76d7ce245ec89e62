//! Profiles in the event log: a profile applied as one change stamped with its name, version and
//! signer, and the end of a time-limited one.
//!
//! The end of a profile is materialized from the history alone (what each key was before the
//! profile, and whether it still holds the profile's value), so every node that commits it
//! computes the same change, whichever node's clock decided it was time.

use serde::{Deserialize, Serialize};

use crate::{value_at, Change, ConfigError, History, Setting};

/// A profile's name or version, in characters.
pub const MAX_PROFILE_NAME_CHARS: usize = 64;
/// Who signed a profile, or why it was applied unverified, in characters.
pub const MAX_SIGNER_CHARS: usize = 300;

/// What the history keeps of an applied profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileStamp {
    pub name: String,
    pub version: String,
    pub signer: Signer,
    /// Seconds since the epoch at which a time-limited profile ends (the leader then commits
    /// its end); `None` for a profile that stays until changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_unix: Option<u64>,
}

/// How the node that took the profile judged its signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Signer {
    /// Verified with one of the cluster's `trust.profile_keys`.
    Trusted {
        /// The minisign key id, 16 hex digits.
        key_id: String,
        /// The signature's trusted comment (signed with the profile).
        comment: String,
    },
    /// Applied with `--allow-unsigned`: `reason` says what was missing.
    Unverified { reason: String },
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signer::Trusted { key_id, comment } if comment.is_empty() => {
                write!(f, "signed by key {key_id}")
            }
            Signer::Trusted { key_id, comment } => {
                write!(f, "signed by key {key_id} ({comment})")
            }
            Signer::Unverified { reason } => write!(f, "UNVERIFIED ({reason}; --allow-unsigned)"),
        }
    }
}

impl ProfileStamp {
    /// Refuses a stamp too large for every node's history.
    pub(crate) fn check_limits(&self) -> Result<(), ConfigError> {
        let chars = |text: &str| text.chars().count();
        for (field, value) in [
            ("profile.name", &self.name),
            ("profile.version", &self.version),
        ] {
            if value.is_empty() || chars(value) > MAX_PROFILE_NAME_CHARS {
                return Err(ConfigError::invalid(
                    field,
                    format!("({} characters)", chars(value)),
                    format!("1 to {MAX_PROFILE_NAME_CHARS} characters"),
                ));
            }
        }
        let signer = match &self.signer {
            Signer::Trusted { key_id, comment } => chars(key_id) + chars(comment),
            Signer::Unverified { reason } => chars(reason),
        };
        if signer > MAX_SIGNER_CHARS {
            return Err(ConfigError::invalid(
                "profile.signer",
                format!("({signer} characters)"),
                format!("at most {MAX_SIGNER_CHARS} characters"),
            ));
        }
        Ok(())
    }
}

/// Keys a profile may not set: whom the cluster trusts (a profile must not vouch for its own
/// publisher), who may read the API, and where spans and the stored secrets are sent.
pub fn profile_may_not_set(key: &str) -> Option<&'static str> {
    let first = key.split('.').next().unwrap_or(key);
    match first {
        "trust" => Some("a profile may not change whom the cluster trusts (`trust.*`)"),
        "api" => Some("a profile may not change who may read the API (`api.*`)"),
        "predict" if key.starts_with("predict.webhook") || key == "predict" => Some(
            "a profile may not set the prediction webhook (`predict.webhook.*`): it decides \
             where the cluster's data is sent; set it with `apiary config set`",
        ),
        "destination" | "destinations" => Some(
            "a profile may not add or change destinations (`destination.*`): they receive the \
             spans and the stored secrets; set them with `apiary config set`",
        ),
        _ => None,
    }
}

/// A time-limited profile that has not ended yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveProfile {
    /// The config version that applied it.
    pub version: u64,
    pub name: String,
    pub profile_version: String,
    pub expires_at_unix: u64,
}

impl History {
    /// Time-limited profiles applied and not ended yet, oldest first.
    pub fn pending_profile_ends(&self) -> Vec<ActiveProfile> {
        let mut pending: Vec<ActiveProfile> = Vec::new();
        for event in self.events() {
            match &event.change {
                Change::Profile { profile, .. } => {
                    if let Some(expires_at_unix) = profile.expires_at_unix {
                        pending.push(ActiveProfile {
                            version: event.version,
                            name: profile.name.clone(),
                            profile_version: profile.version.clone(),
                            expires_at_unix,
                        });
                    }
                }
                Change::ProfileEnded {
                    profile_version, ..
                } => pending.retain(|p| p.version != *profile_version),
                _ => {}
            }
        }
        pending
    }

    /// The settings that end the time-limited profile applied at `version`: each key it set
    /// goes back to its value from before, unless a later change gave it another value (that
    /// change is kept).
    pub(crate) fn profile_end(&self, version: u64) -> Result<Vec<Setting>, ConfigError> {
        let not_pending = || {
            ConfigError::invalid(
                "profile_version",
                version,
                "the version of a time-limited profile that has not ended (see \
                 `GET /v1/profiles`: active)",
            )
        };
        if !self
            .pending_profile_ends()
            .iter()
            .any(|p| p.version == version)
        {
            return Err(not_pending());
        }
        let Some(Change::Profile { settings, .. }) = self
            .events()
            .get(version.saturating_sub(1) as usize)
            .map(|e| &e.change)
        else {
            return Err(not_pending());
        };
        let before = self.config_at(version - 1)?;
        let applied = self.config_at(version)?;
        let mut keys: Vec<&str> = settings.iter().map(|s| s.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        Ok(keys
            .into_iter()
            .filter(|key| value_at(self.current(), key) == value_at(&applied, key))
            .filter_map(|key| {
                Some(Setting {
                    key: key.to_string(),
                    value: value_at(&before, key)?,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Intent, Proposal};
    use serde_json::json;

    fn proposal(intent: Intent) -> Proposal {
        Proposal {
            origin_node: "n0".into(),
            request_id: None,
            author: "t".into(),
            comment: String::new(),
            at: "2026-12-02T00:00:00Z".into(),
            intent,
        }
    }

    fn setting(key: &str, value: serde_json::Value) -> Setting {
        Setting {
            key: key.into(),
            value,
        }
    }

    fn incident(expires: Option<u64>) -> Intent {
        Intent::ApplyProfile {
            settings: vec![
                setting("probe.http.sample_rate", json!(1.0)),
                setting("probe.http.capture_bytes", json!(4096)),
                setting("probe.tcp.enabled", json!(false)),
            ],
            profile: ProfileStamp {
                name: "incident".into(),
                version: "1".into(),
                signer: Signer::Unverified {
                    reason: "no signature".into(),
                },
                expires_at_unix: expires,
            },
        }
    }

    #[test]
    fn a_profile_is_one_event_and_its_end_restores_only_what_it_still_holds() {
        let mut history = History::default();
        history
            .commit(&proposal(Intent::Set {
                settings: vec![setting("probe.http.sample_rate", json!(0.5))],
            }))
            .unwrap();
        let event = history.commit(&proposal(incident(Some(1000)))).unwrap();
        assert_eq!(event.version, 2);
        assert!(matches!(event.change, Change::Profile { .. }));
        assert_eq!(history.current().probes.http.capture_bytes, 4096);
        assert_eq!(history.pending_profile_ends().len(), 1);

        // Someone turns TCP back on by hand while the profile is active: the end keeps that.
        history
            .commit(&proposal(Intent::Set {
                settings: vec![setting("probe.tcp.enabled", json!(true))],
            }))
            .unwrap();
        history
            .commit(&proposal(Intent::EndProfile { version: 2 }))
            .unwrap();
        let current = history.current();
        assert_eq!(current.probes.http.sample_rate, 0.5);
        assert_eq!(current.probes.http.capture_bytes, 256);
        assert!(current.probes.tcp.enabled);
        assert!(history.pending_profile_ends().is_empty());

        // Ended once only; a profile without a time limit has no end; nor has a plain change.
        let twice = history.commit(&proposal(Intent::EndProfile { version: 2 }));
        assert!(twice.is_err());
        history.commit(&proposal(incident(None))).unwrap();
        assert!(history
            .commit(&proposal(Intent::EndProfile { version: 5 }))
            .is_err());
        assert!(history
            .commit(&proposal(Intent::EndProfile { version: 1 }))
            .is_err());
        // A replay gives the same state.
        let replayed = History::from_events(history.events().to_vec()).unwrap();
        assert_eq!(replayed.current(), history.current());
    }

    #[test]
    fn a_profile_may_not_touch_trust_access_or_destinations() {
        let history = History::default();
        for key in [
            "trust.profile_keys",
            "api.public_read",
            "destination.x.endpoint",
        ] {
            let intent = Intent::ApplyProfile {
                settings: vec![setting(key, json!([]))],
                profile: ProfileStamp {
                    name: "sneaky".into(),
                    version: "1".into(),
                    signer: Signer::Unverified {
                        reason: "test".into(),
                    },
                    expires_at_unix: None,
                },
            };
            let error = history.check(&proposal(intent)).unwrap_err();
            assert!(error.to_string().contains("may not"), "{key}: {error}");
        }
    }
}
