//! `apiary.toml`: a node's settings from a file, under the environment and the flags.
//!
//! Precedence, lowest first: built-in defaults, the file, `APIARY_*` variables, flags. Clap
//! already orders defaults, environment and flags; the file slots in by filling every setting
//! whose value clap took from its default. There is no second list of settings here: the file's
//! keys are the ids of `apiary node`'s flags ([`NodeArgs`]: `data_dir` for `--data-dir`), and
//! each value goes through its flag's own parser. A `[cluster]` table holds dotted config keys
//! (`[cluster.probe.http] sample_rate = 0.5`) that a node creating a new cluster commits as the
//! cluster's first config change. Relative paths in the file are relative to the file's folder.
//! Unknown keys and bad values are errors that name the key and the line, because the `toml`
//! crate attaches the span of the key or value being read to every error.

use std::any::TypeId;
use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use apiary_config::{apply_settings, ClusterConfig, ConfigError, Setting};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::args::{NodeArgs, NOT_IN_FILE};

/// The file read when `--config` is not given and it exists.
pub const DEFAULT_FILE: &str = "apiary.toml";

/// The contents of an `apiary.toml`: each setting it names with its values as the setting's flag
/// would take them (already checked by that flag's own parser), and the `[cluster]` table.
/// `apiary init` (`cli::init`) reads back the file it writes with it.
#[derive(Debug, Default)]
pub struct FileSettings {
    /// `(key, values)` in the file's order; a key is a flag's id (`data_dir` for `--data-dir`).
    values: Vec<(String, Vec<String>)>,
    /// The first config of a cluster this node creates (ignored when joining or restarting).
    pub cluster: ClusterSeed,
}

/// Dotted-key settings for a new cluster, each checked against the config model as it is read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ClusterSeed(pub Vec<Setting>);

/// `apiary node`'s flags, as clap reads them: the one definition of every setting.
fn node_command() -> Command {
    NodeArgs::augment_args(Command::new("node"))
}

/// The flags that are settings: each has a key in the file.
fn settings(command: &Command) -> impl Iterator<Item = &Arg> {
    command
        .get_arguments()
        .filter(|arg| !NOT_IN_FILE.contains(&arg.get_id().as_str()))
}

/// A switch (`--no-probes`): `true` or `false` in the file.
fn is_switch(arg: &Arg) -> bool {
    !arg.get_action().takes_values()
}

/// A repeatable flag (`--scope`): an array in the file.
fn is_list(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// A flag whose values are numbers: integers in the file, as they print.
fn is_integer(arg: &Arg) -> bool {
    let parsed = arg.get_value_parser().type_id();
    [
        TypeId::of::<u64>(),
        TypeId::of::<u32>(),
        TypeId::of::<u16>(),
        TypeId::of::<u8>(),
        TypeId::of::<usize>(),
    ]
    .iter()
    .any(|integer| parsed == *integer)
}

fn is_path(arg: &Arg) -> bool {
    arg.get_value_parser().type_id() == TypeId::of::<PathBuf>()
}

impl FileSettings {
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        let settings: FileSettings = toml::from_str(text)?;
        Ok(settings)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let mut settings = Self::parse(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {}\nfix the file, or see `apiary init --help` for every key",
                path.display(),
                e.to_string().trim_end()
            )
        })?;
        apply_settings(&ClusterConfig::default(), &settings.cluster.0)
            .with_context(|| format!("{}: the [cluster] table as a whole", path.display()))?;
        // Relative paths mean "next to this file", wherever the node is started from; `-` is
        // standard output, not a file.
        let base = path.parent().unwrap_or(Path::new("."));
        let command = node_command();
        for (key, values) in &mut settings.values {
            if !settings_arg(&command, key).is_some_and(is_path) {
                continue;
            }
            for value in values.iter_mut() {
                if Path::new(value.as_str()).is_relative() && value != "-" {
                    *value = base.join(value.as_str()).display().to_string();
                }
            }
        }
        Ok(settings)
    }
}

fn settings_arg<'a>(command: &'a Command, key: &str) -> Option<&'a Arg> {
    settings(command).find(|arg| arg.get_id() == key)
}

/// Which file to read: `--config`, else `./apiary.toml` when present, else none.
pub fn locate(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(path) => Some(path.to_path_buf()),
        None => Path::new(DEFAULT_FILE)
            .is_file()
            .then(|| PathBuf::from(DEFAULT_FILE)),
    }
}

/// Fills every setting of `args` that came from a built-in default with the file's value;
/// `matches` (the `node` subcommand's, which know where each value came from) become those of
/// the result, which `--check` prints.
///
/// Clap already orders defaults, `APIARY_*` variables and flags; the file slots in as the
/// defaults: the flags are read again with the file's values as their defaults, the values that
/// came from a flag or a variable carried over as given, and no environment.
pub fn layer(
    args: &mut NodeArgs,
    file: FileSettings,
    matches: &mut ArgMatches,
) -> Result<ClusterSeed> {
    let mut command = node_command();
    let ids: Vec<String> = command
        .get_arguments()
        .map(|arg| arg.get_id().to_string())
        .collect();
    for id in ids {
        let given: Option<Vec<OsString>> = match matches.value_source(&id) {
            Some(ValueSource::CommandLine | ValueSource::EnvVariable) => {
                let switch = command
                    .get_arguments()
                    .find(|arg| arg.get_id() == id.as_str())
                    .is_some_and(is_switch);
                if switch {
                    Some(vec![matches.get_flag(&id).to_string().into()])
                } else {
                    matches
                        .get_raw(&id)
                        .map(|values| values.map(OsStr::to_os_string).collect())
                }
            }
            _ => file
                .values
                .iter()
                .find(|(key, _)| *key == id)
                .map(|(_, values)| values.iter().map(OsString::from).collect()),
        };
        command = command.mut_arg(&id, |arg| {
            let arg = arg.env(None::<&'static str>).value_delimiter(None);
            match given {
                Some(values) => arg.default_values(values),
                None => arg,
            }
        });
    }
    *matches = command
        .try_get_matches_from(["node"])
        .context("the settings from the file, the environment and the flags")?;
    *args = NodeArgs::from_arg_matches(matches)?;
    Ok(file.cluster)
}

/// `apiary node --check`: the settings in effect, as an `apiary.toml` would hold them.
pub fn print_effective(matches: &ArgMatches, seed: &ClusterSeed) -> Result<()> {
    let command = node_command();
    let mut table = toml::Table::new();
    for arg in settings(&command) {
        let id = arg.get_id().as_str();
        let value = if is_switch(arg) {
            Some(toml::Value::Boolean(matches.get_flag(id)))
        } else if arg.is_hide_env_values_set() {
            matches
                .contains_id(id)
                .then(|| toml::Value::String("(set, hidden)".into()))
        } else {
            let value = |text: String| match is_integer(arg) {
                true => toml::Value::Integer(text.parse().unwrap_or(i64::MAX)),
                false => toml::Value::String(text),
            };
            let mut values = shown(matches, id).into_iter().map(value);
            match is_list(arg) {
                true => Some(toml::Value::Array(values.collect())),
                false => values.next(),
            }
        };
        if let Some(value) = value {
            table.insert(id.to_string(), value);
        }
    }
    let mut out = toml::to_string(&table).context("cannot print the settings")?;
    if !seed.0.is_empty() {
        out.push_str("\n[cluster]\n");
        for setting in &seed.0 {
            out.push_str(&format!("\"{}\" = {}\n", setting.key, setting.value));
        }
    }
    print!("{out}");
    Ok(())
}

/// A setting's values as text: as they print once parsed (`1m 30s` for `90s`), else as given.
fn shown(matches: &ArgMatches, id: &str) -> Vec<String> {
    fn display<T: std::fmt::Display + Clone + Send + Sync + 'static>(
        matches: &ArgMatches,
        id: &str,
    ) -> Option<Vec<String>> {
        let values = matches.try_get_many::<T>(id).ok()?;
        Some(values.into_iter().flatten().map(T::to_string).collect())
    }
    display::<humantime::Duration>(matches, id)
        .or_else(|| display::<SocketAddr>(matches, id))
        .unwrap_or_else(|| {
            matches
                .get_raw(id)
                .into_iter()
                .flatten()
                .map(|v| v.to_string_lossy().into_owned())
                .collect()
        })
}

impl<'de> Deserialize<'de> for FileSettings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let command = node_command();
        deserializer.deserialize_map(FileTable { command: &command })
    }
}

/// The file's top level: one key per setting, and `[cluster]`.
struct FileTable<'a> {
    command: &'a Command,
}

impl<'de> Visitor<'de> for FileTable<'_> {
    type Value = FileSettings;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a table of settings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FileSettings, A::Error> {
        let mut settings = FileSettings::default();
        while let Some(key) = map.next_key_seed(FileKey {
            command: self.command,
        })? {
            match settings_arg(self.command, &key) {
                Some(arg) => {
                    let values = map.next_value_seed(FileValue { arg })?;
                    settings.values.push((key, values));
                }
                None => settings.cluster = map.next_value()?,
            }
        }
        Ok(settings)
    }
}

/// A key of the file: a setting's id or `cluster`. Anything else is an error while the
/// deserializer stands on the key, so it carries the key's line.
struct FileKey<'a> {
    command: &'a Command,
}

impl<'de> DeserializeSeed<'de> for FileKey<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        let key = String::deserialize(deserializer)?;
        if key == "cluster" || settings_arg(self.command, &key).is_some() {
            return Ok(key);
        }
        let known: Vec<String> = settings(self.command)
            .map(|arg| format!("`{}`", arg.get_id()))
            .chain(["`cluster`".to_string()])
            .collect();
        Err(de::Error::custom(format!(
            "unknown field `{key}`, expected one of {}",
            known.join(", ")
        )))
    }
}

/// A setting's value: the TOML type its flag's values have (a boolean for a switch, an integer
/// for a number, a string otherwise; an array of them for a repeatable flag), then checked by
/// the flag's own parser while the deserializer stands on the value, so an error carries the
/// value's line.
struct FileValue<'a> {
    arg: &'a Arg,
}

impl<'de> DeserializeSeed<'de> for FileValue<'_> {
    type Value = Vec<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<String>, D::Error> {
        let texts: Vec<String> = match (is_switch(self.arg), is_list(self.arg)) {
            (true, _) => vec![bool::deserialize(deserializer)?.to_string()],
            (false, true) if is_integer(self.arg) => Vec::<u64>::deserialize(deserializer)?
                .iter()
                .map(u64::to_string)
                .collect(),
            (false, true) => Vec::<String>::deserialize(deserializer)?,
            (false, false) if is_integer(self.arg) => {
                vec![u64::deserialize(deserializer)?.to_string()]
            }
            (false, false) => vec![String::deserialize(deserializer)?],
        };
        if !is_switch(self.arg) {
            for text in &texts {
                check(self.arg, text).map_err(de::Error::custom)?;
            }
        }
        Ok(texts)
    }
}

/// Runs `text` through the flag's own parser, as if given on the command line. The error is
/// what the parser said is wrong, without clap's framing (`error: invalid value … for
/// '--flag'`): the file's error names the key and the line instead.
fn check(arg: &Arg, text: &str) -> Result<(), String> {
    let long = arg.get_long().unwrap_or(arg.get_id().as_str());
    let alone = Command::new("node")
        .no_binary_name(true)
        .arg(arg.clone().env(None::<&'static str>).value_delimiter(None));
    match alone.try_get_matches_from([format!("--{long}={text}")]) {
        Ok(_) => Ok(()),
        Err(error) => Err(match std::error::Error::source(&error) {
            Some(source) => source.to_string(),
            None => {
                let text = error.to_string();
                let first = text.lines().next().unwrap_or_default();
                first.strip_prefix("error: ").unwrap_or(first).to_string()
            }
        }),
    }
}

impl<'de> Deserialize<'de> for ClusterSeed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut settings = Vec::new();
        SeedTable {
            prefix: String::new(),
            out: &mut settings,
        }
        .deserialize(deserializer)?;
        Ok(ClusterSeed(settings))
    }
}

/// Walks nested tables (`[cluster.probe.http]`) down to their values, turning each path into a
/// dotted key. A value is checked while the deserializer stands on it, so an error carries the
/// value's line.
struct SeedTable<'a> {
    prefix: String,
    out: &'a mut Vec<Setting>,
}

impl<'de> DeserializeSeed<'de> for SeedTable<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl SeedTable<'_> {
    fn leaf<E: de::Error>(self, value: serde_json::Value) -> Result<(), E> {
        if self.prefix.is_empty() {
            return Err(E::custom(
                "`cluster` is a table of config keys, e.g. [cluster.probe.http] sample_rate = 0.5",
            ));
        }
        let setting = Setting {
            key: self.prefix,
            value,
        };
        self.out.push(setting);
        // Errors about this key are reported here, with its line; an error about another key
        // (a destination's protocol read before its endpoint) waits for the whole-table check.
        if let Err(e) = apply_settings(&ClusterConfig::default(), self.out) {
            let about_this_key = match &e {
                ConfigError::UnknownKey { key, .. } | ConfigError::Invalid { key, .. } => {
                    self.out.last().is_some_and(|s| &s.key == key)
                }
                _ => false,
            };
            if about_this_key {
                return Err(E::custom(format!("in [cluster]: {e}")));
            }
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for SeedTable<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a config value or a table of config keys")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            let prefix = if self.prefix.is_empty() {
                key
            } else {
                format!("{}.{key}", self.prefix)
            };
            map.next_value_seed(SeedTable {
                prefix,
                out: &mut *self.out,
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<serde_json::Value>()? {
            items.push(item);
        }
        self.leaf(serde_json::Value::Array(items))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.leaf(v.into())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.leaf(v.into())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.leaf(v.into())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.leaf(v.into())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.leaf(v.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_probes::Scope;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        node: NodeArgs,
    }

    fn node_args(argv: &[&str]) -> (NodeArgs, ArgMatches) {
        let matches = Wrapper::command()
            .try_get_matches_from(std::iter::once("apiary").chain(argv.iter().copied()))
            .expect("test flags parse");
        let wrapper = Wrapper::from_arg_matches(&matches).expect("test flags parse");
        (wrapper.node, matches)
    }

    #[test]
    fn file_fills_defaults_and_flags_win() {
        let file = FileSettings::parse(
            "name = \"from-file\"\nlisten = \"10.0.0.1:9000\"\nscopes = [\"netns:blue\"]\n\
             metrics_interval = \"30s\"\napi_max_connections = 50\n\
             [cluster.probe.http]\nsample_rate = 0.5\n\
             [cluster.destination.main]\nendpoint = \"http://collector:4317\"\nprotocol = \"grpc\"\n\
             [cluster.destination.main.headers]\nx-api-key = \"sk-1\"\n",
        )
        .expect("valid file");
        let (mut args, mut matches) = node_args(&["--name", "from-flag"]);
        let seed = layer(&mut args, file, &mut matches).expect("the file's values parse");
        assert_eq!(
            args.name.as_deref(),
            Some("from-flag"),
            "a flag beats the file"
        );
        assert_eq!(
            args.listen.to_string(),
            "10.0.0.1:9000",
            "the file beats a default"
        );
        assert_eq!(args.scopes, vec![Scope::Netns("blue".into())]);
        assert_eq!(args.metrics_interval.as_secs(), 30);
        // Before the fix: "invalid type: integer `50`, expected a string".
        assert_eq!(args.api_max_connections, 50);
        assert_eq!(
            args.api.to_string(),
            "127.0.0.1:7700",
            "unset stays default"
        );
        let mut keys: Vec<_> = seed.0.iter().map(|s| s.key.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "destination.main.endpoint",
                "destination.main.headers.x-api-key",
                "destination.main.protocol",
                "probe.http.sample_rate"
            ]
        );
        let config = apply_settings(&ClusterConfig::default(), &seed.0).expect("valid seed");
        assert_eq!(
            config.destinations["main"].endpoint,
            "http://collector:4317"
        );
        // Before the fix a header not already set was an unknown key.
        assert_eq!(config.destinations["main"].headers["x-api-key"], "sk-1");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let error = FileSettings::parse("name = \"a\"\n\nlisten_addr = \"1.2.3.4:5\"\n")
            .expect_err("unknown key");
        let text = error.to_string();
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("listen_addr"), "{text}");
    }

    #[test]
    fn bad_values_name_the_line_and_what_is_wrong() {
        let error =
            FileSettings::parse("name = \"a\"\nlisten = \"nowhere\"\n").expect_err("bad addr");
        let text = error.to_string();
        assert!(text.contains("line 2") && text.contains("listen"), "{text}");

        let error = FileSettings::parse("[cluster.probe.http]\nenabled = true\nsample_rate = 7\n")
            .expect_err("rate out of range");
        let text = error.to_string();
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("probe.http.sample_rate"), "{text}");

        let error = FileSettings::parse("name = \"a\"\nnice = 25\n").expect_err("nice > 19");
        let text = error.to_string();
        assert!(
            text.contains("line 2") && text.contains("0 to 19"),
            "{text}"
        );

        let error = FileSettings::parse("[cluster.probe.htp]\nenabled = true\n")
            .expect_err("unknown probe");
        let text = error.to_string();
        assert!(
            text.contains("line 2") && text.contains("probe.htp.enabled"),
            "{text}"
        );

        let error = FileSettings::parse("scopes = [\"pid:3\"]\n").expect_err("bad scope");
        assert!(error.to_string().contains("cgroup:/PATH"), "{error}");
    }
}
