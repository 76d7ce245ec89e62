//! The cluster CA, node identities, join tokens, and the rustls configurations built from them.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::WireError;

/// Every node certificate carries this DNS name: peers are identified by the cluster CA, not by
/// host names, which change across clouds and NAT.
pub const PEER_SERVER_NAME: &str = "apiary.peer";
/// ALPN protocol id; bumped with incompatible wire changes.
pub const ALPN: &[u8] = b"apiary/2";
/// A node certificate names its node id as this URI (a SAN), so a peer's id is the
/// certificate's, not whatever a message claims.
const NODE_ID_URI_PREFIX: &str = "urn:apiary:node:";
/// How long a node certificate is valid unless the signer is told otherwise; nodes renew when a
/// third of the lifetime is left.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// The cluster CA's own lifetime: it is replaced by rotation, not by expiry.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this long in the past, so a peer whose clock is a little behind accepts
/// a fresh one.
const CLOCK_SLACK: Duration = Duration::from_secs(300);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(context: &str, error: impl fmt::Display) -> WireError {
    WireError::Tls(format!("{context}: {error}"))
}

/// SHA-256 of a certificate's DER bytes.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Hex SHA-256 of the public key a certificate request asks for: names a joiner across its
/// retries (the same request, so the same key, which only its holder can sign a request for).
pub fn csr_key_fingerprint(csr_der: &[u8]) -> Result<String, WireError> {
    let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
        .map_err(|e| WireError::Refused(format!("the certificate request is invalid: {e}")))?;
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        rcgen::PublicKeyData::der_bytes(&csr.public_key),
    );
    Ok(hex::encode(digest.as_ref()))
}

/// The cluster's certificate authority: signs node certificates on join.
pub struct ClusterCa {
    cert: CertificateDer<'static>,
    key: KeyPair,
}

impl ClusterCa {
    pub fn generate(cluster_name: &str) -> Result<Self, WireError> {
        let key = KeyPair::generate().map_err(|e| tls_error("generating the CA key", e))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(
            DnType::CommonName,
            format!("apiary cluster CA {cluster_name}"),
        );
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, CA_LIFETIME);
        let cert = params
            .self_signed(&key)
            .map_err(|e| tls_error("self-signing the CA", e))?;
        Ok(ClusterCa {
            cert: cert.der().clone(),
            key,
        })
    }

    pub fn from_der(cert: Vec<u8>, key_pkcs8: &[u8]) -> Result<Self, WireError> {
        let key_der = PrivatePkcs8KeyDer::from(key_pkcs8.to_vec());
        let key = KeyPair::try_from(&key_der).map_err(|e| tls_error("reading the CA key", e))?;
        Ok(ClusterCa {
            cert: CertificateDer::from(cert),
            key,
        })
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn key_der(&self) -> Vec<u8> {
        self.key.serialize_der()
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.cert)
    }

    /// Issues node `node_id` a certificate for the public key in `csr_der`, valid for
    /// `lifetime`. Only the key is taken from the request; names, id and usages are the CA's.
    pub fn issue_from_csr(
        &self,
        node: &NodeName,
        csr_der: &[u8],
        lifetime: Duration,
    ) -> Result<Vec<u8>, WireError> {
        let csr = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into())
            .map_err(|e| WireError::Refused(format!("the certificate request is invalid: {e}")))?;
        self.sign(node, &csr.public_key, lifetime)
    }

    fn sign(
        &self,
        node: &NodeName,
        public_key: &impl rcgen::PublicKeyData,
        lifetime: Duration,
    ) -> Result<Vec<u8>, WireError> {
        let issuer = Issuer::from_ca_cert_der(&self.cert, &self.key)
            .map_err(|e| tls_error("loading the CA as issuer", e))?;
        let mut params = node_params(&node.name, Some(node.id))?;
        set_validity(&mut params, lifetime);
        params.serial_number = Some(SerialNumber::from_slice(&rand::random::<[u8; 16]>()));
        let cert = params
            .signed_by(public_key, &issuer)
            .map_err(|e| tls_error("signing a node certificate", e))?;
        Ok(cert.der().to_vec())
    }

    /// A key and certificate for a node of this CA's cluster (used by the node that creates
    /// the cluster, which holds the CA itself).
    pub fn issue_identity(
        &self,
        node: &NodeName,
        lifetime: Duration,
    ) -> Result<Identity, WireError> {
        let key = KeyPair::generate().map_err(|e| tls_error("generating a node key", e))?;
        let cert = self.sign(node, &key, lifetime)?;
        Ok(Identity::new(cert, key.serialize_der(), self.cert.to_vec()))
    }

    /// Whether `key_pkcs8` is this CA's key (a CA key received from a peer must match the CA
    /// certificate the cluster agreed on).
    pub fn key_matches(cert: &[u8], key_pkcs8: &[u8]) -> bool {
        let key_der = PrivatePkcs8KeyDer::from(key_pkcs8.to_vec());
        let Ok(key) = KeyPair::try_from(&key_der) else {
            return false;
        };
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
            return false;
        };
        parsed.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
    }
}

/// Who a node certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeName {
    pub id: u64,
    pub name: String,
}

fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SLACK).into();
    params.not_after = (now + lifetime).into();
}

fn node_params(node_name: &str, id: Option<u64>) -> Result<CertificateParams, WireError> {
    let mut params = CertificateParams::new(vec![PEER_SERVER_NAME.to_string()])
        .map_err(|e| tls_error("building node certificate parameters", e))?;
    if let Some(id) = id {
        let uri = format!("{NODE_ID_URI_PREFIX}{id}")
            .try_into()
            .map_err(|e| tls_error("building the node id URI", e))?;
        params.subject_alt_names.push(SanType::URI(uri));
    }
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, node_name);
    params.distinguished_name = name;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

/// A fresh key and a certificate signing request for it; the key never leaves the node.
pub fn new_key_and_csr(node_name: &str) -> Result<(Vec<u8>, Vec<u8>), WireError> {
    let key = KeyPair::generate().map_err(|e| tls_error("generating a node key", e))?;
    let csr = csr_for_key(node_name, &key)?;
    Ok((key.serialize_der(), csr))
}

/// A certificate signing request for a key the node already has (renewal, CA rotation).
pub fn csr_for(node_name: &str, key_pkcs8: &[u8]) -> Result<Vec<u8>, WireError> {
    let key_der = PrivatePkcs8KeyDer::from(key_pkcs8.to_vec());
    let key = KeyPair::try_from(&key_der).map_err(|e| tls_error("reading the node key", e))?;
    csr_for_key(node_name, &key)
}

fn csr_for_key(node_name: &str, key: &KeyPair) -> Result<Vec<u8>, WireError> {
    let csr = node_params(node_name, None)?
        .serialize_request(key)
        .map_err(|e| tls_error("building the CSR", e))?;
    Ok(csr.der().to_vec())
}

/// Checks that `identity`'s certificate is for its key and chains to its CA, valid now.
pub fn check_identity(identity: &Identity) -> Result<(), WireError> {
    let key = KeyPair::try_from(&PrivatePkcs8KeyDer::from(identity.key_pkcs8.clone()))
        .map_err(|e| tls_error("reading the node key", e))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&identity.cert)
        .map_err(|e| tls_error("parsing the certificate", e))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(WireError::Tls(
            "the certificate is not for this node's key".into(),
        ));
    }
    let mut roots = RootCertStore::empty();
    roots
        .add(identity.ca_cert.clone())
        .map_err(|e| tls_error("reading the CA certificate", e))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| tls_error("building a verifier", e))?;
    verifier
        .verify_client_cert(&identity.cert, &[], UnixTime::now())
        .map_err(|e| tls_error("the certificate does not verify under the CA", e))?;
    Ok(())
}

/// What a node certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The node id from the certificate's `urn:apiary:node:` SAN; `None` in a certificate
    /// issued before ids were bound (such a peer is treated as having no identity).
    pub node_id: Option<u64>,
    pub name: String,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    /// When the holder should ask for a new certificate: once a third of its lifetime is left.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before + CLOCK_SLACK)
            .unwrap_or_default();
        self.not_after - lifetime / 3
    }
}

/// Reads a node certificate's id, name, serial and expiry.
pub fn cert_info(cert_der: &[u8]) -> Result<CertInfo, WireError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| tls_error("parsing a certificate", e))?;
    let node_id = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => uri
                    .strip_prefix(NODE_ID_URI_PREFIX)
                    .and_then(|id| id.parse().ok()),
                _ => None,
            })
        });
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let at = |time: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(time.timestamp()).unwrap_or(0))
    };
    Ok(CertInfo {
        node_id,
        name,
        serial: hex::encode(cert.raw_serial()),
        not_before: at(cert.validity().not_before),
        not_after: at(cert.validity().not_after),
    })
}

/// A node's certificate (signed by the cluster CA), its key, and the CA certificate; while the
/// CA is rotated, one more CA is trusted besides it.
#[derive(Clone)]
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key_pkcs8: Vec<u8>,
    pub ca_cert: CertificateDer<'static>,
    pub also_trusted: Vec<CertificateDer<'static>>,
}

impl Identity {
    pub fn new(cert: Vec<u8>, key_pkcs8: Vec<u8>, ca_cert: Vec<u8>) -> Self {
        Identity {
            cert: cert.into(),
            key_pkcs8,
            ca_cert: ca_cert.into(),
            also_trusted: Vec::new(),
        }
    }

    /// The same identity, trusting peers of `cas` too (during a CA rotation).
    pub fn trusting(mut self, cas: impl IntoIterator<Item = Vec<u8>>) -> Self {
        self.also_trusted = cas.into_iter().map(CertificateDer::from).collect();
        self
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone(), self.ca_cert.clone()]
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, WireError> {
        let mut roots = RootCertStore::empty();
        for ca in std::iter::once(&self.ca_cert).chain(&self.also_trusted) {
            roots
                .add(ca.clone())
                .map_err(|e| tls_error("adding the cluster CA to the trust store", e))?;
        }
        Ok(Arc::new(roots))
    }

    /// Server side: clients may present no certificate (they can then only ask to join), but a
    /// certificate they do present must chain to the cluster CA.
    pub(crate) fn server_config(&self) -> Result<rustls::ServerConfig, WireError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| tls_error("building the client verifier", e))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("selecting TLS 1.3", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain(), self.key())
            .map_err(|e| tls_error("loading the node certificate", e))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// Client side between members: both ends prove membership with the cluster CA.
    pub(crate) fn client_config(&self) -> Result<rustls::ClientConfig, WireError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| tls_error("selecting TLS 1.3", e))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain(), self.key())
            .map_err(|e| tls_error("loading the node certificate", e))?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }
}

/// Client side of a join: no client certificate yet, and the server is trusted only if its
/// chain ends in the CA whose fingerprint the join token carries.
pub(crate) fn join_client_config(
    ca_fingerprint: [u8; 32],
) -> Result<rustls::ClientConfig, WireError> {
    let verifier = PinnedCaVerifier {
        ca_fingerprint,
        provider: provider(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error("selecting TLS 1.3", e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

#[derive(Debug)]
struct PinnedCaVerifier {
    ca_fingerprint: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|cert| fingerprint(cert) == self.ca_fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the peer's CA does not match the join token's CA fingerprint".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a new node needs to join: which CA to trust (its fingerprint) and a shared secret that
/// proves the operator let it in. Printed as `apiary1.<ca sha256 hex>.<secret hex>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_fingerprint: [u8; 32],
    pub secret: [u8; 16],
}

impl JoinToken {
    pub fn new(ca_fingerprint: [u8; 32]) -> Self {
        JoinToken {
            ca_fingerprint,
            secret: rand::random(),
        }
    }

    /// Constant-time comparison of a presented secret with ours.
    pub fn secret_matches(&self, presented: &[u8]) -> bool {
        presented.len() == self.secret.len()
            && presented
                .iter()
                .zip(self.secret.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "apiary1.{}.{}",
            hex::encode(self.ca_fingerprint),
            hex::encode(self.secret)
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret by accident.
        write!(
            f,
            "JoinToken(ca {}…)",
            &hex::encode(self.ca_fingerprint)[..12]
        )
    }
}

impl FromStr for JoinToken {
    type Err = WireError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            WireError::BadToken(format!(
                "{why}; a join token looks like apiary1.<64 hex digits>.<32 hex digits> \
                 (see DATA_DIR/join-token on a member node)"
            ))
        };
        let mut parts = text.trim().split('.');
        let (Some("apiary1"), Some(fp), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("the token does not have the form apiary1.CA.SECRET"));
        };
        let mut token = JoinToken {
            ca_fingerprint: [0; 32],
            secret: [0; 16],
        };
        hex::decode_to_slice(fp, &mut token.ca_fingerprint)
            .map_err(|_| bad("the CA fingerprint is not 64 hex digits"))?;
        hex::decode_to_slice(secret, &mut token.secret)
            .map_err(|_| bad("the secret is not 32 hex digits"))?;
        Ok(token)
    }
}
