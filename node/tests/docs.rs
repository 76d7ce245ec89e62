//! The docs cannot drift from the code: every message quoted in the troubleshooting table of
//! `docs/operations.md` must still be in the source (placeholders `…` split a message into parts
//! that must each be there). The API reference is checked against the route table the router is
//! built from by a unit test in `src/api/routes.rs`.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file of the product (not tests), as one text.
fn product_source() -> String {
    let mut text = String::new();
    let mut stack = vec![repo()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !matches!(
                    name.as_str(),
                    "target" | "tests" | "node_modules" | ".git" | "dashboard"
                ) {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                text.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    text
}

#[test]
fn every_troubleshooting_message_is_still_in_the_code() {
    let doc = std::fs::read_to_string(repo().join("docs/operations.md")).expect("read docs");
    let table = doc
        .split("## Troubleshooting")
        .nth(1)
        .expect("a Troubleshooting section");
    let source = product_source();
    let mut checked = 0;
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let message = row.split('`').nth(1).expect("a quoted message");
        for part in message.split('…').map(str::trim).filter(|p| p.len() >= 6) {
            assert!(
                source.contains(part),
                "docs/operations.md quotes {part:?}, which the code no longer says"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 15,
        "only {checked} messages checked: the table's shape changed?"
    );
}
