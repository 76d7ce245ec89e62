//! What a node keeps in its data dir to be itself across restarts: its id and name, its TLS
//! identity, the cluster CA, the API token and the join token.
//!
//! ```text
//! DATA_DIR/node.json      id, name, how it joined, whether it was admitted
//! DATA_DIR/tls/*.der      CA certificate and key, node certificate and key (keys 0600)
//! DATA_DIR/api-token      bearer token for the write API (0600)
//! DATA_DIR/join-token     token that lets new nodes join (0600)
//! DATA_DIR/db/            sled: Raft log, vote, snapshots, applied config
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use apiary_wire::{ClusterCa, Identity, JoinGrant, JoinToken};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeFile {
    pub id: u64,
    pub name: String,
    /// The member this node joined through; `None` for the node that created the cluster.
    pub joined_via: Option<String>,
    /// Set once the cluster has added this node to its membership.
    pub admitted: bool,
}

/// Everything loaded from (or just written to) the data dir.
pub struct NodeIdentity {
    pub node: NodeFile,
    pub tls: Identity,
    pub ca: ClusterCa,
    pub api_token: String,
    pub join_token: JoinToken,
}

#[derive(Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn create(root: &Path) -> Result<Self> {
        fs::create_dir_all(root.join("tls"))
            .with_context(|| format!("cannot create the data dir {}", root.display()))?;
        // The Raft log and snapshots hold the CA key of a rotation: only the node's user reads.
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (mode 0700)", root.display()))?;
        Ok(DataDir {
            root: root.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn api_token_path(&self) -> PathBuf {
        self.root.join("api-token")
    }

    pub fn join_token_path(&self) -> PathBuf {
        self.root.join("join-token")
    }

    fn node_path(&self) -> PathBuf {
        self.root.join("node.json")
    }

    pub fn exists(&self) -> bool {
        self.node_path().exists()
    }

    pub fn load(&self) -> Result<NodeIdentity> {
        let node: NodeFile = serde_json::from_slice(&self.read("node.json")?)
            .with_context(|| format!("{} is corrupt", self.node_path().display()))?;
        let ca_cert = self.read("tls/ca.der")?;
        let ca = ClusterCa::from_der(ca_cert.clone(), &self.read("tls/ca.key")?)?;
        let tls = Identity::new(
            self.read("tls/node.der")?,
            self.read("tls/node.key")?,
            ca_cert,
        );
        let api_token = String::from_utf8(self.read("api-token")?)
            .context("api-token is not text")?
            .trim()
            .to_string();
        let join_token = String::from_utf8(self.read("join-token")?)
            .context("join-token is not text")?
            .parse()?;
        Ok(NodeIdentity {
            node,
            tls,
            ca,
            api_token,
            join_token,
        })
    }

    /// A new cluster: a fresh CA, this node's certificate, and new tokens.
    pub fn create_cluster(&self, name: &str, api_token: Option<String>) -> Result<NodeIdentity> {
        let ca = ClusterCa::generate(name)?;
        let tls = ca.issue_identity(name)?;
        let identity = NodeIdentity {
            node: NodeFile {
                id: rand::random::<u64>() >> 1,
                name: name.to_string(),
                joined_via: None,
                admitted: true,
            },
            join_token: JoinToken::new(ca.fingerprint()),
            tls,
            ca,
            api_token: api_token.unwrap_or_else(new_api_token),
        };
        self.save(&identity)?;
        Ok(identity)
    }

    /// Stores what a member granted this node when it joined.
    pub fn save_grant(
        &self,
        name: &str,
        via: &str,
        node_key: Vec<u8>,
        grant: JoinGrant,
    ) -> Result<NodeIdentity> {
        let ca = ClusterCa::from_der(grant.ca_cert_der.clone(), &grant.ca_key_der)?;
        let mut secret = [0u8; 16];
        if grant.join_secret.len() != secret.len() {
            bail!(
                "the member sent a join secret of {} bytes, expected 16",
                grant.join_secret.len()
            );
        }
        secret.copy_from_slice(&grant.join_secret);
        let identity = NodeIdentity {
            node: NodeFile {
                id: grant.node_id,
                name: name.to_string(),
                joined_via: Some(via.to_string()),
                admitted: false,
            },
            tls: Identity::new(grant.cert_der, node_key, grant.ca_cert_der),
            join_token: JoinToken {
                ca_fingerprint: ca.fingerprint(),
                secret,
            },
            ca,
            api_token: grant.api_token,
        };
        self.save(&identity)?;
        Ok(identity)
    }

    /// Stores the CA this node now presents, its certificate under it, and the join token for
    /// it (a CA rotation's switch). The node key does not change.
    pub fn save_active(
        &self,
        ca: &ClusterCa,
        tls: &Identity,
        join_token: &JoinToken,
    ) -> Result<()> {
        self.write_secret("tls/node.der", &tls.cert)?;
        self.write_secret("tls/ca.key", &ca.key_der())?;
        self.write_secret("tls/ca.der", ca.cert_der())?;
        self.write_secret("join-token", format!("{join_token}\n").as_bytes())
    }

    fn save(&self, identity: &NodeIdentity) -> Result<()> {
        self.write_secret("tls/node.key", &identity.tls.key_pkcs8)?;
        self.save_active(&identity.ca, &identity.tls, &identity.join_token)?;
        self.write_secret("api-token", format!("{}\n", identity.api_token).as_bytes())?;
        // Written last: its presence means the rest is complete.
        self.save_node(&identity.node)
    }

    pub fn save_node(&self, node: &NodeFile) -> Result<()> {
        let text = serde_json::to_vec_pretty(node)?;
        self.write_secret("node.json", &text)
    }

    fn read(&self, relative: &str) -> Result<Vec<u8>> {
        let path = self.root.join(relative);
        fs::read(&path).with_context(|| {
            format!(
                "cannot read {} (the data dir is incomplete; move it away to start this node afresh)",
                path.display()
            )
        })
    }

    /// Writes through a temporary file and a rename, mode 0600, so a crash never leaves half a
    /// key and other users never read one.
    fn write_secret(&self, relative: &str, bytes: &[u8]) -> Result<()> {
        let path = self.root.join(relative);
        let tmp = path.with_extension("tmp");
        let mut file = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
        fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

pub fn new_api_token() -> String {
    hex::encode(rand::random::<[u8; 24]>())
}

/// Reads a token file given with `--token-file`, refusing tokens shorter than 16 characters.
pub fn read_token_file(path: &Path) -> Result<String> {
    let token = fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?
        .trim()
        .to_string();
    if token.len() < 16 {
        bail!(
            "the token in {} is {} characters long; use at least 16 (e.g. `openssl rand -hex 24`)",
            path.display(),
            token.len()
        );
    }
    Ok(token)
}
