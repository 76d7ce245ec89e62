//! Guided setup end to end: `apiary init --yes` writes an apiary.toml, `apiary node --config`
//! runs from it with the environment and flags above it, the new cluster starts with the file's
//! [cluster] config, a second node joins through a file `init` wrote, bad files are refused with
//! the line, and `apiary doctor` passes on a healthy node and fails with fixes on a dead one.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{cli, free_ports, Cluster, Server, BIN};

fn init(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let output = dir.join("apiary.toml");
    let mut all = vec!["init", "--yes", "--output", output.to_str().unwrap()];
    all.extend_from_slice(args);
    cli(&all)
}

fn start_node(config: &Path, extra: &[&str], env: &[(&str, String)]) -> Server {
    let log = std::fs::File::create(config.with_extension("log")).expect("log file");
    let mut command = Command::new(BIN);
    command
        .args(["node", "--config"])
        .arg(config)
        .args(["--no-probes", "--otlp-grpc", "off", "--otlp-http", "off"])
        .args(extra)
        .env_remove("APIARY_API")
        .env("APIARY_LOG", "info,openraft=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    for (key, value) in env {
        command.env(key, value);
    }
    Server(command.spawn().expect("spawn apiary node"))
}

async fn get_json(url: &str) -> Option<serde_json::Value> {
    get_json_with(url, None).await
}

/// GET with the node's token (reads need one; `/healthz` does not).
async fn get_json_with(url: &str, token: Option<&str>) -> Option<serde_json::Value> {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.ok()?;
    response.status().is_success().then_some(())?;
    response.json().await.ok()
}

async fn wait_json(url: &str, what: &str) -> serde_json::Value {
    wait_json_with(url, what, None).await
}

async fn wait_json_with(url: &str, what: &str, token: Option<&str>) -> serde_json::Value {
    for _ in 0..200 {
        if let Some(value) = get_json_with(url, token).await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what} at {url}");
}

#[tokio::test]
async fn init_writes_a_file_the_node_runs_from_with_env_and_flags_above_it() {
    let _machine = crate::common::shared();
    let dir = tempfile::tempdir().unwrap();
    let (quic, file_api, env_api, _) = free_ports();
    let (ok, out, err) = init(
        dir.path(),
        &[
            "--name",
            "from-file",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{quic}"),
            "--api",
            &format!("127.0.0.1:{file_api}"),
            "--probes",
            "http,tcp",
            "--destination",
            "none",
        ],
    );
    assert!(ok, "init failed: {out}{err}");
    let config = dir.path().join("apiary.toml");
    assert!(
        out.contains(&format!("apiary node --config {}", config.display())),
        "{out}"
    );
    for check in ["privileges", "kernel", "BTF", "tracepoints", "libssl"] {
        assert!(out.contains(check), "init shows the {check} check: {out}");
    }

    // The environment beats the file (API address); a flag beats the file (name).
    let _node = start_node(
        &config,
        &["--name", "from-flag"],
        &[("APIARY_API", format!("127.0.0.1:{env_api}"))],
    );
    let base = format!("http://127.0.0.1:{env_api}");
    let health = wait_json(&format!("{base}/healthz"), "the node from apiary.toml").await;
    assert_eq!(health["node"], "from-flag");
    assert!(
        get_json(&format!("http://127.0.0.1:{file_api}/healthz"))
            .await
            .is_none(),
        "the file's API address was overridden by APIARY_API"
    );

    // The new cluster's first change is the file's [cluster] table.
    let token = std::fs::read_to_string(dir.path().join("data/api-token")).unwrap();
    let token = token.trim();
    let mut config_json = serde_json::Value::Null;
    for _ in 0..50 {
        config_json = wait_json_with(&format!("{base}/v1/config"), "config", Some(token)).await;
        if config_json["version"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(config_json["version"], 1, "{config_json}");
    let probes = &config_json["config"]["probes"];
    assert_eq!(probes["http"]["enabled"], true);
    assert_eq!(probes["tcp"]["enabled"], true);
    assert_eq!(probes["tls"]["enabled"], false);
    assert_eq!(probes["process"]["enabled"], false);
    let history =
        wait_json_with(&format!("{base}/v1/config/history"), "history", Some(token)).await;
    assert_eq!(history["events"][0]["author"], "apiary.toml", "{history}");

    // A healthy node: doctor passes and says so per check.
    let (ok, out, err) = cli(&["doctor", "--peer", &base, "--token", token]);
    assert!(ok, "doctor on a healthy node: {out}{err}");
    assert!(out.contains("from-flag") && out.contains("leader"), "{out}");
    assert!(out.contains("cluster CA"), "{out}");
    let (ok, out, _) = cli(&["doctor", "--peer", &base, "--json", "--token", token]);
    assert!(ok);
    let report: serde_json::Value = serde_json::from_str(&out).expect("doctor --json is JSON");
    assert!(report["checks"].as_array().is_some_and(|c| c.len() >= 3));
}

#[tokio::test]
async fn doctor_fails_with_a_fix_when_the_node_is_down() {
    let (_, port, _, _) = free_ports();
    let (ok, out, err) = cli(&["doctor", "--peer", &format!("http://127.0.0.1:{port}")]);
    assert!(!ok, "doctor must fail when no node answers");
    assert!(out.contains("FAIL") && out.contains("start it"), "{out}");
    assert!(err.contains("check(s) failed"), "{err}");
}

#[tokio::test]
async fn a_node_joins_through_a_file_init_wrote() {
    let cluster = Cluster::start(1).await;
    let first = &cluster.nodes[0];
    let token = std::fs::read_to_string(first.data_dir.join("join-token")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (quic, api, _, _) = free_ports();
    let (ok, out, err) = init(
        dir.path(),
        &[
            "--join",
            &first.quic.to_string(),
            "--join-token",
            token.trim(),
            "--name",
            "joiner",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{quic}"),
            "--api",
            &format!("127.0.0.1:{api}"),
        ],
    );
    assert!(ok, "init --join failed: {out}{err}");
    let text = std::fs::read_to_string(dir.path().join("apiary.toml")).unwrap();
    assert!(
        text.contains("join_token") && !text.contains("[cluster"),
        "{text}"
    );
    let _node = start_node(&dir.path().join("apiary.toml"), &[], &[]);
    cluster
        .wait_for(
            Duration::from_secs(30),
            "the joiner to be a member",
            |c| async move {
                let status = c.get(0, "/v1/cluster").await.ok()?;
                let members = status["members"].as_array()?;
                members
                    .iter()
                    .any(|m| m["name"] == "joiner" && m["reachable"] == true)
                    .then_some(())
            },
        )
        .await;
}

#[test]
fn bad_files_and_flags_are_refused_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("apiary.toml");
    std::fs::write(
        &file,
        "name = \"a\"\n\n[cluster.probe.http]\nsample_rate = 3\n",
    )
    .unwrap();
    let (ok, _, err) = cli(&["node", "--config", file.to_str().unwrap(), "--check"]);
    assert!(!ok);
    assert!(
        err.contains("line 4") && err.contains("probe.http.sample_rate"),
        "{err}"
    );

    std::fs::write(&file, "name = \"a\"\napi_port = 7700\n").unwrap();
    let (ok, _, err) = cli(&["node", "--config", file.to_str().unwrap(), "--check"]);
    assert!(!ok);
    assert!(err.contains("line 2") && err.contains("api_port"), "{err}");

    let (ok, _, err) = cli(&[
        "node",
        "--config",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("cannot read the config file"), "{err}");

    // Unattended init refuses what it cannot use, naming the flag, before it creates anything.
    std::fs::remove_file(&file).unwrap();
    let (ok, _, err) = init(dir.path(), &["--probes", "http,dns"]);
    assert!(!ok && err.contains("`dns` is not a probe"), "{err}");
    let (ok, _, err) = init(dir.path(), &["--join", "10.0.0.1:7701"]);
    assert!(!ok && err.contains("--join needs --join-token"), "{err}");
    let (ok, _, err) = init(
        dir.path(),
        &["--join", "10.0.0.1:7701", "--join-token", "nope"],
    );
    assert!(!ok && err.contains("not a join token"), "{err}");
    assert!(!file.exists() && !Path::new("apiary-data").exists());
    std::fs::write(&file, "").unwrap();
    let (ok, _, err) = init(dir.path(), &[]);
    assert!(
        !ok && err.contains("--force"),
        "an existing file is kept: {err}"
    );

    // --check prints the settings in effect: the file's, under flags.
    std::fs::write(&file, "name = \"file\"\nlisten = \"10.9.9.9:7701\"\n").unwrap();
    let (ok, out, err) = cli(&[
        "node",
        "--config",
        file.to_str().unwrap(),
        "--check",
        "--name",
        "flag",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("name = \"flag\"") && out.contains("listen = \"10.9.9.9:7701\""),
        "{out}"
    );
}

/// The questions themselves, answered through a terminal (`script` gives the wizard a pty, as an
/// operator's shell would): new cluster, name, data dir, ports, http toggled off, no destination.
#[test]
fn the_wizard_asks_and_writes_the_answers() {
    use std::io::Write;
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED the_wizard_asks_and_writes_the_answers: `script` (util-linux) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (quic, api, _, _) = free_ports();
    let data = dir.path().join("wizard-data");
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &format!("{BIN} init"), "/dev/null"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script");
    let mut stdin = child.stdin.take().unwrap();
    let answers = [
        "\r".to_string(),                // new cluster
        "wizard\r".to_string(),          // name
        format!("{}\r", data.display()), // data dir
        format!("127.0.0.1:{quic}\r"),   // peers
        format!("127.0.0.1:{api}\r"),    // API
        " \r".to_string(),               // probes: http off, the rest on
        "\r".to_string(),                // no destination
    ];
    for answer in answers {
        std::thread::sleep(Duration::from_millis(700));
        stdin.write_all(answer.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    std::thread::sleep(Duration::from_millis(700));
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let screen = String::from_utf8_lossy(&output.stdout);
    let text = std::fs::read_to_string(dir.path().join("apiary.toml"))
        .unwrap_or_else(|_| panic!("the wizard wrote no apiary.toml; its screen:\n{screen}"));
    assert!(text.contains("name = \"wizard\""), "{text}");
    assert!(
        text.contains(&format!("api = \"127.0.0.1:{api}\"")),
        "{text}"
    );
    assert!(
        text.contains(&format!("data_dir = \"{}\"", data.display())),
        "{text}"
    );
    assert!(
        text.contains("[cluster.probe.http]\nenabled = false"),
        "{text}"
    );
    assert!(
        text.contains("[cluster.probe.tls]\nenabled = true"),
        "{text}"
    );
    assert!(screen.contains("apiary node --config"), "{screen}");
}

/// The niceness of every thread of a process (field 19 of /proc/PID/task/TID/stat).
fn thread_nices(pid: u32) -> Vec<i64> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces) start at field 3.
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().nth(16)?.parse().ok()
        })
        .collect()
}

#[tokio::test]
async fn nice_lowers_every_thread_of_the_agent_and_the_default_keeps_its_priority() {
    let cluster = Cluster::start_with(1, &["--no-probes", "--nice", "10"]).await;
    let pid = cluster.nodes[0].pid().unwrap();
    let nices = thread_nices(pid);
    assert!(nices.len() > 2, "threads: {nices:?}");
    // Every thread, those of the async runtime and of the storage included (more than 10
    // only if the test runner itself runs niced above that).
    assert!(nices.iter().all(|&n| n >= 10), "{nices:?}");
    drop(cluster);

    let kept = Cluster::start(1).await;
    // The node inherits the niceness of the thread that started it: this one.
    // SAFETY: getpriority takes plain integers; 0 means the calling thread.
    let runner = i64::from(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) });
    let nices = thread_nices(kept.nodes[0].pid().unwrap());
    assert!(nices.iter().all(|&n| n == runner), "{nices:?}");

    let (ok, _, err) = cli(&["node", "--no-probes", "--nice", "20"]);
    assert!(!ok);
    assert!(err.contains("--nice") && err.contains("0..=19"), "{err}");
}

/// A creator killed right after it bootstrapped its cluster, before it recorded the first
/// tokens and the file's [cluster] table: before the fix the next start skipped both, so the
/// cluster knew no token (DATA_DIR/api-token was refused) and the table was lost. Now the next
/// start finishes them, once.
#[tokio::test]
async fn a_creator_killed_before_it_recorded_its_first_tokens_finishes_on_restart() {
    let _machine = crate::common::shared();
    let dir = tempfile::tempdir().unwrap();
    let (quic, api, _, _) = free_ports();
    let config = dir.path().join("apiary.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"founder\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{quic}\"\n\
             api = \"127.0.0.1:{api}\"\n[cluster.probe.http]\nsample_rate = 0.25\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut crashed = start_node(
        &config,
        &[],
        &[("APIARY_FAILPOINT", "after-bootstrap".to_string())],
    );
    let status = crashed.0.wait().expect("the node exits at the failpoint");
    assert_eq!(status.code(), Some(86), "{status:?}");
    let token = std::fs::read_to_string(dir.path().join("data/api-token")).unwrap();
    let token = token.trim().to_string();
    let base = format!("http://127.0.0.1:{api}");
    for round in 0..2 {
        let _node = start_node(&config, &[], &[]);
        let config_json = wait_json_with(
            &format!("{base}/v1/config"),
            "the first token",
            Some(&token),
        )
        .await;
        assert_eq!(config_json["version"], 1, "round {round}: {config_json}");
        assert_eq!(config_json["config"]["probes"]["http"]["sample_rate"], 0.25);
        let joins = wait_json_with(
            &format!("{base}/v1/join-tokens"),
            "join tokens",
            Some(&token),
        )
        .await;
        assert_eq!(
            joins["join_tokens"].as_array().map(Vec::len),
            Some(1),
            "{joins}"
        );
    }
}

/// A client whose reader closed its output (`apiary … --json | head`) ends on SIGPIPE as other
/// command-line tools do, never with a panic.
#[test]
fn a_closed_output_pipe_ends_a_client_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(BIN)
        .args(["profile", "show", "edge-low-overhead", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the client writes.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        output.status
    );
}
