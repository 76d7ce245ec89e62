//! Frames: a 4-byte big-endian length, then an rkyv-archived [`Envelope`] that is validated
//! (bytecheck) before anything reads it.

use rkyv::{rancor, util::AlignedVec, Archive, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::WireError;

/// Bumped on incompatible changes of [`Message`]; a peer speaking another version is refused
/// with a message that names both versions.
pub const PROTOCOL_VERSION: u16 = 1;
/// Larger frames close the connection. Raft batches and snapshot chunks stay well below this.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Envelope {
    pub protocol: u16,
    pub message: Message,
}

/// Services a member offers to other members; the payload format belongs to the service.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum Service {
    RaftAppendEntries,
    RaftVote,
    RaftInstallSnapshot,
    /// A client write forwarded to the leader.
    ForwardWrite,
    /// A newly joined node asks to become a member.
    Admit,
    Ping,
    /// A member's load report, gossiped once a second for cooperative tuning (not Raft).
    LoadReport,
    /// An operator's removal of a member, forwarded to the leader.
    RemoveMember,
    /// A step of a CA rotation, forwarded to the leader.
    CaStep,
    /// Which CA rotation step a member has applied to its transport.
    CaStatus,
    /// An API token created or revoked by an operator, forwarded to the leader.
    TokenStep,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum Message {
    /// The only message accepted from a peer without a cluster certificate.
    JoinRequest {
        secret: Vec<u8>,
        node_name: String,
        csr_der: Vec<u8>,
    },
    JoinGranted(JoinGrant),
    Request {
        service: Service,
        payload: Vec<u8>,
    },
    Response {
        payload: Vec<u8>,
    },
    /// The request was refused; `reason` says why and what to do.
    Refused {
        reason: String,
    },
}

/// What a joining node receives: its certificate and the cluster's shared secrets, so that it
/// can admit further nodes and accept the cluster's API token itself.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct JoinGrant {
    pub node_id: u64,
    pub cert_der: Vec<u8>,
    pub ca_cert_der: Vec<u8>,
    pub ca_key_der: Vec<u8>,
    pub join_secret: Vec<u8>,
    pub api_token: String,
}

pub fn encode(message: &Message) -> Result<Vec<u8>, WireError> {
    let envelope = Envelope {
        protocol: PROTOCOL_VERSION,
        message: message.clone(),
    };
    let body = rkyv::to_bytes::<rancor::Error>(&envelope)
        .map_err(|e| WireError::Malformed(format!("cannot encode frame: {e}")))?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge {
            len: body.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Validates and decodes one frame body (without its length prefix).
pub fn decode(body: &[u8]) -> Result<Message, WireError> {
    let mut aligned = AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    let envelope = rkyv::from_bytes::<Envelope, rancor::Error>(&aligned)
        .map_err(|e| WireError::Malformed(format!("frame failed validation: {e}")))?;
    if envelope.protocol != PROTOCOL_VERSION {
        return Err(WireError::Version {
            theirs: envelope.protocol,
            ours: PROTOCOL_VERSION,
        });
    }
    Ok(envelope.message)
}

pub async fn write_frame(
    out: &mut (impl AsyncWrite + Unpin),
    message: &Message,
) -> Result<(), WireError> {
    out.write_all(&encode(message)?)
        .await
        .map_err(WireError::io)
}

/// Reads one frame; the length is checked before any body byte is buffered.
pub async fn read_frame(input: &mut (impl AsyncRead + Unpin)) -> Result<Message, WireError> {
    let mut prefix = [0u8; 4];
    input.read_exact(&mut prefix).await.map_err(WireError::io)?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body).await.map_err(WireError::io)?;
    decode(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Message {
        Message::Request {
            service: Service::Ping,
            payload: b"hello".to_vec(),
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(decode(&bytes[4..]).unwrap(), sample());
    }

    #[test]
    fn garbage_and_truncation_are_malformed_not_panics() {
        assert!(matches!(decode(b"garbage!"), Err(WireError::Malformed(_))));
        let bytes = encode(&sample()).unwrap();
        for cut in 0..bytes.len() - 4 {
            assert!(
                decode(&bytes[4..4 + cut]).is_err(),
                "prefix of {cut} bytes accepted"
            );
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut noisy = bytes[4..].to_vec();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed as usize) % noisy.len();
            noisy[at] ^= (seed >> 32) as u8 | 1;
            let _ = decode(&noisy);
        }
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_reading() {
        let mut input: &[u8] = &((MAX_FRAME_BYTES as u32 + 1).to_be_bytes());
        let error = read_frame(&mut input).await.unwrap_err();
        assert!(matches!(error, WireError::TooLarge { .. }), "{error}");
    }

    #[test]
    fn other_protocol_version_is_named() {
        let envelope = Envelope {
            protocol: 99,
            message: sample(),
        };
        let body = rkyv::to_bytes::<rancor::Error>(&envelope).unwrap();
        let error = decode(&body).unwrap_err().to_string();
        assert!(error.contains("99") && error.contains('1'), "{error}");
    }
}
