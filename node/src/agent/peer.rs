//! Answers other peers over QUIC: join requests from new nodes, and from members the consensus
//! services, load reports, CA status, signing and CA key requests, and the spans of a trace. Each member request is
//! answered for the node id its certificate names, never an id the message claims.

use std::sync::Arc;

use apiary_consensus::Consensus;
use apiary_wire::{Handler, Message, PeerInfo, Service};

use super::admission::{answer_join, answer_sign_join};
use super::ca::custody::{answer_ca_key, answer_sign_csr};
use super::ca::rotate::answer_status;
use super::ca::CaRuntime;

pub struct PeerService {
    pub consensus: Arc<Consensus>,
    /// Set once the node's tuning runs; load reports before that are refused.
    pub intensity: Arc<std::sync::OnceLock<Arc<super::intensity::Intensity>>>,
    pub ca: Arc<CaRuntime>,
    /// The spans this node exported, by trace (`TraceSpans`).
    pub traces: Arc<super::traces::TraceStore>,
    /// Set once the node's predictor runs; `Predictions` requests before that are refused.
    pub predictor: Arc<std::sync::OnceLock<Arc<super::predict::Predictor>>>,
    pub node_name: String,
}

impl Handler for PeerService {
    async fn handle(&self, peer: PeerInfo, message: Message) -> Message {
        let (service, payload) = match message {
            Message::JoinRequest {
                secret,
                node_name,
                csr_der,
            } => {
                return answer_join(&self.ca, &self.consensus, peer, secret, node_name, csr_der)
                    .await
            }
            Message::Request { service, payload } => (service, payload),
            other => {
                return Message::Refused {
                    reason: format!("a member does not accept {other:?} as a request"),
                }
            }
        };
        // The transport lets only certified peers send anything but a join request.
        let Some(sender) = peer.node_id else {
            return Message::Refused {
                reason: "a peer without a cluster certificate may only ask to join".into(),
            };
        };
        match service {
            Service::CaStatus => answer_status(&self.ca),
            // Spans hold what apps sent (paths, hosts): members only, like the config.
            Service::TraceSpans if !self.consensus.is_member(sender) => Message::Refused {
                reason: format!("node {sender} is not a member: trace spans go to members only"),
            },
            Service::TraceSpans => self.traces.answer(&self.node_name, &payload),
            // Predictions name services and their objectives: members only, like spans.
            Service::Predictions if !self.consensus.is_member(sender) => Message::Refused {
                reason: format!("node {sender} is not a member: predictions go to members only"),
            },
            Service::Predictions => match self.predictor.get() {
                Some(predictor) => super::predict_fleet::answer(predictor, &self.node_name),
                None => Message::Refused {
                    reason: "this node's predictor is not running yet".into(),
                },
            },
            Service::SignCsr => answer_sign_csr(&self.ca, &self.consensus, sender, &payload),
            Service::SignJoin => {
                answer_sign_join(&self.ca, &self.consensus, sender, &payload).await
            }
            Service::CaKey => answer_ca_key(&self.ca, &self.consensus, sender),
            Service::LoadReport => match self.intensity.get() {
                Some(intensity) => intensity.receive(sender, &payload),
                None => Message::Refused {
                    reason: "this node's tuning is not running yet".into(),
                },
            },
            service => self.consensus.handle(sender, service, &payload).await,
        }
    }
}
