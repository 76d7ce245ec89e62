//! The profile file: TOML with a `[profile]` table of metadata and a `[settings]` table of the
//! same dotted keys as `apiary config set`, each reported with its line when it is wrong.
//!
//! ```toml
//! [profile]
//! name = "nginx-frontend"
//! version = "3"
//! summary = "HTTP in detail on the ports nginx serves"
//! author = "Apiary project"
//! stack = "nginx"
//! min_apiary_version = "0.1.0"
//! time_limit = "15m"          # optional: applied for this long unless `--for` says otherwise
//!
//! [settings]
//! "probe.http.sample_rate" = 0.5
//! probe.http.filters.include_ports = [80, 443]   # TOML's own dotted keys work too
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use apiary_config::{apply_settings, profile_may_not_set, ClusterConfig, ConfigError, Setting};
use serde::{Deserialize, Serialize};

/// The largest profile file read, in bytes: a page of settings, not a data set.
pub const MAX_PROFILE_BYTES: usize = 64 * 1024;

/// One thing wrong with a profile, where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// 1-based line in the file, when the problem has one.
    pub line: Option<usize>,
    /// The setting or metadata field (`probe.http.sample_rate`, `profile.name`), or empty for the
    /// file as a whole.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "`{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found, one line each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct Problems(pub Vec<Problem>);

/// What a profile says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub name: String,
    pub version: String,
    pub summary: String,
    pub author: String,
    /// What it is for (`nginx`, `postgres`, `any`).
    pub stack: String,
    /// The oldest Apiary that knows every key it sets.
    pub min_apiary_version: String,
    /// How long it stays when applied without `--for` (an incident profile's), as `15m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<String>,
}

/// A setting with the line it is on.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedSetting {
    pub setting: Setting,
    pub line: Option<usize>,
}

/// A parsed profile: its metadata, its settings in file order, and the exact text it came from
/// (what a signature covers).
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub metadata: Metadata,
    pub settings: Vec<PlacedSetting>,
    pub text: String,
}

const METADATA_FIELDS: [&str; 7] = [
    "name",
    "version",
    "summary",
    "author",
    "stack",
    "min_apiary_version",
    "time_limit",
];

impl Profile {
    /// Reads a profile file; every problem of form (not yet of the config model) is reported.
    pub fn parse(text: &str) -> Result<Profile, Problems> {
        if text.len() > MAX_PROFILE_BYTES {
            return Err(one(
                None,
                "",
                format!(
                    "the file has {} bytes; a profile has at most {MAX_PROFILE_BYTES}",
                    text.len()
                ),
            ));
        }
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|span| line_of(text, span.start));
            one(line, "", format!("not valid TOML: {}", e.message()))
        })?;
        let lines = key_lines(text);
        let mut problems = Vec::new();
        for (key, _) in table.iter() {
            if key != "profile" && key != "settings" {
                problems.push(Problem {
                    line: lines.get(key).copied(),
                    key: key.clone(),
                    message: "unknown table: a profile has `[profile]` and `[settings]`".into(),
                });
            }
        }
        let metadata = read_metadata(table.get("profile"), &lines, &mut problems);
        let mut settings = Vec::new();
        match table.get("settings") {
            Some(toml::Value::Table(body)) => {
                flatten_settings("", body, &lines, &mut settings);
                // The parsed table is sorted by key; the file's order is the one people read.
                settings.sort_by_key(|s| s.line);
            }
            Some(_) => problems.push(problem(&lines, "settings", "must be a table")),
            None => {}
        }
        if settings.is_empty() {
            problems.push(Problem {
                line: lines.get("settings").copied(),
                key: "settings".into(),
                message: "no settings: add a `[settings]` table with at least one \
                          `\"probe.http.sample_rate\" = 0.5`"
                    .into(),
            });
        }
        match metadata {
            Some(metadata) if problems.is_empty() => Ok(Profile {
                metadata,
                settings,
                text: text.to_string(),
            }),
            _ => Err(Problems(problems)),
        }
    }

    /// The settings without their lines, in file order.
    pub fn plain_settings(&self) -> Vec<Setting> {
        self.settings.iter().map(|s| s.setting.clone()).collect()
    }

    /// How long the profile asks to stay applied, if it is time-limited.
    pub fn time_limit(&self) -> Option<Duration> {
        // Checked by `parse`.
        humantime::parse_duration(self.metadata.time_limit.as_deref()?).ok()
    }

    /// Checks every setting against the config model on top of `base` (the running config, or
    /// the defaults): one problem per bad setting, with its line. Returns the config the profile
    /// would make.
    pub fn validate(&self, base: &ClusterConfig) -> Result<ClusterConfig, Problems> {
        let mut problems = Vec::new();
        if self.settings.len() > apiary_config::MAX_SETTINGS_PER_CHANGE {
            problems.push(Problem {
                line: None,
                key: "settings".into(),
                message: format!(
                    "{} settings; a profile is one change of at most {}",
                    self.settings.len(),
                    apiary_config::MAX_SETTINGS_PER_CHANGE
                ),
            });
        }
        for placed in &self.settings {
            let key = &placed.setting.key;
            if let Some(why) = profile_may_not_set(key) {
                problems.push(Problem {
                    line: placed.line,
                    key: key.clone(),
                    message: why.into(),
                });
            } else if let Err(error) = apply_settings(base, std::slice::from_ref(&placed.setting)) {
                problems.push(Problem {
                    line: placed.line,
                    key: key.clone(),
                    message: without_key(&error),
                });
            }
        }
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        // Each setting is valid alone; together they may still break a rule across keys, or
        // a limit the leader checks on every new change (the kernel's filter maps).
        apply_settings(base, &self.plain_settings())
            .and_then(|after| after.validate_limits().map(|()| after))
            .map_err(|error| {
                let key = error_key(&error);
                let line = self
                    .settings
                    .iter()
                    .find(|s| s.setting.key == key)
                    .and_then(|s| s.line);
                one(line, &key, without_key(&error))
            })
    }

    /// Refuses a profile that needs a newer Apiary than `running` (`0.1.0`).
    pub fn check_version(&self, running: &str) -> Result<(), Problems> {
        let needed = &self.metadata.min_apiary_version;
        match (version_parts(needed), version_parts(running)) {
            (Some(needed_parts), Some(running_parts)) if needed_parts > running_parts => Err(one(
                None,
                "profile.min_apiary_version",
                format!("needs Apiary {needed} or newer; this is {running}: upgrade first"),
            )),
            _ => Ok(()),
        }
    }
}

fn one(line: Option<usize>, key: &str, message: impl Into<String>) -> Problems {
    Problems(vec![Problem {
        line,
        key: key.into(),
        message: message.into(),
    }])
}

fn problem(lines: &BTreeMap<String, usize>, key: &str, message: &str) -> Problem {
    Problem {
        line: lines.get(key).copied(),
        key: key.into(),
        message: message.into(),
    }
}

fn read_metadata(
    table: Option<&toml::Value>,
    lines: &BTreeMap<String, usize>,
    problems: &mut Vec<Problem>,
) -> Option<Metadata> {
    let Some(toml::Value::Table(table)) = table else {
        problems.push(Problem {
            line: None,
            key: "profile".into(),
            message: "missing `[profile]` table (name, version, summary, author, stack, \
                      min_apiary_version)"
                .into(),
        });
        return None;
    };
    for key in table.keys() {
        if !METADATA_FIELDS.contains(&key.as_str()) {
            let key = format!("profile.{key}");
            problems.push(problem(
                lines,
                &key,
                &format!("unknown field; allowed: {}", METADATA_FIELDS.join(", ")),
            ));
        }
    }
    let before = problems.len();
    let mut text = |field: &str, required: bool| -> Option<String> {
        let key = format!("profile.{field}");
        match table.get(field) {
            Some(toml::Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            // `version = 3` reads as "3".
            Some(toml::Value::Integer(n)) if field == "version" => Some(n.to_string()),
            None if !required => None,
            None => {
                problems.push(problem(lines, &key, "missing: give a non-empty string"));
                None
            }
            Some(_) => {
                problems.push(problem(lines, &key, "expected a non-empty string"));
                None
            }
        }
    };
    let metadata = Metadata {
        name: text("name", true).unwrap_or_default(),
        version: text("version", true).unwrap_or_default(),
        summary: text("summary", true).unwrap_or_default(),
        author: text("author", true).unwrap_or_default(),
        stack: text("stack", false).unwrap_or_else(|| "any".into()),
        min_apiary_version: text("min_apiary_version", true).unwrap_or_default(),
        time_limit: text("time_limit", false),
    };
    let name_ok = !metadata.name.is_empty()
        && metadata.name.len() <= apiary_config::MAX_PROFILE_NAME_CHARS
        && metadata
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !metadata.name.is_empty() && !name_ok {
        problems.push(problem(
            lines,
            "profile.name",
            &format!(
                "expected lower-case letters, digits and '-', at most {} characters \
                 (e.g. nginx-frontend)",
                apiary_config::MAX_PROFILE_NAME_CHARS
            ),
        ));
    }
    if metadata.version.chars().count() > apiary_config::MAX_PROFILE_NAME_CHARS {
        problems.push(problem(lines, "profile.version", "too long"));
    }
    if !metadata.min_apiary_version.is_empty()
        && version_parts(&metadata.min_apiary_version).is_none()
    {
        problems.push(problem(
            lines,
            "profile.min_apiary_version",
            "expected a version such as 0.1.0",
        ));
    }
    if let Some(limit) = &metadata.time_limit {
        match humantime::parse_duration(limit) {
            Ok(duration) if duration >= Duration::from_secs(1) => {}
            _ => problems.push(problem(
                lines,
                "profile.time_limit",
                "expected a duration of at least a second, such as 15m or 2h",
            )),
        }
    }
    (problems.len() == before).then_some(metadata)
}

/// `[settings]` with TOML's nested tables joined back into dotted keys.
fn flatten_settings(
    prefix: &str,
    table: &toml::Table,
    lines: &BTreeMap<String, usize>,
    out: &mut Vec<PlacedSetting>,
) {
    for (key, value) in table.iter() {
        let dotted = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => flatten_settings(&dotted, inner, lines, out),
            other => out.push(PlacedSetting {
                line: lines.get(&format!("settings.{dotted}")).copied(),
                setting: Setting {
                    key: dotted,
                    value: serde_json::to_value(other).unwrap_or(serde_json::Value::Null),
                },
            }),
        }
    }
}

/// The line of every key in the file, by its full dotted path (`settings.probe.http.enabled`,
/// `profile.name`). A quoted dotted key (`"probe.http.enabled"`) is one path segment, so both
/// spellings give the same path.
fn key_lines(text: &str) -> BTreeMap<String, usize> {
    fn walk(
        text: &str,
        prefix: &str,
        table: &toml::de::DeTable<'_>,
        out: &mut BTreeMap<String, usize>,
    ) {
        for (key, value) in table.iter() {
            let path = if prefix.is_empty() {
                key.get_ref().to_string()
            } else {
                format!("{prefix}.{}", key.get_ref())
            };
            out.insert(path.clone(), line_of(text, key.span().start));
            if let toml::de::DeValue::Table(inner) = value.get_ref() {
                walk(text, &path, inner, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    if let Ok(table) = toml::de::DeTable::parse(text) {
        walk(text, "", table.get_ref(), &mut out);
    }
    out
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The key a config error names.
fn error_key(error: &ConfigError) -> String {
    match error {
        ConfigError::UnknownKey { key, .. } | ConfigError::Invalid { key, .. } => key.clone(),
        _ => String::new(),
    }
}

/// The error's message without the key the problem already shows.
fn without_key(error: &ConfigError) -> String {
    match error {
        ConfigError::UnknownKey { hint, .. } => format!("unknown key: {hint}"),
        ConfigError::Invalid {
            value, expected, ..
        } => format!("invalid value {value}: expected {expected}"),
        other => other.to_string(),
    }
}

fn version_parts(version: &str) -> Option<Vec<u64>> {
    let core = version.split(['-', '+']).next()?;
    let parts: Option<Vec<u64>> = core.split('.').map(|p| p.parse().ok()).collect();
    parts.filter(|p| !p.is_empty() && p.len() <= 3)
}
