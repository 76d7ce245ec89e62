//! Dotted keys (`probe.http.sample_rate=0.2`) and how they change a [`ClusterConfig`].
//!
//! A setting is applied to the JSON form of the configuration and the result is parsed back into
//! the typed model, so every field of the model is settable without a hand-written list, and the
//! model's types and [`ClusterConfig::validate`] decide what is allowed.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{ClusterConfig, ConfigError, Destination, PROBE_NAMES};

/// One assignment, e.g. `probe.http.sample_rate = 0.2`. A `null` value on
/// `destination.NAME` removes that destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Setting {
    pub key: String,
    pub value: Value,
}

/// Parses a CLI argument `key=value`. The value is read as JSON when it is JSON (`0.2`, `false`,
/// `[80,443]`, `null`) and as a plain string otherwise (`http://collector:4317`).
pub fn parse_cli_assignment(arg: &str) -> Result<Setting, ConfigError> {
    let Some((key, raw)) = arg.split_once('=') else {
        return Err(ConfigError::invalid(
            arg,
            "(no `=`)",
            "an assignment such as probe.http.sample_rate=0.2",
        ));
    };
    let value = serde_json::from_str(raw.trim()).unwrap_or_else(|_| Value::String(raw.to_string()));
    Ok(Setting {
        key: key.trim().to_string(),
        value,
    })
}

const TOP_LEVEL_HINT: &str =
    "keys start with `probe.<name>.`, `budget.`, `api.`, `privacy.`, `trust.`, `predict.`, `destination.<name>.` or `slo.<service>.` (e.g. probe.http.sample_rate)";

/// `slo.<service>.<field>` with the service's name whole even when it holds dots
/// (`slo.python3.11.p99_ms`): the service is everything between the first and last segment.
fn slo_path(key: &str) -> Option<(&str, Option<&str>)> {
    let rest = key
        .strip_prefix("slo.")
        .or_else(|| key.strip_prefix("slos."))?;
    const FIELDS: [&str; 2] = ["p99_ms", "error_rate"];
    match rest.rsplit_once('.') {
        Some((service, field)) if FIELDS.contains(&field) => Some((service, Some(field))),
        _ => Some((rest, None)),
    }
}

/// The configuration after `settings`, each applied in order; checked as a whole at the end.
pub fn apply_settings(
    config: &ClusterConfig,
    settings: &[Setting],
) -> Result<ClusterConfig, ConfigError> {
    let mut next = config.clone();
    for setting in settings {
        next = apply_one(&next, setting)?;
    }
    next.restore_secrets(config)?;
    next.validate()?;
    Ok(next)
}

fn apply_one(config: &ClusterConfig, setting: &Setting) -> Result<ClusterConfig, ConfigError> {
    let key = setting.key.as_str();
    if let Some((service, field)) = slo_path(key) {
        return apply_slo(config, setting, service, field);
    }
    let mut path: Vec<&str> = key.split('.').collect();
    if path.iter().any(|segment| segment.is_empty()) {
        return Err(unknown(key, TOP_LEVEL_HINT));
    }
    path[0] = match path[0] {
        "probe" | "probes" => "probes",
        "budget" => "budget",
        "api" => "api",
        "privacy" => "privacy",
        "trust" => "trust",
        "predict" => "predict",
        "destination" | "destinations" => "destinations",
        _ => return Err(unknown(key, TOP_LEVEL_HINT)),
    };
    if path.len() == 1 {
        return Err(unknown(key, TOP_LEVEL_HINT));
    }
    if path[0] == "probes" && !PROBE_NAMES.contains(&path[1]) {
        return Err(unknown(
            key,
            &format!(
                "`{}` is not a probe; probes are {}",
                path[1],
                PROBE_NAMES.join(", ")
            ),
        ));
    }

    let mut tree = serde_json::to_value(config).map_err(|e| internal(key, e))?;
    let Value::Object(root) = &mut tree else {
        return Err(internal(key, "configuration is not a JSON object"));
    };
    if path[0] == "destinations" {
        let destinations = object_at(root, "destinations", key)?;
        if path.len() == 2 && setting.value.is_null() {
            if destinations.remove(path[1]).is_none() {
                return Err(unknown(
                    key,
                    &format!("there is no destination `{}`", path[1]),
                ));
            }
            return parse(tree, setting);
        }
        if !destinations.contains_key(path[1]) {
            let fresh =
                serde_json::to_value(Destination::default()).map_err(|e| internal(key, e))?;
            destinations.insert(path[1].to_string(), fresh);
        }
    }

    let (last, parents) = path.split_last().expect("path has at least two segments");
    let mut object = root;
    for segment in parents {
        object = object_at(object, segment, key)?;
    }
    // A destination's headers are a map of the operator's choosing: a new name is a new key,
    // and null removes one.
    if path[0] == "destinations" && path.len() == 4 && path[2] == "headers" {
        if !is_header_name(last) {
            return Err(ConfigError::invalid(
                key,
                last,
                "an HTTP header name (letters, digits and !#$%&'*+-.^_`|~), e.g. x-api-key",
            ));
        }
        if setting.value.is_null() {
            object.remove(*last);
            return parse(tree, setting);
        }
        object
            .entry(last.to_string())
            .or_insert_with(|| Value::String(String::new()));
    }
    let Some(slot) = object.get_mut(*last) else {
        let allowed: Vec<&str> = object.keys().map(String::as_str).collect();
        return Err(unknown(
            key,
            &format!("allowed here: {}", allowed.join(", ")),
        ));
    };
    *slot = coerce(slot, &setting.value, key)?;
    parse(tree, setting)
}

/// `slo.<service>.<field>=value`, or `slo.<service>=null` to remove the service's objectives.
fn apply_slo(
    config: &ClusterConfig,
    setting: &Setting,
    service: &str,
    field: Option<&str>,
) -> Result<ClusterConfig, ConfigError> {
    let key = setting.key.as_str();
    let mut next = config.clone();
    let Some(field) = field else {
        if setting.value.is_null() && next.slos.remove(service).is_some() {
            return Ok(next);
        }
        if setting.value.is_null() {
            return Err(unknown(
                key,
                &format!("there are no objectives for `{service}`"),
            ));
        }
        return Err(unknown(
            key,
            "objectives are `slo.<service>.p99_ms` and `slo.<service>.error_rate` (or \
             `slo.<service>=null` to remove both)",
        ));
    };
    let value = match &setting.value {
        Value::Null => None,
        Value::Number(n) => n.as_f64(),
        // A shell may hand `250` on as a string when it was quoted.
        Value::String(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    };
    if value.is_none() && !setting.value.is_null() {
        return Err(ConfigError::invalid(
            key,
            &setting.value,
            "a number, or null for the observed baseline",
        ));
    }
    let slo = next.slos.entry(service.to_string()).or_default();
    match field {
        "p99_ms" => slo.p99_ms = value,
        _ => slo.error_rate = value,
    }
    if slo.p99_ms.is_none() && slo.error_rate.is_none() {
        next.slos.remove(service);
    }
    Ok(next)
}

/// An RFC 9110 token, the only thing a header name may be.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn object_at<'a>(
    object: &'a mut Map<String, Value>,
    segment: &str,
    key: &str,
) -> Result<&'a mut Map<String, Value>, ConfigError> {
    let allowed: Vec<String> = object.keys().cloned().collect();
    match object.get_mut(segment) {
        Some(Value::Object(inner)) => Ok(inner),
        Some(_) => Err(unknown(key, &format!("`{segment}` has no sub-keys"))),
        None => Err(unknown(
            key,
            &format!("allowed here: {}", allowed.join(", ")),
        )),
    }
}

/// Checks the new value has the old value's JSON kind; a string given for a list is split on
/// commas so `include_ports=80,443` works from a shell.
fn coerce(old: &Value, new: &Value, key: &str) -> Result<Value, ConfigError> {
    let expected = match old {
        Value::Bool(_) => "true or false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list, e.g. [80,443] or 80,443",
        Value::Object(_) => "an object",
        Value::Null => "null",
    };
    let same_kind = std::mem::discriminant(old) == std::mem::discriminant(new);
    match (old, new) {
        _ if same_kind => Ok(new.clone()),
        (Value::Array(_), Value::String(text)) => Ok(Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| {
                    serde_json::from_str(item).unwrap_or_else(|_| Value::String(item.to_string()))
                })
                .collect(),
        )),
        (Value::Array(_), Value::Number(_)) => Ok(Value::Array(vec![new.clone()])),
        _ => Err(ConfigError::invalid(key, new, expected)),
    }
}

fn parse(tree: Value, setting: &Setting) -> Result<ClusterConfig, ConfigError> {
    serde_json::from_value(tree).map_err(|e| ConfigError::Invalid {
        key: setting.key.clone(),
        value: setting.value.to_string(),
        // serde says e.g. "unknown variant `grpcc`, expected `grpc` or `http/protobuf`".
        expected: format!("a value of the right type ({e})"),
    })
}

fn unknown(key: &str, hint: &str) -> ConfigError {
    ConfigError::UnknownKey {
        key: key.to_string(),
        hint: hint.to_string(),
    }
}

fn internal(key: &str, error: impl std::fmt::Display) -> ConfigError {
    ConfigError::invalid(
        key,
        "given",
        format!("a value the model can hold ({error})"),
    )
}

/// The value at a dotted key (`probe.http.sample_rate`), in the CLI's spelling; `None` for a key
/// the config does not hold.
pub fn value_at(config: &ClusterConfig, key: &str) -> Option<Value> {
    if let Some((service, field)) = slo_path(key) {
        let slo = serde_json::to_value(config.slos.get(service)?).ok()?;
        return match field {
            Some(field) => slo.get(field).cloned(),
            None => Some(slo),
        };
    }
    let mut value = serde_json::to_value(config).ok()?;
    for (i, segment) in key.split('.').enumerate() {
        let segment = match (i, segment) {
            (0, "probe") => "probes",
            (0, "destination") => "destinations",
            (_, other) => other,
        };
        value = value.get_mut(segment)?.take();
    }
    Some(value)
}

/// Every leaf of a config as (dotted key, value) in the CLI's spelling: `{"probes": {"http":
/// {"enabled": true}}}` gives `probe.http.enabled = true`. An empty table is one leaf (`{}`).
pub fn flatten(config: &Value) -> Vec<(String, Value)> {
    fn walk(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, inner) in map {
                    let key = match (prefix, key.as_str()) {
                        ("", "probes") => "probe".to_string(),
                        ("", "destinations") => "destination".to_string(),
                        ("", "slos") => "slo".to_string(),
                        ("", other) => other.to_string(),
                        (prefix, other) => format!("{prefix}.{other}"),
                    };
                    walk(&key, inner, out);
                }
            }
            other => out.push((prefix.to_string(), other.clone())),
        }
    }
    let mut out = Vec::new();
    walk("", config, &mut out);
    out
}

/// One key a config change touched: `from` is `None` for a new key, `to` for a removed one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyChange {
    pub key: String,
    pub from: Option<Value>,
    pub to: Option<Value>,
}

/// What changed between two configs, key by key, in key order.
pub fn diff(before: &ClusterConfig, after: &ClusterConfig) -> Vec<KeyChange> {
    let leaves = |config: &ClusterConfig| -> std::collections::BTreeMap<String, Value> {
        serde_json::to_value(config)
            .map(|v| flatten(&v).into_iter().collect())
            .unwrap_or_default()
    };
    let (before, after) = (leaves(before), leaves(after));
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|key| before.get(*key) != after.get(*key))
        .map(|key| KeyChange {
            key: key.clone(),
            from: before.get(key).cloned(),
            to: after.get(key).cloned(),
        })
        .collect()
}
