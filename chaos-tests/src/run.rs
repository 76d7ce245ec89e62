//! One run: the cluster brought up in its namespaces, the clients and the nemesis for a while,
//! everything healed, the final logs read from every node, and the checker's findings.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::checker::{self, Entry};
use crate::clients::{self, Target, KEY};
use crate::history::{Action, ReadOutcome, Recorder};
use crate::hosts::{Network, Node, SmallDisk};
use crate::nemesis::Disks;
use crate::nemesis::{self, Fault, Rng, Tally};
pub use crate::report::Report;
use crate::slow_disk::SlowDisk;
use crate::telemetry::{self, Acked, Receiver};

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
    /// Apps posting spans to every node (the telemetry side).
    pub apps: bool,
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

struct Cluster {
    network: Network,
    nodes: Vec<Node>,
    http: reqwest::Client,
    token: String,
    /// The last node's data dir, small enough to fill; the one before it, a slow disk.
    disks: Disks,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn get(&self, i: usize, path: &str) -> Option<Value> {
        self.get_within(i, path, Duration::from_secs(2)).await.ok()
    }

    /// Node `i`'s answer to `GET path`, or why there is none.
    async fn get_within(&self, i: usize, path: &str, within: Duration) -> Result<Value> {
        let response = self
            .http
            .get(self.nodes[i].api_url(path))
            .bearer_auth(&self.token)
            .timeout(within)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            bail!("{status} {body}");
        }
        Ok(body)
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

    async fn start(size: usize, small_disk: &str) -> Result<Cluster> {
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
        let disk = SmallDisk::mount(&dir.path().join(format!("n{}", size - 1)), small_disk)?;
        let slow = match SlowDisk::mount(&dir.path().join(format!("n{}", size - 2))) {
            Ok(slow) => Some(slow),
            Err(e) => {
                eprintln!("chaos: no slow-disk faults: {e:#}");
                None
            }
        };
        let mut cluster = Cluster {
            network,
            nodes,
            http: reqwest::Client::new(),
            token: String::new(),
            disks: Disks { full: disk, slow },
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

    /// Makes the counting receiver every node's export destination, and waits until every
    /// node applied it (an app's span acked before would have no destination to go to).
    async fn export_to(&self, receiver: &Receiver) -> Result<()> {
        let body = serde_json::json!({"changes": [
            {"key": "destination.count.endpoint", "value": format!("http://{}", receiver.addr)},
            {"key": "destination.count.protocol", "value": "http/protobuf"},
            // Budgets too large to bind: tuning would otherwise sample apps' spans.
            {"key": "budget.cpu_percent_per_node", "value": 100},
            {"key": "budget.export_events_per_second", "value": 1_000_000_000u64},
        ], "comment": "chaos: export to the counting receiver"});
        let response = self
            .http
            .patch(self.nodes[0].api_url("/v1/config"))
            .bearer_auth(&self.token)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .context("setting the export destination")?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or_default();
        let version = match answer["version"].as_u64() {
            Some(version) if status.is_success() => version,
            _ => bail!("setting the export destination: {status} {answer}"),
        };
        self.wait_for(
            Duration::from_secs(20),
            "every node to apply the destination",
            || async move {
                for i in 0..self.nodes.len() {
                    if self.get(i, "/v1/config").await?["version"].as_u64()? < version {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
    }

    /// Node `i`'s whole config history, in pages: a soak's is 100 000 events, too long for
    /// one answer within a timeout.
    async fn history(&self, i: usize) -> Result<Vec<Value>> {
        const PAGE: usize = 2000;
        let mut events: Vec<Value> = Vec::new();
        loop {
            let since = events
                .last()
                .map_or(0, |e| e["version"].as_u64().unwrap_or(0));
            let path = format!("/v1/config/history?since={since}&limit={PAGE}");
            let mut page = self.get_within(i, &path, Duration::from_secs(30)).await?;
            let got = match page["events"].take() {
                Value::Array(got) => got,
                other => bail!("no events in {other}"),
            };
            let last_page = got.len() < PAGE;
            events.extend(got);
            if last_page {
                return Ok(events);
            }
        }
    }

    /// Each node's config log (its history), as checker entries.
    async fn logs(&self) -> Result<Vec<(String, Vec<Entry>)>> {
        let mut logs = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let events = self
                .history(i)
                .await
                .with_context(|| format!("reading {}'s history", node.name))?;
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
    // Room for the Raft log, the export buffers' reserve (64 MiB) and some spans; and, in a
    // long run, for the config history, which grows with every write (about 1 MiB a minute
    // here, measured). Snapshots used to fill this disk: kept in sled, each replaced one stayed
    // as garbage (db/blobs 9.5 MiB at 112 s, 54 MiB at 175 s on seed 7); as a file, one
    // snapshot (0.5 to 0.7 MiB then) is all the disk holds.
    let minutes = plan.duration.as_secs().div_ceil(60);
    let small_disk = format!("{}m", 112 + 4 * minutes.saturating_sub(2));
    let mut cluster = Cluster::start(SIZE, &small_disk).await?;
    let mut receiver = Receiver::start(cluster.network.client_ip)?;
    cluster.export_to(&receiver).await?;
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

    let (acked, posted, next_id) = (
        Acked::default(),
        Arc::new(AtomicU64::new(1)),
        Arc::new(AtomicU64::new(1)),
    );
    if plan.apps {
        for node in &cluster.nodes {
            tasks.push(tokio::spawn(telemetry::app(
                format!("http://{}:4318/v1/traces", node.ip),
                next_id.clone(),
                acked.clone(),
                posted.clone(),
                stop.clone(),
                Duration::from_millis(200),
            )));
        }
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
            &mut receiver,
            &cluster.disks,
            leader,
            &mut rng,
        )?;
        let at = started.elapsed().as_secs_f64();
        eprintln!("chaos: {at:7.1} s  {line} for {hold:?}");
        tally.log.push(format!("{at:.1} s {line}"));
        *tally.by_kind.entry(fault.kind()).or_default() += 1;
        tokio::time::sleep(hold).await;
        for line in nemesis::heal(
            &cluster.network,
            &mut cluster.nodes,
            &mut receiver,
            &cluster.disks,
            &mut tally,
        )
        .await?
        {
            eprintln!("chaos:           {line}");
        }
    }
    nemesis::heal(
        &cluster.network,
        &mut cluster.nodes,
        &mut receiver,
        &cluster.disks,
        &mut tally,
    )
    .await?;
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
    // Every span a node acked must reach the receiver once the nodes drain their buffers.
    let draining = Instant::now();
    let acked = acked.ids();
    let posted = posted.load(Ordering::Relaxed);
    let mut spans = telemetry::compare(&acked, &receiver.counts.snapshot(), posted);
    while spans.lost > 0 && draining.elapsed() < DRAIN_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(250)).await;
        spans = telemetry::compare(&acked, &receiver.counts.snapshot(), posted);
    }
    let drained_in = draining.elapsed();
    if spans.lost > 0 {
        for (i, node) in cluster.nodes.iter().enumerate() {
            let export = cluster.get(i, "/v1/export").await.unwrap_or_default();
            eprintln!("chaos: {} still holds: {export}", node.name);
        }
    }
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
        spans,
        malformed_exports: receiver.malformed.load(Ordering::Relaxed),
        drained_in,
    })
}

/// How long the healed nodes get to deliver what they acked.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
