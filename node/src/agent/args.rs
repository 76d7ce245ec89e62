//! `apiary node`'s settings, each defined once: the field's doc is its `--help`, `long` its flag,
//! `env` its `APIARY_*` variable, and its id (the field name: `data_dir`) its key in
//! `apiary.toml` (see [`super::settings`], which reads the file through these same definitions).

use std::net::SocketAddr;
use std::path::PathBuf;

use apiary_pipeline::FullPolicy;
use apiary_probes::Scope;

/// Flags of `apiary node` that are not settings, so `apiary.toml` has no key for them: which
/// file to read, and what to do with the settings rather than one of them.
pub const NOT_IN_FILE: &[&str] = &["config", "check", "dev"];

#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// Settings file (see `apiary init`); flags and APIARY_* variables override it
    /// [default: ./apiary.toml when it exists]
    #[arg(long, env = "APIARY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the settings (file, environment, flags), print the ones in effect, and exit.
    #[arg(long)]
    pub check: bool,
    /// Single-node cluster with embedded defaults: data in ./apiary-data, API on
    /// 127.0.0.1:7700, peers on 127.0.0.1:7701.
    #[arg(long)]
    pub dev: bool,
    /// Node name shown in status and events [default: the host name]
    #[arg(long, env = "APIARY_NAME")]
    pub name: Option<String>,
    /// Where this node keeps its identity, Raft log and config.
    #[arg(long, env = "APIARY_DATA_DIR", default_value = "./apiary-data")]
    pub data_dir: PathBuf,
    /// QUIC address for peers (mutual TLS).
    #[arg(long, env = "APIARY_LISTEN", default_value = "127.0.0.1:7701")]
    pub listen: SocketAddr,
    /// Address other peers should dial, if not --listen (e.g. behind NAT, or --listen 0.0.0.0).
    #[arg(long, env = "APIARY_ADVERTISE")]
    pub advertise: Option<String>,
    /// HTTP API and dashboard address.
    #[arg(long, env = "APIARY_API", default_value = "127.0.0.1:7700")]
    pub api: SocketAddr,
    /// A DNS name clients reach the API by (repeatable). IP addresses, `localhost` and this
    /// machine's host name always work; any other name in a request's Host is refused, so that
    /// a web page cannot reach the API through DNS rebinding.
    #[arg(
        long = "api-name",
        env = "APIARY_API_NAMES",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub api_names: Vec<String>,
    /// The most API connections open at once; more are closed as they arrive.
    #[arg(long, env = "APIARY_API_MAX_CONNECTIONS", default_value_t = 512,
          value_parser = connection_cap)]
    pub api_max_connections: usize,
    /// QUIC address of any member, to join its cluster (first start only).
    #[arg(long, env = "APIARY_JOIN")]
    pub join: Option<String>,
    /// The cluster's join token (DATA_DIR/join-token on any member).
    #[arg(long, env = "APIARY_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// File holding an admin API token: on the node that creates the cluster, its first token
    /// instead of a generated one; on every node, a token this node accepts whatever the
    /// replicated tokens say (rotate it by changing the file and restarting).
    #[arg(long, env = "APIARY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// How long the certificates this node signs (as a CA holder) are valid; every node renews
    /// its own when a third of the lifetime is left.
    #[arg(
        long,
        env = "APIARY_CERT_LIFETIME",
        default_value = "90days",
        value_name = "DURATION",
        value_parser = cert_lifetime
    )]
    pub cert_lifetime: humantime::Duration,
    /// Limit the probes to processes in a cgroup (`cgroup:/PATH`) or network namespace
    /// (`netns:NAME`); repeatable. Default: the whole machine.
    #[arg(
        long = "scope",
        env = "APIARY_SCOPE",
        value_delimiter = ',',
        value_name = "cgroup:PATH|netns:NAME"
    )]
    pub scopes: Vec<Scope>,
    /// OpenSSL 3 libssl for the `tls` probe [default: found on the system]
    #[arg(long, env = "APIARY_LIBSSL")]
    pub libssl: Option<PathBuf>,
    /// Bytes of the probes' ring buffer (a power of two, 2 MiB to 256 MiB). Counted twice in
    /// the agent's RSS (the kernel maps it twice); raise it if `/v1/probes` counts lost events
    /// on a busy host.
    #[arg(long, env = "APIARY_PROBE_RING_BYTES", default_value_t = apiary_probes::DEFAULT_RING_BYTES,
        value_parser = parse_ring_bytes)]
    pub probe_ring_bytes: u32,
    /// Bytes of disk each export destination's buffer may take (its files, measured) while the
    /// destination is down or slower than what comes in.
    #[arg(long, env = "APIARY_EXPORT_BUFFER_BYTES", default_value_t = 256 << 20)]
    pub export_buffer_bytes: u64,
    /// When a destination's buffer is full: refuse (apps are answered 429 / UNAVAILABLE and
    /// retry; probe spans are shed, counted), block (wait for room), or drop (opt-in: take it
    /// and drop the batch, counted).
    #[arg(long, env = "APIARY_EXPORT_BUFFER_FULL", default_value = "refuse")]
    pub export_buffer_full: FullPolicy,
    /// Free bytes the export buffers leave on the data dir's disk: below that they push back
    /// as when full, so the Raft log (on the same disk) never finds it full. 0 turns it off.
    #[arg(long, env = "APIARY_EXPORT_DISK_RESERVE_BYTES", default_value_t = 64 << 20)]
    pub export_disk_reserve_bytes: u64,
    /// Export requests each destination has in flight at once (1: one at a time).
    #[arg(long, env = "APIARY_EXPORT_IN_FLIGHT", default_value_t = 4,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub export_in_flight: u16,
    /// The largest export request, in bytes before compression: stored batches are merged up
    /// to this (one larger batch goes alone). gRPC servers refuse messages over 4 MiB by default.
    #[arg(long, env = "APIARY_EXPORT_REQUEST_BYTES", default_value_t = 1 << 20,
          value_parser = clap::value_parser!(u32).range(1..=(64 << 20)))]
    pub export_request_bytes: u32,
    /// How often RED metrics (counted before sampling) go to the export destinations.
    #[arg(
        long,
        env = "APIARY_METRICS_INTERVAL",
        default_value = "10s",
        value_name = "DURATION"
    )]
    pub metrics_interval: humantime::Duration,
    /// Also write everything exported as OTLP/JSON lines to this file (`-`: standard output).
    /// `--dev` defaults it to DATA_DIR/telemetry.jsonl.
    #[arg(long, env = "APIARY_EXPORT_FILE", value_name = "PATH|-")]
    pub export_file: Option<PathBuf>,
    /// OTLP/gRPC receiver for instrumented apps (traces, metrics, logs), or `off`.
    #[arg(long, env = "APIARY_OTLP_GRPC", default_value = "127.0.0.1:4317")]
    pub otlp_grpc: String,
    /// OTLP/HTTP receiver for instrumented apps (traces, metrics, logs), or `off`.
    #[arg(long, env = "APIARY_OTLP_HTTP", default_value = "127.0.0.1:4318")]
    pub otlp_http: String,
    /// Spans of sampled traces this node keeps for `GET /v1/traces/{id}` (in memory; the
    /// newest 4096 are shared with the live span list, each one beyond costs memory; 0: none).
    #[arg(long, env = "APIARY_TRACE_STORE_SPANS", default_value_t = 4096)]
    pub trace_store_spans: usize,
    /// How long this node keeps a span for `GET /v1/traces/{id}`.
    #[arg(
        long,
        env = "APIARY_TRACE_STORE_AGE",
        default_value = "15min",
        value_name = "DURATION"
    )]
    pub trace_store_age: humantime::Duration,
    /// How often each service's RED and saturation signals are sampled for predictions (the
    /// history's resolution).
    #[arg(long, env = "APIARY_PREDICT_INTERVAL", default_value = "5s", value_name = "DURATION",
          value_parser = predict_interval)]
    pub predict_interval: humantime::Duration,
    /// Points each series of the prediction history keeps (720 at 5s: one hour); the history
    /// is saved in the data dir and survives a restart.
    #[arg(long, env = "APIARY_PREDICT_HISTORY", default_value_t = 720,
          value_parser = clap::value_parser!(u32).range(24..=100_000))]
    pub predict_history: u32,
    /// Forecasts further out than this are not raised.
    #[arg(
        long,
        env = "APIARY_PREDICT_HORIZON",
        default_value = "30min",
        value_name = "DURATION"
    )]
    pub predict_horizon: humantime::Duration,
    /// Run the mesh without eBPF probes (no root needed).
    #[arg(long, env = "APIARY_NO_PROBES")]
    pub no_probes: bool,
    /// Do not send trace context to peers' nodes in TCP header options (nor read theirs): a
    /// request from another node then starts a new trace here. For networks whose middleboxes
    /// drop segments with unknown TCP options (docs/architecture.md#connected-traces).
    #[arg(long, env = "APIARY_NO_TRACE_PROPAGATION")]
    pub no_trace_propagation: bool,
    /// CPU niceness of the agent (0-19): above 0 the workload's threads run first when both
    /// want a core, and spans wait in the ring buffer meanwhile. 0 (the default) keeps the
    /// default priority; see docs/operations.md before raising it on saturated machines.
    #[arg(long, env = "APIARY_NICE", default_value_t = 0, value_parser = niceness)]
    pub nice: u8,
}

/// `--cert-lifetime`: long enough to renew in time (renewal is checked every 2 s).
fn cert_lifetime(text: &str) -> Result<humantime::Duration, String> {
    let lifetime: humantime::Duration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration (e.g. 90days, 720h): {e}"))?;
    if lifetime.as_secs() < 30 {
        return Err(format!(
            "{text} is too short: certificates must live at least 30s (90days is the default)"
        ));
    }
    Ok(lifetime)
}

/// `--predict-interval`: 1 s to 10 min.
fn predict_interval(text: &str) -> Result<humantime::Duration, String> {
    let interval: humantime::Duration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration (e.g. 5s, 1min): {e}"))?;
    if !(1..=600).contains(&interval.as_secs()) {
        return Err(format!(
            "{text} is out of range: the prediction interval must be 1s to 10min (5s is the default)"
        ));
    }
    Ok(interval)
}

/// `--nice` (and `nice` in the file, read through this same parser): 0 to 19.
fn niceness(text: &str) -> Result<u8, String> {
    match text.parse::<u8>() {
        Ok(nice @ 0..=19) => Ok(nice),
        _ => Err(format!(
            "{text} is not in 0..=19: the niceness must be 0 to 19 (0 keeps the default priority)"
        )),
    }
}

/// `--api-max-connections`: 1 to 65 536.
fn connection_cap(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(cap @ 1..=65_536) => Ok(cap),
        _ => Err(format!(
            "{text} is not a connection count: give 1 to 65536 (default 512)"
        )),
    }
}

fn parse_ring_bytes(text: &str) -> Result<u32, String> {
    let bytes = text
        .parse::<u32>()
        .map_err(|_| format!("{text} is not a byte count: give a power of two such as 4194304"))?;
    apiary_probes::check_ring_bytes(bytes).map(|()| bytes)
}

/// The node's name when `--name` is not given: the host name. `apiary init` offers the same
/// default, so it is shared with `cli::init`.
pub(crate) fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Args;

    /// Every setting has its flag, its `APIARY_*` variable and its file key; the few flags that
    /// are not settings are named, so a new flag cannot silently miss the file or the environment.
    #[test]
    fn every_setting_has_a_flag_a_variable_and_a_file_key() {
        let command = NodeArgs::augment_args(clap::Command::new("node"));
        let ids: Vec<&str> = command
            .get_arguments()
            .map(|a| a.get_id().as_str())
            .collect();
        for id in NOT_IN_FILE {
            assert!(
                ids.contains(id),
                "NOT_IN_FILE names {id:?}, which is no flag"
            );
        }
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if NOT_IN_FILE.contains(&id) {
                continue;
            }
            assert!(arg.get_long().is_some(), "{id} has no --flag");
            let env = arg.get_env().and_then(|e| e.to_str());
            assert!(
                env.is_some_and(|e| e.starts_with("APIARY_")),
                "--{} has no APIARY_* variable",
                arg.get_long().unwrap_or(id)
            );
            assert_ne!(id, "cluster", "`cluster` is the file's [cluster] table");
        }
    }
}
