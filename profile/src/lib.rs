//! Apiary's configuration profiles: reviewed, signed partial configurations that any node
//! applies to the whole cluster as one config event.
//!
//! [`format`] reads the TOML file and checks it against the config model (one problem per bad
//! setting, with its line), [`signature`] checks minisign signatures over the file's bytes
//! against the cluster's `trust.profile_keys`, [`catalogue`] holds the project's profiles built
//! into the binary, and [`export`] writes a config back out as a profile.

pub mod catalogue;
pub mod export;
pub mod format;
pub mod signature;

pub use format::{Metadata, Problem, Problems, Profile};
pub use signature::{SignatureError, Verified};

use apiary_config::{ClusterConfig, Signer};

/// Why a profile may not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    #[error("{0}")]
    Problems(#[from] Problems),
    #[error("{0}")]
    Signature(#[from] SignatureError),
}

/// A profile that may be applied: read, signature judged, settings valid on the base config.
#[derive(Debug, Clone)]
pub struct Checked {
    pub profile: Profile,
    pub signer: Signer,
    /// The config the profile makes of the base.
    pub after: ClusterConfig,
}

/// Reads `text`, judges its `signature` with `base`'s trusted keys and checks its settings on
/// `base`. A missing, untrusted or mismatched signature is refused unless `allow_unsigned`, and
/// then recorded as [`Signer::Unverified`] with the reason; a malformed file never passes.
pub fn check(
    text: &str,
    signature: Option<&str>,
    base: &ClusterConfig,
    allow_unsigned: bool,
    running_version: &str,
) -> Result<Checked, ProfileError> {
    let profile = Profile::parse(text)?;
    // The settings first: a file with problems is refused whoever signed it, and the author
    // sees every problem at once.
    let after = profile.validate(base)?;
    profile.check_version(running_version)?;
    let signer = match signature::verify(text.as_bytes(), signature, &base.trust.profile_keys) {
        Ok(verified) => Signer::Trusted {
            key_id: verified.key_id,
            comment: verified.comment,
        },
        Err(error) if allow_unsigned => Signer::Unverified {
            reason: match error {
                SignatureError::Missing => "no signature".into(),
                SignatureError::Untrusted { key_id } => format!("signed by untrusted key {key_id}"),
                SignatureError::Mismatch { key_id } => {
                    format!("signature by key {key_id} does not match")
                }
                other => other.to_string(),
            },
        },
        Err(error) => return Err(error.into()),
    };
    Ok(Checked {
        profile,
        signer,
        after,
    })
}

#[cfg(test)]
mod tests;
