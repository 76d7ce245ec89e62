//! `apiary profile site DIR`: a static HTML index of a catalogue that anyone can host (any web
//! server or object store), with each profile's file and signature beside it to download and
//! `apiary profile import`.

use std::path::Path;

use anyhow::{Context, Result};
use apiary_profile::{catalogue, signature, Profile};

/// A profile to list: its file name stem, text and signature (if any).
struct Listed {
    stem: String,
    text: String,
    signature: Option<String>,
}

/// Writes `out/index.html` and each profile's `.toml` and `.minisig` into `out`: the profiles of
/// `from` (a directory of `*.toml`), or the built-in catalogue.
pub fn write_site(out: &Path, from: Option<&Path>) -> Result<()> {
    let listed = match from {
        Some(dir) => read_dir(dir)?,
        None => catalogue::CATALOGUE
            .iter()
            .map(|e| Listed {
                stem: e.name.to_string(),
                text: e.text.to_string(),
                signature: Some(e.signature.to_string()),
            })
            .collect(),
    };
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut cards = String::new();
    let mut skipped = 0;
    for item in &listed {
        let Ok(profile) = Profile::parse(&item.text) else {
            eprintln!(
                "left out {}.toml: it is not a valid profile (apiary profile verify)",
                item.stem
            );
            skipped += 1;
            continue;
        };
        std::fs::write(out.join(format!("{}.toml", item.stem)), &item.text)?;
        let signed = match &item.signature {
            Some(sig) => {
                std::fs::write(out.join(format!("{}.toml.minisig", item.stem)), sig)?;
                let key = signature::signature_key_id(sig).unwrap_or_else(|_| "?".into());
                format!(
                    "signed by key <code>{}</code> · <a href=\"{}.toml.minisig\">signature</a>",
                    escape(&key),
                    escape(&item.stem)
                )
            }
            None => "<b>unsigned</b>".into(),
        };
        let m = &profile.metadata;
        let rows: String = profile
            .settings
            .iter()
            .map(|s| {
                format!(
                    "<tr><td><code>{}</code></td><td>{}</td></tr>",
                    escape(&s.setting.key),
                    escape(&s.setting.value.to_string())
                )
            })
            .collect();
        let limit = m
            .time_limit
            .as_ref()
            .map(|l| format!(" · ends by itself after {}", escape(l)))
            .unwrap_or_default();
        cards.push_str(&format!(
            "<section><h2>{name} <small>v{version}</small></h2><p>{summary}</p>\
             <p class=m>{author} · stack {stack} · needs apiary {min}{limit} · {signed} · \
             <a href=\"{stem}.toml\">{stem}.toml</a></p>\
             <table>{rows}</table>\
             <pre>apiary profile import {stem}.toml   # after downloading both files\n\
             apiary profile apply {stem}.toml</pre></section>\n",
            name = escape(&m.name),
            version = escape(&m.version),
            summary = escape(&m.summary),
            author = escape(&m.author),
            stack = escape(&m.stack),
            min = escape(&m.min_apiary_version),
            stem = escape(&item.stem),
        ));
    }
    let html = format!(
        "<!doctype html><meta charset=utf-8><title>Apiary profiles</title>\
         <style>body{{font:15px system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}}\
         section{{border:1px solid #ddd;border-radius:6px;padding:0 1em 1em;margin:1em 0}}\
         .m{{color:#667}}td{{padding:0 1em 0 0}}pre{{background:#f6f8fa;padding:.5em}}</style>\
         <h1>Apiary profiles</h1><p>{} profiles. Verify before applying: \
         <code>apiary profile verify FILE --key PUBLISHER.pub</code>.</p>\n{cards}",
        listed.len() - skipped
    );
    let index = out.join("index.html");
    std::fs::write(&index, html).with_context(|| format!("cannot write {}", index.display()))?;
    println!(
        "wrote {} ({} profiles)",
        index.display(),
        listed.len() - skipped
    );
    Ok(())
}

fn read_dir(dir: &Path) -> Result<Vec<Listed>> {
    let mut listed = Vec::new();
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        listed.push(Listed {
            stem: stem.to_string(),
            text: std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?,
            signature: std::fs::read_to_string(format!("{}.minisig", path.display())).ok(),
        });
    }
    listed.sort_by(|a, b| a.stem.cmp(&b.stem));
    Ok(listed)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
