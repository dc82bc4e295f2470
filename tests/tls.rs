//! TLS at the edge with certificates made by rcgen at test time: SNI picks
//! each server's certificate (the default one without SNI or for an unknown
//! name), ALPN negotiates h2 and HTTP/2 is served, HTTP/1.1 clients still
//! work, `protocols` is enforced, and bad certificate files are
//! configuration errors naming the file.

mod common;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A test CA and the PEM files of leaf certificates it signed.
struct Pki {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ginx test CA");
        Pki {
            ca: rcgen::CertifiedIssuer::self_signed(params, ca_key).unwrap(),
        }
    }

    /// A leaf for `names`, with a key of `alg`; returns (cert PEM, key PEM, cert DER).
    fn leaf(
        &self,
        names: &[&str],
        alg: &'static rcgen::SignatureAlgorithm,
    ) -> (String, String, Vec<u8>) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// A client verifier that accepts any certificate and remembers it: the tests
/// look at which certificate was served, not whether a client would trust it.
#[derive(Debug)]
struct Record(Arc<Mutex<Vec<Vec<u8>>>>);

impl rustls::client::danger::ServerCertVerifier for Record {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.0.lock().unwrap().push(end_entity.to_vec());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let p = rustls::crypto::ring::default_provider();
        rustls::crypto::verify_tls12_signature(m, c, d, &p.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let p = rustls::crypto::ring::default_provider();
        rustls::crypto::verify_tls13_signature(m, c, d, &p.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

struct Client {
    config: Arc<rustls::ClientConfig>,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
}

fn client(alpn: &[&[u8]], versions: &[&'static rustls::SupportedProtocolVersion]) -> Client {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(Record(seen.clone())))
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Client {
        config: Arc::new(config),
        seen,
    }
}

async fn connect(
    c: &Client,
    addr: std::net::SocketAddr,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    tokio::time::timeout(
        common::IO_LIMIT,
        tokio_rustls::TlsConnector::from(c.config.clone()).connect(name, tcp),
    )
    .await
    .expect("handshake in time")
}

/// GET over HTTP/1.1 on a TLS connection; returns the body.
async fn get_h1(c: &Client, addr: std::net::SocketAddr, sni: &str, host: &str) -> String {
    let mut tls = connect(c, addr, sni).await.expect("handshake");
    tls.write_all(
        format!("GET /who HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(common::IO_LIMIT, tls.read_to_end(&mut out))
        .await
        .unwrap();
    let r = common::parse_responses(&out).remove(0);
    r.text()
}

/// An HTTP/2 client on a TLS connection (its connection task spawned).
async fn h2_sender(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

fn sites(pki: &Pki) -> (Vec<(String, String)>, [Vec<u8>; 3]) {
    let (dc, dk, dder) = pki.leaf(&["default.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let (ac, ak, ader) = pki.leaf(&["a.test", "*.a.test"], &rcgen::PKCS_ECDSA_P384_SHA384);
    let (bc, bk, bder) = pki.leaf(&["b.test"], &rcgen::PKCS_ED25519);
    let files = vec![
        ("certs/default.pem".to_string(), dc),
        ("certs/default.key".to_string(), dk),
        ("certs/a.pem".to_string(), ac),
        ("certs/a.key".to_string(), ak),
        ("certs/b.pem".to_string(), bc),
        ("certs/b.key".to_string(), bk),
    ];
    (files, [dder, ader, bder])
}

const TLS_SITES: &str = r#"
servers:
  - listen: ["127.0.0.1:{p0} tls default_server"]
    server_name: [default.test]
    tls: { certificate: certs/default.pem, key: certs/default.key }
    locations:
      - location: /
        return: 200 "default $scheme $server_name"
  - listen: ["127.0.0.1:{p0} tls"]
    server_name: [a.test, "*.a.test"]
    tls: { certificate: certs/a.pem, key: certs/a.key }
    add_header: { Strict-Transport-Security: "max-age=31536000" }
    locations:
      - location: /
        return: 200 "a $scheme $http_x_forwarded_proto"
  - listen: ["127.0.0.1:{p0} tls"]
    server_name: [b.test]
    tls: { certificate: certs/b.pem, key: certs/b.key, protocols: [TLSv1.3] }
    locations:
      - location: /
        return: 200 "b $scheme"
  # Plain HTTP: redirect to HTTPS.
  - listen: ["127.0.0.1:{p1}"]
    locations:
      - location: /
        return: 301 https://$host$request_uri
"#;

async fn start_sites() -> (common::Gateway, [Vec<u8>; 3]) {
    let pki = Pki::new();
    let (files, ders) = sites(&pki);
    let mut all: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    all.push(("ginx.yaml", TLS_SITES));
    (common::start(&all, 2).await, ders)
}

#[tokio::test]
async fn sni_picks_each_certificate_and_the_default_without_it() {
    let (gw, [default_der, a_der, b_der]) = start_sites().await;
    let a = gw.addr(0);
    let c = client(
        &[b"http/1.1"],
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    );

    assert_eq!(get_h1(&c, a, "a.test", "a.test").await, "a https ");
    assert_eq!(get_h1(&c, a, "www.a.test", "www.a.test").await, "a https ");
    assert_eq!(get_h1(&c, a, "b.test", "b.test").await, "b https");
    assert_eq!(
        get_h1(&c, a, "unknown.test", "unknown.test").await,
        "default https default.test"
    );
    // An IP address as the name: rustls sends no SNI.
    assert_eq!(
        get_h1(&c, a, "127.0.0.1", "default.test").await,
        "default https default.test"
    );
    let seen = c.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            a_der.clone(),
            a_der,
            b_der,
            default_der.clone(),
            default_der
        ]
    );
    gw.stop().await;
}

#[tokio::test]
async fn http2_is_negotiated_and_served_and_headers_say_https() {
    let (gw, _) = start_sites().await;
    let c = client(&[b"h2", b"http/1.1"], &[&rustls::version::TLS13]);
    let tls = connect(&c, gw.addr(0), "a.test").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut sender = h2_sender(tls).await;
    for _ in 0..3 {
        let req = http::Request::builder()
            .uri("https://a.test/x")
            .header("x-forwarded-proto", "spoofed")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(
            resp.headers()["strict-transport-security"],
            "max-age=31536000"
        );
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"a https spoofed");
    }
    gw.stop().await;
}

/// ginx's own HTTP/1 side serves bodiless requests and hands the
/// connection to hyper at the first with a body (src/serve/h1.rs): over
/// TLS too, with ALPN http/1.1 or none; and an HTTP/2 preface without ALPN
/// is handed to hyper's HTTP/2 server.
#[tokio::test]
async fn http1_over_tls_carries_on_across_the_handover_and_a_bare_h2_preface_is_served() {
    let (gw, _) = start_sites().await;
    let alpns: [&[&[u8]]; 2] = [&[b"http/1.1"], &[]];
    for alpn in alpns {
        let c = client(alpn, &[&rustls::version::TLS13]);
        let mut tls = connect(&c, gw.addr(0), "a.test").await.unwrap();
        tls.write_all(
            b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n\
              POST /2 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc\
              GET /3 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(common::IO_LIMIT, tls.read_to_end(&mut out))
            .await
            .expect("closed in time");
        let all = common::parse_responses(&out);
        let answers: Vec<(u16, String)> = all.iter().map(|r| (r.status, r.text())).collect();
        assert_eq!(
            answers,
            vec![(200, "a https ".to_string()); 3],
            "ALPN {alpn:?}: {}",
            String::from_utf8_lossy(&out)
        );
    }
    let c = client(&[], &[&rustls::version::TLS13]);
    let tls = connect(&c, gw.addr(0), "a.test").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let mut sender = h2_sender(tls).await;
    let req = http::Request::builder()
        .uri("https://a.test/x")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(common::IO_LIMIT, sender.send_request(req))
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"a https ");
    gw.stop().await;
}

/// A TLS connection that hyper serves after the handover is not parked
/// (only a plain connection's socket can wait in the parking lot): idle
/// for longer than a plain one waits before parking, it is still open,
/// and answers the next request.
#[tokio::test]
async fn a_tls_connection_served_by_hyper_stays_open_while_idle() {
    let (gw, _) = start_sites().await;
    let c = client(&[b"http/1.1"], &[&rustls::version::TLS13]);
    let mut tls = connect(&c, gw.addr(0), "a.test").await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let requests: [&[u8]; 2] = [
        b"POST /1 HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\n\r\nabc",
        b"GET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n",
    ];
    for (i, request) in requests.iter().enumerate() {
        if i > 0 {
            // A plain connection idle this long has been parked.
            tokio::time::sleep(ginx::serve::conn::PARK_AFTER + Duration::from_millis(700)).await;
        }
        tls.write_all(request).await.unwrap();
        let deadline = tokio::time::Instant::now() + common::IO_LIMIT;
        while common::parse_responses(&out).len() <= i {
            let n = tokio::time::timeout_at(deadline, tls.read(&mut buf))
                .await
                .expect("answered in time")
                .unwrap_or(0);
            assert!(
                n > 0,
                "closed after {i} answers: {}",
                String::from_utf8_lossy(&out)
            );
            out.extend_from_slice(&buf[..n]);
        }
    }
    let statuses: Vec<u16> = common::parse_responses(&out)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [200, 200]);
    gw.stop().await;
}

#[tokio::test]
async fn protocols_are_enforced_and_http_redirects_to_https() {
    let (gw, _) = start_sites().await;
    // The default server allows 1.2 and 1.3: a 1.2-only client is served.
    let tls12 = client(&[b"http/1.1"], &[&rustls::version::TLS12]);
    assert_eq!(
        get_h1(&tls12, gw.addr(0), "a.test", "a.test").await,
        "a https "
    );
    // Redirect to HTTPS from the plain listener.
    let r = common::get(gw.addr(1), "shop.test", "/cart?id=1").await;
    assert_eq!(
        (r.status, r.header("location")),
        (301, Some("https://shop.test/cart?id=1"))
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_tls_13_only_default_refuses_tls_12() {
    let pki = Pki::new();
    let (c, k, _) = pki.leaf(&["only13.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let yaml = r#"
servers:
  - listen: ["127.0.0.1:{p0} tls"]
    tls: { certificate: c.pem, key: c.key, protocols: [TLSv1.3] }
    locations: [{ location: /, return: 204 }]
"#;
    let gw = common::start(&[("c.pem", &c), ("c.key", &k), ("ginx.yaml", yaml)], 1).await;
    let tls12 = client(&[b"http/1.1"], &[&rustls::version::TLS12]);
    assert!(connect(&tls12, gw.addr(0), "only13.test").await.is_err());
    let tls13 = client(&[b"http/1.1"], &[&rustls::version::TLS13]);
    assert!(connect(&tls13, gw.addr(0), "only13.test").await.is_ok());
    gw.stop().await;
}

#[test]
fn bad_certificate_files_are_configuration_errors() {
    let pki = Pki::new();
    let (c1, _k1, _) = pki.leaf(&["one.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let (_c2, k2, _) = pki.leaf(&["two.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let yaml = r#"servers:
  - listen: ["127.0.0.1:8443 tls"]
    server_name: [one.test, other.test]
    tls: { certificate: one.pem, key: two.key }
    locations: [{ location: /, return: 204 }]
  - listen: ["127.0.0.1:8444 tls"]
    tls: { certificate: missing.pem, key: two.key }
    locations: [{ location: /, return: 204 }]
  - listen: ["127.0.0.1:8445 tls"]
    tls: { certificate: one.pem, key: one.pem, protocols: [TLSv1.1] }
    locations: [{ location: /, return: 204 }]
"#;
    let dir = common::write_files(
        &[("one.pem", &c1), ("two.key", &k2), ("ginx.yaml", yaml)],
        &[],
    );
    let out = common::run_ginx(dir.path(), &["-t"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let path = |f: &str| dir.path().join(f).display().to_string();
    assert!(
        err.contains(&format!(
            "ginx.yaml:4:25: tls: the key {} does not belong to the certificate {}",
            path("two.key"),
            path("one.pem")
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "ginx.yaml:7:25: tls: cannot read the certificate {}",
            path("missing.pem")
        )),
        "{err}"
    );
    assert!(
        err.contains("ginx.yaml:10:60: protocols: TLSv1.1 is not offered by ginx"),
        "{err}"
    );
    assert!(err.contains("holds no private key"), "{err}");
    assert!(
        !err.contains("the default server of a tls address"),
        "a failed certificate is reported once: {err}"
    );
}

#[test]
fn a_tls_address_needs_a_certificate_on_its_default_server() {
    let yaml = "servers:\n  - listen: [\"127.0.0.1:8443 tls\"]\n    locations: [{ location: /, return: 204 }]\n";
    let dir = common::write_files(&[("ginx.yaml", yaml)], &[]);
    let out = common::run_ginx(dir.path(), &["-t"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("ginx.yaml:2:14: listen 127.0.0.1:8443 tls: the default server of a tls address needs tls: certificate and key"),
        "{err}"
    );
}

#[test]
fn names_the_certificate_does_not_cover_are_warnings() {
    let pki = Pki::new();
    let (c, k, _) = pki.leaf(&["one.test"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let yaml = r#"servers:
  - listen: ["127.0.0.1:8443 tls"]
    server_name: [one.test, other.test]
    tls: { certificate: one.pem, key: one.key }
    locations: [{ location: /, return: 204 }]
"#;
    let dir = common::write_files(
        &[("one.pem", &c), ("one.key", &k), ("ginx.yaml", yaml)],
        &[],
    );
    let out = common::run_ginx(dir.path(), &["-t"]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ginx: warning: ginx.yaml:3:29: server name \"other.test\" is not covered by the certificate one.pem"),
        "{err}"
    );
    assert!(!err.contains("\"one.test\""), "{err}");
}

/// A leaf certificate for `names` from `pki`, as a TLS server takes it.
fn server_certificate(
    pki: &Pki,
    names: &[&str],
) -> (
    Vec<CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let (cert_pem, key_pem, _) = pki.leaf(names, &rcgen::PKCS_ECDSA_P256_SHA256);
    let chain = rustls::pki_types::pem::PemObject::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls::pki_types::pem::PemObject::from_pem_slice(key_pem.as_bytes()).unwrap();
    (chain, key)
}

/// An HTTPS upstream answering "NAME <path>"; with `client_ca`, it requires a
/// client certificate signed by that CA.
async fn tls_upstream(
    name: &'static str,
    pki: &Pki,
    cert_names: &[&str],
    client_ca: Option<&Pki>,
) -> std::net::SocketAddr {
    let (chain, key) = server_certificate(pki, cert_names);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.ca.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let version = if req.version() == http::Version::HTTP_2 {
                            " h2"
                        } else {
                            ""
                        };
                        let body = format!("{name} {}{version}", req.uri().path());
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    },
                );
                // HTTP/1.1 or HTTP/2, as ALPN chose.
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_tls_is_verified_by_default_and_mtls_works() {
    let pki = Pki::new();
    let other = Pki::new();
    let secure = tls_upstream("secure", &pki, &["secure.test"], None).await;
    let mtls = tls_upstream("mtls", &pki, &["mtls.test"], Some(&pki)).await;
    let (client_cert, client_key, _) = pki.leaf(&["ginx-client"], &rcgen::PKCS_ECDSA_P256_SHA256);
    let yaml = format!(
        r#"
upstreams:
  secure.test: {{ servers: ["{secure}"], tls: {{ ca: ca.pem }} }}
  renamed: {{ servers: ["{secure}"], tls: {{ ca: ca.pem, sni: secure.test }} }}
  wrong.test: {{ servers: ["{secure}"], tls: {{ ca: ca.pem }} }}
  untrusted: {{ servers: ["{secure}"], tls: {{ ca: other-ca.pem, sni: secure.test }} }}
  public-roots: {{ servers: ["{secure}"], tls: {{ sni: secure.test }} }}
  unverified: {{ servers: ["{secure}"], tls: {{ verify: false }} }}
  mtls.test: {{ servers: ["{mtls}"], tls: {{ ca: ca.pem, certificate: client.pem, key: client.key }} }}
  no-client-cert: {{ servers: ["{mtls}"], tls: {{ ca: ca.pem, sni: mtls.test }} }}
  secure-h2: {{ servers: ["{secure}"], protocol: http2, tls: {{ ca: ca.pem, sni: secure.test }} }}
  checked: {{ servers: ["{secure}"], tls: {{ ca: ca.pem, sni: secure.test }}, health_check: {{ path: /h, interval: 50ms, fall: 1 }} }}
servers:
  - listen: ["127.0.0.1:{{p0}}"]
    locations:
      - {{ location: /secure/, proxy_pass: https://secure.test }}
      - {{ location: /renamed/, proxy_pass: https://renamed }}
      - {{ location: /wrong/, proxy_pass: https://wrong.test }}
      - {{ location: /untrusted/, proxy_pass: https://untrusted }}
      - {{ location: /public/, proxy_pass: https://public-roots }}
      - {{ location: /unverified/, proxy_pass: https://unverified }}
      - {{ location: /mtls/, proxy_pass: https://mtls.test }}
      - {{ location: /no-client-cert/, proxy_pass: https://no-client-cert }}
      - {{ location: /h2/, proxy_pass: https://secure-h2 }}
      - {{ location: /checked/, proxy_pass: https://checked }}
"#
    );
    let ca = pki.ca.pem();
    let other_ca = other.ca.pem();
    let gw = common::start(
        &[
            ("ca.pem", &ca),
            ("other-ca.pem", &other_ca),
            ("client.pem", &client_cert),
            ("client.key", &client_key),
            ("ginx.yaml", &yaml),
        ],
        1,
    )
    .await;
    let a = gw.addr(0);
    let answer = |path: &'static str| async move { common::answer(a, "x", path).await };
    assert_eq!(answer("/secure/x").await, (200, "secure /secure/x".into()));
    assert_eq!(
        answer("/renamed/x").await,
        (200, "secure /renamed/x".into()),
        "tls.sni sets the name checked"
    );
    assert_eq!(
        answer("/wrong/x").await.0,
        502,
        "a certificate for another name is refused"
    );
    assert_eq!(
        answer("/untrusted/x").await.0,
        502,
        "a certificate from another CA is refused"
    );
    assert_eq!(
        answer("/public/x").await.0,
        502,
        "the public roots do not trust the test CA"
    );
    assert_eq!(
        answer("/unverified/x").await,
        (200, "secure /unverified/x".into()),
        "verify: false, written out"
    );
    assert_eq!(
        answer("/mtls/x").await,
        (200, "mtls /mtls/x".into()),
        "the client certificate is offered"
    );
    assert_eq!(
        answer("/no-client-cert/x").await.0,
        502,
        "an upstream that requires mTLS refuses a client without one"
    );
    assert_eq!(
        answer("/h2/x").await,
        (200, "secure /h2/x h2".into()),
        "protocol: http2 over TLS negotiates h2 by ALPN"
    );
    // Health checks of a group reached with https:// speak TLS too: after
    // several intervals (fall: 1) the server is still in.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(
        answer("/checked/x").await,
        (200, "secure /checked/x".into()),
        "TLS health checks keep the server in"
    );
    gw.stop().await;
}

#[test]
fn an_expired_certificate_is_a_warning() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["old.test".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    let yaml = r#"servers:
  - listen: ["127.0.0.1:8443 tls"]
    server_name: [old.test]
    tls: { certificate: old.pem, key: old.key }
    locations: [{ location: /, return: 204 }]
"#;
    let dir = common::write_files(
        &[
            ("old.pem", &cert.pem()),
            ("old.key", &key.serialize_pem()),
            ("ginx.yaml", yaml),
        ],
        &[],
    );
    let out = common::run_ginx(dir.path(), &["-t"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "expiry warns, it does not fail the check"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ginx: warning: ginx.yaml:4:25: tls: the certificate old.pem expired on Wed, 01 Jan 2020 00:00:00 GMT"),
        "{err}"
    );
}

#[tokio::test]
async fn rsa_with_a_pkcs1_key_and_ecdsa_with_a_sec1_key_are_served() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let read = |f: &str| std::fs::read_to_string(fixtures.join(f)).unwrap();
    let yaml = r#"
servers:
  - listen: ["127.0.0.1:{p0} tls default_server"]
    server_name: [rsa.test]
    tls: { certificate: rsa.pem, key: rsa-pkcs1.key }
    locations: [{ location: /, return: 200 "rsa" }]
  - listen: ["127.0.0.1:{p0} tls"]
    server_name: [ec.test]
    tls: { certificate: ec.pem, key: ec-sec1.key }
    locations: [{ location: /, return: 200 "ec" }]
"#;
    let (rsa, rsa_key, ec, ec_key) = (
        read("rsa.pem"),
        read("rsa-pkcs1.key"),
        read("ec.pem"),
        read("ec-sec1.key"),
    );
    let gw = common::start(
        &[
            ("rsa.pem", &rsa),
            ("rsa-pkcs1.key", &rsa_key),
            ("ec.pem", &ec),
            ("ec-sec1.key", &ec_key),
            ("ginx.yaml", yaml),
        ],
        1,
    )
    .await;
    let c = client(
        &[b"http/1.1"],
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    );
    assert_eq!(get_h1(&c, gw.addr(0), "rsa.test", "rsa.test").await, "rsa");
    assert_eq!(get_h1(&c, gw.addr(0), "ec.test", "ec.test").await, "ec");
    let seen = c.seen.lock().unwrap().clone();
    let der = |pem: &str| -> Vec<u8> {
        rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|c: CertificateDer<'static>| c.to_vec())
            .unwrap()
    };
    assert_eq!(seen, vec![der(&rsa), der(&ec)]);
    gw.stop().await;
}

/// An HTTPS upstream written by hand: it counts the connections it accepts
/// and answers each request with its connection's number and method; with
/// `close_idle`, it ends a connection (close_notify, then FIN) once it has
/// been idle that long after an answer.
async fn counting_tls_upstream(
    pki: &Pki,
    close_idle: Option<std::time::Duration>,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (chain, key) = server_certificate(pki, &["count.test"]);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut pending = Vec::new();
                for _ in 0..1000 {
                    // One request head (these tests send no bodies).
                    let end = loop {
                        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        let read = match close_idle {
                            Some(idle) if pending.is_empty() => {
                                match tokio::time::timeout(idle, tls.read(&mut chunk)).await {
                                    Ok(r) => r,
                                    Err(_) => {
                                        let _ = tls.shutdown().await;
                                        return;
                                    }
                                }
                            }
                            _ => tls.read(&mut chunk).await,
                        };
                        match read {
                            Ok(0) | Err(_) => return,
                            Ok(k) => pending.extend_from_slice(&chunk[..k]),
                        }
                    };
                    let head = String::from_utf8_lossy(&pending[..end]).to_string();
                    pending.drain(..end);
                    let method = head.split(' ').next().unwrap_or("").to_string();
                    let body = format!("conn={n} {method}");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if tls.write_all(answer.as_bytes()).await.is_err() || tls.flush().await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn tls_upstream_connections_are_kept_and_a_closed_one_is_not_reused() {
    use std::sync::atomic::Ordering;
    let pki = Pki::new();
    let (kept, kept_accepted) = counting_tls_upstream(&pki, None).await;
    let idle = std::time::Duration::from_millis(100);
    let (closing, closing_accepted) = counting_tls_upstream(&pki, Some(idle)).await;
    let yaml = format!(
        r#"
upstreams:
  kept: {{ servers: ["{kept}"], tls: {{ ca: ca.pem, sni: count.test }} }}
  closing: {{ servers: ["{closing}"], tls: {{ ca: ca.pem, sni: count.test }} }}
servers:
  - listen: ["127.0.0.1:{{p0}}"]
    locations:
      - {{ location: /kept/, proxy_pass: https://kept }}
      - {{ location: /closing/, proxy_pass: https://closing }}
"#
    );
    let ca = pki.ca.pem();
    let gw = common::start(&[("ca.pem", &ca), ("ginx.yaml", &yaml)], 1).await;
    let a = gw.addr(0);
    // One TLS connection (one handshake) carries request after request.
    for _ in 0..10 {
        assert_eq!(
            common::answer(a, "x", "/kept/x").await,
            (200, "conn=1 GET".into())
        );
    }
    assert_eq!(kept_accepted.load(Ordering::SeqCst), 1);
    // An upstream that ended its idle connection with close_notify: the
    // kept one is seen to be closed and not used, even for a POST (which
    // would not be sent again after a failure on it).
    let r = common::send(a, "POST", "x", "/closing/x", b"").await;
    let text = |r: &common::Resp| String::from_utf8_lossy(&r.body).to_string();
    assert_eq!((r.status, text(&r)), (200, "conn=1 POST".to_string()));
    tokio::time::sleep(idle * 4).await;
    let r = common::send(a, "POST", "x", "/closing/x", b"").await;
    assert_eq!(
        (r.status, text(&r)),
        (200, "conn=2 POST".to_string()),
        "a closed TLS connection was reused"
    );
    assert_eq!(closing_accepted.load(Ordering::SeqCst), 2);
    gw.stop().await;
}
