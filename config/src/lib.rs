//! Apiary's replicated cluster configuration.
//!
//! The configuration is event-sourced: every committed change is a [`ConfigEvent`] with a version
//! one above the previous one, and the current [`ClusterConfig`] is the fold of those events over
//! the defaults ([`fold`]). A revert is a new event that restores an earlier version, so history is
//! never rewritten. Changes are addressed with the CLI's dotted keys (`probe.http.sample_rate`) and
//! checked here, so every entry point (HTTP API, CLI, Raft apply) refuses the same bad input with
//! the same message.

mod keys;
mod model;
mod profile_events;
mod secret;

pub use keys::{apply_settings, diff, flatten, parse_cli_assignment, value_at, KeyChange, Setting};
pub use model::*;
pub use profile_events::{
    profile_may_not_set, ActiveProfile, ProfileStamp, Signer, MAX_PROFILE_NAME_CHARS,
    MAX_SIGNER_CHARS,
};
pub use secret::{is_marker, redact, redact_endpoint, redact_webhook};

use serde::{Deserialize, Serialize};

/// Why a change was refused; every variant names the field and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ConfigError {
    #[error("unknown key `{key}`: {hint}")]
    UnknownKey { key: String, hint: String },
    #[error("invalid value {value} for `{key}`: expected {expected}")]
    Invalid {
        key: String,
        value: String,
        expected: String,
    },
    #[error(
        "cannot revert to version {requested}: versions run from 0 (the defaults) to {latest}"
    )]
    NoSuchVersion { requested: u64, latest: u64 },
    #[error("the change lists no settings: give at least one `key=value`")]
    Empty,
    #[error(
        "the history's event {position} is version {found}, not {position}: an event was lost or \
         is out of place (a damaged data dir?); remove this node's data dir and join it again"
    )]
    OutOfSequence { position: u64, found: u64 },
}

impl ConfigError {
    pub fn invalid(
        key: impl Into<String>,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}

/// What a client asks for, before the cluster gives it a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Intent {
    Set {
        settings: Vec<Setting>,
    },
    Revert {
        to_version: u64,
    },
    /// A profile's settings as one change, with its name, version and signer.
    ApplyProfile {
        settings: Vec<Setting>,
        profile: ProfileStamp,
    },
    /// The end of the time-limited profile applied at `version` (proposed by the leader when
    /// its time is up).
    EndProfile {
        version: u64,
    },
}

/// A change on its way into the log, with who asked for it and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub origin_node: String,
    pub author: String,
    pub comment: String,
    /// RFC 3339 time at which the origin node received the request.
    pub at: String,
    pub intent: Intent,
    /// The request's idempotency key: a proposal whose key one of the last
    /// [`IDEMPOTENCY_WINDOW`] events carries is not applied again (a retried write, by the
    /// client or by a follower's forward after a lost answer, commits once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// How many recent events a request id is remembered for: a retry of a write that was
/// followed by more than this many other changes commits again.
pub const IDEMPOTENCY_WINDOW: usize = 1024;
/// A request id, in characters.
pub const MAX_REQUEST_ID_CHARS: usize = 128;

/// A change's comment, in characters: room for a paragraph, not for a file.
pub const MAX_COMMENT_CHARS: usize = 1000;
/// A change's author, in characters.
pub const MAX_AUTHOR_CHARS: usize = 100;
/// Settings in one change: every event is read whole by every node and the dashboard.
pub const MAX_SETTINGS_PER_CHANGE: usize = 100;

impl Proposal {
    /// Refuses a change too large to keep in every node's history.
    fn check_limits(&self) -> Result<(), ConfigError> {
        let chars = |text: &str| text.chars().count();
        if chars(&self.comment) > MAX_COMMENT_CHARS {
            return Err(ConfigError::invalid(
                "comment",
                format!("({} characters)", chars(&self.comment)),
                format!("at most {MAX_COMMENT_CHARS} characters"),
            ));
        }
        if let Some(id) = &self.request_id {
            if id.is_empty()
                || chars(id) > MAX_REQUEST_ID_CHARS
                || id.chars().any(|c| c.is_control())
            {
                return Err(ConfigError::invalid(
                    "Idempotency-Key",
                    format!("({} characters)", chars(id)),
                    format!(
                        "1 to {MAX_REQUEST_ID_CHARS} printable characters naming this change \
                         (a UUID, say), the same on every retry"
                    ),
                ));
            }
        }
        if chars(&self.author) > MAX_AUTHOR_CHARS {
            return Err(ConfigError::invalid(
                "author",
                format!("({} characters)", chars(&self.author)),
                format!("at most {MAX_AUTHOR_CHARS} characters"),
            ));
        }
        if let Intent::ApplyProfile { profile, .. } = &self.intent {
            profile.check_limits()?;
        }
        if let Intent::Set { settings } | Intent::ApplyProfile { settings, .. } = &self.intent {
            if settings.len() > MAX_SETTINGS_PER_CHANGE {
                return Err(ConfigError::invalid(
                    "changes",
                    format!("({} settings)", settings.len()),
                    format!("at most {MAX_SETTINGS_PER_CHANGE} settings in one change: split it"),
                ));
            }
        }
        Ok(())
    }
}

/// A committed change as it is stored in the log. Reverts carry the configuration they restore,
/// so a fold never needs to look back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    Set {
        settings: Vec<Setting>,
    },
    Revert {
        to_version: u64,
        restored: Box<ClusterConfig>,
    },
    /// A profile applied as one change.
    Profile {
        settings: Vec<Setting>,
        profile: ProfileStamp,
    },
    /// A time-limited profile's end: `settings` put back what it changed (and nothing a later
    /// change set since), so it may be empty.
    ProfileEnded {
        profile_version: u64,
        settings: Vec<Setting>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigEvent {
    pub version: u64,
    pub at: String,
    pub origin_node: String,
    pub author: String,
    pub comment: String,
    pub change: Change,
    /// The proposal's idempotency key, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ClusterConfig {
    /// The configuration after `change`; `self` is left as it was if the change is refused.
    pub fn apply(&self, change: &Change) -> Result<ClusterConfig, ConfigError> {
        match change {
            Change::Set { settings }
            | Change::Profile { settings, .. }
            | Change::ProfileEnded { settings, .. } => apply_settings(self, settings),
            Change::Revert { restored, .. } => Ok((**restored).clone()),
        }
    }
}

/// The configuration after `events`, starting from the defaults.
pub fn fold<'a>(
    events: impl IntoIterator<Item = &'a ConfigEvent>,
) -> Result<ClusterConfig, ConfigError> {
    fold_from(ClusterConfig::default(), events)
}

fn fold_from<'a>(
    start: ClusterConfig,
    events: impl IntoIterator<Item = &'a ConfigEvent>,
) -> Result<ClusterConfig, ConfigError> {
    events
        .into_iter()
        .try_fold(start, |config, event| config.apply(&event.change))
}

/// Versions between two kept configurations of a [`History`]: a past version is found by
/// replaying at most this many events, not the whole log (a soak's history of 100 000 events
/// was replayed whole for each page of `/v1/config/history`, and for each revert under the lock
/// Raft applies under).
const CHECKPOINT_EVERY: usize = 1024;

/// The whole event log with its fold kept up to date; the deterministic core of the replicated
/// state machine.
#[derive(Debug, Clone, Default)]
pub struct History {
    events: Vec<ConfigEvent>,
    current: ClusterConfig,
    /// The configuration at versions CHECKPOINT_EVERY, 2 × CHECKPOINT_EVERY, …
    checkpoints: Vec<ClusterConfig>,
}

impl History {
    /// The history of `events`, which must be versions 1, 2, 3, … in order: one lost (a write a
    /// full disk refused while a later one was kept) would shift every version after it and
    /// make this node's history differ from the others' without a word.
    pub fn from_events(events: Vec<ConfigEvent>) -> Result<Self, ConfigError> {
        if let Some((i, event)) = (1u64..)
            .zip(&events)
            .find(|(position, event)| event.version != *position)
        {
            return Err(ConfigError::OutOfSequence {
                position: i,
                found: event.version,
            });
        }
        let mut current = ClusterConfig::default();
        let mut checkpoints = Vec::with_capacity(events.len() / CHECKPOINT_EVERY);
        for chunk in events.chunks(CHECKPOINT_EVERY) {
            current = fold_from(current, chunk)?;
            if chunk.len() == CHECKPOINT_EVERY {
                checkpoints.push(current.clone());
            }
        }
        Ok(History {
            events,
            current,
            checkpoints,
        })
    }

    pub fn version(&self) -> u64 {
        self.events.len() as u64
    }

    pub fn current(&self) -> &ClusterConfig {
        &self.current
    }

    pub fn events(&self) -> &[ConfigEvent] {
        &self.events
    }

    /// Events with a version above `since`.
    pub fn since(&self, since: u64) -> &[ConfigEvent] {
        let start = (since.min(self.version())) as usize;
        &self.events[start..]
    }

    /// The configuration as it was right after `version` was committed (0 = the defaults).
    pub fn config_at(&self, version: u64) -> Result<ClusterConfig, ConfigError> {
        if version > self.version() {
            return Err(ConfigError::NoSuchVersion {
                requested: version,
                latest: self.version(),
            });
        }
        let version = version as usize;
        let kept = version / CHECKPOINT_EVERY;
        let start = match kept {
            0 => ClusterConfig::default(),
            k => self.checkpoints[k - 1].clone(),
        };
        fold_from(start, &self.events[kept * CHECKPOINT_EVERY..version])
    }

    /// The event a proposal would commit as, without committing it: the check a node makes
    /// before it proposes.
    ///
    /// The limits on size (a change's comment and settings, filters the kernel's maps hold, the
    /// number of destinations) are checked here only, not when a committed entry is applied:
    /// a history written before a limit existed, or an entry an older leader committed, must
    /// still replay the same on every node.
    pub fn check(&self, proposal: &Proposal) -> Result<ConfigEvent, ConfigError> {
        proposal.check_limits()?;
        let (event, next) = self.materialize(proposal)?;
        next.validate_limits()?;
        Ok(event)
    }

    fn materialize(
        &self,
        proposal: &Proposal,
    ) -> Result<(ConfigEvent, ClusterConfig), ConfigError> {
        let change = match &proposal.intent {
            Intent::Set { settings } if settings.is_empty() => return Err(ConfigError::Empty),
            Intent::Set { settings } => Change::Set {
                settings: settings.clone(),
            },
            Intent::Revert { to_version } => Change::Revert {
                to_version: *to_version,
                restored: Box::new(self.config_at(*to_version)?),
            },
            Intent::ApplyProfile { settings, .. } if settings.is_empty() => {
                return Err(ConfigError::Empty)
            }
            Intent::ApplyProfile { settings, profile } => {
                if let Some((key, why)) = settings
                    .iter()
                    .find_map(|s| Some((&s.key, profile_may_not_set(&s.key)?)))
                {
                    return Err(ConfigError::invalid(key, "(in a profile)", why));
                }
                Change::Profile {
                    settings: settings.clone(),
                    profile: profile.clone(),
                }
            }
            Intent::EndProfile { version } => Change::ProfileEnded {
                profile_version: *version,
                settings: self.profile_end(*version)?,
            },
        };
        let next = self.current.apply(&change)?;
        let event = ConfigEvent {
            version: self.version() + 1,
            at: proposal.at.clone(),
            origin_node: proposal.origin_node.clone(),
            author: proposal.author.clone(),
            comment: proposal.comment.clone(),
            change,
            request_id: proposal.request_id.clone(),
        };
        Ok((event, next))
    }

    /// Where the recent event committed with this request id is, if any (the last
    /// [`IDEMPOTENCY_WINDOW`] events are searched).
    fn committed_request(&self, request_id: &str) -> Option<usize> {
        let mut recent = self.events.iter().rev().take(IDEMPOTENCY_WINDOW);
        recent
            .position(|event| event.request_id.as_deref() == Some(request_id))
            .map(|back| self.events.len() - 1 - back)
    }

    /// Appends a proposal as the next version; a proposal whose request id a recent event
    /// carries is that event, committed once (see [`Proposal::request_id`]).
    pub fn commit(&mut self, proposal: &Proposal) -> Result<&ConfigEvent, ConfigError> {
        if let Some(at) = proposal
            .request_id
            .as_deref()
            .and_then(|id| self.committed_request(id))
        {
            return Ok(&self.events[at]);
        }
        let (event, next) = self.materialize(proposal)?;
        self.current = next;
        self.events.push(event);
        if self.events.len().is_multiple_of(CHECKPOINT_EVERY) {
            self.checkpoints.push(self.current.clone());
        }
        Ok(&self.events[self.events.len() - 1])
    }
}

#[cfg(test)]
mod slo_tests;
#[cfg(test)]
mod tests;
