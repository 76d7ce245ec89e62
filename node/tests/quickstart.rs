//! Runs every command of `docs/quickstart.md`, one `##` section at a time, each in a fresh
//! directory with `apiary` on the PATH. The only rewrites: `cargo run --release -p apiary --`
//! becomes the test build of `apiary`, a command that follows output forever (`apiary tail`,
//! `tail -f`) is cut after 3 s, and a line that starts a node in the background is followed by a
//! wait for that node's API. Any failing command fails the test with the section's output.

use std::path::Path;
use std::process::Command;

use crate::common::{root, BIN};

/// The shell blocks of each `##` section, continuation lines joined.
fn sections(markdown: &str) -> Vec<(String, Vec<String>)> {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            sections.push((title.to_string(), Vec::new()));
        } else if line.starts_with("```") {
            in_block = !in_block && line.trim() == "```sh";
        } else if in_block {
            let command = sections
                .last_mut()
                .expect("a code block under a ## heading");
            if let Some(start) = line.strip_suffix('\\') {
                pending.push_str(start);
                continue;
            }
            pending.push_str(line);
            if !pending.trim().is_empty() {
                command.1.push(std::mem::take(&mut pending));
            }
            pending.clear();
        }
    }
    sections.retain(|(_, commands)| !commands.is_empty());
    sections
}

fn api_of(command: &str) -> String {
    let words: Vec<&str> = command.split_whitespace().collect();
    let api = words
        .windows(2)
        .find(|w| w[0] == "--api")
        .map(|w| w[1].to_string())
        .unwrap_or_else(|| "127.0.0.1:7700".to_string());
    format!("http://{api}")
}

fn script(commands: &[String]) -> String {
    let mut out = String::from(
        "set -euo pipefail\n\
         trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null' EXIT\n\
         wait_api() { for _ in $(seq 150); do curl -sf \"$1/healthz\" >/dev/null && return 0; sleep 0.2; done; \
           echo \"no API at $1\" >&2; return 1; }\n",
    );
    for command in commands {
        let mut line = command.replace("cargo run --release -p apiary -- ", "apiary ");
        let follows = line.contains("apiary tail") || line.contains("tail -f");
        if follows {
            let code = line.split(" #").next().unwrap_or(&line).trim().to_string();
            line = format!("timeout 3 {code} || [ $? -eq 124 ]");
        }
        out.push_str(&format!("echo '$ {}'\n", command.replace('\'', "'\\''")));
        out.push_str(&line);
        out.push('\n');
        if line.trim_end().ends_with('&') && line.contains("apiary node") {
            out.push_str(&format!("wait_api {}\n", api_of(&line)));
        }
    }
    out
}

#[test]
fn every_quickstart_command_runs() {
    if !root() {
        eprintln!("SKIPPED quickstart test: the quickstart's nodes load eBPF probes, which needs root (run as root, as .ci/run does)");
        return;
    }
    let _machine = crate::common::shared();
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/quickstart.md");
    let markdown = std::fs::read_to_string(&doc).expect("read docs/quickstart.md");
    let sections = sections(&markdown);
    assert!(sections.len() >= 3, "quickstart sections: {sections:?}");
    let bin_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(BIN, bin_dir.path().join("apiary")).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (title, commands) in sections {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new("bash")
            .arg("-c")
            .arg(script(&commands))
            .current_dir(dir.path())
            .env("PATH", &path)
            .env_remove("APIARY_TOKEN")
            .env_remove("APIARY_PEER")
            .env("APIARY_LOG", "warn")
            .output()
            .expect("run bash");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "quickstart section {title:?} failed:\n{stdout}\n{stderr}"
        );
        println!("section {title:?}: {} commands ran", commands.len());
    }
}

#[test]
fn the_parser_sees_every_command() {
    let sample = "## A\n```sh\nfoo --a \\\n  --b\nbar &\n```\ntext\n## B\n```\nnot shell\n```\n";
    let found = sections(sample);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1, ["foo --a   --b", "bar &"]);
}
