//! `apiary`: the Apiary agent (`apiary node`) and its command-line client.

mod agent;
mod api;
mod ca;
mod ca_cli;
mod checks;
mod client;
mod dashboard;
mod doctor;
mod export;
mod identity;
mod init;
mod intensity;
mod metrics;
mod peer;
mod priority;
mod probes;
mod progress;
mod receiver;
mod receiver_grpc;
mod settings;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "apiary",
    version,
    about = "Peer observability agents that agree on one live probe config"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an agent: create a cluster, join one (--join), or restart from --data-dir.
    Node(Box<agent::NodeArgs>),
    /// Check this machine, ask a few questions, and write an apiary.toml for `apiary node`.
    Init(init::InitArgs),
    /// Check a running node and this machine; print a fix for each failure.
    Doctor(client::ClientArgs),
    /// Show the cluster: leader, members, roles, reachability.
    Status(client::ClientArgs),
    /// Follow the node's live spans, one line each (service, kind, method, route, status,
    /// duration, trace id).
    Tail {
        #[command(flatten)]
        client: client::ClientArgs,
        /// Only spans of this service.
        #[arg(long)]
        service: Option<String>,
    },
    /// Manage the cluster's members.
    Members {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: client::MembersCommand,
    },
    /// Show or rotate the cluster CA.
    Ca {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: ca_cli::CaCommand,
    },
    /// Read and change the replicated config.
    Config {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: client::ConfigCommand,
    },
}

fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, &matches)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<()> {
    match cli.command {
        Command::Node(mut args) => {
            let mut seed = settings::ClusterSeed::default();
            if let Some(path) = settings::locate(args.config.as_deref()) {
                let file = settings::FileSettings::load(&path)?;
                let node_matches = matches
                    .subcommand_matches("node")
                    .context("the node subcommand's flags")?;
                seed = settings::layer(&mut args, file, node_matches);
                eprintln!(
                    "settings from {} (flags and APIARY_* override it)",
                    path.display()
                );
            }
            if args.check {
                return settings::print_effective(&args, &seed);
            }
            init_logging();
            agent::run(*args, seed).await
        }
        Command::Init(args) => init::run(args),
        Command::Doctor(client) => doctor::run(&client).await,
        Command::Status(client) => client::status(&client).await,
        Command::Tail { client, service } => client::tail(&client, service.as_deref()).await,
        Command::Members { client, command } => client::members(&client, &command).await,
        Command::Ca { client, command } => ca_cli::run(&client, &command).await,
        Command::Config { client, command } => client::config(&client, &command).await,
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("APIARY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
