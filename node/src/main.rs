//! `apiary`: the Apiary agent (`apiary node`) and its command-line client.

mod agent;
mod api;
mod client;
mod export;
mod identity;
mod intensity;
mod metrics;
mod peer;
mod probes;
mod receiver;
mod receiver_grpc;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    /// Read and change the replicated config.
    Config {
        #[command(flatten)]
        client: client::ClientArgs,
        #[command(subcommand)]
        command: client::ConfigCommand,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Node(args) => {
            init_logging();
            agent::run(*args).await
        }
        Command::Status(client) => client::status(&client).await,
        Command::Tail { client, service } => client::tail(&client, service.as_deref()).await,
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
