//! `apiary`: the Apiary agent (`apiary node`) and its command-line client.

mod agent;
mod api;
mod cli;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use cli::client::ClientArgs;

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
    Init(cli::init::InitArgs),
    /// Check a running node and this machine; print a fix for each failure.
    Doctor(ClientArgs),
    /// Show the cluster: leader, members, roles, reachability.
    Status(ClientArgs),
    /// Follow the node's live spans, one line each (service, kind, method, route, status,
    /// duration, trace id).
    Tail {
        #[command(flatten)]
        client: ClientArgs,
        /// Only spans of this service.
        #[arg(long)]
        service: Option<String>,
    },
    /// Show one trace's spans, gathered from every member, as a tree (or --json).
    Trace {
        #[command(flatten)]
        client: ClientArgs,
        /// The trace id (32 hex digits), as `apiary tail --json` and /v1/spans show it.
        trace_id: String,
    },
    /// Show this node's predictions: which service is forecast to break its objective, when,
    /// why, and what to do (or --json, with the evidence); --cluster: every member's.
    Predict {
        #[command(flatten)]
        client: ClientArgs,
        /// Every member's predictions, gathered over the mesh by the node asked (members that
        /// did not answer in time are named).
        #[arg(long)]
        cluster: bool,
    },
    /// Manage the cluster's members.
    Members {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: cli::members::MembersCommand,
    },
    /// Show or rotate the cluster CA.
    Ca {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: cli::ca::CaCommand,
    },
    /// Create, list and revoke API tokens (metrics, read, write, admin).
    Token {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: cli::tokens::TokenCommand,
    },
    /// Create, list and revoke join tokens (what lets a new node in; they expire).
    JoinToken {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: cli::tokens::JoinTokenCommand,
    },
    /// Read and change the replicated config.
    Config {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: cli::config::ConfigCommand,
    },
    /// Shareable signed config profiles: list, show, diff, apply (one event; --for a time
    /// limit), export, sign, verify, keygen, import.
    Profile {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: cli::profile::ProfileCommand,
    },
}

/// Blocks of 256 KiB and more (merged export requests, request bodies) get a mapping of
/// their own, handed back to the kernel when freed. By default glibc raises this threshold to
/// the largest block freed so far and from then on keeps such blocks in its heap arenas, where
/// a burst (a backlog draining, a flood) leaves its high-water mark resident for good.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_blocks_to_the_kernel() {
    // SAFETY: mallopt only sets an allocator parameter; this runs before any other thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_blocks_to_the_kernel() {}

/// A client whose output goes to a pipe the reader closed (`apiary status --json | head`) ends
/// quietly, as other command-line tools do, instead of panicking in `println!`. Not for the
/// agent, which must outlive any reader.
fn end_quietly_on_closed_output() {
    // SAFETY: signal(2) with the default action, before any other thread runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> std::process::ExitCode {
    return_large_blocks_to_the_kernel();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if !matches!(cli.command, Command::Node(_)) {
        end_quietly_on_closed_output();
    }
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
        Command::Node(args) => {
            let node = matches
                .subcommand_matches("node")
                .context("the node subcommand's flags")?;
            agent::main(*args, node).await
        }
        Command::Init(args) => cli::init::run(args),
        Command::Doctor(client) => cli::doctor::run(&client).await,
        Command::Status(client) => cli::status::status(&client).await,
        Command::Tail { client, service } => cli::tail::tail(&client, service.as_deref()).await,
        Command::Trace { client, trace_id } => cli::trace::trace(&client, &trace_id).await,
        Command::Predict { client, cluster } => cli::predict::predict(&client, cluster).await,
        Command::Members { client, command } => cli::members::members(&client, &command).await,
        Command::Ca { client, command } => cli::ca::run(&client, &command).await,
        Command::Config { client, command } => cli::config::config(&client, &command).await,
        Command::Profile { client, command } => cli::profile::run(&client, &command).await,
        Command::Token { client, command } => cli::tokens::run(&client, &command).await,
        Command::JoinToken { client, command } => cli::tokens::join(&client, &command).await,
    }
}
