//! One run: the cluster brought up in its namespaces, the clients and the nemesis for a while,
//! everything healed, the final logs read from every node, and the checker's findings.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::checker::{self, Entry, Findings};
use crate::clients::{self, Target, KEY};
use crate::history::{Action, ReadOutcome, Recorder};
use crate::hosts::{Network, Node};
use crate::nemesis::{self, Fault, Rng, Tally};

pub const SIZE: usize = 5;

#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    /// How long clients and nemesis run.
    pub duration: Duration,
    /// How long a fault holds: drawn between these.
    pub fault_for: (Duration, Duration),
    /// The quiet spell between faults.
    pub quiet_for: (Duration, Duration),
    pub writers: usize,
    pub local_readers: usize,
    pub linearizable_readers: usize,
}

impl Plan {
    /// The seed from APIARY_CHAOS_SEED, else drawn from the clock.
    pub fn seed_from_env() -> u64 {
        std::env::var("APIARY_CHAOS_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
    }
}

/// What a run measured.
pub struct Report {
    pub seed: u64,
    pub elapsed: Duration,
    pub ops: usize,
    pub faults: Tally,
    pub findings: Findings,
    pub description: String,
    /// Each read: (linearizable, answered).
    pub reads: Vec<(bool, bool)>,
}

impl Report {
    pub fn violations(&self) -> usize {
        self.findings.violations()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let log = &self.findings.log;
        let secs = self.elapsed.as_secs_f64().max(0.001);
        writeln!(
            f,
            "chaos run, seed {} (replay: APIARY_CHAOS_SEED={})",
            self.seed, self.seed
        )?;
        writeln!(
            f,
            "  {} ops in {:.0} s: {:.1} ops/s; {} config versions committed",
            self.ops,
            secs,
            self.ops as f64 / secs,
            log.committed
        )?;
        writeln!(
            f,
            "  faults injected: {} {:?}",
            self.faults.total(),
            self.faults.by_kind
        )?;
        writeln!(
            f,
            "  writes: {} acknowledged, {} unknown that committed, {} unknown that did not",
            log.acknowledged, log.unknown_committed, log.unknown_not_committed
        )?;
        let count = |linearizable: bool, ok: bool| {
            self.reads
                .iter()
                .filter(|&&(l, o)| l == linearizable && o == ok)
                .count()
        };
        writeln!(
            f,
            "  reads: {} local ({} unanswered), {} linearizable ({} unanswered: no confirmed leader)",
            count(false, true),
            count(false, false),
            count(true, true),
            count(true, false)
        )?;
        writeln!(
            f,
            "  violations: {}; committed lost: {}; duplicates: {}; reads of states the log never had: {}",
            self.violations(),
            log.lost,
            log.duplicates,
            log.bad_reads
        )?;
        writeln!(f, "  writes and linearizable reads: {}", self.description)?;
        let local = match &self.findings.with_local_reads {
            checker::linearizable::Verdict::Linearizable => "linearizable".to_string(),
            other => format!(
                "not linearizable (allowed: local reads may be stale): {:?}",
                short(other)
            ),
        };
        writeln!(f, "  with local reads too: {local}")?;
        for problem in &log.problems {
            writeln!(f, "  PROBLEM: {problem}")?;
        }
        Ok(())
    }
}

fn short(verdict: &checker::linearizable::Verdict) -> String {
    match verdict {
        checker::linearizable::Verdict::Violation(v) => {
            format!("stuck after {} of {} ops", v.placed, v.total)
        }
        other => format!("{other:?}"),
    }
}

struct Cluster {
    network: Network,
    nodes: Vec<Node>,
    http: reqwest::Client,
    token: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn get(&self, i: usize, path: &str) -> Option<Value> {
        let response = self
            .http
            .get(self.nodes[i].api_url(path))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// The leader every running, unpaused node that answers names, if they agree.
    async fn leader(&self) -> Option<usize> {
        let mut named = None;
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.running() || node.paused {
                continue;
            }
            let status = self.get(i, "/v1/cluster").await?;
            let name = status["leader_name"].as_str()?.to_string();
            if named.get_or_insert(name.clone()) != &name {
                return None;
            }
        }
        let name = named?;
        self.nodes.iter().position(|n| n.name == name)
    }

    async fn wait_for<T, F, Fut>(&self, timeout: Duration, what: &str, check: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let start = Instant::now();
        loop {
            if let Some(value) = check().await {
                return Ok(value);
            }
            if start.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn start(size: usize) -> Result<Cluster> {
        let binary = crate::hosts::apiary_binary()?;
        let network = Network::create(size).context("creating the namespaces")?;
        let dir = tempfile::tempdir()?;
        let nodes = (0..size)
            .map(|i| {
                Node::new(
                    &format!("n{i}"),
                    &network.namespaces[i],
                    network.ips[i],
                    &dir.path().join(format!("n{i}")),
                    &binary,
                )
            })
            .collect();
        let mut cluster = Cluster {
            network,
            nodes,
            http: reqwest::Client::new(),
            token: String::new(),
            _dir: dir,
        };
        for i in 0..size {
            if i > 0 {
                let first = &cluster.nodes[0];
                let token = std::fs::read_to_string(first.data_dir.join("join-token"))
                    .context("reading the join token")?;
                let via = first.quic();
                cluster.nodes[i].join = Some((via, token.trim().to_string()));
            }
            cluster.nodes[i].spawn()?;
            if i == 0 {
                let token_file = cluster.nodes[0].data_dir.join("api-token");
                let token = cluster
                    .wait_for(Duration::from_secs(30), "n0's API token", || async {
                        std::fs::read_to_string(&token_file).ok()
                    })
                    .await?;
                cluster.token = token.trim().to_string();
            }
            let c = &cluster;
            c.wait_for(
                Duration::from_secs(40),
                &format!("n{i} to be a member"),
                || async move {
                    let status = c.get(i, "/v1/cluster").await?;
                    (status["members"].as_array()?.len() == i + 1).then_some(())
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}\n{}", c.nodes[i].log_tail(20)))?;
        }
        Ok(cluster)
    }

    /// Each node's config log (its history), as checker entries.
    async fn logs(&self) -> Result<Vec<(String, Vec<Entry>)>> {
        let mut logs = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let history = self
                .get(i, "/v1/config/history")
                .await
                .with_context(|| format!("reading {}'s history", node.name))?;
            let events = history["events"].as_array().context("no events")?;
            let entries = events
                .iter()
                .map(|event| Entry {
                    version: event["version"].as_u64().unwrap_or(0),
                    value: event["diff"].as_array().and_then(|diff| {
                        diff.iter()
                            .find(|change| change["key"] == KEY)
                            .and_then(|change| change["to"].as_u64())
                    }),
                })
                .collect();
            logs.push((node.name.clone(), entries));
        }
        Ok(logs)
    }
}

/// Brings the cluster up, runs the plan, heals, and checks.
pub async fn run(plan: &Plan) -> Result<Report> {
    eprintln!(
        "chaos: seed {} (replay with APIARY_CHAOS_SEED={})",
        plan.seed, plan.seed
    );
    let mut cluster = Cluster::start(SIZE).await?;
    let initial = cluster
        .get(0, "/v1/config")
        .await
        .as_ref()
        .and_then(clients::parse_read)
        .context("reading the register before the run")?;

    let recorder = Recorder::default();
    let stop = Arc::new(AtomicBool::new(false));
    let target = |node: usize| Target {
        node,
        base: cluster.nodes[node].api_url(""),
        token: cluster.token.clone(),
    };
    let mut tasks = Vec::new();
    let mut client = 0;
    for w in 0..plan.writers {
        tasks.push(tokio::spawn(clients::writer(
            client,
            target(w % SIZE),
            recorder.clone(),
            stop.clone(),
            Duration::from_millis(20),
        )));
        client += 1;
    }
    for (r, linearizable) in (0..plan.local_readers)
        .map(|_| false)
        .chain((0..plan.linearizable_readers).map(|_| true))
        .enumerate()
    {
        tasks.push(tokio::spawn(clients::reader(
            client,
            target((plan.writers + r) % SIZE),
            linearizable,
            recorder.clone(),
            stop.clone(),
            Duration::from_millis(30),
        )));
        client += 1;
    }

    let mut rng = Rng::new(plan.seed);
    let mut tally = Tally::default();
    let started = Instant::now();
    while started.elapsed() < plan.duration {
        let quiet = rng.millis(
            plan.quiet_for.0.as_millis() as u64,
            plan.quiet_for.1.as_millis() as u64,
        );
        tokio::time::sleep(quiet).await;
        let fault = Fault::draw(&mut rng, SIZE);
        let hold = rng.millis(
            plan.fault_for.0.as_millis() as u64,
            plan.fault_for.1.as_millis() as u64,
        );
        let leader = cluster.leader().await;
        let line = nemesis::strike(
            &fault,
            &cluster.network,
            &mut cluster.nodes,
            leader,
            &mut rng,
        )?;
        let at = started.elapsed().as_secs_f64();
        eprintln!("chaos: {at:7.1} s  {line} for {hold:?}");
        tally.log.push(format!("{at:.1} s {line}"));
        *tally.by_kind.entry(fault.kind()).or_default() += 1;
        tokio::time::sleep(hold).await;
        for line in nemesis::heal(&cluster.network, &mut cluster.nodes)? {
            eprintln!("chaos:           {line}");
        }
    }
    nemesis::heal(&cluster.network, &mut cluster.nodes)?;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.context("a client task panicked")?;
    }
    let elapsed = started.elapsed();

    // Healed: every node must come to hold the same log.
    let c = &cluster;
    c.wait_for(
        Duration::from_secs(60),
        "every node at one version",
        || async move {
            let mut versions = Vec::new();
            for i in 0..SIZE {
                versions.push(c.get(i, "/v1/config").await?["version"].as_u64()?);
            }
            versions.windows(2).all(|w| w[0] == w[1]).then_some(())
        },
    )
    .await
    .map_err(|e| {
        let tails: Vec<String> = c
            .nodes
            .iter()
            .map(|n| format!("--- {} ---\n{}", n.name, n.log_tail(15)))
            .collect();
        anyhow::anyhow!("{e}\n{}", tails.join("\n"))
    })?;
    let logs = cluster.logs().await?;
    let ops = recorder.ops();
    let checking = Instant::now();
    let findings = checker::check(&ops, &logs, Some(initial));
    eprintln!(
        "chaos: checked {} ops in {:?}",
        ops.len(),
        checking.elapsed()
    );
    let description = checker::describe(&ops, &findings.promised);
    let reads = ops
        .iter()
        .filter_map(|op| match op.action {
            Action::Read {
                linearizable,
                outcome,
            } => Some((linearizable, outcome != ReadOutcome::Fail)),
            Action::Write { .. } => None,
        })
        .collect();
    Ok(Report {
        reads,
        seed: plan.seed,
        elapsed,
        ops: ops.len(),
        faults: tally,
        findings,
        description,
    })
}
