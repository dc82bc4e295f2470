//! TLS at the edge: certificates are loaded and checked when the
//! configuration is compiled (a missing, unreadable or mismatched pair is a
//! configuration error naming the file), and each TLS listen address gets
//! one rustls `ServerConfig` whose resolver picks the certificate by SNI in
//! the same order as server names, falling back to the default server's.
//!
//! rustls with the `ring` provider; TLS 1.2 and 1.3 only (1.0 and 1.1 are
//! never offered); ALPN offers h2 and http/1.1.

use crate::compile::hosts::HostTable;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::Path;
use std::sync::Arc;

/// The crypto provider ginx uses everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `protocols:` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

impl TlsVersion {
    pub fn parse(text: &str) -> Result<TlsVersion, String> {
        match text {
            "TLSv1.2" => Ok(TlsVersion::V1_2),
            "TLSv1.3" => Ok(TlsVersion::V1_3),
            "TLSv1" | "TLSv1.1" | "SSLv3" | "SSLv2" => Err(format!(
                "protocols: {text} is not offered by ginx (it is broken or deprecated); use TLSv1.2 and/or TLSv1.3"
            )),
            other => Err(format!("protocols: unknown protocol {other:?}; expected TLSv1.2 or TLSv1.3")),
        }
    }

    fn rustls(self) -> &'static rustls::SupportedProtocolVersion {
        match self {
            TlsVersion::V1_2 => &rustls::version::TLS12,
            TlsVersion::V1_3 => &rustls::version::TLS13,
        }
    }
}

/// A server's certificate chain and key, ready to serve.
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub key: Arc<CertifiedKey>,
    pub versions: Vec<TlsVersion>,
}

/// Read a PEM chain (leaf first) and a PEM key (PKCS#1, PKCS#8 or SEC1) and
/// check that they belong together. Errors name the file and say what is wrong.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, String> {
    let chain = read_chain(cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| match e {
        rustls::pki_types::pem::Error::Io(io) => format!("cannot read the key {}: {io}", key_path.display()),
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{} holds no private key (expected PEM: PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
            key_path.display()
        ),
        other => format!("cannot parse the key {}: {other}", key_path.display()),
    })?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "the key {} does not belong to the certificate {}",
            key_path.display(),
            cert_path.display()
        ),
        other => format!("the key {} cannot be used: {other}", key_path.display()),
    })
}

/// A PEM certificate chain; at least one certificate.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read the certificate {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot parse the certificate {}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected PEM: BEGIN CERTIFICATE)",
            path.display()
        ));
    }
    Ok(chain)
}

/// Does the leaf certificate cover `name`? For `*.example.com` a name one
/// level below is checked, for `.example.com` both forms. Regex names are
/// not checked.
pub fn covers(key: &CertifiedKey, name: &str) -> bool {
    let Ok(leaf) = key.end_entity_cert() else {
        return false;
    };
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(leaf) else {
        return false;
    };
    let check = |n: &str| {
        ServerName::try_from(n.to_string())
            .map(|sn| rustls::client::verify_server_name(&parsed, &sn).is_ok())
            .unwrap_or(false)
    };
    if let Some(rest) = name.strip_prefix("*.") {
        check(&format!("ginx-check.{rest}"))
    } else if let Some(rest) = name.strip_prefix('.') {
        check(rest) && check(&format!("ginx-check.{rest}"))
    } else if name.ends_with(".*") || name.starts_with('~') || name.is_empty() {
        true
    } else {
        check(name)
    }
}

/// Picks the certificate of the server whose name matches the SNI, in the
/// order of server names; without SNI, or for a server without its own
/// certificate, the default server's.
#[derive(Debug)]
pub struct SniResolver {
    hosts: Arc<HostTable>,
    certs: Vec<Option<Arc<CertifiedKey>>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let server = self.hosts.find(&sni.to_ascii_lowercase()).server;
        Some(
            self.certs
                .get(server)
                .cloned()
                .flatten()
                .unwrap_or_else(|| self.default.clone()),
        )
    }
}

/// The rustls configuration of one TLS listen address. `certs[i]` is the
/// certificate of the address's server `i`; `default` indexes the default
/// server, whose certificate and protocols apply when no name matches.
pub fn server_config(
    hosts: Arc<HostTable>,
    certs: Vec<Option<ServerCert>>,
    default: usize,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let Some(Some(default_cert)) = certs.get(default).cloned() else {
        return Err(
            "the default server of a tls address needs tls: certificate and key".to_string(),
        );
    };
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        default_cert.versions.iter().map(|v| v.rustls()).collect();
    let resolver = SniResolver {
        hosts,
        certs: certs.into_iter().map(|c| c.map(|c| c.key)).collect(),
        default: default_cert.key.clone(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("tls protocols: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
