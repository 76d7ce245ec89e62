//! The node's two readers of configuration text, chosen by the first byte (even: the file,
//! odd: the CLI's assignments):
//!
//! - `apiary.toml`, as `apiary node` loads it (node/src/agent/settings.rs): parsed with each
//!   value checked by its flag's own parser, the `[cluster]` table checked as a whole against
//!   the config model, then layered under the (empty) environment and flags as clap reads them.
//! - `apiary config set key=value …` (apiary-config): each line one argument, parsed as the CLI
//!   does, then checked as the leader checks a proposal and committed to a history.
#![no_main]

use apiary_config::{
    apply_settings, diff, parse_cli_assignment, ClusterConfig, History, Intent, Proposal,
};
use apiary_fuzz::agent::args::NodeArgs;
use apiary_fuzz::agent::settings::{layer, FileSettings};
use clap::{Args, FromArgMatches};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (choice, rest) = apiary_fuzz::selector(data);
    // Both arrive as text: the file is read with `read_to_string`, arguments are `String`s.
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if choice % 2 == 0 {
        config_file(text);
    } else {
        assignments(text);
    }
});

fn config_file(text: &str) {
    let Ok(file) = FileSettings::parse(text) else {
        return;
    };
    // `FileSettings::load`'s check of the whole table.
    if apply_settings(&ClusterConfig::default(), &file.cluster.0).is_err() {
        return;
    }
    // `apiary node` with no flags and no APIARY_* variables (the fuzzer sets none).
    let command = NodeArgs::augment_args(clap::Command::new("node"));
    let Ok(mut matches) = command.try_get_matches_from(["node"]) else {
        return;
    };
    let Ok(mut args) = NodeArgs::from_arg_matches(&matches) else {
        return;
    };
    let _ = layer(&mut args, file, &mut matches);
}

fn assignments(text: &str) {
    let mut settings = Vec::new();
    for line in text.lines() {
        match parse_cli_assignment(line) {
            Ok(setting) => settings.push(setting),
            Err(_) => return,
        }
    }
    let proposal = Proposal {
        origin_node: "fuzz".into(),
        request_id: None,
        author: "fuzz".into(),
        comment: String::new(),
        at: "2026-01-01T00:00:00Z".into(),
        intent: Intent::Set { settings },
    };
    let mut history = History::default();
    if history.check(&proposal).is_err() {
        return;
    }
    if history.commit(&proposal).is_ok() {
        let _ = diff(&ClusterConfig::default(), history.current());
        let _ = history.config_at(history.version());
    }
}
