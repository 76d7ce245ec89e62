//! Who holds the CA key and who signs: certificates for members (renewal, a new CA) and for
//! joining nodes, signed only by CA holders (voters); a voter without the key fetches it from
//! another voter; every node renews its own certificate once a third of its lifetime is left.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Result};
use apiary_consensus::network::call_json;
use apiary_consensus::Consensus;
use apiary_wire::tls::{cert_info, csr_for, NodeName};
use apiary_wire::{ClusterCa, Identity, Message, Service, WireError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{hex_fingerprint, lock, CaRuntime};

/// How often a voter checks that it holds the CA keys, and every node its certificate's expiry.
const KEEPER_PERIOD: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A member asks for a certificate for the key in `csr`, under the CA with this fingerprint.
#[derive(Debug, Serialize, Deserialize)]
pub struct SignRequest {
    pub ca_fingerprint: String,
    pub csr: Vec<u8>,
}

/// A CA certificate and its key (PKCS#8), as passed between voters.
#[derive(Serialize, Deserialize)]
pub struct HeldKey {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

fn refused(reason: impl Into<String>) -> Message {
    Message::Refused {
        reason: reason.into(),
    }
}

fn respond(value: &impl Serialize) -> Message {
    match serde_json::to_vec(value) {
        Ok(payload) => Message::Response { payload },
        Err(e) => refused(format!("cannot encode the answer: {e}")),
    }
}

impl CaRuntime {
    /// Signs a certificate for `node` and the key in `csr` with the key of CA `ca_cert`, if
    /// this node holds it (`None` otherwise).
    pub fn sign(
        &self,
        ca_cert: &[u8],
        node: &NodeName,
        csr: &[u8],
    ) -> Option<Result<Vec<u8>, WireError>> {
        {
            let active = self.read();
            if let Some(ca) = active
                .ca_key
                .as_ref()
                .filter(|ca| ca.cert_der().as_ref() == ca_cert)
            {
                return Some(ca.issue_from_csr(node, csr, self.cert_lifetime));
            }
        }
        let next = lock(&self.next);
        let next = next.as_ref().filter(|n| n.ca_cert == ca_cert)?;
        let ca = match ClusterCa::from_der(next.ca_cert.clone(), next.ca_key.as_ref()?) {
            Ok(ca) => ca,
            Err(e) => return Some(Err(e)),
        };
        Some(ca.issue_from_csr(node, csr, self.cert_lifetime))
    }

    fn held_keys(&self) -> Vec<HeldKey> {
        let mut keys: Vec<HeldKey> = self
            .read()
            .ca_key
            .iter()
            .map(|ca| HeldKey {
                cert: ca.cert_der().to_vec(),
                key: ca.key_der(),
            })
            .collect();
        if let Some(next) = lock(&self.next).as_ref() {
            if let Some(key) = &next.ca_key {
                keys.push(HeldKey {
                    cert: next.ca_cert.clone(),
                    key: key.clone(),
                });
            }
        }
        keys
    }

    /// The CA certificates whose keys this node should hold but does not.
    fn missing_keys(&self) -> Vec<Vec<u8>> {
        let mut missing = Vec::new();
        // Never `active` while taking `next`: switch_to_next takes them the other way round.
        {
            let active = self.read();
            if active.ca_key.is_none() {
                missing.push(active.tls.ca_cert.to_vec());
            }
        }
        if let Some(next) = lock(&self.next).as_ref().filter(|n| n.ca_key.is_none()) {
            missing.push(next.ca_cert.clone());
        }
        missing
    }

    /// Keeps a CA key from another voter, if it is the key of a CA this node uses.
    fn accept_key(&self, held: &HeldKey) -> Result<bool> {
        if !ClusterCa::key_matches(&held.cert, &held.key) {
            bail!("the key does not belong to the CA certificate sent with it");
        }
        {
            let mut active = self.write();
            if active.ca_key.is_none() && active.tls.ca_cert.as_ref() == held.cert.as_slice() {
                let ca = ClusterCa::from_der(held.cert.clone(), &held.key)?;
                self.dir.save_ca_key(&ca)?;
                active.ca_key = Some(ca);
                return Ok(true);
            }
        }
        let mut next = lock(&self.next);
        if let Some(next) = next.as_mut().filter(|n| n.ca_cert == held.cert) {
            if next.ca_key.is_none() {
                next.ca_key = Some(held.key.clone());
                self.dir.save_next(next)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A learner does not keep the CA key.
    fn drop_keys(&self) -> Result<()> {
        let mut active = self.write();
        self.dir.save_active(&active.tls, None)?;
        active.ca_key = None;
        tracing::info!("this learner removed the CA key from its data dir: only voters keep it");
        Ok(())
    }

    /// A staged rotation's new CA, generated by the driver, which holds its key from the start.
    pub fn stage_new_ca(&self, ca: &ClusterCa) -> Result<()> {
        let next = super::NextCa {
            ca_cert: ca.cert_der().to_vec(),
            ca_key: Some(ca.key_der()),
            node_cert: None,
        };
        self.dir.save_next(&next)?;
        *lock(&self.next) = Some(next);
        Ok(())
    }
}

/// Whether this node or a reachable voter holds the key of the staged CA `cert`.
pub async fn staged_key_held(runtime: &CaRuntime, consensus: &Consensus, cert: &[u8]) -> bool {
    if runtime.held_keys().iter().any(|held| held.cert == cert) {
        return true;
    }
    for voter in other_voters(consensus) {
        if keys_held_by(consensus, &voter)
            .await
            .is_ok_and(|keys| keys.iter().any(|held| held.cert == cert))
        {
            return true;
        }
    }
    false
}

/// The CA keys `voter` holds (a voter asks; `answer_ca_key` refuses anyone else).
async fn keys_held_by(
    consensus: &Consensus,
    voter: &apiary_consensus::MemberStatus,
) -> Result<Vec<HeldKey>, WireError> {
    call_json(
        consensus.transport(),
        &voter.address,
        Some(voter.id),
        Service::CaKey,
        &(),
        CALL_TIMEOUT,
    )
    .await
}

/// Asks the voters other than this node, one after another, until one answers.
pub async fn ask_voters<Req: Serialize, Resp: DeserializeOwned>(
    consensus: &Consensus,
    service: Service,
    request: &Req,
) -> Result<Resp> {
    let voters = other_voters(consensus);
    let mut errors = Vec::new();
    for voter in &voters {
        match call_json(
            consensus.transport(),
            &voter.address,
            Some(voter.id),
            service,
            request,
            CALL_TIMEOUT,
        )
        .await
        {
            Ok(answer) => return Ok(answer),
            Err(e) => errors.push(format!("{}: {e}", voter.name)),
        }
    }
    if voters.is_empty() {
        bail!("no other voter (CA holder) is known to this node");
    }
    bail!("no voter (CA holder) signed: {}", errors.join("; "))
}

fn other_voters(consensus: &Consensus) -> Vec<apiary_consensus::MemberStatus> {
    consensus
        .status()
        .members
        .into_iter()
        .filter(|m| m.role == apiary_consensus::Role::Voter && m.id != consensus.id())
        .collect()
}

/// This node's own certificate under CA `ca_cert`, for its existing key: signed here when this
/// node holds that CA's key, else by a voter that does.
pub async fn obtain_cert(
    runtime: &CaRuntime,
    consensus: &Consensus,
    ca_cert: &[u8],
) -> Result<Vec<u8>> {
    let key = runtime.read().tls.key_pkcs8.clone();
    let csr = csr_for(&runtime.node.name, &key)?;
    if let Some(signed) = runtime.sign(ca_cert, &runtime.node, &csr) {
        return Ok(signed?);
    }
    let request = SignRequest {
        ca_fingerprint: hex_fingerprint(ca_cert),
        csr,
    };
    let cert: Vec<u8> = ask_voters(consensus, Service::SignCsr, &request).await?;
    check_own_cert(runtime, &cert, ca_cert, &key)?;
    Ok(cert)
}

/// A certificate a voter sent is installed only if it is for this node's key and id, chains to
/// `ca_cert` and is valid now: a bad answer must not lock the node out.
fn check_own_cert(runtime: &CaRuntime, cert: &[u8], ca_cert: &[u8], key: &[u8]) -> Result<()> {
    let info = cert_info(cert)?;
    if info.node_id != Some(runtime.node.id) {
        bail!(
            "the signed certificate names node {:?}, not this node",
            info.node_id
        );
    }
    if info.not_after <= SystemTime::now() {
        bail!("the signed certificate has already expired");
    }
    let identity = Identity::new(cert.to_vec(), key.to_vec(), ca_cert.to_vec());
    apiary_wire::tls::check_identity(&identity)
        .map_err(|e| anyhow::anyhow!("the signed certificate is not usable: {e}"))
}

/// Answers a member's `SignCsr`: a certificate naming the sender's own id (and its name in the
/// membership), never another's.
pub fn answer_sign_csr(
    runtime: &CaRuntime,
    consensus: &Consensus,
    sender: u64,
    payload: &[u8],
) -> Message {
    let request: SignRequest = match serde_json::from_slice(payload) {
        Ok(request) => request,
        Err(e) => return refused(format!("malformed signing request: {e}")),
    };
    let Some(member) = consensus
        .status()
        .members
        .into_iter()
        .find(|m| m.id == sender)
    else {
        return refused(format!(
            "node {sender} is not a member: no certificate for it"
        ));
    };
    let node = NodeName {
        id: sender,
        name: member.name,
    };
    let ca_cert = [runtime.ca_cert()]
        .into_iter()
        .chain(lock(&runtime.next).as_ref().map(|n| n.ca_cert.clone()))
        .find(|cert| hex_fingerprint(cert) == request.ca_fingerprint);
    let Some(ca_cert) = ca_cert else {
        return refused(format!(
            "this node does not use CA {}",
            request.ca_fingerprint
        ));
    };
    match runtime.sign(&ca_cert, &node, &request.csr) {
        Some(Ok(cert)) => {
            tracing::info!(node = %node.name, id = sender, "signed a member's certificate");
            respond(&cert)
        }
        Some(Err(e)) => refused(e.to_string()),
        None => refused("this node does not hold that CA's key: ask another voter"),
    }
}

/// Answers a voter's `CaKey`: the CA keys this node holds. Only voters get them.
pub fn answer_ca_key(runtime: &CaRuntime, consensus: &Consensus, sender: u64) -> Message {
    if !consensus.is_voter(sender) {
        return refused(format!(
            "node {sender} is not a voter: only voters hold the CA key"
        ));
    }
    respond(&runtime.held_keys())
}

/// Every [`KEEPER_PERIOD`]: a voter fetches the CA keys it lacks from another voter; every node
/// renews its certificate when a third of its lifetime is left.
pub fn spawn_keeper(runtime: Arc<CaRuntime>, consensus: Weak<Consensus>) {
    tokio::spawn(async move {
        let mut last_warning: Option<Instant> = None;
        loop {
            tokio::time::sleep(KEEPER_PERIOD).await;
            let Some(consensus) = consensus.upgrade() else {
                return;
            };
            let mut warn = |what: String| {
                if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
                    tracing::warn!("{what}");
                    last_warning = Some(Instant::now());
                }
            };
            let me = consensus.id();
            if consensus.is_member(me) && !consensus.is_voter(me) && runtime.holds_key() {
                // A data dir from before only voters held the key (wire protocol 1).
                if let Err(e) = runtime.drop_keys() {
                    warn(format!("cannot remove the CA key from this learner: {e:#}"));
                }
            }
            if consensus.is_voter(me) && !runtime.missing_keys().is_empty() {
                if let Err(e) = fetch_keys(&runtime, &consensus).await {
                    warn(format!("this voter does not hold the CA key yet: {e:#}"));
                }
            }
            if let Err(e) = renew_if_due(&runtime, &consensus).await {
                warn(format!("cannot renew this node's certificate yet: {e:#}"));
            }
        }
    });
}

pub async fn fetch_keys(runtime: &CaRuntime, consensus: &Consensus) -> Result<()> {
    // Not every voter holds every key yet (one that was just promoted, or a rotation's new
    // key that only the driver has), so ask each until nothing is missing.
    let mut errors = Vec::new();
    for voter in other_voters(consensus) {
        match keys_held_by(consensus, &voter).await {
            Ok(keys) => {
                for key in &keys {
                    if runtime.accept_key(key)? {
                        tracing::info!(
                            fingerprint = %hex_fingerprint(&key.cert),
                            from = %voter.name,
                            "this voter now holds the CA key"
                        );
                    }
                }
            }
            Err(e) => errors.push(format!("{}: {e}", voter.name)),
        }
        if runtime.missing_keys().is_empty() {
            return Ok(());
        }
    }
    bail!(
        "no other voter gave it ({})",
        if errors.is_empty() {
            "none holds it".to_string()
        } else {
            errors.join("; ")
        }
    )
}

async fn renew_if_due(runtime: &CaRuntime, consensus: &Consensus) -> Result<()> {
    let info = cert_info(&runtime.node_cert())?;
    // Also during a rotation: one that stalls must not let certificates run out.
    if SystemTime::now() < info.renew_at() {
        return Ok(());
    }
    let ca_cert = runtime.ca_cert();
    let cert = obtain_cert(runtime, consensus, &ca_cert).await?;
    let identity = {
        let mut active = runtime.write();
        if active.tls.ca_cert.as_ref() != ca_cert.as_slice() {
            return Ok(()); // a rotation switched meanwhile; its certificate is fresh
        }
        let tls = Identity::new(cert, active.tls.key_pkcs8.clone(), ca_cert);
        runtime.dir.save_active(&tls, active.ca_key.as_ref())?;
        active.tls = tls;
        active.tls.clone().trusting(active.also_trusted.clone())
    };
    runtime.transport.reload(&identity, false)?;
    let renewed = cert_info(&identity.cert)?;
    tracing::info!(
        expires = %humantime::format_rfc3339_seconds(renewed.not_after),
        "renewed this node's certificate"
    );
    Ok(())
}
