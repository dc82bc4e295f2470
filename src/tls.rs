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

// ---------------------------------------------------------------------------
// TLS to upstreams (`proxy_pass: https://...`).

use crate::compile::upstream::UpstreamTls;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream group's TLS client settings, built when the configuration is
/// compiled: the roots (`tls.ca`, else the webpki roots), verification
/// (`verify: false` must be written to turn it off), a client certificate for
/// mTLS, and ALPN (h2 for `protocol: http2`, else http/1.1).
pub fn client_config(tls: &UpstreamTls, http2: bool) -> Result<Arc<rustls::ClientConfig>, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let builder = if tls.verify {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca {
            Some(ca) => {
                for cert in read_chain(ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("tls.ca {}: {e}", ca.display()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification))
    };
    let mut config = match (&tls.certificate, &tls.key) {
        (Some(cert), Some(key)) => {
            let pair = load_certified_key(cert, key)?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read the key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(pair.cert.clone(), key_der)
                .map_err(|e| format!("tls client certificate {}: {e}", cert.display()))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Arc::new(config))
}

/// The name an upstream's certificate is checked against and sent as SNI:
/// `tls.sni`, else the proxy_pass host (the upstream's name, or the host of a
/// literal address). An IP address is checked against the certificate's IP
/// names and sends no SNI.
pub fn upstream_server_name(
    tls: &UpstreamTls,
    proxy_host: &str,
) -> Result<ServerName<'static>, String> {
    let name = match &tls.sni {
        Some(s) => s.clone(),
        None => match proxy_host.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => {
                h.trim_start_matches('[').trim_end_matches(']').to_string()
            }
            _ => proxy_host.to_string(),
        },
    };
    ServerName::try_from(name.clone())
        .map_err(|_| format!("tls: {name:?} cannot be a TLS server name; set tls.sni"))
}

/// Accepts any upstream certificate: only with `verify: false`.
#[derive(Debug)]
struct NoVerification;

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Dials a peer (the URI's address) and speaks TLS to it with the group's
/// server name: the pooled client's connector for `https` upstreams.
#[derive(Clone)]
pub struct UpstreamConnector {
    tls: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    connect_timeout: Duration,
}

impl UpstreamConnector {
    pub fn new(
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
        connect_timeout: Duration,
    ) -> Self {
        UpstreamConnector {
            tls: tokio_rustls::TlsConnector::from(config),
            name,
            connect_timeout,
        }
    }
}

impl tower_service::Service<http::Uri> for UpstreamConnector {
    type Response = UpstreamTlsStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamTlsStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("upstream URI without a host")?;
            let port = uri.port_u16().unwrap_or(443);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let connect = tokio::net::TcpStream::connect((host, port));
            let tcp = tokio::time::timeout(this.connect_timeout, connect)
                .await
                .map_err(|_| format!("connect_timeout ({:?})", this.connect_timeout))??;
            let _ = tcp.set_nodelay(true);
            let tls = this
                .tls
                .connect(this.name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            Ok(UpstreamTlsStream(TokioIo::new(tls)))
        })
    }
}

/// A TLS connection to an upstream, as hyper's client drives it.
pub struct UpstreamTlsStream(TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>);

impl Connection for UpstreamTlsStream {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.0.inner().get_ref().1.alpn_protocol() == Some(b"h2") {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl hyper::rt::Read for UpstreamTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
}

// ---------------------------------------------------------------------------
// Certificate expiry, for `ginx -t` warnings. A few lines of DER walking
// (Certificate → tbsCertificate → validity → notAfter) rather than a full
// X.509 parser dependency for one field.

/// One DER element: (tag, contents, rest).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The certificate's notAfter, in seconds since the Unix epoch.
pub fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert, _) = der_element(der)?; // Certificate SEQUENCE
    let (_, tbs, _) = der_element(cert)?; // tbsCertificate SEQUENCE
    let mut fields = tbs;
    let (tag, _, rest) = der_element(fields)?;
    if tag == 0xa0 {
        fields = rest; // [0] version
    }
    for _ in 0..3 {
        fields = der_element(fields)?.2; // serialNumber, signature, issuer
    }
    let (_, validity, _) = der_element(fields)?;
    let (_, _, after) = der_element(validity)?; // notBefore
    let (tag, time, _) = der_element(after)?;
    let text = std::str::from_utf8(time).ok()?;
    let digits = |s: &str| s.parse::<i64>().ok();
    let (year, rest) = match tag {
        0x17 => {
            // UTCTime: YYMMDDHHMMSSZ, years 1950-2049.
            let yy = digits(text.get(0..2)?)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
        }
        0x18 => (digits(text.get(0..4)?)?, text.get(4..)?), // GeneralizedTime
        _ => return None,
    };
    let month = digits(rest.get(0..2)?)?;
    let day = digits(rest.get(2..4)?)?;
    let hour = digits(rest.get(4..6)?)?;
    let minute = digits(rest.get(6..8)?)?;
    let second = digits(rest.get(8..10)?)?;
    Some(days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second)
}

/// (year, month, day) to days since 1970-01-01: Howard Hinnant's algorithm.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A warning when the leaf certificate has expired, for `ginx -t` and at load.
pub fn expiry_warning(key: &CertifiedKey, file: &str) -> Option<String> {
    let leaf = key.end_entity_cert().ok()?;
    let after = not_after(leaf)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    (after < now).then(|| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(after.max(0) as u64);
        format!(
            "the certificate {file} expired on {}",
            httpdate::fmt_http_date(t)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11017);
        assert_eq!(days_from_civil(2026, 11, 24), 20781);
    }

    #[test]
    fn reads_not_after_of_real_certificates() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["x.test".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 7, 9);
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            not_after(cert.der()),
            Some(days_from_civil(2031, 7, 9) * 86400)
        );
        params.not_after = rcgen::date_time_ymd(2061, 2, 3); // GeneralizedTime from 2050 on
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            not_after(cert.der()),
            Some(days_from_civil(2061, 2, 3) * 86400)
        );
        assert_eq!(not_after(b"\x30\x03\x02\x01"), None);
    }
}
