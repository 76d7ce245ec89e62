//! The project's profiles (`profiles/` in the repository), built into the binary with their
//! signatures, so every node can list and apply them without a network.

/// A catalogue profile: its file's text and its `.minisig`.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The profile's name, also its file name without `.toml`.
    pub name: &'static str,
    pub text: &'static str,
    pub signature: &'static str,
}

macro_rules! entries {
    ($($name:literal),* $(,)?) => {
        &[$(Entry {
            name: $name,
            text: include_str!(concat!("../../profiles/", $name, ".toml")),
            signature: include_str!(concat!("../../profiles/", $name, ".toml.minisig")),
        }),*]
    };
}

/// Every catalogue profile, in the order `apiary profile list` shows them.
pub const CATALOGUE: &[Entry] = entries![
    "edge-low-overhead",
    "incident-full-capture",
    "service-detail",
    "nginx-frontend",
    "database-heavy",
    "tls-only",
    "high-cardinality-safe",
    "ci-test-cluster",
];

/// The catalogue profile called `name`.
pub fn find(name: &str) -> Option<&'static Entry> {
    CATALOGUE.iter().find(|entry| entry.name == name)
}
