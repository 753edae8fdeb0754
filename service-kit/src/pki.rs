//! Certificates for the local stack and for operators: a cluster CA, server
//! certificates for vault replicas and the gateway, client certificates for
//! gateways. Generation uses rcgen; loading uses rustls' PEM parsers.
//!
//! Must never: write a private key readable by others, or build a TLS
//! configuration that accepts anything but TLS 1.3 and the given CA.

use std::path::Path;

use crate::files::Existing;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// PKI errors.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Gen(#[from] rcgen::Error),
    /// A PEM file is missing or unreadable.
    #[error("cannot read {path}: {msg}")]
    Read {
        /// The file (or "certificate PEM" for text passed in).
        path: String,
        /// What the reader or parser said.
        msg: String,
    },
    /// A certificate or key file could not be written.
    #[error(transparent)]
    Write(#[from] crate::files::FileError),
    /// rustls refused the certificates or keys.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built (no CA given).
    #[error("TLS client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct CertAndKey {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
}

/// A new self-signed CA.
pub fn new_ca(common_name: &str) -> Result<CertAndKey, PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Which way a leaf certificate is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server.
    Server,
    /// TLS client.
    Client,
    /// Both (a replica: serves gateways and peers, and calls peers).
    Peer,
}

/// A root store holding the cluster CA certificate(s) from PEM.
pub fn root_store(cluster_ca_pem: &str) -> Result<rustls::RootCertStore, PkiError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(cluster_ca_pem)? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// TLS 1.3 server config that presents `identity` and requires a client
/// certificate from the cluster CA, offering `alpn`. Shared by the gateway
/// listener and the replica peer port.
pub fn mtls_server_config(
    identity: &CertAndKey,
    cluster_ca_pem: &str,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, PkiError> {
    let provider = crypto_provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(root_store(cluster_ca_pem)?),
        provider.clone(),
    )
    .build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&identity.cert_pem)?, key(&identity.key_pem)?)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// TLS 1.3 client config that trusts only the cluster CA and presents
/// `identity`, offering `alpn`. Shared by the gateway's vault links and the
/// replicas' peer links.
pub fn mtls_client_config(
    identity: &CertAndKey,
    cluster_ca_pem: &str,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, PkiError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(root_store(cluster_ca_pem)?)
        .with_client_auth_cert(certs(&identity.cert_pem)?, key(&identity.key_pem)?)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// DNS name every replica certificate carries; replica-to-replica links
/// accept only peers whose certificate has it (gateway certificates do not).
pub const REPLICA_ROLE_NAME: &str = "replica.bkv.internal";

/// Whether a DER certificate (already verified against the cluster CA)
/// carries the replica role name.
pub fn has_replica_role(der: &[u8]) -> bool {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value
        .general_names
        .iter()
        .any(|n| matches!(n, GeneralName::DNSName(d) if *d == REPLICA_ROLE_NAME))
}

/// The names (DNS names and IP addresses, as text) a PEM certificate's
/// first certificate is valid for.
pub fn names(cert_pem: &str) -> Result<Vec<String>, PkiError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let der = certs(cert_pem)?
        .into_iter()
        .next()
        .ok_or_else(|| PkiError::Read {
            path: "certificate PEM".into(),
            msg: "no certificate in it".into(),
        })?;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).map_err(|e| PkiError::Read {
        path: "certificate PEM".into(),
        msg: e.to_string(),
    })?;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

/// A leaf certificate signed by `ca`, valid for `names` (DNS names or IPs).
pub fn issue(
    ca: &CertAndKey,
    common_name: &str,
    names: &[&str],
    usage: Usage,
) -> Result<CertAndKey, PkiError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.extended_key_usages = match usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::Peer => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes a certificate and key as `<stem>.pem` and `<stem>.key` (key
/// 0600, refused if it exists: a key is made once; the certificate is
/// public and written after the key).
pub fn write(dir: &Path, stem: &str, ck: &CertAndKey) -> Result<(), PkiError> {
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}.key"));
    crate::files::write_private(&key, ck.key_pem.as_bytes(), Existing::Refuse)?;
    crate::files::write_public(&cert, ck.cert_pem.as_bytes())?;
    Ok(())
}

/// Reads `<stem>.pem` and `<stem>.key`.
pub fn read(dir: &Path, stem: &str) -> Result<CertAndKey, PkiError> {
    let rd = |p: std::path::PathBuf| {
        std::fs::read_to_string(&p).map_err(|e| PkiError::Read {
            path: p.display().to_string(),
            msg: e.to_string(),
        })
    };
    Ok(CertAndKey {
        cert_pem: rd(dir.join(format!("{stem}.pem")))?,
        key_pem: rd(dir.join(format!("{stem}.key")))?,
    })
}

/// Parses PEM certificates.
pub fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Read {
            path: "certificate PEM".into(),
            msg: e.to_string(),
        })
}

/// Parses a PEM private key.
pub fn key(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Read {
        path: "private key PEM".into(),
        msg: e.to_string(),
    })
}

pub use crate::tls::crypto_provider;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rustls::crypto::{aws_lc_rs, CryptoProvider};
    use rustls::NamedGroup;
    use std::sync::Arc;

    /// Runs a TLS handshake in memory; returns the group both sides agreed
    /// on, or the first error either side raised.
    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> Result<NamedGroup, rustls::Error> {
        let name: rustls_pki_types::ServerName<'static> = "localhost".try_into().unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut s = rustls::ServerConnection::new(Arc::new(server))?;
        let mut buf = Vec::new();
        for _ in 0..10 {
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
            buf.clear();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            buf.clear();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
        }
        let (cg, sg) = (
            c.negotiated_key_exchange_group().map(|g| g.name()),
            s.negotiated_key_exchange_group().map(|g| g.name()),
        );
        assert_eq!(cg, sg);
        Ok(cg.unwrap())
    }

    struct Pair {
        ca: CertAndKey,
        server: CertAndKey,
        client: CertAndKey,
    }

    fn pair() -> Pair {
        let ca = new_ca("test CA").unwrap();
        let server = issue(&ca, "server", &["localhost"], Usage::Peer).unwrap();
        let client = issue(&ca, "client", &["gateway.test"], Usage::Client).unwrap();
        Pair { ca, server, client }
    }

    fn client_on(p: &Pair, provider: Arc<CryptoProvider>) -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(root_store(&p.ca.cert_pem).unwrap())
            .with_client_auth_cert(
                certs(&p.client.cert_pem).unwrap(),
                key(&p.client.key_pem).unwrap(),
            )
            .unwrap()
    }

    #[test]
    fn mutual_tls_agrees_on_the_post_quantum_hybrid() {
        let p = pair();
        let client = mtls_client_config(&p.client, &p.ca.cert_pem, b"t").unwrap();
        let server = mtls_server_config(&p.server, &p.ca.cert_pem, b"t").unwrap();
        assert_eq!(
            handshake(client, server).unwrap(),
            NamedGroup::X25519MLKEM768
        );
    }

    #[test]
    fn a_peer_without_the_hybrid_falls_back_to_x25519() {
        let p = pair();
        let client = client_on(&p, crate::tls::classical_provider());
        let server = mtls_server_config(&p.server, &p.ca.cert_pem, b"t").unwrap();
        assert_eq!(handshake(client, server).unwrap(), NamedGroup::X25519);
    }

    #[test]
    fn a_peer_offering_only_nist_curves_is_refused() {
        let p = pair();
        let p256_only = Arc::new(CryptoProvider {
            kx_groups: vec![aws_lc_rs::kx_group::SECP256R1],
            ..aws_lc_rs::default_provider()
        });
        let client = client_on(&p, p256_only);
        let server = mtls_server_config(&p.server, &p.ca.cert_pem, b"t").unwrap();
        let err = handshake(client, server).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::PeerIncompatible(_) | rustls::Error::AlertReceived(_)
            ),
            "{err:?}"
        );
    }
}
