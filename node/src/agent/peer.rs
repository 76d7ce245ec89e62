//! Answers other peers over QUIC: join requests from new nodes, and consensus services from
//! members.

use std::sync::Arc;

use apiary_consensus::Consensus;
use apiary_wire::{Handler, JoinGrant, Message, PeerInfo, Service};

use super::ca::{answer_status, CaRuntime};

pub struct PeerService {
    pub consensus: Arc<Consensus>,
    /// Set once the node's tuning runs; load reports before that are refused.
    pub intensity: Arc<std::sync::OnceLock<Arc<super::intensity::Intensity>>>,
    pub ca: Arc<CaRuntime>,
    pub api_token: String,
}

impl Handler for PeerService {
    async fn handle(&self, peer: PeerInfo, message: Message) -> Message {
        match message {
            Message::JoinRequest {
                secret,
                node_name,
                csr_der,
            } => self.join(peer, &secret, &node_name, &csr_der),
            Message::Request {
                service: Service::CaStatus,
                ..
            } => answer_status(&self.ca),
            Message::Request {
                service: Service::LoadReport,
                payload,
            } => match self.intensity.get() {
                Some(intensity) => intensity.receive(&payload),
                None => Message::Refused {
                    reason: "this node's tuning is not running yet".into(),
                },
            },
            Message::Request { service, payload } => self.consensus.handle(service, &payload).await,
            other => Message::Refused {
                reason: format!("a member does not accept {other:?} as a request"),
            },
        }
    }
}

impl PeerService {
    fn join(&self, peer: PeerInfo, secret: &[u8], node_name: &str, csr_der: &[u8]) -> Message {
        if self.ca.rotating() {
            return Message::Refused {
                reason: "the cluster CA is being rotated; join once `apiary ca status` shows the \
                         rotation finished, with the new join token"
                    .into(),
            };
        }
        self.ca.with_active(|ca, join_token| {
            self.grant(peer, secret, node_name, csr_der, ca, join_token)
        })
    }

    fn grant(
        &self,
        peer: PeerInfo,
        secret: &[u8],
        node_name: &str,
        csr_der: &[u8],
        ca: &apiary_wire::ClusterCa,
        join_token: &apiary_wire::JoinToken,
    ) -> Message {
        if !join_token.secret_matches(secret) {
            tracing::warn!(peer = %peer.addr, node_name, "refused a join: wrong join secret");
            return Message::Refused {
                reason: "the join token's secret is wrong: copy DATA_DIR/join-token from a member"
                    .into(),
            };
        }
        if node_name.is_empty() || node_name.len() > 64 {
            return Message::Refused {
                reason: "node names must be 1 to 64 characters".into(),
            };
        }
        let cert_der = match ca.issue_from_csr(node_name, csr_der) {
            Ok(cert) => cert,
            Err(e) => {
                return Message::Refused {
                    reason: e.to_string(),
                }
            }
        };
        let taken: Vec<u64> = self
            .consensus
            .status()
            .members
            .iter()
            .map(|m| m.id)
            .collect();
        let node_id = loop {
            let candidate = rand::random::<u64>() >> 1;
            if !taken.contains(&candidate) {
                break candidate;
            }
        };
        tracing::info!(peer = %peer.addr, node_name, node_id, "issued a certificate to a joining node");
        Message::JoinGranted(JoinGrant {
            node_id,
            cert_der,
            ca_cert_der: ca.cert_der().to_vec(),
            ca_key_der: ca.key_der(),
            join_secret: join_token.secret.to_vec(),
            api_token: self.api_token.clone(),
        })
    }
}
