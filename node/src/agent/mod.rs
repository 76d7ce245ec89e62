//! `apiary node`: starts (or restarts, or joins) a member and serves its HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use apiary_consensus::{Consensus, Member, Settings, WriteError};
use apiary_pipeline::{FullPolicy, ResourceInfo};
use apiary_probes::Scope;
use apiary_storage::Store;
use apiary_wire::{request_join, tls::new_key_and_csr, JoinToken, Transport, WireError};

use crate::api::{self, ApiState};
use crate::ca::CaRuntime;
use crate::export::{Export, ExportOptions};
use crate::identity::{read_token_file, DataDir, NodeIdentity};
use crate::peer::PeerService;
use crate::probes::ProbeRuntime;
use crate::progress::Progress;
use crate::settings::ClusterSeed;

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
    /// QUIC address of any member, to join its cluster (first start only).
    #[arg(long, env = "APIARY_JOIN")]
    pub join: Option<String>,
    /// The cluster's join token (DATA_DIR/join-token on any member).
    #[arg(long, env = "APIARY_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// File holding the API write token to use instead of a generated one.
    #[arg(long, env = "APIARY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
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
    /// Bytes of disk each export destination may buffer while it is down or slow.
    #[arg(long, env = "APIARY_EXPORT_BUFFER_BYTES", default_value_t = 256 << 20)]
    pub export_buffer_bytes: u64,
    /// When a destination's buffer is full: drop-oldest (counted) or block.
    #[arg(long, env = "APIARY_EXPORT_BUFFER_FULL", default_value = "drop-oldest")]
    pub export_buffer_full: FullPolicy,
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
    /// Run the mesh without eBPF probes (no root needed).
    #[arg(long, env = "APIARY_NO_PROBES")]
    pub no_probes: bool,
    /// CPU niceness of the agent (0-19): above 0 the workload's threads run first when both
    /// want a core, and spans wait in the ring buffer meanwhile. 0 (the default) keeps the
    /// default priority; see docs/operations.md before raising it on saturated machines.
    #[arg(long, env = "APIARY_NICE", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=19))]
    pub nice: u8,
}

pub async fn run(args: NodeArgs, seed: ClusterSeed) -> Result<()> {
    if !args.no_probes {
        // Before anything is created on disk: one clear error, not a half-started node.
        apiary_probes::check_privileges()?;
    }
    crate::priority::lower(args.nice)?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None if args.dev => "dev".to_string(),
        None => default_name(),
    };
    if name.is_empty() || name.len() > 64 {
        bail!("--name must be 1 to 64 characters");
    }
    let advertise = match &args.advertise {
        Some(addr) => addr.clone(),
        None if args.listen.ip().is_unspecified() => bail!(
            "--listen {} is a wildcard address that peers cannot dial: add --advertise HOST:PORT",
            args.listen
        ),
        None => args.listen.to_string(),
    };
    let token_override = args
        .token_file
        .as_deref()
        .map(read_token_file)
        .transpose()?;

    let dir = DataDir::create(&args.data_dir)?;
    let creating = !dir.exists() && args.join.is_none();
    if !creating && !seed.0.is_empty() {
        tracing::info!(
            "the [cluster] table of the config file is only used when creating a cluster; \
             change a running cluster with `apiary config set`"
        );
    }
    let identity = if dir.exists() {
        if args.join.is_some() {
            tracing::info!("this data dir already belongs to a cluster; --join is ignored");
        }
        dir.load()?
    } else if let Some(via) = &args.join {
        let token = args
            .join_token
            .as_deref()
            .context("--join needs --join-token: copy DATA_DIR/join-token from any member")?;
        let token: JoinToken = token.parse()?;
        join(&dir, &name, via, &token).await?
    } else {
        dir.create_cluster(&name, token_override.clone())?
    };
    let api_token = token_override.unwrap_or_else(|| identity.api_token.clone());
    let node_id = identity.node.id;

    let store = Store::open(dir.path())?;
    let transport = Transport::bind(args.listen, &identity.tls)?;
    let consensus = Consensus::start(
        node_id,
        store.clone(),
        transport.clone(),
        Settings::default(),
    )
    .await?;
    let ca = CaRuntime::new(
        dir.clone(),
        identity.node.name.clone(),
        transport.clone(),
        apiary_wire::ClusterCa::from_der(identity.ca.cert_der().to_vec(), &identity.ca.key_der())?,
        identity.tls.clone(),
        identity.join_token.clone(),
    );
    // Before serving: a restart in the middle of a CA rotation trusts what the log says.
    ca.reconcile(consensus.config_state().ca().as_ref())?;
    ca.follow(&consensus);
    let intensity_slot = Arc::new(std::sync::OnceLock::new());
    transport.serve(Arc::new(PeerService {
        consensus: consensus.clone(),
        intensity: intensity_slot.clone(),
        ca: ca.clone(),
        api_token: api_token.clone(),
    }));
    consensus.spawn_reachability_probe();
    consensus.spawn_voter_keeper();
    watch_catch_up(consensus.clone());
    let me = Member {
        name: identity.node.name.clone(),
        addr: advertise.clone(),
    };
    match &identity.node.joined_via {
        None => {
            consensus.bootstrap(me).await?;
            if creating && !seed.0.is_empty() {
                commit_seed(&consensus, &identity.node.name, seed).await?;
            }
        }
        Some(via) if !identity.node.admitted => {
            wait_for_admission(&consensus, via, me).await?;
            let mut node = identity.node.clone();
            node.admitted = true;
            dir.save_node(&node)?;
        }
        Some(_) => {}
    }

    let probes = if args.no_probes {
        None
    } else {
        let progress = Progress::spinner("loading and attaching the eBPF probes");
        let runtime = ProbeRuntime::start(&args.scopes, args.libssl.as_deref(), &consensus)?;
        let reports = runtime.reports();
        let attached = reports
            .iter()
            .filter(|r| r.state == apiary_probes::ProbeState::Attached)
            .count();
        progress.finish(&format!("{attached} of {} probes attached", reports.len()));
        Some(runtime)
    };

    let resource = ResourceInfo {
        host_name: default_name(),
        node: identity.node.name.clone(),
        extra: Vec::new(),
        ..Default::default()
    }
    .with_env_attributes(&std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default())
    .map_err(anyhow::Error::msg)?;
    let export = Export::start(
        store,
        &consensus,
        probes.as_ref().map(|p| p.observer.clone()),
        resource,
        ExportOptions {
            buffer_bytes: args.export_buffer_bytes,
            full_policy: args.export_buffer_full,
            metrics_interval: args.metrics_interval.into(),
            json_file: args
                .export_file
                .clone()
                .or_else(|| args.dev.then(|| dir.path().join("telemetry.jsonl"))),
        },
    )?;

    let otlp_http = match receiver_address("--otlp-http", &args.otlp_http, 4318)? {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen for OTLP/HTTP on {addr}: is a collector using it? pass --otlp-http HOST:PORT or off")
            })?;
            let router = crate::receiver::router(export.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!("the OTLP/HTTP receiver stopped: {e}");
                }
            });
            Some(addr)
        }
    };
    let otlp_grpc = match receiver_address("--otlp-grpc", &args.otlp_grpc, 4317)? {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen for OTLP/gRPC on {addr}: is a collector using it? pass --otlp-grpc HOST:PORT or off")
            })?;
            tokio::spawn(crate::receiver_grpc::serve(listener, export.clone()));
            Some(addr)
        }
    };

    let listener = tokio::net::TcpListener::bind(args.api)
        .await
        .with_context(|| {
            format!(
                "cannot listen for the API on {}: is another node using it? pass --api HOST:PORT",
                args.api
            )
        })?;
    print_banner(&identity, &args, &advertise, &api_token, &dir);
    if let Some(addr) = otlp_grpc {
        println!(
            "  OTLP/gRPC   http://{addr}   (apps' OTEL_EXPORTER_OTLP_ENDPOINT, protocol grpc)"
        );
    }
    if let Some(addr) = otlp_http {
        println!("  OTLP/HTTP   http://{addr}   (apps' OTEL_EXPORTER_OTLP_ENDPOINT, protocol http/protobuf)");
    }
    for destination in state_destinations(&export) {
        println!("  exporting   {destination}");
    }
    let intensity = crate::intensity::Intensity::start(
        node_id,
        identity.node.name.clone(),
        consensus.clone(),
        probes.clone(),
    );
    let _ = intensity_slot.set(intensity.clone());
    let finishing = export.clone();
    let state = Arc::new(ApiState {
        intensity,
        consensus: consensus.clone(),
        node_name: identity.node.name.clone(),
        api_token,
        probes,
        export,
        ca,
    });
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the API server failed")?;
    tracing::info!("shutting down");
    finishing.finish().await;
    consensus.shutdown().await;
    Ok(())
}

async fn join(dir: &DataDir, name: &str, via: &str, token: &JoinToken) -> Result<NodeIdentity> {
    let (key, csr) = new_key_and_csr(name)?;
    let target = apiary_consensus::network::resolve(via).await?;
    let progress = Progress::spinner(&format!("joining the cluster via {via}"));
    for attempt in 1..=30 {
        match request_join(target, token, name, csr.clone()).await {
            Ok(grant) => {
                progress.finish(&format!(
                    "joined: the cluster issued this node a certificate (node id {})",
                    grant.node_id
                ));
                return dir.save_grant(name, via, key, grant);
            }
            Err(WireError::Connection(reason)) if attempt < 30 => {
                progress.note(&format!(
                    "attempt {attempt}/30 failed ({reason}); retrying in 1 s"
                ));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot join the cluster via {via}")),
        }
    }
    unreachable!("the last attempt returns")
}

/// Commits the config file's `[cluster]` table as the new cluster's first change.
/// `propose` waits through the election that follows bootstrap, as for any write.
async fn commit_seed(consensus: &Consensus, node: &str, seed: ClusterSeed) -> Result<()> {
    let proposal = api::proposal(
        node,
        "apiary.toml".into(),
        "initial config from the [cluster] table".into(),
        apiary_config::Intent::Set { settings: seed.0 },
    );
    let version = consensus
        .propose(proposal)
        .await
        .context("cannot commit the config file's [cluster] table")?;
    eprintln!("committed the config file's [cluster] table as version {version}");
    Ok(())
}

async fn wait_for_admission(consensus: &Consensus, via: &str, me: Member) -> Result<()> {
    let progress = Progress::spinner(&format!("waiting to be admitted via {via}"));
    for attempt in 1..=30 {
        match consensus.request_admission(via, me.clone()).await {
            Ok(()) => {
                progress.finish(&format!("admitted to the cluster as {me}"));
                return Ok(());
            }
            Err(WriteError::Unavailable(reason)) if attempt < 30 => {
                progress.note(&format!("attempt {attempt}/30 ({reason})"));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => bail!("the cluster did not admit this node via {via}: {e}"),
        }
    }
    unreachable!("the last attempt returns")
}

/// Shows the node finding a leader and applying the log up to the cluster's commit index: the
/// long part of restarting a node that was away, or of a new member copying a large log.
fn watch_catch_up(consensus: Arc<Consensus>) {
    tokio::spawn(async move {
        let waiting = Progress::spinner("waiting for a leader (a majority of voters)");
        let leader = loop {
            let status = consensus.status();
            if let Some(leader) = status.leader_name {
                break leader;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        waiting.finish(&format!("leader: {leader}"));
        let status = consensus.status();
        if status.last_applied_index >= status.commit_index {
            return;
        }
        let catching_up = Progress::counter("catching up the config log", status.commit_index);
        let mut last_line = std::time::Instant::now();
        loop {
            let status = consensus.status();
            if status.last_applied_index >= status.commit_index {
                catching_up.finish(&format!(
                    "in sync at config version {}",
                    status.committed_version
                ));
                return;
            }
            if last_line.elapsed() >= Duration::from_secs(2) {
                catching_up.position(status.last_applied_index, status.commit_index);
                last_line = std::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

fn print_banner(
    identity: &NodeIdentity,
    args: &NodeArgs,
    advertise: &str,
    api_token: &str,
    dir: &DataDir,
) {
    let data = dir.path().display();
    println!(
        "apiary node {:?} (id {}) is running",
        identity.node.name, identity.node.id
    );
    println!(
        "  API         http://{}   (try: apiary status --peer http://{})",
        args.api, args.api
    );
    println!("  peers       {advertise} (QUIC, mutual TLS)");
    println!("  data        {data}");
    println!(
        "  API token   {api_token}   (also in {})",
        dir.api_token_path().display()
    );
    println!(
        "  join token  {}   (also in {})",
        identity.join_token,
        dir.join_token_path().display()
    );
    println!(
        "  add a node  apiary node --name NAME --data-dir DIR --listen HOST:PORT --api HOST:PORT \
         --join {advertise} --join-token $(cat {})",
        dir.join_token_path().display()
    );
}

fn receiver_address(flag: &str, value: &str, port: u16) -> Result<Option<SocketAddr>> {
    if value == "off" {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .with_context(|| format!("{flag} {value:?}: give HOST:PORT (e.g. 127.0.0.1:{port}) or off"))
}

fn state_destinations(export: &Export) -> Vec<String> {
    export
        .status()
        .into_iter()
        .map(|d| format!("{} → {} ({})", d.name, d.endpoint, d.protocol))
        .collect()
}

pub(crate) fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node".to_string())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
