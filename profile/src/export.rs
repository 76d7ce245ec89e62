//! A config written out as a profile to share: the keys where it differs from a base (the
//! defaults), in the file format [`crate::format`] reads.

use apiary_config::{diff, profile_may_not_set, ClusterConfig};

use crate::format::Metadata;

/// The profile text for `config`'s differences from `base`, and the keys left out because a
/// profile may not set them (destinations, API access, trusted keys).
pub fn export(
    metadata: &Metadata,
    base: &ClusterConfig,
    config: &ClusterConfig,
) -> (String, Vec<String>) {
    let mut skipped = Vec::new();
    let mut settings = Vec::new();
    for change in diff(base, config) {
        let Some(value) = change.to else {
            skipped.push(change.key);
            continue;
        };
        if profile_may_not_set(&change.key).is_some() {
            skipped.push(change.key);
            continue;
        }
        match toml::Value::try_from(&value) {
            Ok(value) => settings.push(format!("{} = {value}", quoted(&change.key))),
            Err(_) => skipped.push(change.key),
        }
    }
    let mut text = String::from("# Written by `apiary profile export`: review, then sign it.\n");
    text.push_str("[profile]\n");
    for (field, value) in [
        ("name", &metadata.name),
        ("version", &metadata.version),
        ("summary", &metadata.summary),
        ("author", &metadata.author),
        ("stack", &metadata.stack),
        ("min_apiary_version", &metadata.min_apiary_version),
    ] {
        text.push_str(&format!("{field} = {}\n", quoted(value)));
    }
    if let Some(limit) = &metadata.time_limit {
        text.push_str(&format!("time_limit = {}\n", quoted(limit)));
    }
    text.push_str("\n[settings]\n");
    for line in settings {
        text.push_str(&line);
        text.push('\n');
    }
    (text, skipped)
}

/// A TOML basic string.
fn quoted(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}
