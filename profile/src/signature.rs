//! Minisign signatures over a profile's exact bytes.
//!
//! The signed bytes are the file as it is, byte for byte (comments and all): what a reviewer
//! read is what was signed, and the minisign tool signs and checks the same files
//! (`minisign -Sm nginx-frontend.toml` makes `nginx-frontend.toml.minisig`). Only minisign's
//! prehashed signatures (BLAKE2b-512, then Ed25519) are accepted, not its legacy ones.

use base64::Engine;
use serde::{Deserialize, Serialize};

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "the profile has no signature: sign it (`apiary profile sign FILE --key KEY`), or apply \
         it with --allow-unsigned if you trust where it came from"
    )]
    Missing,
    #[error("the signature is not a minisign signature ({0}): it should be the four lines of a .minisig file")]
    Malformed(String),
    #[error(
        "the profile is signed by key {key_id}, which this cluster does not trust: add its \
         public key to trust.profile_keys (`apiary config set`, admin token), or apply with \
         --allow-unsigned"
    )]
    Untrusted { key_id: String },
    #[error(
        "the signature by key {key_id} does not match the profile: the file was changed after \
         it was signed (or the signature is another file's); get the original or sign it again"
    )]
    Mismatch { key_id: String },
    #[error("trust.profile_keys holds a key that is not a minisign public key: {0}")]
    BadTrustedKey(String),
}

/// A signature that checked out with a trusted key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// The minisign key id as minisign prints it (16 hex digits).
    pub key_id: String,
    /// The signature's trusted comment, signed with it.
    pub comment: String,
}

/// Checks `signature` (a `.minisig` file's text) over `bytes` with the keys in `trusted` (the
/// base64 lines of minisign public keys).
pub fn verify(
    bytes: &[u8],
    signature: Option<&str>,
    trusted: &[String],
) -> Result<Verified, SignatureError> {
    let text = signature
        .filter(|s| !s.trim().is_empty())
        .ok_or(SignatureError::Missing)?;
    let decoded = minisign_verify::Signature::decode(text)
        .map_err(|e| SignatureError::Malformed(e.to_string()))?;
    let key_id = signature_key_id(text)?;
    for key in trusted {
        let public = minisign_verify::PublicKey::from_base64(key)
            .map_err(|_| SignatureError::BadTrustedKey(key.clone()))?;
        if public_key_id(key).as_deref() != Some(key_id.as_str()) {
            continue;
        }
        return match public.verify(bytes, &decoded, false) {
            Ok(()) => Ok(Verified {
                key_id,
                comment: decoded.trusted_comment().to_string(),
            }),
            Err(_) => Err(SignatureError::Mismatch { key_id }),
        };
    }
    Err(SignatureError::Untrusted { key_id })
}

/// The key id of a minisign public key's base64 line, as minisign prints it.
pub fn public_key_id(key: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key.trim())
        .ok()?;
    (bytes.len() == 42).then(|| key_id_hex(&bytes[2..10]))
}

/// The key id a `.minisig` text names (read, not checked: only [`verify`] checks).
pub fn signature_key_id(text: &str) -> Result<String, SignatureError> {
    let line = text
        .lines()
        .nth(1)
        .ok_or_else(|| SignatureError::Malformed("no signature line".into()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line.trim())
        .map_err(|e| SignatureError::Malformed(e.to_string()))?;
    if bytes.len() != 74 {
        return Err(SignatureError::Malformed(
            "a signature line of the wrong length".into(),
        ));
    }
    Ok(key_id_hex(&bytes[2..10]))
}

/// minisign shows a key id as the 8 bytes read as a little-endian number.
fn key_id_hex(bytes: &[u8]) -> String {
    let mut id = [0u8; 8];
    id.copy_from_slice(bytes);
    format!("{:016X}", u64::from_le_bytes(id))
}

/// A new key pair in minisign's formats, the secret key unencrypted (keep it offline, mode
/// 0600); returns (`minisign.pub` text, `minisign.key` text).
pub fn generate_key(comment: &str) -> Result<(String, String), SigningError> {
    let pair = minisign::KeyPair::generate_unencrypted_keypair().map_err(SigningError::from)?;
    let public = pair.pk.to_box().map_err(SigningError::from)?.to_string();
    let secret = pair
        .sk
        .to_box(Some(comment))
        .map_err(SigningError::from)?
        .to_string();
    Ok((public, secret))
}

/// Signs `bytes` with a minisign secret key file's text (unencrypted, or encrypted with
/// `password`); `trusted_comment` is signed too and shown by `verify`.
pub fn sign(
    bytes: &[u8],
    secret_key: &str,
    password: Option<String>,
    trusted_comment: &str,
) -> Result<String, SigningError> {
    let secret_box = minisign::SecretKeyBox::from_string(secret_key).map_err(SigningError::from)?;
    let secret = match password {
        Some(password) => secret_box.into_secret_key(Some(password)),
        None => secret_box.into_unencrypted_secret_key(),
    }
    .map_err(|e| {
        SigningError(format!(
            "{e} (an encrypted key needs its password in APIARY_SIGNING_PASSWORD)"
        ))
    })?;
    let signature = minisign::sign(
        None,
        &secret,
        std::io::Cursor::new(bytes),
        Some(trusted_comment),
        Some("signature from apiary profile sign"),
    )
    .map_err(SigningError::from)?;
    Ok(signature.into_string())
}

/// A key could not be made or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("minisign: {0}")]
pub struct SigningError(String);

impl From<minisign::PError> for SigningError {
    fn from(error: minisign::PError) -> Self {
        SigningError(error.to_string())
    }
}

/// The base64 line of a `minisign.pub` file's text (its second line), or the text itself when
/// it is that line already.
pub fn public_key_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|line| apiary_config::is_minisign_public_key(line))
        .map(str::to_string)
}
