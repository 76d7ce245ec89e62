//! How a node becomes (or stays) a member: its identity from the data dir, from a join, or
//! from a new cluster; then bootstrap or admission; and the progress of catching up the log.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use apiary_consensus::{Caller, Consensus, Member, WriteError};
use apiary_wire::{request_join, tls::new_key_and_csr, JoinToken, WireError};

use apiary_consensus::join_tokens::JoinTokenStep;
use apiary_consensus::tokens::{Scope, TokenStep};

use super::admission::{join_token_record, DEFAULT_JOIN_TOKEN_TTL};
use super::args::NodeArgs;
use super::identity::{DataDir, NodeIdentity};
use super::settings::ClusterSeed;
use crate::cli::progress::Progress;

/// The node's identity: the data dir's when it has one, else granted by the cluster at
/// `--join`, else a new cluster's; and whether this node just created the cluster (which then
/// commits `seed`).
pub async fn identity(
    dir: &DataDir,
    args: &NodeArgs,
    name: &str,
    token_override: Option<String>,
    seed: &ClusterSeed,
) -> Result<(NodeIdentity, bool)> {
    let creating = !dir.exists() && args.join.is_none();
    // A creator stopped between making its data dir and recording its first tokens (a crash,
    // a kill) finishes that on this start.
    let unfinished = dir.exists() && dir.load().is_ok_and(|i| i.founding_unfinished());
    let creating = creating || unfinished;
    if !creating && !seed.0.is_empty() {
        tracing::info!(
            "the [cluster] table of the config file is only used when creating a cluster; \
             change a running cluster with `apiary config set`"
        );
    }
    if dir.exists() {
        if args.join.is_some() {
            tracing::info!("this data dir already belongs to a cluster; --join is ignored");
        }
        let mut identity = dir.load()?;
        identity.upgrade_certificate(dir, *args.cert_lifetime)?;
        Ok((identity, unfinished))
    } else if let Some(via) = &args.join {
        let token = args.join_token.as_deref().context(
            "--join needs --join-token: make one with `apiary join-token create` on any \
                 member (or copy the first node's DATA_DIR/join-token within its first hour)",
        )?;
        let token: JoinToken = token.parse()?;
        join(dir, name, via, &token)
            .await
            .map(|identity| (identity, false))
    } else {
        dir.create_cluster(name, token_override, *args.cert_lifetime)
            .map(|identity| (identity, true))
    }
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

/// Makes the running consensus a member: the creator bootstraps the cluster (and commits the
/// file's `[cluster]` table), a joined node waits to be admitted once, a restarted member has
/// nothing to do.
pub async fn become_member(
    consensus: &Consensus,
    dir: &DataDir,
    identity: &NodeIdentity,
    me: Member,
    creating: bool,
    seed: ClusterSeed,
) -> Result<()> {
    match &identity.node.joined_via {
        None => {
            consensus.bootstrap(me).await?;
            if std::env::var_os("APIARY_FAILPOINT").is_some_and(|f| f == "after-bootstrap") {
                // The crash-window test: stop as a kill at the worst moment would.
                std::process::exit(86);
            }
            if creating {
                commit_first_tokens(consensus, identity).await?;
                if !seed.0.is_empty() {
                    commit_seed(consensus, &identity.node.name, seed).await?;
                }
                let mut node = identity.node.clone();
                node.admitted = true;
                dir.save_node(&node)?;
            }
        }
        Some(via) if !identity.node.admitted => {
            wait_for_admission(consensus, via, me).await?;
            let mut node = identity.node.clone();
            node.admitted = true;
            dir.save_node(&node)?;
        }
        // A member restarted from its data dir: nothing to join, but it may listen at another
        // address than the membership records (see `keep_address`).
        Some(_) => {}
    }
    Ok(())
}

/// Until the membership records this node at `me.addr`, asks the leader (every 2 s, in the
/// background) to record it there: a member restarted with another `--advertise` (or
/// `--listen`) is dialled at its old address by everyone until then, so it hears no leader.
pub fn keep_address(consensus: Arc<Consensus>, me: Member, via: Option<String>) {
    tokio::spawn(async move {
        let mut told = false;
        loop {
            match consensus.recorded_member() {
                Some(recorded) if recorded != me => {
                    if !told {
                        tracing::warn!(
                            "the cluster dials this node at {}, but it listens at {}: asking the \
                             leader to record the new address",
                            recorded.addr,
                            me.addr
                        );
                        told = true;
                    }
                    match consensus.record_address(&me, via.as_deref()).await {
                        Ok(true) => tracing::info!("the cluster records this node at {}", me.addr),
                        Ok(false) => {}
                        Err(e) => tracing::debug!("the new address is not recorded yet: {e}"),
                    }
                }
                // Recorded (or not a member at all, as after a removal): nothing to do.
                _ => return,
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

/// Commits the new cluster's first tokens (DATA_DIR/api-token, admin, and DATA_DIR/join-token,
/// for an hour) to the replicated state, so every node that joins accepts them without being
/// given them, and an operator can revoke them like any other.
async fn commit_first_tokens(consensus: &Consensus, identity: &NodeIdentity) -> Result<()> {
    let node = &identity.node.name;
    // A start after a crash may find a token recorded already: its hash is refused as taken.
    let recorded = |result: Result<(), WriteError>| match result {
        Err(WriteError::Rejected(apiary_config::ConfigError::Invalid { key, .. }))
            if key == "token.id" || key == "join_token.id" =>
        {
            Ok(())
        }
        other => other,
    };
    if let Some(token) = &identity.api_token {
        let record =
            crate::api::tokens::record("initial (DATA_DIR/api-token)", Scope::Admin, token, node);
        recorded(
            consensus
                .token_step(&Caller::Node, TokenStep::Create(record))
                .await,
        )
        .context("cannot record the cluster's first API token")?;
    }
    if let Some(token) = &identity.join_token {
        let record = join_token_record(
            token,
            "initial (DATA_DIR/join-token)".into(),
            DEFAULT_JOIN_TOKEN_TTL,
            false,
            node.clone(),
        );
        recorded(
            consensus
                .join_token_step(&Caller::Node, JoinTokenStep::Create(record))
                .await,
        )
        .context("cannot record the cluster's first join token")?;
    }
    Ok(())
}

/// The author of the change that commits the config file's `[cluster]` table.
const SEED_AUTHOR: &str = "apiary.toml";

/// Commits the config file's `[cluster]` table as the new cluster's first change.
/// `propose` waits through the election that follows bootstrap, as for any write.
async fn commit_seed(consensus: &Consensus, node: &str, seed: ClusterSeed) -> Result<()> {
    // Committed before a crash that came before this node saved that it was done.
    let committed = consensus
        .config_state()
        .history()
        .events()
        .iter()
        .any(|event| event.author == SEED_AUTHOR);
    if committed {
        return Ok(());
    }
    let proposal = crate::api::proposal(
        node,
        SEED_AUTHOR.into(),
        "initial config from the [cluster] table".into(),
        apiary_config::Intent::Set { settings: seed.0 },
    );
    let version = consensus
        .propose(&Caller::Node, proposal)
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
pub fn watch_catch_up(consensus: Arc<Consensus>) {
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
