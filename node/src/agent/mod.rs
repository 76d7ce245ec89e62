//! The agent, what `apiary node` runs: it checks its settings, binds every listener, becomes a
//! member (creating, joining or restarting), then runs the probes, the export, cooperative
//! tuning and the HTTP API until it is stopped.

pub mod admission;
pub mod args;
mod banner;
pub mod ca;
pub mod export;
pub mod identity;
pub mod intensity;
mod join;
mod listeners;
mod peer;
pub mod predict;
pub mod predict_fleet;
pub mod predict_notify;
mod priority;
pub mod probes;
mod saturation;
pub mod settings;
pub mod traces;

use std::sync::{Arc, OnceLock};

use anyhow::{bail, Result};
use apiary_consensus::{Consensus, Member, Settings};
use apiary_pipeline::{ResourceInfo, SendLimits};
use apiary_storage::Store;
use apiary_wire::Transport;
use clap::ArgMatches;

use crate::api::{self, ApiState};
use crate::cli::progress::Progress;
pub use args::NodeArgs;
use ca::CaRuntime;
use export::{Export, ExportOptions};
use identity::{read_token_file, DataDir, NodeIdentity};
use intensity::Intensity;
use listeners::Listeners;
use peer::PeerService;
use probes::ProbeRuntime;
use settings::ClusterSeed;

/// `apiary node`: the settings in effect (file, environment, flags), which `--check` prints,
/// then the node. `matches` are the `node` subcommand's.
pub async fn main(mut args: NodeArgs, matches: &ArgMatches) -> Result<()> {
    let mut matches = matches.clone();
    let mut seed = ClusterSeed::default();
    if let Some(path) = settings::locate(args.config.as_deref()) {
        let file = settings::FileSettings::load(&path)?;
        seed = settings::layer(&mut args, file, &mut matches)?;
        eprintln!(
            "settings from {} (flags and APIARY_* override it)",
            path.display()
        );
    }
    if args.check {
        return settings::print_effective(&matches, &seed);
    }
    init_logging();
    run(args, seed).await
}

pub async fn run(args: NodeArgs, seed: ClusterSeed) -> Result<()> {
    let start = Start::check(&args)?;
    let mut listeners = Listeners::bind(&args, &start.name).await?;
    let dir = DataDir::create(&args.data_dir)?;
    let (identity, creating) =
        join::identity(&dir, &args, &start.name, start.token.clone(), &seed).await?;
    listeners.identify(&identity.tls)?;
    let traces = traces::TraceStore::new(args.trace_store_spans, *args.trace_store_age);
    let mesh = Mesh::start(&dir, identity, &listeners.transport, &args, &traces).await?;
    let identity = &mesh.identity;
    let me = Member {
        name: identity.node.name.clone(),
        addr: start.advertise.clone(),
    };
    join::become_member(&mesh.consensus, &dir, identity, me.clone(), creating, seed).await?;
    join::keep_address(mesh.consensus.clone(), me, identity.node.joined_via.clone());

    // Before the probes: a restarted node delivers its buffered backlog while they load.
    let export = start_export(&args, mesh.store.clone(), &mesh.consensus, identity, &dir)?;
    let probes = start_probes(&args, &mesh.consensus)?;
    if let Some(probes) = &probes {
        traces.follow(&probes.observer);
        export.follow_probes(probes.observer.clone());
    }
    let receivers = listeners.serve_receivers(&export);
    banner::print(
        identity,
        &args,
        &start.advertise,
        start.token.as_deref().or(identity.api_token.as_deref()),
        &dir,
        &receivers,
        &export,
    );
    let intensity = Intensity::start(
        identity.node.id,
        identity.node.name.clone(),
        mesh.consensus.clone(),
        probes.clone(),
        export.probe_items_shed.clone(),
    );
    let _ = mesh.intensity.set(intensity.clone());
    let predictor = predict::Predictor::start(
        dir.path(),
        args.predict_interval.into(),
        args.predict_history as usize,
        args.predict_horizon.into(),
        export.red.clone(),
        mesh.consensus.clone(),
        predict_notify::Notifier::start(
            Arc::downgrade(&export),
            mesh.consensus.clone(),
            identity.node.name.clone(),
            reqwest::Client::new(),
        ),
    );
    let _ = mesh.predictor.set(predictor.clone());
    let state = Arc::new(ApiState {
        intensity,
        consensus: mesh.consensus.clone(),
        node_name: identity.node.name.clone(),
        local_token: start.token,
        api_names: args
            .api_names
            .iter()
            .cloned()
            .chain([args::default_name()])
            .collect(),
        probes,
        export: export.clone(),
        ca: mesh.ca.clone(),
        data_dir: dir.clone(),
        traces,
        predictor,
    });
    api::server::serve(
        listeners.api,
        api::router(state),
        args.api_max_connections,
        shutdown_signal(),
    )
    .await;
    tracing::info!("shutting down");
    export.finish().await;
    mesh.consensus.shutdown().await;
    Ok(())
}

/// What the flags say before anything is bound or written: one clear error, not a half-started
/// node.
struct Start {
    name: String,
    /// The address peers dial.
    advertise: String,
    /// The admin token from `--token-file`, which this node accepts besides the cluster's.
    token: Option<String>,
}

impl Start {
    fn check(args: &NodeArgs) -> Result<Start> {
        if !args.no_probes {
            apiary_probes::check_privileges()?;
        }
        priority::lower(args.nice)?;
        let name = match &args.name {
            Some(name) => name.clone(),
            None if args.dev => "dev".to_string(),
            None => args::default_name(),
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
        let token = args
            .token_file
            .as_deref()
            .map(read_token_file)
            .transpose()?;
        Ok(Start {
            name,
            advertise,
            token,
        })
    }
}

/// The node's part of the mesh: its store, its consensus, its CA, answering peers over QUIC.
struct Mesh {
    identity: NodeIdentity,
    store: Store,
    consensus: Arc<Consensus>,
    ca: Arc<CaRuntime>,
    /// Filled once tuning runs; peers' load reports are refused until then.
    intensity: Arc<OnceLock<Arc<Intensity>>>,
    /// Filled once the predictor runs; peers' requests for predictions are refused until then.
    predictor: Arc<OnceLock<Arc<predict::Predictor>>>,
}

impl Mesh {
    async fn start(
        dir: &DataDir,
        mut identity: NodeIdentity,
        transport: &Arc<Transport>,
        args: &NodeArgs,
        traces: &Arc<traces::TraceStore>,
    ) -> Result<Mesh> {
        let store = Store::open(dir.path())?;
        let consensus = Consensus::start(
            identity.node.id,
            store.clone(),
            transport.clone(),
            Settings::default(),
        )
        .await?;
        let ca = CaRuntime::new(
            dir.clone(),
            identity.node.node_name(),
            transport.clone(),
            identity.tls.clone(),
            identity.ca_key.take(),
            *args.cert_lifetime,
        )?;
        follow_revocations(&consensus, transport);
        follow_membership(&consensus, transport);
        // Before serving: a restart in the middle of a CA rotation trusts what the log says
        // (as far as it can without peers; `follow` finishes the step once they answer).
        let state = consensus.config_state().ca();
        let reconcile = ca.reconcile(&consensus, state.as_ref());
        if let Ok(Err(e)) | Err(e) =
            tokio::time::timeout(std::time::Duration::from_secs(5), reconcile)
                .await
                .map_err(anyhow::Error::from)
        {
            tracing::warn!("the CA rotation step waits for a CA holder: {e:#}");
        }
        ca.follow(&consensus);
        let intensity = Arc::new(OnceLock::new());
        let predictor = Arc::new(OnceLock::new());
        transport.serve(Arc::new(PeerService {
            consensus: consensus.clone(),
            intensity: intensity.clone(),
            ca: ca.clone(),
            traces: traces.clone(),
            predictor: predictor.clone(),
            node_name: identity.node.name.clone(),
        }));
        consensus.spawn_reachability_probe();
        consensus.spawn_voter_keeper();
        consensus.spawn_profile_ender();
        join::watch_catch_up(consensus.clone());
        Ok(Mesh {
            identity,
            store,
            consensus,
            ca,
            intensity,
            predictor,
        })
    }
}

/// Refuses removed members' certificates from the moment their removal is applied here, and
/// closes their open connections.
fn follow_revocations(consensus: &Arc<Consensus>, transport: &Arc<Transport>) {
    let mut updates = consensus.config_state().subscribe_revoked();
    let transport = transport.clone();
    transport.deny(updates.borrow_and_update().iter().copied());
    tokio::spawn(async move {
        while updates.changed().await.is_ok() {
            let ids: Vec<u64> = updates.borrow_and_update().iter().copied().collect();
            tracing::info!(
                revoked = ids.len(),
                "refusing removed members' certificates"
            );
            transport.deny(ids);
        }
    });
}

/// Tells the transport who the members are as the membership changes, so certified peers
/// that are not members get only small requests.
fn follow_membership(consensus: &Arc<Consensus>, transport: &Arc<Transport>) {
    let mut metrics = consensus.raft().metrics();
    let transport = transport.clone();
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let ids: std::collections::HashSet<u64> = metrics
                .borrow_and_update()
                .membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect();
            let ids = (!ids.is_empty()).then_some(ids);
            if ids != last {
                transport.set_members(ids.clone());
                last = ids;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
}

/// Loads and attaches the eBPF probes, unless `--no-probes`.
fn start_probes(args: &NodeArgs, consensus: &Arc<Consensus>) -> Result<Option<Arc<ProbeRuntime>>> {
    if args.no_probes {
        return Ok(None);
    }
    let progress = Progress::spinner("loading and attaching the eBPF probes");
    let started = std::time::Instant::now();
    // The verifier can take seconds on a busy host: the other worker keeps the export and the
    // mesh going meanwhile.
    let runtime = tokio::task::block_in_place(|| {
        ProbeRuntime::start(
            &args.scopes,
            args.libssl.as_deref(),
            args.probe_ring_bytes,
            !args.no_trace_propagation,
            consensus,
        )
    })?;
    tracing::info!(
        "eBPF probes loaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let reports = runtime.reports();
    let attached = reports
        .iter()
        .filter(|r| r.state == apiary_probes::ProbeState::Attached)
        .count();
    progress.finish(&format!("{attached} of {} probes attached", reports.len()));
    Ok(Some(runtime))
}

/// The export to every destination, of the probes' spans and whatever the receivers take.
fn start_export(
    args: &NodeArgs,
    store: Store,
    consensus: &Arc<Consensus>,
    identity: &NodeIdentity,
    dir: &DataDir,
) -> Result<Arc<Export>> {
    let resource = ResourceInfo {
        host_name: args::default_name(),
        node: identity.node.name.clone(),
        extra: Vec::new(),
        ..Default::default()
    }
    .with_env_attributes(&std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default())
    .map_err(anyhow::Error::msg)?;
    Export::start(
        store,
        consensus,
        resource,
        ExportOptions {
            buffer_bytes: args.export_buffer_bytes,
            full_policy: args.export_buffer_full,
            disk_reserve_bytes: args.export_disk_reserve_bytes,
            send_limits: SendLimits {
                window: args.export_in_flight.into(),
                max_bytes: args.export_request_bytes as usize,
                ..SendLimits::default()
            },
            metrics_interval: args.metrics_interval.into(),
            json_file: args
                .export_file
                .clone()
                .or_else(|| args.dev.then(|| dir.path().join("telemetry.jsonl"))),
        },
    )
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("APIARY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
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
