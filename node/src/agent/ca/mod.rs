//! The node's side of the cluster CA: which CA it presents and trusts, kept in step with the
//! replicated rotation state ([`apiary_consensus::ca`]); who holds the CA key; certificates
//! signed for members and joiners; renewal before expiry; and the rotation driver.
//!
//! Only voters hold the CA key (`tls/ca.key`): the node that creates the cluster has it, and a
//! voter without it asks another voter for it ([`custody`]). Learners and joiners never get it:
//! a learner that admits a joiner forwards the joiner's request to a voter, and every member
//! asks a voter to sign its own renewed certificate or its certificate under a new CA.
//!
//! The data dir always holds the CA the node presents (`tls/ca.der`, `tls/node.der`). What a
//! staged rotation needs (the new CA, this node's certificate under it, the new key on a holder)
//! is in `tls/next-*`; the trust comes from the applied state, which is on disk too, so a restart
//! in the middle of a rotation rebuilds the same trust.

pub mod custody;
pub mod rotate;

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use apiary_consensus::ca::{CaPhase, CaState};
use apiary_consensus::Consensus;
use apiary_wire::tls::{fingerprint, NodeName};
use apiary_wire::{ClusterCa, Identity, Transport};

use super::identity::{DataDir, NextCa};

pub use rotate::{report, rotate};

/// Which rotation step a node has applied to its transport: `(epoch, phase)`, `None` before any
/// rotation.
pub type Applied = Option<(u64, CaPhase)>;

/// What the node presents now.
struct Active {
    tls: Identity,
    /// The active CA with its key, on a CA holder.
    ca_key: Option<ClusterCa>,
    /// CAs trusted besides the active one (during a rotation).
    also_trusted: Vec<Vec<u8>>,
}

pub struct CaRuntime {
    dir: DataDir,
    node: NodeName,
    transport: Arc<Transport>,
    /// How long the certificates this node signs are valid.
    cert_lifetime: Duration,
    active: RwLock<Active>,
    next: Mutex<Option<NextCa>>,
    applied: Mutex<Applied>,
}

fn hex_fingerprint(cert: &[u8]) -> String {
    hex::encode(fingerprint(&cert.to_vec().into()))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Writers replace whole values, so a poisoned lock still holds a usable one.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl CaRuntime {
    pub fn new(
        dir: DataDir,
        node: NodeName,
        transport: Arc<Transport>,
        tls: Identity,
        ca_key: Option<ClusterCa>,
        cert_lifetime: Duration,
    ) -> Result<Arc<Self>> {
        let next = dir.load_next()?;
        Ok(Arc::new(CaRuntime {
            dir,
            node,
            transport,
            cert_lifetime,
            active: RwLock::new(Active {
                tls,
                ca_key,
                also_trusted: Vec::new(),
            }),
            next: Mutex::new(next),
            applied: Mutex::new(None),
        }))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Active> {
        self.active.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Active> {
        self.active.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The CA certificate this node presents and admits joiners under.
    pub fn ca_cert(&self) -> Vec<u8> {
        self.read().tls.ca_cert.to_vec()
    }

    /// This node's certificate.
    pub fn node_cert(&self) -> Vec<u8> {
        self.read().tls.cert.to_vec()
    }

    pub fn fingerprint(&self) -> String {
        hex_fingerprint(&self.ca_cert())
    }

    /// Whether this node holds the key of the CA it presents.
    pub fn holds_key(&self) -> bool {
        self.read().ca_key.is_some()
    }

    pub fn applied(&self) -> Applied {
        *lock(&self.applied)
    }

    /// True between the stage and the finish of a rotation, when joins are refused: a node
    /// admitted then would trust only one of the two CAs in use.
    pub fn rotating(&self) -> bool {
        matches!(
            self.applied(),
            Some((_, CaPhase::Staged | CaPhase::Switched))
        )
    }

    /// Makes the data dir and the transport match the rotation state `state`: from the stage
    /// on, hold a certificate of the new CA (signed by a CA holder, for this node's own key);
    /// from the switch on, present it; trust the other CA between stage and finish; close
    /// connections made under the old trust at the finish.
    pub async fn reconcile(&self, consensus: &Consensus, state: Option<&CaState>) -> Result<()> {
        let applied = state.map(|s| (s.epoch, s.phase));
        if applied == self.applied() {
            return Ok(());
        }
        if let Some(state) = state {
            if state.cert != self.ca_cert() {
                self.prepare_next(consensus, &state.cert).await?;
            }
            if state.phase >= CaPhase::Switched && state.cert != self.ca_cert() {
                self.switch_to_next(state)?;
            }
            if state.phase == CaPhase::Finished {
                *lock(&self.next) = None;
                self.dir.clear_next()?;
            }
        }
        let also_trusted = match state {
            Some(s) if s.phase == CaPhase::Staged => vec![s.cert.clone()],
            Some(s) if s.phase == CaPhase::Switched => vec![s.previous_cert.clone()],
            _ => Vec::new(),
        };
        let finishing = matches!(state, Some(s) if s.phase == CaPhase::Finished);
        let identity = {
            let mut active = self.write();
            active.also_trusted = also_trusted.clone();
            active.tls.clone().trusting(also_trusted)
        };
        self.transport.reload(&identity, finishing)?;
        *lock(&self.applied) = applied;
        if let Some(s) = state {
            tracing::info!(epoch = s.epoch, phase = %s.phase, "applied a CA rotation step");
        }
        Ok(())
    }

    /// Makes sure this node has a certificate under the staged CA `ca_cert`.
    async fn prepare_next(&self, consensus: &Consensus, ca_cert: &[u8]) -> Result<()> {
        let have = lock(&self.next)
            .as_ref()
            .is_some_and(|n| n.ca_cert == ca_cert && n.node_cert.is_some());
        if have {
            return Ok(());
        }
        let node_cert = custody::obtain_cert(self, consensus, ca_cert).await?;
        let mut next = lock(&self.next);
        let ca_key = next
            .as_ref()
            .filter(|n| n.ca_cert == ca_cert)
            .and_then(|n| n.ca_key.clone());
        let staged = NextCa {
            ca_cert: ca_cert.to_vec(),
            ca_key,
            node_cert: Some(node_cert),
        };
        self.dir.save_next(&staged)?;
        *next = Some(staged);
        Ok(())
    }

    fn switch_to_next(&self, state: &CaState) -> Result<()> {
        let next = lock(&self.next);
        let Some(next) = next.as_ref().filter(|n| n.ca_cert == state.cert) else {
            anyhow::bail!("no certificate under the new CA yet");
        };
        let cert = next
            .node_cert
            .clone()
            .context("no certificate under the new CA yet")?;
        let ca_key = next
            .ca_key
            .as_ref()
            .map(|key| ClusterCa::from_der(next.ca_cert.clone(), key))
            .transpose()
            .context("the new CA key is unreadable")?;
        let mut active = self.write();
        let tls = Identity::new(cert, active.tls.key_pkcs8.clone(), state.cert.clone());
        self.dir.save_active(&tls, ca_key.as_ref())?;
        // The old join tokens pin the old CA: the rotation's driver writes a new one.
        self.dir.remove_join_token()?;
        active.tls = tls;
        active.ca_key = ca_key;
        tracing::info!(
            epoch = state.epoch,
            fingerprint = %hex_fingerprint(&state.cert),
            "presenting a certificate of the new cluster CA"
        );
        Ok(())
    }

    /// Follows the applied rotation state for as long as the node runs, retrying a step this
    /// node could not take yet (no CA holder reachable); and keeps the CA key on voters and the
    /// node's certificate renewed.
    pub fn follow(self: &Arc<Self>, consensus: &Arc<Consensus>) {
        let mut updates = consensus.config_state().subscribe_ca();
        let this = self.clone();
        let weak = Arc::downgrade(consensus);
        tokio::spawn(async move {
            loop {
                let Some(consensus) = weak.upgrade() else {
                    return;
                };
                let state = updates.borrow_and_update().clone();
                let retry = match this.reconcile(&consensus, state.as_ref()).await {
                    Ok(()) => false,
                    Err(e) => {
                        tracing::warn!(
                            "cannot take the CA rotation step yet: {e:#}; retrying in 1 s"
                        );
                        true
                    }
                };
                drop(consensus);
                if retry {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                } else if updates.changed().await.is_err() {
                    return;
                }
            }
        });
        custody::spawn_keeper(self.clone(), Arc::downgrade(consensus));
    }
}
