//! The API's access rules on real nodes: scoped tokens that work on every node and stop
//! everywhere when revoked, write-only secrets, `api.public_read`, the Host check against DNS
//! rebinding, no CORS, and the limits on a change.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use std::time::{Duration, Instant};

use apiary_api_types::{TokenCreated, TokenList};

use crate::common::Cluster;

/// One request with an optional token; the status and the JSON body (or `null`).
async fn call(
    cluster: &Cluster,
    node: usize,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut request = cluster.http.request(method, cluster.nodes[node].url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request sent");
    let (status, headers) = (response.status(), response.headers().clone());
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
    )
}

/// Waits (10 s at most) until `GET path` with `token` on `node` answers `expected`: a token
/// step replicates to the other nodes in the time Raft takes.
async fn answers_within(
    cluster: &Cluster,
    node: usize,
    path: &str,
    token: &str,
    expected: StatusCode,
) {
    let start = Instant::now();
    loop {
        let (status, _, _) = call(cluster, node, Method::GET, path, Some(token), None).await;
        if status == expected {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "node {node} still answers {status} to GET {path}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_token(cluster: &Cluster, name: &str, scope: &str) -> (String, String) {
    let admin = cluster.api_token();
    let body = json!({ "name": name, "scope": scope });
    let (status, answer, _) = call(
        cluster,
        0,
        Method::POST,
        "/v1/tokens",
        Some(&admin),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let created: TokenCreated = serde_json::from_value(answer).expect("a TokenCreated");
    assert_eq!(
        (created.name.as_str(), created.scope.as_str()),
        (name, scope)
    );
    (created.id, created.token)
}

#[tokio::test]
async fn tokens_have_scopes_work_on_every_node_and_stop_everywhere_when_revoked() {
    let cluster = Cluster::start(2).await;
    let admin = cluster.api_token();

    // Nothing but liveness and the dashboard's page without a token.
    let (status, body, headers) = call(&cluster, 1, Method::GET, "/v1/cluster", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("`read` token"),
        "{body}"
    );
    assert!(headers.get("www-authenticate").is_some());
    for public in ["/healthz", "/"] {
        let (status, _, _) = call(&cluster, 1, Method::GET, public, None, None).await;
        assert_eq!(status, StatusCode::OK, "{public}");
    }
    let (status, _, _) = call(&cluster, 1, Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(
        &cluster,
        1,
        Method::GET,
        "/v1/cluster",
        Some("apiary_nope_0"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A read token made on node 0 reads on node 1, and cannot write.
    let (read_id, read) = create_token(&cluster, "grafana", "read").await;
    answers_within(&cluster, 1, "/v1/config", &read, StatusCode::OK).await;
    let change = json!({ "changes": { "probe.http.sample_rate": 0.5 } });
    let (status, body, _) = call(
        &cluster,
        1,
        Method::PATCH,
        "/v1/config",
        Some(&read),
        Some(change.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("`write` token"),
        "{body}"
    );
    let (status, _, _) = call(&cluster, 1, Method::GET, "/v1/tokens", Some(&read), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "listing tokens is admin's");

    // A write token writes but does not manage members or tokens.
    let (_, write) = create_token(&cluster, "ci", "write").await;
    let (status, body, _) = call(
        &cluster,
        0,
        Method::PATCH,
        "/v1/config",
        Some(&write),
        Some(change),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = call(
        &cluster,
        0,
        Method::DELETE,
        "/v1/members/1",
        Some(&write),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Nor where secrets go, nor who reads: destination.* and api.* need admin.
    for key in ["destination.evil.endpoint", "api.public_read"] {
        let value = if key.starts_with("api") {
            json!(true)
        } else {
            json!("http://evil:4318")
        };
        let change = json!({ "changes": { key: value } });
        let (status, body, _) = call(
            &cluster,
            0,
            Method::PATCH,
            "/v1/config",
            Some(&write),
            Some(change),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{key}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("`admin` token"),
            "{body}"
        );
    }

    // A metrics token scrapes /metrics and reads nothing else.
    let (_, metrics) = create_token(&cluster, "prometheus", "metrics").await;
    let (status, _, _) = call(&cluster, 0, Method::GET, "/metrics", Some(&metrics), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&cluster, 0, Method::GET, "/v1/spans", Some(&metrics), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The list names tokens; it never holds one, nor a hash.
    let (status, list, _) = call(&cluster, 0, Method::GET, "/v1/tokens", Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let text = list.to_string();
    let listed: TokenList = serde_json::from_value(list.clone()).expect("a TokenList");
    let mut names: Vec<&str> = listed.tokens.iter().map(|t| t.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ci",
            "grafana",
            "initial (DATA_DIR/api-token)",
            "prometheus"
        ],
        "{list}"
    );
    for secret in [&read, &write, &metrics] {
        assert!(
            !text.contains(secret.as_str()),
            "a token in the list: {text}"
        );
    }
    assert!(!text.contains("sha256"), "{text}");

    // Revoked through node 1, refused on both.
    let (status, body, _) = call(
        &cluster,
        1,
        Method::DELETE,
        &format!("/v1/tokens/{read_id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for node in [0, 1] {
        answers_within(
            &cluster,
            node,
            "/v1/config",
            &read,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }
    let (status, _, _) = call(
        &cluster,
        0,
        Method::DELETE,
        "/v1/tokens/nosuch",
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn secrets_public_reads_host_names_cors_and_limits() {
    let cluster = Cluster::start_with(1, &["--no-probes", "--api-name", "apiary.test"]).await;
    let admin = cluster.api_token();
    let admin = Some(admin.as_str());

    // Secrets are write-only: not in the write's answer, the config, the history or the
    // export status.
    let secret = "sk-live-5f0c1d2e3a4b";
    let vendor = json!({ "changes": { "destination.vendor": {
        "endpoint": "http://collector:hunter2pass@127.0.0.1:9/",
        "protocol": "http/protobuf",
        "headers": { "x-api-key": secret },
    }}});
    let (status, answer, _) = call(
        &cluster,
        0,
        Method::PATCH,
        "/v1/config",
        admin,
        Some(vendor),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    for path in ["/v1/config", "/v1/config/history", "/v1/export"] {
        let (status, body, _) = call(&cluster, 0, Method::GET, path, admin, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let text = body.to_string();
        assert!(
            !text.contains(secret) && !text.contains("hunter2pass"),
            "{path}: {text}"
        );
    }
    let text = answer.to_string();
    assert!(
        !text.contains(secret) && text.contains("<redacted sha256:"),
        "{text}"
    );
    // The redacted config written back changes nothing and keeps the secret.
    let (_, config, _) = call(&cluster, 0, Method::GET, "/v1/config", admin, None).await;
    let shown = config["config"]["destinations"]["vendor"].clone();
    let back = json!({ "changes": { "destination.vendor": shown } });
    let (status, answer, _) =
        call(&cluster, 0, Method::PATCH, "/v1/config", admin, Some(back)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (_, again, _) = call(&cluster, 0, Method::GET, "/v1/config", admin, None).await;
    assert_eq!(again["config"]["destinations"]["vendor"], shown);

    // api.public_read: reads pass without a token, writes never do.
    let open = json!({ "changes": { "api.public_read": true } });
    let (status, _, _) = call(&cluster, 0, Method::PATCH, "/v1/config", admin, Some(open)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&cluster, 0, Method::GET, "/v1/cluster", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call(&cluster, 0, Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    // A narrower token reads what anyone may read.
    let (_, metrics) = create_token(&cluster, "scraper", "metrics").await;
    let (status, _, _) = call(
        &cluster,
        0,
        Method::GET,
        "/v1/cluster",
        Some(&metrics),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let close = json!({ "changes": { "api.public_read": false } });
    let (status, _, _) = call(
        &cluster,
        0,
        Method::PATCH,
        "/v1/config",
        None,
        Some(close.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, _) = call(&cluster, 0, Method::PATCH, "/v1/config", admin, Some(close)).await;
    assert_eq!(status, StatusCode::OK);

    // The Host check: a DNS name the node was not given is refused, whatever the token.
    let port = cluster.nodes[0].api.port();
    for (host, expected) in [
        (
            format!("evil.example:{port}"),
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (format!("apiary.test:{port}"), StatusCode::OK),
        (format!("localhost:{port}"), StatusCode::OK),
        (format!("127.0.0.1:{port}"), StatusCode::OK),
    ] {
        let response = cluster
            .http
            .get(cluster.nodes[0].url("/v1/cluster"))
            .header("host", &host)
            .bearer_auth(cluster.api_token())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "Host: {host}");
    }

    // No CORS: a preflight from another origin gets no permission.
    let preflight = cluster
        .http
        .request(Method::OPTIONS, cluster.nodes[0].url("/v1/config"))
        .header("origin", "http://evil.example")
        .header("access-control-request-method", "PATCH")
        .send()
        .await
        .unwrap();
    assert!(preflight
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    assert!(!preflight.status().is_success(), "{}", preflight.status());

    // Limits on a change: named in the refusal.
    let long = json!({ "changes": { "probe.http.sample_rate": 0.4 }, "comment": "x".repeat(5000) });
    let (status, body, _) = call(&cluster, 0, Method::PATCH, "/v1/config", admin, Some(long)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("at most 1000 characters"),
        "{body}"
    );
}

#[tokio::test]
async fn idle_and_slow_connections_are_closed_and_the_connection_cap_holds() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = Cluster::start_with(1, &["--no-probes", "--api-max-connections", "3"]).await;
    let api = cluster.nodes[0].api;
    // The start's own short-lived connections are gone after a moment (the cluster's client
    // may keep one open, which counts against the cap like any other).
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Three connections fill the cap: two say nothing, one sends half a request head.
    let mut held = Vec::new();
    for i in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(api).await.unwrap();
        if i == 2 {
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A new connection (the cluster's client may keep one of the three open from its start).
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    let refused = fresh().get(cluster.nodes[0].url("/healthz")).send().await;
    assert!(
        refused.is_err(),
        "a fourth connection was served: {refused:?}"
    );

    // The head deadline (10 s) closes all three; then the API answers again.
    let start = Instant::now();
    for mut stream in held {
        // Until the node closes it (it may answer the half head with a 408 first).
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "an idle connection stayed open");
    }
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    let answer = fresh().get(cluster.nodes[0].url("/healthz")).send().await;
    assert_eq!(answer.unwrap().status(), StatusCode::OK);
}
