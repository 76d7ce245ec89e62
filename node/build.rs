//! Builds the dashboard (`dashboard/`, Preact + Vite) into `dashboard/dist`, which
//! `src/api/dashboard.rs` embeds with rust-embed, so a node needs no separate install to serve it.
//! `npm ci` runs when `node_modules` is missing or older than the lock file.

use std::path::Path;
use std::process::Command;

fn main() {
    let dashboard = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboard");
    for watched in [
        "src",
        "index.html",
        "package.json",
        "package-lock.json",
        "vite.config.js",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            dashboard.join(watched).display()
        );
    }
    println!("cargo:rerun-if-env-changed=APIARY_SKIP_DASHBOARD");
    let dist = dashboard.join("dist");
    if std::env::var_os("APIARY_SKIP_DASHBOARD").is_some() {
        // For machines without Node.js: the node serves a page that says so.
        std::fs::create_dir_all(&dist).expect("create dashboard/dist");
        std::fs::write(
            dist.join("index.html"),
            "<!doctype html><title>Apiary</title><p>This apiary binary was built with \
             APIARY_SKIP_DASHBOARD set, so it has no dashboard. Rebuild it with Node.js and npm \
             installed to get one; the API is at /v1/cluster.</p>",
        )
        .expect("write the placeholder dashboard");
        return;
    }
    let lock = dashboard.join("package-lock.json");
    let installed = dashboard.join("node_modules/.package-lock.json");
    let stale = match (modified(&installed), modified(&lock)) {
        (Some(installed), Some(lock)) => installed < lock,
        _ => true,
    };
    if stale {
        npm(&dashboard, &["ci", "--no-audit", "--no-fund"]);
    }
    npm(&dashboard, &["run", "build"]);
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn npm(dir: &Path, args: &[&str]) {
    let status = Command::new("npm").args(args).current_dir(dir).status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => panic!(
            "`npm {}` in {} failed ({status}); its output is above. The dashboard needs Node.js \
             18+ and the npm registry (or set APIARY_SKIP_DASHBOARD=1 to build without it)",
            args.join(" "),
            dir.display()
        ),
        Err(e) => panic!(
            "cannot run npm ({e}): the dashboard is built with Node.js and npm; `./dev` at the \
             repository's root installs them (or `apt-get install nodejs npm`), or set \
             APIARY_SKIP_DASHBOARD=1 to build without the dashboard"
        ),
    }
}
