//! The typed cluster configuration and its range checks.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::ConfigError;

/// Names of the probes a node can run, in display order.
pub const PROBE_NAMES: [&str; 8] = [
    "http", "tls", "tcp", "process", "redis", "postgres", "mysql", "http2",
];

/// The one configuration every node of a cluster agrees on.
///
/// Field names are the CLI keys: `probe.http.sample_rate` is `probes.http.sample_rate` here
/// (the CLI's singular prefixes `probe.` and `destination.` name the plural maps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub probes: Probes,
    pub budget: Budget,
    /// OTLP destinations by a name the operator chooses.
    pub destinations: BTreeMap<String, Destination>,
    /// Who may use every node's HTTP API (absent from configs written before it existed).
    #[serde(default)]
    pub api: ApiAccess,
    /// What spans may carry of what the probes saw (absent from configs written before it).
    #[serde(default)]
    pub privacy: Privacy,
    /// Whose signed profiles the cluster applies without `--allow-unsigned` (absent from
    /// configs written before profiles existed: then the project's key alone).
    #[serde(default)]
    pub trust: Trust,
    /// Service level objectives by service name (`slo.<service>.p99_ms`,
    /// `slo.<service>.error_rate`); a service without one is held to objectives derived from
    /// its observed baseline (absent from configs written before predictions existed).
    #[serde(default)]
    pub slos: BTreeMap<String, ServiceSlo>,
    /// Where predictions go beyond each node's API and export (absent from configs written
    /// before it).
    #[serde(default)]
    pub predict: PredictOutputs,
}

/// Where each node sends its predictions as they are raised and resolved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PredictOutputs {
    pub webhook: Webhook,
}

/// `predict.webhook.url`: every node POSTs one JSON body per prediction raised or resolved to
/// it (retried, never holding up the detector). Empty: none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Webhook {
    pub url: String,
}

/// One service's objectives; an unset field falls back to the observed baseline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSlo {
    /// 99 % of the service's requests finish within this many milliseconds.
    pub p99_ms: Option<f64>,
    /// The share of requests allowed to fail, greater than 0 and below 1 (0.01 is 1 %).
    pub error_rate: Option<f64>,
}

/// Services the config may set objectives for.
pub const MAX_SLOS: usize = 1024;
/// The longest service name an objective may name (a process name is at most 15 bytes; an
/// OTLP `service.name` may be longer).
pub const MAX_SLO_SERVICE_CHARS: usize = 128;

/// The minisign public key the project signs the catalogue in `profiles/` with (the second line
/// of `profiles/apiary-project.pub`). Its secret key is kept out of the repository.
pub const PROJECT_PROFILE_KEY: &str = "RWQ5+ItCuUEhqb4LSxUDnnLtLRMqvF94l5kmud6WMcyb5k/mEwJkkKVf";

/// Publishers whose profiles this cluster trusts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Trust {
    /// Minisign public keys, each the base64 line of a `minisign.pub` (`RW…`, 56 characters).
    pub profile_keys: Vec<String>,
}

impl Default for Trust {
    fn default() -> Self {
        Trust {
            profile_keys: vec![PROJECT_PROFILE_KEY.to_string()],
        }
    }
}

/// Whether `key` has the shape of a minisign public key: base64 of 42 bytes, Ed25519 (`RW`).
/// The signature check itself is the profile crate's; this keeps typos out of the config.
pub fn is_minisign_public_key(key: &str) -> bool {
    key.len() == 56
        && key.starts_with("RW")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Request details that can hold secrets (tokens in query strings, session ids) are dropped
/// from spans unless named here. Headers other than `Host` and `traceparent` are never kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Privacy {
    /// Query parameters whose name and value a span's target keeps (e.g. `["page", "sort"]`);
    /// every other parameter is removed, and with an empty list the whole query string.
    pub keep_query_params: Vec<String>,
    /// Whether Redis spans keep the command's key (`db.query.text` `GET user:42`); off, a
    /// span names the command alone. Keys often hold user ids, emails and session tokens.
    pub keep_redis_keys: bool,
}

/// Access to the HTTP API beyond what tokens grant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiAccess {
    /// Reads (cluster, config, spans, RED, …) without a token: only for an API reachable from
    /// a trusted network alone. Writes always need a token.
    pub public_read: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probes {
    pub http: ProbeSettings,
    pub tls: ProbeSettings,
    pub tcp: ProbeSettings,
    pub process: ProbeSettings,
    /// Redis commands and replies (RESP2/RESP3) on the http probe's socket tracepoints, its
    /// connections found from their first command (absent from configs written before it).
    #[serde(default = "ProbeSettings::database")]
    pub redis: ProbeSettings,
    /// PostgreSQL queries and their results (protocol 3, simple and extended) on the http
    /// probe's socket tracepoints, its connections found from their startup packet (absent
    /// from configs written before it).
    #[serde(default = "ProbeSettings::database")]
    pub postgres: ProbeSettings,
    /// MySQL and MariaDB statements and their results (text and prepared statements) on the
    /// http probe's socket tracepoints, its connections found from the server's greeting
    /// (absent from configs written before it).
    #[serde(default = "ProbeSettings::database")]
    pub mysql: ProbeSettings,
    /// HTTP/2 in cleartext and gRPC over it (requests, responses, gRPC status), on the http
    /// probe's socket tracepoints, its connections found from the client's preface (absent
    /// from configs written before it).
    #[serde(default = "ProbeSettings::http2")]
    pub http2: ProbeSettings,
}

impl Probes {
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &ProbeSettings)> {
        PROBE_NAMES.into_iter().zip([
            &self.http,
            &self.tls,
            &self.tcp,
            &self.process,
            &self.redis,
            &self.postgres,
            &self.mysql,
            &self.http2,
        ])
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSettings {
    pub enabled: bool,
    /// Probability in [0, 1] that an event is kept.
    pub sample_rate: f64,
    /// How many payload bytes are captured per read or write (0 to 4096).
    pub capture_bytes: u32,
    pub filters: Filters,
}

/// Include/exclude filters; an empty include list means "everything".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filters {
    pub include_pids: Vec<u32>,
    pub exclude_pids: Vec<u32>,
    pub include_ports: Vec<u16>,
    pub exclude_ports: Vec<u16>,
    /// cgroup v2 paths, e.g. `/system.slice/nginx.service`.
    pub include_cgroups: Vec<String>,
    pub exclude_cgroups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// The most CPU that probes and pipeline may use on one node, in percent of one core.
    pub cpu_percent_per_node: f64,
    /// What the OTLP backend can take for the whole cluster.
    pub export_events_per_second: u64,
    pub always_keep: AlwaysKeep,
}

/// Classes of spans kept whatever the sampling, within a hard cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlwaysKeep {
    /// Keep HTTP 5xx responses.
    pub errors: bool,
    /// Keep requests slower than this many milliseconds (0 turns it off).
    pub slower_than_ms: u64,
    /// Hard cap per node on spans kept by these rules.
    pub max_per_second: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// e.g. `http://collector:4317` (gRPC) or `http://collector:4318` (HTTP/protobuf).
    pub endpoint: String,
    pub protocol: Protocol,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// What this destination does when its disk buffer is full. It is the destination's own
    /// choice because it decides whether a destination that is down may stop intake for the
    /// others (`refuse`, `block`) or loses data instead (`drop`).
    #[serde(default)]
    pub when_full: WhenFull,
}

impl Default for Destination {
    /// OTLP's recommended default transport is HTTP/protobuf.
    fn default() -> Self {
        Destination {
            endpoint: String::new(),
            protocol: Protocol::HttpProtobuf,
            headers: BTreeMap::new(),
            when_full: WhenFull::Default,
        }
    }
}

/// `destination.NAME.when_full`: what a full disk buffer does to intake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenFull {
    /// The node's `--export-buffer-full` (`refuse` unless the node says otherwise).
    #[default]
    Default,
    /// Apps are answered OTLP's retryable status and retry; nothing acknowledged is lost, but
    /// a destination that stays down long enough stops intake for every destination.
    Refuse,
    /// The receiver waits for room, holding the app's request open.
    Block,
    /// Take the request and drop this destination's copy, counted: the other destinations
    /// keep full speed while this one is down.
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        })
    }
}

impl ProbeSettings {
    /// A database protocol's probe: on, every operation, and 1 KiB per buffer, so that a
    /// pipeline of a few dozen commands is read whole (a cut one stops its connection's
    /// pairing, see docs/concepts.md).
    pub fn database() -> Self {
        ProbeSettings {
            capture_bytes: 1024,
            ..ProbeSettings::default()
        }
    }

    /// HTTP/2's probe: on, every request, and as much of each buffer as a record holds. Every
    /// header block must be read whole to keep the connection's HPACK tables (a cut one stops
    /// the connection's decoding, see docs/concepts.md), and a server's write holds the frames
    /// of several streams.
    pub fn http2() -> Self {
        ProbeSettings {
            capture_bytes: 4095,
            ..ProbeSettings::default()
        }
    }
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            enabled: true,
            sample_rate: 1.0,
            capture_bytes: 256,
            filters: Filters::default(),
        }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            probes: Probes {
                http: ProbeSettings::default(),
                tls: ProbeSettings::default(),
                tcp: ProbeSettings::default(),
                process: ProbeSettings::default(),
                redis: ProbeSettings::database(),
                postgres: ProbeSettings::database(),
                mysql: ProbeSettings::database(),
                http2: ProbeSettings::http2(),
            },
            budget: Budget {
                cpu_percent_per_node: 10.0,
                export_events_per_second: 10_000,
                always_keep: AlwaysKeep {
                    errors: true,
                    slower_than_ms: 1_000,
                    max_per_second: 200,
                },
            },
            destinations: BTreeMap::new(),
            api: ApiAccess::default(),
            privacy: Privacy::default(),
            trust: Trust::default(),
            slos: BTreeMap::new(),
            predict: PredictOutputs::default(),
        }
    }
}

pub const MAX_CAPTURE_BYTES: u32 = 4096;

/// Filter entries the kernel's maps hold, over all probes (each probe's include and exclude
/// lists together): a config with more is refused when written, not found unloadable at a
/// restart. probes/src/abi.rs fails the build if these differ from bpf/apiary.h's map sizes.
pub const MAX_PID_FILTERS: usize = 4096;
pub const MAX_PORT_FILTERS: usize = 4096;
pub const MAX_CGROUP_FILTERS: usize = 1024;
/// Export destinations a cluster may name (each holds a disk buffer and a delivery task on
/// every node).
pub const MAX_DESTINATIONS: usize = 16;

impl ClusterConfig {
    /// Range and format checks that serde's types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, probe) in self.probes.iter() {
            if !(0.0..=1.0).contains(&probe.sample_rate) || probe.sample_rate.is_nan() {
                return Err(ConfigError::invalid(
                    format!("probe.{name}.sample_rate"),
                    probe.sample_rate,
                    "a number from 0 to 1 (0.1 keeps one event in ten)",
                ));
            }
            if probe.capture_bytes > MAX_CAPTURE_BYTES {
                return Err(ConfigError::invalid(
                    format!("probe.{name}.capture_bytes"),
                    probe.capture_bytes,
                    "an integer from 0 to 4096",
                ));
            }
            for (list, paths) in [
                ("include_cgroups", &probe.filters.include_cgroups),
                ("exclude_cgroups", &probe.filters.exclude_cgroups),
            ] {
                if let Some(bad) = paths.iter().find(|p| !p.starts_with('/')) {
                    return Err(ConfigError::invalid(
                        format!("probe.{name}.filters.{list}"),
                        bad,
                        "absolute cgroup v2 paths such as /system.slice/nginx.service",
                    ));
                }
            }
        }
        let cpu = self.budget.cpu_percent_per_node;
        if !(cpu > 0.0 && cpu <= 100.0) {
            return Err(ConfigError::invalid(
                "budget.cpu_percent_per_node",
                cpu,
                "a number of percent of one core, greater than 0 and at most 100",
            ));
        }
        if self.budget.export_events_per_second == 0 {
            return Err(ConfigError::invalid(
                "budget.export_events_per_second",
                0,
                "a positive integer (events per second for the whole cluster)",
            ));
        }
        for (name, destination) in &self.destinations {
            validate_destination(name, destination)?;
        }
        for (service, slo) in &self.slos {
            validate_slo(service, slo)?;
        }
        validate_webhook(&self.predict.webhook.url)?;
        if let Some(bad) = self
            .trust
            .profile_keys
            .iter()
            .find(|key| !is_minisign_public_key(key))
        {
            return Err(ConfigError::invalid(
                "trust.profile_keys",
                bad,
                "minisign public keys: the second line of a minisign.pub, 56 characters \
                 starting with RW",
            ));
        }
        Ok(())
    }

    /// Size limits a new change must keep (checked when it is proposed, not when history is
    /// replayed): at most [`MAX_DESTINATIONS`], and every probe's filters together within the
    /// kernel's filter maps.
    pub fn validate_limits(&self) -> Result<(), ConfigError> {
        if self.slos.len() > MAX_SLOS {
            return Err(ConfigError::invalid(
                "slo",
                format!("({} services)", self.slos.len()),
                format!("objectives for at most {MAX_SLOS} services: remove one first"),
            ));
        }
        if self.destinations.len() > MAX_DESTINATIONS {
            return Err(ConfigError::invalid(
                "destination",
                format!("({} destinations)", self.destinations.len()),
                format!("at most {MAX_DESTINATIONS} destinations: remove one first"),
            ));
        }
        self.validate_filter_room()
    }

    /// Every probe's filters together must fit the kernel's filter maps.
    fn validate_filter_room(&self) -> Result<(), ConfigError> {
        use std::collections::BTreeSet;
        let mut pids = BTreeSet::new();
        let mut ports = BTreeSet::new();
        let mut cgroups = BTreeSet::new();
        for (name, probe) in self.probes.iter() {
            let f = &probe.filters;
            pids.extend(
                f.include_pids
                    .iter()
                    .chain(&f.exclude_pids)
                    .map(|p| (name, *p)),
            );
            ports.extend(
                f.include_ports
                    .iter()
                    .chain(&f.exclude_ports)
                    .map(|p| (name, *p)),
            );
            cgroups.extend(
                f.include_cgroups
                    .iter()
                    .chain(&f.exclude_cgroups)
                    .map(|c| (name, c.as_str())),
            );
        }
        for (list, used, room) in [
            ("pids", pids.len(), MAX_PID_FILTERS),
            ("ports", ports.len(), MAX_PORT_FILTERS),
            ("cgroups", cgroups.len(), MAX_CGROUP_FILTERS),
        ] {
            if used > room {
                return Err(ConfigError::invalid(
                    format!("probe.*.filters.*_{list}"),
                    format!("({used} {list} over all probes)"),
                    format!(
                        "at most {room} {list} over all probes' include and exclude lists: \
                         the kernel's filter map holds no more"
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn validate_destination(name: &str, destination: &Destination) -> Result<(), ConfigError> {
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        return Err(ConfigError::invalid(
            format!("destination.{name}"),
            name,
            "a destination name made of letters, digits, '-' and '_'",
        ));
    }
    let field = format!("destination.{name}.endpoint");
    let allowed = "an http:// or https:// URL with a host, e.g. http://collector:4317";
    let url = url::Url::parse(&destination.endpoint)
        .map_err(|_| ConfigError::invalid(&field, &destination.endpoint, allowed))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::invalid(&field, &destination.endpoint, allowed));
    }
    Ok(())
}

fn validate_webhook(url: &str) -> Result<(), ConfigError> {
    if url.is_empty() {
        return Ok(());
    }
    let allowed = "an http:// or https:// URL with a host, e.g. https://hooks.example.com/apiary \
                   (or \"\" for no webhook)";
    let parsed = url::Url::parse(url)
        .map_err(|_| ConfigError::invalid("predict.webhook.url", url, allowed))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ConfigError::invalid("predict.webhook.url", url, allowed));
    }
    Ok(())
}

fn validate_slo(service: &str, slo: &ServiceSlo) -> Result<(), ConfigError> {
    let valid_name = !service.is_empty()
        && service.chars().count() <= MAX_SLO_SERVICE_CHARS
        && !service.chars().any(|c| c.is_control() || c.is_whitespace());
    if !valid_name {
        return Err(ConfigError::invalid(
            format!("slo.{service}"),
            format!("{service:?}"),
            format!(
                "a service name of 1 to {MAX_SLO_SERVICE_CHARS} characters without spaces, as \
                 `apiary predict` and GET /v1/red name it"
            ),
        ));
    }
    if let Some(ms) = slo.p99_ms {
        if !(ms.is_finite() && ms > 0.0 && ms <= 3_600_000.0) {
            return Err(ConfigError::invalid(
                format!("slo.{service}.p99_ms"),
                ms,
                "milliseconds greater than 0 and at most 3600000 (e.g. 250), or null for the \
                 observed baseline",
            ));
        }
    }
    if let Some(rate) = slo.error_rate {
        if !(rate.is_finite() && rate > 0.0 && rate < 1.0) {
            return Err(ConfigError::invalid(
                format!("slo.{service}.error_rate"),
                rate,
                "a share of requests greater than 0 and below 1 (0.01 allows 1 % to fail), or \
                 null for the observed baseline",
            ));
        }
    }
    Ok(())
}
