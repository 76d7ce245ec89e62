//! A small cluster of real nodes, one per namespace (hosts.rs), for the tests that are not the
//! chaos run (traces across hosts): formed through the first node's join token, with its API
//! read and written under the first node's admin token.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::hosts::{apiary_binary, Network, Node};

pub struct Mesh {
    pub network: Network,
    pub nodes: Vec<Node>,
    pub token: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Mesh {
    /// `size` nodes named n0, n1, …; n0 creates the cluster and the others join through it,
    /// together (each waits for its probes to load before it joins, which is the slow part).
    pub async fn start(size: usize, probes: bool) -> Result<Mesh> {
        let binary = apiary_binary()?;
        let network = Network::create(size).context("creating the namespaces")?;
        let dir = tempfile::tempdir()?;
        let nodes = (0..size)
            .map(|i| {
                let mut node = Node::new(
                    &format!("n{i}"),
                    &network.namespaces[i],
                    network.ips[i],
                    &dir.path().join(format!("n{i}")),
                    &binary,
                );
                node.probes = probes;
                node
            })
            .collect();
        let mut mesh = Mesh {
            network,
            nodes,
            token: String::new(),
            http: reqwest::Client::new(),
            _dir: dir,
        };
        mesh.nodes[0].spawn()?;
        let token_file = mesh.nodes[0].data_dir.join("api-token");
        let token = wait_until(Duration::from_secs(90), "n0's API token", || async {
            std::fs::read_to_string(&token_file).ok()
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", mesh.nodes[0].log_tail(20)))?;
        mesh.token = token.trim().to_string();
        // Its join token is one of the cluster's live tokens once the cluster stands.
        let m = &mesh;
        wait_until(
            Duration::from_secs(90),
            "n0 to form the cluster",
            || async move {
                let status = m.get(0, "/v1/cluster").await?;
                (status["members"].as_array()?.len() == 1).then_some(())
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", mesh.nodes[0].log_tail(20)))?;
        let join_token = std::fs::read_to_string(mesh.nodes[0].data_dir.join("join-token"))
            .context("reading the join token")?;
        let via = mesh.nodes[0].quic();
        for node in &mut mesh.nodes[1..] {
            node.join = Some((via.clone(), join_token.trim().to_string()));
            node.spawn()?;
        }
        let m = &mesh;
        wait_until(
            Duration::from_secs(150),
            "every node to be a member",
            || async move {
                for i in 0..size {
                    let status = m.get(i, "/v1/cluster").await?;
                    if status["members"].as_array()?.len() != size {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
        .map_err(|e| {
            let tails: Vec<String> = m.nodes.iter().map(|n| n.log_tail(15)).collect();
            anyhow::anyhow!("{e}\n{}", tails.join("\n"))
        })?;
        Ok(mesh)
    }

    /// `GET path` on node `i`, if it answers 2xx with JSON within 5 s.
    pub async fn get(&self, i: usize, path: &str) -> Option<Value> {
        let response = self
            .http
            .get(self.nodes[i].api_url(path))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// `GET /metrics` on node `i` (empty if it does not answer).
    pub async fn metrics(&self, i: usize) -> String {
        let response = self
            .http
            .get(self.nodes[i].api_url("/metrics"))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match response {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Commits config changes (`[{"key", "value"}]`) through node 0 and waits until every
    /// running node applied them.
    pub async fn configure(&self, changes: Value) -> Result<()> {
        let body = serde_json::json!({"changes": changes, "comment": "test"});
        let response = self
            .http
            .patch(self.nodes[0].api_url("/v1/config"))
            .bearer_auth(&self.token)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .context("PATCH /v1/config")?;
        let status = response.status();
        let answer: Value = response.json().await.unwrap_or_default();
        let Some(version) = answer["version"].as_u64().filter(|_| status.is_success()) else {
            bail!("PATCH /v1/config: {status} {answer}");
        };
        wait_until(
            Duration::from_secs(20),
            "every node to apply the config",
            || async move {
                for i in 0..self.nodes.len() {
                    if self.nodes[i].running()
                        && self.get(i, "/v1/config").await?["version"].as_u64()? < version
                    {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
    }
}

/// Polls `check` every 100 ms until it gives a value, or fails after `timeout`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, check: F) -> Result<T>
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
