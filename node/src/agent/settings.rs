//! `apiary.toml`: a node's settings from a file, under the environment and the flags.
//!
//! Precedence, lowest first: built-in defaults, the file, `APIARY_*` variables, flags. Clap
//! already orders defaults, environment and flags; the file slots in by filling every setting
//! whose value clap took from its default. Keys are the flag names with `_` (`data_dir` for
//! `--data-dir`). A `[cluster]` table holds dotted config keys
//! (`[cluster.probe.http] sample_rate = 0.5`) that a node creating a new cluster commits as the
//! cluster's first config change. Relative paths in the file are relative to the file's folder.
//! Unknown keys and bad values are errors that name the key and the line, because the `toml`
//! crate attaches the span of the value being read to every error.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result};
use apiary_config::{apply_settings, ClusterConfig, ConfigError, Setting};
use apiary_pipeline::FullPolicy;
use apiary_probes::Scope;
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::agent::NodeArgs;

/// The file read when `--config` is not given and it exists.
pub const DEFAULT_FILE: &str = "apiary.toml";

/// The contents of an `apiary.toml`. Every field mirrors a flag of `apiary node`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub name: Option<String>,
    pub data_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "parsed")]
    pub listen: Option<std::net::SocketAddr>,
    pub advertise: Option<String>,
    #[serde(default, deserialize_with = "parsed")]
    pub api: Option<std::net::SocketAddr>,
    pub join: Option<String>,
    pub join_token: Option<String>,
    pub token_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "parsed_list")]
    pub scopes: Option<Vec<Scope>>,
    pub libssl: Option<PathBuf>,
    pub export_buffer_bytes: Option<u64>,
    #[serde(default, deserialize_with = "parsed")]
    pub export_buffer_full: Option<FullPolicy>,
    #[serde(default, deserialize_with = "parsed")]
    pub metrics_interval: Option<humantime::Duration>,
    pub export_file: Option<PathBuf>,
    pub otlp_grpc: Option<String>,
    pub otlp_http: Option<String>,
    pub no_probes: Option<bool>,
    #[serde(default, deserialize_with = "niceness")]
    pub nice: Option<u8>,
    /// The first config of a cluster this node creates (ignored when joining or restarting).
    #[serde(default)]
    pub cluster: ClusterSeed,
}

/// Dotted-key settings for a new cluster, each checked against the config model as it is read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ClusterSeed(pub Vec<Setting>);

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
        // Relative paths mean "next to this file", wherever the node is started from.
        let base = path.parent().unwrap_or(Path::new("."));
        for slot in [
            &mut settings.data_dir,
            &mut settings.token_file,
            &mut settings.libssl,
        ] {
            if let Some(p) = slot.as_mut().filter(|p| p.is_relative()) {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = settings
            .export_file
            .as_mut()
            .filter(|p| p.is_relative() && p.as_os_str() != "-")
        {
            *p = base.join(&*p);
        }
        Ok(settings)
    }
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

/// Fills every setting of `args` that came from a built-in default with the file's value.
/// `matches` are the `node` subcommand's, which know where each value came from.
pub fn layer(args: &mut NodeArgs, file: FileSettings, matches: &ArgMatches) -> ClusterSeed {
    let from_default = |id: &str| {
        !matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    macro_rules! layer {
        ($($field:ident),* $(,)?) => {$(
            if let Some(value) = file.$field {
                if from_default(stringify!($field)) {
                    args.$field = value.into();
                }
            }
        )*};
    }
    layer!(
        name,
        data_dir,
        listen,
        advertise,
        api,
        join,
        join_token,
        token_file,
        scopes,
        libssl,
        export_buffer_bytes,
        export_buffer_full,
        metrics_interval,
        export_file,
        otlp_grpc,
        otlp_http,
        no_probes,
        nice,
    );
    file.cluster
}

/// `apiary node --check`: the settings in effect, as an `apiary.toml` would hold them.
pub fn print_effective(args: &NodeArgs, seed: &ClusterSeed) -> Result<()> {
    let text = |v: &dyn std::fmt::Display| toml::Value::String(v.to_string());
    let path = |p: &Path| text(&p.display());
    let mut table = toml::Table::new();
    let mut put = |key: &str, value: Option<toml::Value>| {
        if let Some(value) = value {
            table.insert(key.to_string(), value);
        }
    };
    put("name", args.name.as_ref().map(|v| text(v)));
    put("data_dir", Some(path(&args.data_dir)));
    put("listen", Some(text(&args.listen)));
    put("advertise", args.advertise.as_ref().map(|v| text(v)));
    put("api", Some(text(&args.api)));
    put("join", args.join.as_ref().map(|v| text(v)));
    put(
        "join_token",
        args.join_token.as_ref().map(|_| text(&"(set, hidden)")),
    );
    put("token_file", args.token_file.as_deref().map(path));
    let scopes = args.scopes.iter().map(|s| text(&scope_text(s))).collect();
    put("scopes", Some(toml::Value::Array(scopes)));
    put("libssl", args.libssl.as_deref().map(path));
    let buffer = i64::try_from(args.export_buffer_bytes).unwrap_or(i64::MAX);
    put("export_buffer_bytes", Some(toml::Value::Integer(buffer)));
    let policy = match args.export_buffer_full {
        FullPolicy::DropOldest => "drop-oldest",
        FullPolicy::Block => "block",
    };
    put("export_buffer_full", Some(text(&policy)));
    put("metrics_interval", Some(text(&args.metrics_interval)));
    put("export_file", args.export_file.as_deref().map(path));
    put("otlp_grpc", Some(text(&args.otlp_grpc)));
    put("otlp_http", Some(text(&args.otlp_http)));
    put("no_probes", Some(toml::Value::Boolean(args.no_probes)));
    put("nice", Some(toml::Value::Integer(args.nice.into())));
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

fn scope_text(scope: &Scope) -> String {
    match scope {
        Scope::Cgroup(path) => format!("cgroup:{}", path.display()),
        Scope::Netns(name) => format!("netns:{name}"),
    }
}

/// `nice`: 0 to 19, as `--nice` takes it.
fn niceness<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u8>, D::Error> {
    match u8::deserialize(deserializer)? {
        nice @ 0..=19 => Ok(Some(nice)),
        nice => Err(de::Error::custom(format!(
            "nice = {nice}: the niceness must be 0 to 19 (0 keeps the default priority)"
        ))),
    }
}

fn parsed<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map(Some).map_err(de::Error::custom)
}

fn parsed_list<'de, D, T>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| text.parse().map_err(de::Error::custom))
        .collect::<Result<Vec<T>, _>>()
        .map(Some)
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
    use clap::{CommandFactory, FromArgMatches, Parser};

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
             metrics_interval = \"30s\"\n[cluster.probe.http]\nsample_rate = 0.5\n\
             [cluster.destination.main]\nendpoint = \"http://collector:4317\"\nprotocol = \"grpc\"\n",
        )
        .expect("valid file");
        let (mut args, matches) = node_args(&["--name", "from-flag"]);
        let seed = layer(&mut args, file, &matches);
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
                "destination.main.protocol",
                "probe.http.sample_rate"
            ]
        );
        let config = apply_settings(&ClusterConfig::default(), &seed.0).expect("valid seed");
        assert_eq!(
            config.destinations["main"].endpoint,
            "http://collector:4317"
        );
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
