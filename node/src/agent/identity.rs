//! What a node keeps in its data dir to be itself across restarts: its id and name, its TLS
//! identity, the cluster CA, and on the node that created the cluster its first tokens.
//!
//! ```text
//! DATA_DIR/node.json      id, name, how it joined, whether it was admitted
//! DATA_DIR/tls/           ca.der, node.der, node.key (0600); ca.key on CA holders (voters)
//!                         only; next-*.der/key while a CA rotation is staged
//! DATA_DIR/api-token      the cluster's first admin token, on the node that created it (0600)
//! DATA_DIR/join-token     the first join token (1 h), on the node that created the cluster,
//!                         and the one made by a CA rotation on the node that drove it (0600)
//! DATA_DIR/db/            sled: Raft log, vote, snapshots, applied config
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use apiary_wire::tls::NodeName;
use apiary_wire::{ClusterCa, Identity, JoinGrant, JoinToken};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeFile {
    pub id: u64,
    pub name: String,
    /// The member this node joined through; `None` for the node that created the cluster.
    pub joined_via: Option<String>,
    /// Set once the cluster has added this node to its membership; for the node that
    /// created the cluster, once it recorded the cluster's first tokens and config.
    pub admitted: bool,
}

impl NodeIdentity {
    /// The node created the cluster and stopped before recording its first tokens and config.
    pub fn founding_unfinished(&self) -> bool {
        self.node.joined_via.is_none() && !self.node.admitted
    }

    /// A data dir from before certificates named node ids (wire protocol 1, when every member
    /// held the CA key): the node signs itself a certificate that names its id, for its own key.
    pub fn upgrade_certificate(
        &mut self,
        dir: &DataDir,
        lifetime: std::time::Duration,
    ) -> Result<()> {
        let info = apiary_wire::tls::cert_info(&self.tls.cert)?;
        if info.node_id == Some(self.node.id) {
            return Ok(());
        }
        let Some(ca) = &self.ca_key else {
            bail!(
                "this node's certificate does not name its node id {} (it was made by an older \
                 Apiary) and this node holds no CA key to renew it: move the data dir away and \
                 join the node again with a join token",
                self.node.id
            );
        };
        let csr = apiary_wire::tls::csr_for(&self.node.name, &self.tls.key_pkcs8)?;
        let cert = ca.issue_from_csr(&self.node.node_name(), &csr, lifetime)?;
        self.tls = Identity::new(cert, self.tls.key_pkcs8.clone(), self.tls.ca_cert.to_vec());
        dir.save_active(&self.tls, Some(ca))?;
        tracing::info!("renewed this node's certificate to name its node id (upgrade)");
        Ok(())
    }
}

impl NodeFile {
    pub fn node_name(&self) -> NodeName {
        NodeName {
            id: self.id,
            name: self.name.clone(),
        }
    }
}

/// Everything loaded from (or just written to) the data dir.
pub struct NodeIdentity {
    pub node: NodeFile,
    pub tls: Identity,
    /// The cluster CA with its key, on a CA holder; `None` on the other members.
    pub ca_key: Option<ClusterCa>,
    /// DATA_DIR/api-token, where there is one (the node that created the cluster).
    pub api_token: Option<String>,
    /// DATA_DIR/join-token, where there is one.
    pub join_token: Option<JoinToken>,
}

/// The CA of a staged rotation, as far as this node has it.
pub struct NextCa {
    pub ca_cert: Vec<u8>,
    pub ca_key: Option<Vec<u8>>,
    pub node_cert: Option<Vec<u8>>,
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
        let ca_key = match self.read_optional("tls/ca.key")? {
            Some(key) => Some(ClusterCa::from_der(ca_cert.clone(), &key)?),
            None => None,
        };
        let tls = Identity::new(
            self.read("tls/node.der")?,
            self.read("tls/node.key")?,
            ca_cert,
        );
        let api_token = self
            .read_text("api-token")?
            .map(|text| text.trim().to_string());
        let join_token = match self.read_text("join-token")? {
            Some(text) => Some(text.parse()?),
            None => None,
        };
        Ok(NodeIdentity {
            node,
            tls,
            ca_key,
            api_token,
            join_token,
        })
    }

    /// A new cluster: a fresh CA, this node's certificate, and its first tokens (which the node
    /// commits to the replicated state once the cluster runs).
    pub fn create_cluster(
        &self,
        name: &str,
        api_token: Option<String>,
        cert_lifetime: std::time::Duration,
    ) -> Result<NodeIdentity> {
        let ca = ClusterCa::generate(name)?;
        let node = NodeFile {
            id: rand::random::<u64>() >> 1,
            name: name.to_string(),
            joined_via: None,
            admitted: false,
        };
        let tls = ca.issue_identity(&node.node_name(), cert_lifetime)?;
        let identity = NodeIdentity {
            node,
            join_token: Some(JoinToken::new(ca.fingerprint())),
            tls,
            ca_key: Some(ca),
            api_token: Some(api_token.unwrap_or_else(new_api_token)),
        };
        self.write_secret("tls/node.key", &identity.tls.key_pkcs8)?;
        self.save_active(&identity.tls, identity.ca_key.as_ref())?;
        if let Some(token) = &identity.api_token {
            self.write_secret("api-token", format!("{token}\n").as_bytes())?;
        }
        if let Some(token) = &identity.join_token {
            self.save_join_token(token)?;
        }
        // Written last: its presence means the rest is complete.
        self.save_node(&identity.node)?;
        Ok(identity)
    }

    /// Stores what a member granted this node when it joined: its id and certificate, and the
    /// CA certificate. Nothing else comes with a join.
    pub fn save_grant(
        &self,
        name: &str,
        via: &str,
        node_key: Vec<u8>,
        grant: JoinGrant,
    ) -> Result<NodeIdentity> {
        let identity = NodeIdentity {
            node: NodeFile {
                id: grant.node_id,
                name: name.to_string(),
                joined_via: Some(via.to_string()),
                admitted: false,
            },
            tls: Identity::new(grant.cert_der, node_key, grant.ca_cert_der),
            ca_key: None,
            api_token: None,
            join_token: None,
        };
        self.write_secret("tls/node.key", &identity.tls.key_pkcs8)?;
        self.save_active(&identity.tls, None)?;
        self.save_node(&identity.node)?;
        Ok(identity)
    }

    /// Stores the certificate this node presents and its CA, and the CA key where this node
    /// holds it (removed where it does not). The node key never changes.
    pub fn save_active(&self, tls: &Identity, ca_key: Option<&ClusterCa>) -> Result<()> {
        self.write_secret("tls/node.der", &tls.cert)?;
        self.write_secret("tls/ca.der", &tls.ca_cert)?;
        match ca_key {
            Some(ca) => self.write_secret("tls/ca.key", &ca.key_der()),
            None => self.remove("tls/ca.key"),
        }
    }

    /// Stores the CA key of the CA this node presents (a voter that received it).
    pub fn save_ca_key(&self, ca: &ClusterCa) -> Result<()> {
        self.write_secret("tls/ca.key", &ca.key_der())
    }

    pub fn save_join_token(&self, token: &JoinToken) -> Result<()> {
        self.write_secret("join-token", format!("{token}\n").as_bytes())
    }

    /// A join token pinning a CA no longer in use is removed, so no one copies it.
    pub fn remove_join_token(&self) -> Result<()> {
        self.remove("join-token")
    }

    /// What this node has of a staged rotation's CA.
    pub fn save_next(&self, next: &NextCa) -> Result<()> {
        self.write_secret("tls/next-ca.der", &next.ca_cert)?;
        match &next.ca_key {
            Some(key) => self.write_secret("tls/next-ca.key", key)?,
            None => self.remove("tls/next-ca.key")?,
        }
        match &next.node_cert {
            Some(cert) => self.write_secret("tls/next-node.der", cert),
            None => self.remove("tls/next-node.der"),
        }
    }

    pub fn load_next(&self) -> Result<Option<NextCa>> {
        let Some(ca_cert) = self.read_optional("tls/next-ca.der")? else {
            return Ok(None);
        };
        Ok(Some(NextCa {
            ca_cert,
            ca_key: self.read_optional("tls/next-ca.key")?,
            node_cert: self.read_optional("tls/next-node.der")?,
        }))
    }

    pub fn clear_next(&self) -> Result<()> {
        for name in ["tls/next-ca.der", "tls/next-ca.key", "tls/next-node.der"] {
            self.remove(name)?;
        }
        Ok(())
    }

    fn read_optional(&self, relative: &str) -> Result<Option<Vec<u8>>> {
        let path = self.root.join(relative);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn read_text(&self, relative: &str) -> Result<Option<String>> {
        self.read_optional(relative)?
            .map(|bytes| {
                String::from_utf8(bytes).with_context(|| format!("{relative} is not text"))
            })
            .transpose()
    }

    fn remove(&self, relative: &str) -> Result<()> {
        let path = self.root.join(relative);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        }
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
