//! The clients' common part: which node to ask (`--peer`), how (`--json`, `--token`), and the
//! HTTP client and table helpers every command prints with.

use std::path::Path;

use anyhow::{bail, Context, Result};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde_json::Value;

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
    /// API token (reads need one too, unless the cluster set api.public_read)
    /// [default: $APIARY_TOKEN, else ./apiary-data/api-token]
    #[arg(long, env = "APIARY_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

pub(crate) struct Client {
    http: reqwest::Client,
    /// The node's API, without a trailing `/`.
    pub(crate) base: String,
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

    /// `request` with the token, if one was given or found.
    pub(crate) fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.token.as_deref() {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub(crate) async fn send(
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
        // Reads may pass without a token (api.public_read); writes never do.
        if self.token.is_none() && method != reqwest::Method::GET {
            bail!(
                "writes need an API token: pass --token, set APIARY_TOKEN, or run where \
                 ./apiary-data/api-token is"
            );
        }
        let mut request = self.authorized(self.http.request(method.clone(), &url).timeout(timeout));
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

    /// `GET /healthz`, also when the node answers 503 (failing, with its `problems`).
    pub(crate) async fn health(&self) -> Result<Value> {
        let url = format!("{}/healthz", self.base);
        let response = self
            .authorized(
                self.http
                    .get(&url)
                    .timeout(std::time::Duration::from_secs(30)),
            )
            .send()
            .await
            .with_context(|| {
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
        if status.is_success() || body["status"].is_string() {
            Ok(body)
        } else {
            bail!(
                "{status}: {}",
                body["error"].as_str().unwrap_or("(no message)")
            )
        }
    }
}

/// `answer` read as the API type `T` (from `apiary-api-types`); an answer of another shape is a
/// node of another version, said so.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(answer: &Value, route: &str) -> Result<T> {
    serde_json::from_value(answer.clone()).with_context(|| {
        format!(
            "{route} answered in a shape this apiary does not read: is the node another version \
             of apiary? ({})",
            env!("CARGO_PKG_VERSION")
        )
    })
}

/// Who a change or a token is recorded as made by, when `--author` is not given: `$USER`.
pub(crate) fn default_author() -> String {
    std::env::var("USER").unwrap_or_else(|_| "cli".into())
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
