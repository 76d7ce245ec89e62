//! Frames: a 4-byte big-endian length, then an rkyv-archived [`Envelope`] that is validated
//! (bytecheck) before anything reads it.

use rkyv::{rancor, util::AlignedVec, Archive, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::WireError;

/// Bumped on incompatible changes of [`Message`]; a peer speaking another version is refused
/// with a message that names both versions.
pub const PROTOCOL_VERSION: u16 = 2;
/// Larger frames close the connection. Raft batches and snapshot chunks stay well below this.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// The largest frame a peer without a cluster certificate may send: one join request (a name,
/// a secret and a CSR take under 2 KiB).
pub const MAX_JOIN_FRAME_BYTES: usize = 64 * 1024;
/// Frame bodies are read in pieces of at most this size, so a peer that announces a large frame
/// and sends nothing holds no large buffer.
const READ_CHUNK_BYTES: usize = 64 * 1024;

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
    /// A join token created, revoked or used, forwarded to the leader.
    JoinTokenStep,
    /// A member asks a CA holder (a voter) for a certificate for its own key and id: renewal
    /// before expiry, and a certificate under a new CA during a rotation.
    SignCsr,
    /// A member that is not a CA holder forwards a joining node's request to one.
    SignJoin,
    /// A voter without the CA key asks a CA holder for it.
    CaKey,
    /// A member asks a voter who leads and in which term (to follow a learner that was
    /// promoted and elected while the member was away).
    LeaderCheck,
    /// A linearizable read's ReadIndex, asked of the leader (appended last: the variants'
    /// archived tags are their positions).
    ReadIndex,
    /// The spans of one trace that a member exported and still holds (`GET /v1/traces/ID` on
    /// any member gathers them). Last, so that the earlier variants keep their encoding.
    TraceSpans,
    /// A member's predictions, active and recent events (`GET /v1/predictions?scope=cluster`
    /// on any member gathers them). Appended last, like `TraceSpans`.
    Predictions,
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

/// What a joining node receives: its id and a certificate naming it, and the CA certificate.
/// No CA key, no join secret and no API token: those are not a by-product of joining.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct JoinGrant {
    pub node_id: u64,
    pub cert_der: Vec<u8>,
    pub ca_cert_der: Vec<u8>,
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

/// Reads one frame of at most `max` bytes; the length is checked before any body byte is
/// buffered, and the buffer grows only as bytes arrive.
pub async fn read_frame(
    input: &mut (impl AsyncRead + Unpin),
    max: usize,
) -> Result<Message, WireError> {
    let mut prefix = [0u8; 4];
    input.read_exact(&mut prefix).await.map_err(WireError::io)?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    let mut body = Vec::with_capacity(len.min(READ_CHUNK_BYTES));
    let mut chunk = vec![0u8; len.min(READ_CHUNK_BYTES)];
    while body.len() < len {
        let want = (len - body.len()).min(chunk.len());
        let got = input
            .read(&mut chunk[..want])
            .await
            .map_err(WireError::io)?;
        if got == 0 {
            return Err(WireError::Connection(format!(
                "the peer closed the stream after {} of {len} frame bytes",
                body.len()
            )));
        }
        body.extend_from_slice(&chunk[..got]);
    }
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
        let error = read_frame(&mut input, MAX_FRAME_BYTES).await.unwrap_err();
        assert!(matches!(error, WireError::TooLarge { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error_and_a_whole_one_reads_in_chunks() {
        let big = Message::Response {
            payload: vec![7; 3 * READ_CHUNK_BYTES + 5],
        };
        let bytes = encode(&big).unwrap();
        let mut whole: &[u8] = &bytes;
        assert_eq!(read_frame(&mut whole, MAX_FRAME_BYTES).await.unwrap(), big);
        let mut cut: &[u8] = &bytes[..bytes.len() - 1];
        let error = read_frame(&mut cut, MAX_FRAME_BYTES).await.unwrap_err();
        assert!(error.to_string().contains("closed the stream"), "{error}");
        let mut join_sized: &[u8] = &bytes;
        let error = read_frame(&mut join_sized, MAX_JOIN_FRAME_BYTES)
            .await
            .unwrap_err();
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
        assert!(
            error.contains("99") && error.contains(&PROTOCOL_VERSION.to_string()),
            "{error}"
        );
    }
}
