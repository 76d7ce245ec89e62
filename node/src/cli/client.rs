//! The CLI client: `apiary status` and `apiary config …` against any node's HTTP API.

use std::path::Path;

use anyhow::{bail, Context, Result};
use apiary_config::parse_cli_assignment;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde_json::{json, Value};

#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// URL of any node's HTTP API.
    #[arg(
        long,
        env = "APIARY_PEER",
        default_value = "http://127.0.0.1:7700",
        global = true
    )]
    pub peer: String,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// API token for writes [default: $APIARY_TOKEN, else ./apiary-data/api-token]
    #[arg(long, env = "APIARY_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConfigCommand {
    /// Show the config applied on the node, one key per line.
    Get,
    /// Change settings: `apiary config set probe.http.sample_rate=0.2 probe.tcp.enabled=false`.
    Set {
        #[arg(required = true, value_name = "KEY=VALUE")]
        assignments: Vec<String>,
        /// Why (kept in the history).
        #[arg(long, short = 'm', default_value = "")]
        comment: String,
        /// Who [default: $USER]
        #[arg(long)]
        author: Option<String>,
    },
    /// Show the change history.
    History {
        /// Only versions above this one.
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Restore the config of an earlier version (recorded as a new version).
    Revert {
        version: u64,
        #[arg(long, short = 'm', default_value = "")]
        comment: String,
        #[arg(long)]
        author: Option<String>,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum MembersCommand {
    /// Remove a member (by name or id) from the cluster: for a machine retired or lost for good.
    Remove { member: String },
}

pub async fn members(args: &ClientArgs, command: &MembersCommand) -> Result<()> {
    let client = Client::new(args)?;
    let MembersCommand::Remove { member } = command;
    let cluster = client.get("/v1/cluster").await?;
    let members = cluster["members"].as_array().cloned().unwrap_or_default();
    let found: Vec<&Value> = members
        .iter()
        .filter(|m| {
            m["name"] == json!(member)
                || m["id"].as_u64().map(|id| id.to_string()).as_deref() == Some(member.as_str())
        })
        .collect();
    let target = match found.as_slice() {
        [one] => *one,
        [] => bail!(
            "no member is called {member:?}: `apiary status` lists the members ({})",
            members
                .iter()
                .map(|m| text(&m["name"]))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => bail!("several members are called {member:?}: give the id (`apiary status` shows it)"),
    };
    let id = text(&target["id"]);
    let answer = client
        .send(reqwest::Method::DELETE, &format!("/v1/members/{id}"), None)
        .await?;
    if args.json {
        return print_json(&answer);
    }
    println!(
        "removed {} (id {id}); stop it and delete its data dir before reusing the machine",
        text(&target["name"])
    );
    Ok(())
}

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub(crate) fn new(args: &ClientArgs) -> Result<Self> {
        let base = args.peer.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--peer {base:?} is not a URL: use e.g. http://127.0.0.1:7700");
        }
        let token = args.token.clone().or_else(|| {
            std::fs::read_to_string(Path::new("apiary-data").join("api-token"))
                .ok()
                .map(|t| t.trim().to_string())
        });
        Ok(Client {
            http: reqwest::Client::builder().build()?,
            base,
            token,
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        self.send_within(method, path, body, std::time::Duration::from_secs(30))
            .await
    }

    /// Like `send`, for requests that run long on the node (a CA rotation).
    pub(crate) async fn send_within(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        timeout: std::time::Duration,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url).timeout(timeout);
        if method != reqwest::Method::GET {
            let token = self.token.as_deref().context(
                "writes need the API token: pass --token, set APIARY_TOKEN, or run where ./apiary-data/api-token is",
            )?;
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the node at {}: is `apiary node` running there? (--peer URL)",
                self.base
            )
        })?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("{url} answered {status} with a body that is not JSON"))?;
        if !status.is_success() {
            let message = body["error"].as_str().unwrap_or("(no message)");
            bail!("{status}: {message}");
        }
        Ok(body)
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Value> {
        self.send(reqwest::Method::GET, path, None).await
    }
}

pub(crate) fn print_json(value: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(header.to_vec());
    table
}

pub(crate) fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

pub async fn status(args: &ClientArgs) -> Result<()> {
    let client = Client::new(args)?;
    let mut cluster = client.get("/v1/cluster").await?;
    // Older nodes have no tuning endpoint; the cluster table stands alone then.
    let intensity = client.get("/v1/intensity").await.ok();
    if args.json {
        if let (Some(object), Some(intensity)) = (cluster.as_object_mut(), &intensity) {
            object.insert("intensity".into(), intensity.clone());
        }
        return print_json(&cluster);
    }
    println!(
        "node {} ({}) · leader {} · term {} · config version {}",
        text(&cluster["node_name"]),
        text(&cluster["state"]),
        text(&cluster["leader_name"]),
        text(&cluster["term"]),
        text(&cluster["committed_version"]),
    );
    let mut members = table(&["NAME", "ID", "ADDRESS", "ROLE", "LEADER", "REACHABLE"]);
    for member in cluster["members"].as_array().into_iter().flatten() {
        members.add_row(vec![
            text(&member["name"]),
            text(&member["id"]),
            text(&member["address"]),
            text(&member["role"]),
            if member["leader"] == json!(true) {
                "*".into()
            } else {
                String::new()
            },
            if member["reachable"] == json!(true) {
                "yes".into()
            } else {
                "NO".into()
            },
        ]);
    }
    println!("{members}");
    if let Some(intensity) = intensity {
        print_intensity(&intensity);
    }
    Ok(())
}

/// Cooperative tuning as this node sees it: one row per node in its view.
fn print_intensity(intensity: &Value) {
    println!(
        "probe intensity ({}) · export budget {} spans/s cluster-wide · CPU budget {} % per node · this node at rate {} (configured {})",
        text(&intensity["mode"]),
        text(&intensity["budget_export_events_per_second"]),
        text(&intensity["budget_cpu_percent_per_node"]),
        text(&intensity["rate"]),
        text(&intensity["configured_rate"]),
    );
    let mut rows = table(&[
        "NAME",
        "DEMAND/S",
        "CPU %",
        "SHARE/S",
        "RATE",
        "REPORT AGE",
        "WHY",
    ]);
    let number = |v: &Value, digits: usize| {
        v.as_f64()
            .map(|f| format!("{f:.digits$}"))
            .unwrap_or_else(|| "-".into())
    };
    let view = intensity["view"].as_array().cloned().unwrap_or_default();
    for decision in intensity["allocation"]["decisions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let peer = view.iter().find(|v| v["node"] == decision["node"]);
        rows.add_row(vec![
            text(&decision["name"]),
            number(&decision["demand"], 0),
            peer.map_or_else(
                || number(&intensity["cpu"]["percent"], 1),
                |p| number(&p["cpu_percent"], 1),
            ),
            number(&decision["share"], 0),
            number(&decision["rate"], 3),
            peer.map_or_else(|| "-".into(), |p| format!("{} ms", text(&p["age_ms"]))),
            text(&decision["reason"]),
        ]);
    }
    println!("{rows}");
    let cpu = &intensity["cpu"];
    if cpu["over_budget"].as_bool() == Some(true) {
        let fixed = if cpu["beyond_sampling"].as_bool() == Some(true) {
            "a lower rate would not bring it under (or would save less than the measurement's noise): fewer probes, filters or more nodes can"
        } else {
            "the rest is per-span work, which a lower rate reduces"
        };
        println!(
            "CPU over budget: {} % of a core, of it {} % the probes' kernel time and {} % the quiet agent, paid whatever the rate; {fixed}",
            number(&cpu["percent"], 2),
            number(&cpu["kernel_percent"], 2),
            number(&cpu["quiet_percent"], 2),
        );
    }
    if let Some(last) = intensity["decisions"].as_array().and_then(|d| d.first()) {
        println!(
            "last change: {} → {} ({})",
            text(&last["from"]),
            text(&last["to"]),
            text(&last["reason"])
        );
    }
}

pub async fn config(args: &ClientArgs, command: &ConfigCommand) -> Result<()> {
    let client = Client::new(args)?;
    let author = |given: &Option<String>| {
        given
            .clone()
            .unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "cli".into()))
    };
    let answer = match command {
        ConfigCommand::Get => client.get("/v1/config").await?,
        ConfigCommand::History { since } => {
            client
                .get(&format!("/v1/config/history?since={since}"))
                .await?
        }
        ConfigCommand::Set {
            assignments,
            comment,
            author: who,
        } => {
            let changes = assignments
                .iter()
                .map(|arg| parse_cli_assignment(arg))
                .collect::<Result<Vec<_>, _>>()?;
            let body = json!({ "changes": changes, "comment": comment, "author": author(who) });
            client
                .send(reqwest::Method::PATCH, "/v1/config", Some(body))
                .await?
        }
        ConfigCommand::Revert {
            version,
            comment,
            author: who,
        } => {
            let body = json!({ "version": version, "comment": comment, "author": author(who) });
            client
                .send(reqwest::Method::POST, "/v1/config/revert", Some(body))
                .await?
        }
    };
    if args.json {
        return print_json(&answer);
    }
    match command {
        ConfigCommand::Get => {
            println!("config version {}", text(&answer["version"]));
            let mut rows = table(&["KEY", "VALUE"]);
            for (key, value) in apiary_config::flatten(&answer["config"]) {
                rows.add_row(vec![key, value.to_string()]);
            }
            println!("{rows}");
        }
        ConfigCommand::History { .. } => {
            let mut rows = table(&["VERSION", "AT", "ORIGIN", "AUTHOR", "CHANGE", "COMMENT"]);
            for event in answer["events"].as_array().into_iter().flatten() {
                rows.add_row(vec![
                    text(&event["version"]),
                    text(&event["at"]),
                    text(&event["origin_node"]),
                    text(&event["author"]),
                    describe_change(&event["change"]),
                    text(&event["comment"]),
                ]);
            }
            println!("{rows}");
        }
        ConfigCommand::Set { .. } | ConfigCommand::Revert { .. } => {
            println!("committed: config version {}", text(&answer["version"]));
        }
    }
    Ok(())
}

fn describe_change(change: &Value) -> String {
    match change["kind"].as_str() {
        Some("revert") => format!("revert to version {}", text(&change["to_version"])),
        _ => change["settings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| format!("{}={}", text(&s["key"]), s["value"]))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// `apiary tail`: follows the node's live spans, one line each, until interrupted.
pub async fn tail(args: &ClientArgs, service: Option<&str>) -> Result<()> {
    let client = Client::new(args)?;
    // No overall timeout: the stream is meant to last.
    let http = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(10))
        .build()?;
    let mut url = format!("{}/v1/spans/stream", client.base);
    if let Some(service) = service {
        url.push_str(&format!("?service={service}"));
    }
    let mut response = http.get(&url).send().await.with_context(|| {
        format!(
            "cannot reach the node at {}: is `apiary node` running there? (--peer URL)",
            client.base
        )
    })?;
    if !response.status().is_success() {
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        bail!(
            "{status}: {}",
            body["error"].as_str().unwrap_or("(no message)")
        );
    }
    if !args.json {
        eprintln!("following spans from {} (Ctrl-C to stop)", client.base);
    }
    let mut buffer = String::new();
    while let Some(chunk) = response.chunk().await.context("the span stream broke")? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            print_event(&event, args.json);
        }
    }
    bail!("the node closed the span stream")
}

fn print_event(event: &str, json: bool) {
    let mut kind = "message";
    let mut data = String::new();
    for line in event.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            kind = value.trim();
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.trim_start());
        }
    }
    match kind {
        "span" if json => println!("{data}"),
        "span" => {
            let Ok(span) = serde_json::from_str::<Value>(&data) else {
                return;
            };
            let at = span["start_unix_nanos"].as_u64().unwrap_or(0);
            let time = humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(at),
            )
            .to_string();
            let clock = time.get(11..23).unwrap_or(&time).to_string();
            let millis = span["duration_ns"].as_f64().unwrap_or(0.0) / 1e6;
            let trace = span["traceparent"]
                .as_str()
                .and_then(|t| t.split('-').nth(1))
                .unwrap_or("-");
            println!(
                "{clock}  {:<16} {:<6} {:<6} {:<32} {:>3} {:>9.2} ms  trace {trace}",
                text(&span["service"]),
                text(&span["kind"]),
                text(&span["method"]),
                text(&span["route"]),
                text(&span["status"]),
                millis,
            );
        }
        "missed" => eprintln!("… {data} spans missed (this terminal fell behind)"),
        _ => {}
    }
}
