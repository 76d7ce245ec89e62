//! Secrets in the configuration are write-only: stored, replicated and sent to their
//! destination, never returned.
//!
//! A destination's `headers` carry backend API keys (`authorization`, `x-api-key`, …), and an
//! endpoint may carry a password (`https://user:pass@collector`). Everything the API returns
//! passes through [`ClusterConfig::redacted`], [`ConfigEvent::redacted`] or
//! [`KeyChange::redacted`], which replace each secret by a marker holding a fingerprint
//! (`<redacted sha256:…>`), so that an operator can tell two values apart without seeing them.
//! The fingerprint is 48 bits of SHA-256: it tells nothing about a random API key, but a short
//! guessable password could be found from it by someone with read access, as from any hash.
//!
//! A write that hands a marker back (a config read, edited and written again) keeps the secret
//! the marker stands for; a marker that stands for no current secret is refused, so a
//! placeholder never replaces a real key.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{Change, ClusterConfig, ConfigError, ConfigEvent, KeyChange, Setting};

const MARKER_START: &str = "<redacted sha256:";

/// The marker that stands for `secret` wherever the API shows it.
pub fn redact(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    format!("{MARKER_START}{}>", hex::encode(&digest[..6]))
}

/// Whether `value` is a redaction marker rather than a secret.
pub fn is_marker(value: &str) -> bool {
    value.starts_with(MARKER_START) && value.ends_with('>')
}

/// An endpoint with the password of its user info, if any, redacted: how statuses and logs
/// name a destination.
pub fn redact_endpoint(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(mut url) if url.password().is_some() => {
            let marker = redact(url.password().unwrap_or_default());
            // The marker holds characters a URL password may not: percent-encode it.
            let _ = url.set_password(Some(&marker));
            url.to_string()
        }
        _ => endpoint.to_string(),
    }
}

/// A webhook URL as the API shows it: its password and its path and query replaced by markers.
/// Webhooks commonly carry their secret in the path (`https://hooks.example/services/T0/B0/XYZ`),
/// so only the scheme, host and port are shown as they are.
pub fn redact_webhook(webhook: &str) -> String {
    let Ok(mut url) = url::Url::parse(webhook) else {
        return webhook.to_string();
    };
    let mut hidden = false;
    if let Some(password) = url.password() {
        let marker = redact(password);
        let _ = url.set_password(Some(&marker));
        hidden = true;
    }
    let rest = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    };
    if !rest.is_empty() && rest != "/" {
        url.set_query(None);
        url.set_path(&format!("/{}", redact(&rest)));
        hidden = true;
    }
    if hidden {
        url.to_string()
    } else {
        webhook.to_string()
    }
}

impl ClusterConfig {
    /// This configuration as the API shows it: every secret replaced by its marker.
    pub fn redacted(&self) -> ClusterConfig {
        let mut shown = self.clone();
        for destination in shown.destinations.values_mut() {
            destination.endpoint = redact_endpoint(&destination.endpoint);
            for value in destination.headers.values_mut() {
                *value = redact(value);
            }
        }
        // A webhook's URL carries its secret in its password or its path.
        shown.predict.webhook.url = redact_webhook(&shown.predict.webhook.url);
        shown
    }

    /// Puts back the secrets of `previous` where this configuration holds their markers
    /// (a value read from the API and written back unchanged); refuses a marker that stands
    /// for no secret of `previous`.
    pub(crate) fn restore_secrets(&mut self, previous: &ClusterConfig) -> Result<(), ConfigError> {
        for (name, destination) in &mut self.destinations {
            let before = previous.destinations.get(name);
            for (header, value) in &mut destination.headers {
                if !is_marker(value) {
                    continue;
                }
                match before.and_then(|b| b.headers.get(header)) {
                    Some(secret) if redact(secret) == *value => *value = secret.clone(),
                    _ => {
                        return Err(ConfigError::invalid(
                            format!("destination.{name}.headers.{header}"),
                            value.as_str(),
                            "the header's real value: this is the placeholder the API shows \
                             for a secret, and it stands for no current value of this header",
                        ))
                    }
                }
            }
            if destination.endpoint.contains("redacted%20sha256") {
                match before {
                    Some(b) if redact_endpoint(&b.endpoint) == destination.endpoint => {
                        destination.endpoint = b.endpoint.clone();
                    }
                    _ => {
                        return Err(ConfigError::invalid(
                            format!("destination.{name}.endpoint"),
                            destination.endpoint.as_str(),
                            "the endpoint with its real password: this is the placeholder the \
                             API shows, and it stands for no current endpoint of this destination",
                        ))
                    }
                }
            }
        }
        let webhook = &mut self.predict.webhook.url;
        if webhook.contains("redacted%20sha256") {
            let before = &previous.predict.webhook.url;
            if redact_webhook(before) != *webhook {
                return Err(ConfigError::invalid(
                    "predict.webhook.url",
                    webhook.as_str(),
                    "the URL with its real password: this is the placeholder the API shows, \
                     and it stands for no current webhook URL",
                ));
            }
            *webhook = before.clone();
        }
        Ok(())
    }
}

impl Setting {
    /// This setting as the API shows it: any secret it writes replaced by its marker.
    pub fn redacted(&self) -> Setting {
        let path: Vec<&str> = self.key.split('.').collect();
        let value = match path.as_slice() {
            ["predict", "webhook", "url"] => match &self.value {
                Value::String(url) => Value::String(redact_webhook(url)),
                other => other.clone(),
            },
            ["predict", "webhook"] | ["predict"] => {
                let mut value = self.value.clone();
                let url = value.pointer_mut(if path.len() == 1 {
                    "/webhook/url"
                } else {
                    "/url"
                });
                if let Some(Value::String(url)) = url {
                    *url = redact_webhook(url);
                }
                value
            }
            [top, ..] if !matches!(*top, "destination" | "destinations") => self.value.clone(),
            [_, _] => redact_destination(&self.value),
            [_, _, "headers"] => redact_headers(&self.value),
            // A header's name may hold dots (`x.api.key`), so its key has more parts.
            [_, _, "headers", _, ..] => redact_value(&self.value),
            [_, _, "endpoint"] => match &self.value {
                Value::String(endpoint) => Value::String(redact_endpoint(endpoint)),
                other => other.clone(),
            },
            _ => self.value.clone(),
        };
        Setting {
            key: self.key.clone(),
            value,
        }
    }
}

fn redact_value(value: &Value) -> Value {
    match value {
        Value::String(secret) if !is_marker(secret) => Value::String(redact(secret)),
        other => other.clone(),
    }
}

fn redact_headers(value: &Value) -> Value {
    match value {
        Value::Object(headers) => Value::Object(
            headers
                .iter()
                .map(|(k, v)| (k.clone(), redact_value(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn redact_destination(value: &Value) -> Value {
    let Value::Object(fields) = value else {
        return value.clone();
    };
    let mut shown = fields.clone();
    if let Some(headers) = shown.get_mut("headers") {
        *headers = redact_headers(headers);
    }
    if let Some(Value::String(endpoint)) = shown.get_mut("endpoint") {
        *endpoint = redact_endpoint(endpoint);
    }
    Value::Object(shown)
}

impl ConfigEvent {
    /// This event as the API shows it.
    pub fn redacted(&self) -> ConfigEvent {
        let change = match &self.change {
            Change::Set { settings } => Change::Set {
                settings: settings.iter().map(Setting::redacted).collect(),
            },
            Change::Profile { settings, profile } => Change::Profile {
                settings: settings.iter().map(Setting::redacted).collect(),
                profile: profile.clone(),
            },
            Change::ProfileEnded {
                profile_version,
                settings,
            } => Change::ProfileEnded {
                profile_version: *profile_version,
                settings: settings.iter().map(Setting::redacted).collect(),
            },
            Change::Revert {
                to_version,
                restored,
            } => Change::Revert {
                to_version: *to_version,
                restored: Box::new(restored.redacted()),
            },
        };
        ConfigEvent {
            change,
            ..self.clone()
        }
    }
}

impl KeyChange {
    /// This change as the API shows it.
    pub fn redacted(&self) -> KeyChange {
        let shown = |value: &Option<Value>| {
            value.as_ref().map(|v| {
                Setting {
                    key: self.key.clone(),
                    value: v.clone(),
                }
                .redacted()
                .value
            })
        };
        KeyChange {
            key: self.key.clone(),
            from: shown(&self.from),
            to: shown(&self.to),
        }
    }
}
