//! Letting nodes in: join tokens (made, checked, used up), and the grant of a certificate to a
//! joining node, signed only by a CA holder (a voter). A member that does not hold the CA key
//! checks the token and forwards the request to a voter, which checks it again, records the
//! use through the log (so a single-use token admits one node, whichever members two joiners
//! reach) and signs. The grant carries the node's id and certificate and the CA certificate:
//! no CA key, no join secret, no API token.

use std::time::{Duration, SystemTime};

use apiary_consensus::join_tokens::{JoinTokenRecord, JoinTokenStep, JoinUse};
use apiary_consensus::tokens::token_hash;
use apiary_consensus::{Caller, Consensus, WriteError};
use apiary_wire::tls::{csr_key_fingerprint, fingerprint, NodeName};
use apiary_wire::{JoinGrant, JoinToken, Message, PeerInfo, Service};
use serde::{Deserialize, Serialize};

use super::ca::custody::ask_voters;
use super::ca::CaRuntime;

/// How long a join token admits nodes unless its creator says otherwise.
pub const DEFAULT_JOIN_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// A joining node's request, forwarded by a member to a CA holder. The holder picks the new
/// node's id itself, so a forwarding member cannot ask for a certificate naming someone else.
#[derive(Debug, Serialize, Deserialize)]
pub struct SignJoinRequest {
    pub secret: Vec<u8>,
    pub node_name: String,
    pub csr: Vec<u8>,
}

/// What a CA holder answers a forwarded join.
#[derive(Debug, Serialize, Deserialize)]
pub struct SignedJoin {
    pub node_id: u64,
    pub cert: Vec<u8>,
    pub ca_cert: Vec<u8>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(unix))
        .to_string()
}

/// The record the cluster keeps of `token`: its secret's hash, never the secret.
pub fn join_token_record(
    token: &JoinToken,
    name: String,
    ttl: Duration,
    single_use: bool,
    created_by: String,
) -> JoinTokenRecord {
    JoinTokenRecord {
        id: hex::encode(rand::random::<[u8; 4]>()),
        name,
        sha256: token_hash(&hex::encode(token.secret)),
        created_at: rfc3339(unix_now()),
        created_by,
        expires_at_unix: unix_now().saturating_add(ttl.as_secs()),
        single_use,
        uses: Vec::new(),
    }
}

/// Makes a join token for the CA this node presents and commits its record.
pub async fn create_join_token(
    consensus: &Consensus,
    caller: &Caller,
    runtime: &CaRuntime,
    name: String,
    ttl: Duration,
    single_use: bool,
    created_by: String,
) -> Result<(JoinToken, JoinTokenRecord), WriteError> {
    let token = JoinToken::new(fingerprint(&runtime.ca_cert().into()));
    let record = join_token_record(&token, name, ttl, single_use, created_by);
    consensus
        .join_token_step(caller, JoinTokenStep::Create(record.clone()))
        .await?;
    Ok((token, record))
}

/// The live record of a presented secret, and the earlier use by the same key (`key_sha256`
/// of the joiner's request) if there is one, or why it admits no one.
fn check_token(
    consensus: &Consensus,
    secret: &[u8],
    key_sha256: &str,
) -> Result<(JoinTokenRecord, Option<JoinUse>), String> {
    let record = consensus
        .config_state()
        .find_join_token(secret)
        .ok_or_else(|| {
            "the join token is not one of this cluster's live tokens: it was revoked, cleared by \
             a CA rotation, or never existed; ask an operator for a new one (`apiary join-token \
             create`)"
                .to_string()
        })?;
    if unix_now() > record.expires_at_unix {
        return Err(format!(
            "the join token {} expired at {}; ask an operator for a new one (`apiary join-token \
             create`)",
            record.id,
            rfc3339(record.expires_at_unix)
        ));
    }
    // The same joiner again (its answer was lost: the join deadline passed, the connection
    // dropped): the same id, not a spent token.
    let earlier = record
        .uses
        .iter()
        .find(|u| !u.key_sha256.is_empty() && u.key_sha256 == key_sha256)
        .cloned();
    if earlier.is_none() && record.single_use && !record.uses.is_empty() {
        return Err(format!(
            "the single-use join token {} was already used; ask an operator for a new one",
            record.id
        ));
    }
    Ok((record, earlier))
}

/// Answers a [`Message::JoinRequest`] from a node without a certificate.
pub async fn answer_join(
    runtime: &CaRuntime,
    consensus: &Consensus,
    peer: PeerInfo,
    secret: Vec<u8>,
    node_name: String,
    csr: Vec<u8>,
) -> Message {
    let refuse = |reason: String| {
        tracing::warn!(peer = %peer.addr, node_name, "refused a join: {reason}");
        Message::Refused { reason }
    };
    if runtime.rotating() {
        return refuse(
            "the cluster CA is being rotated; join once `apiary ca status` shows the rotation \
             finished, with a join token made after it"
                .into(),
        );
    }
    let key_sha256 = match csr_key_fingerprint(&csr) {
        Ok(key) => key,
        Err(e) => return refuse(e.to_string()),
    };
    if let Err(reason) = check_token(consensus, &secret, &key_sha256) {
        return refuse(reason);
    }
    if node_name.is_empty() || node_name.len() > 64 {
        return refuse("node names must be 1 to 64 characters".into());
    }
    let request = SignJoinRequest {
        secret,
        node_name: node_name.clone(),
        csr,
    };
    let signed = if runtime.holds_key() {
        sign_join_here(runtime, consensus, &request).await
    } else {
        ask_voters::<_, SignedJoin>(consensus, Service::SignJoin, &request)
            .await
            .map_err(|e| format!("{e:#}"))
    };
    match signed {
        Ok(signed) => {
            let node_id = signed.node_id;
            tracing::info!(peer = %peer.addr, node_name, node_id, "granted a joining node a certificate");
            Message::JoinGranted(JoinGrant {
                node_id,
                cert_der: signed.cert,
                ca_cert_der: signed.ca_cert,
            })
        }
        Err(reason) => refuse(reason),
    }
}

/// Answers a member's forwarded join ([`Service::SignJoin`]).
pub async fn answer_sign_join(
    runtime: &CaRuntime,
    consensus: &Consensus,
    sender: u64,
    payload: &[u8],
) -> Message {
    if !consensus.is_member(sender) {
        return Message::Refused {
            reason: format!("node {sender} is not a member: it may not forward joins"),
        };
    }
    let request: SignJoinRequest = match serde_json::from_slice(payload) {
        Ok(request) => request,
        Err(e) => {
            return Message::Refused {
                reason: format!("malformed join forward: {e}"),
            }
        }
    };
    match sign_join_here(runtime, consensus, &request).await {
        Ok(signed) => match serde_json::to_vec(&signed) {
            Ok(payload) => Message::Response { payload },
            Err(e) => Message::Refused {
                reason: format!("cannot encode the grant: {e}"),
            },
        },
        Err(reason) => Message::Refused { reason },
    }
}

/// On a CA holder: checks the token, records its use through the log, and signs.
async fn sign_join_here(
    runtime: &CaRuntime,
    consensus: &Consensus,
    request: &SignJoinRequest,
) -> Result<SignedJoin, String> {
    if !runtime.holds_key() {
        return Err("this node does not hold the CA key: ask another voter".into());
    }
    if runtime.rotating() {
        return Err("the cluster CA is being rotated; join once the rotation finished".into());
    }
    let key_sha256 = csr_key_fingerprint(&request.csr).map_err(|e| e.to_string())?;
    let (record, earlier) = check_token(consensus, &request.secret, &key_sha256)?;
    let node_id = match earlier {
        Some(earlier)
            if consensus
                .config_state()
                .revoked()
                .contains_key(&earlier.node_id) =>
        {
            return Err(format!(
                "node {} that joined with this key was removed: join with a new data dir",
                earlier.node_id
            ))
        }
        Some(earlier) => {
            tracing::info!(
                node = earlier.node_id,
                "a joiner asks again with the same key: its certificate again, same id"
            );
            earlier.node_id
        }
        None => {
            // A fresh id: the state machine refuses a use naming a member, a removed node or
            // an id granted before, so even a forged step cannot name an existing node.
            let node_id = rand::random::<u64>() >> 1;
            consensus
                .join_token_step(
                    &Caller::Node,
                    JoinTokenStep::Use {
                        id: record.id.clone(),
                        node_id,
                        node_name: request.node_name.clone(),
                        at_unix: unix_now(),
                        key_sha256,
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            node_id
        }
    };
    let ca_cert = runtime.ca_cert();
    let node = NodeName {
        id: node_id,
        name: request.node_name.clone(),
    };
    match runtime.sign(&ca_cert, &node, &request.csr) {
        Some(Ok(cert)) => Ok(SignedJoin {
            node_id,
            cert,
            ca_cert,
        }),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("this node does not hold the CA key: ask another voter".into()),
    }
}
