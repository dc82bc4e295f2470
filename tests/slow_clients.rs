//! Slow clients are closed on time while others are served: a TLS handshake
//! that stalls (client_header_timeout), a request body that stalls
//! (client_body_timeout, 408), and a client that stops reading its
//! response (send_timeout).

mod common;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_stalled_tls_handshake_is_closed_at_the_header_timeout() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["slow.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let yaml = "http: { client_header_timeout: 1s }\naccess_log: { path: \"off\" }\nservers:\n  - listen: [\"127.0.0.1:{p0} tls\"]\n    tls: { certificate: c.pem, key: c.key }\n    locations: [{ location: /, return: 204 }]\n  - listen: [\"127.0.0.1:{p1}\"]\n    locations: [{ location: /, return: 204 }]\n";
    let gw = common::start(
        &[
            ("c.pem", &cert.pem()),
            ("c.key", &key.serialize_pem()),
            ("ginx.yaml", yaml),
        ],
        2,
    )
    .await;
    // Half a ClientHello: the record header promises more than is sent.
    let mut slow = tokio::net::TcpStream::connect(gw.addr(0)).await.unwrap();
    slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .unwrap();
    let started = Instant::now();
    // Meanwhile another client is served.
    assert_eq!(common::get(gw.addr(1), "x", "/").await.status, 204);
    let mut buf = Vec::new();
    let read = tokio::time::timeout(common::IO_LIMIT, slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the stalled handshake was never closed");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed before the timeout: {waited:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_at_the_body_timeout() {
    let up = common::upstream("up").await;
    let yaml = format!(
        "http: {{ client_body_timeout: 1s }}\naccess_log: {{ path: \"off\" }}\nupstreams:\n  app: {{ servers: [\"{}\"] }}\nservers:\n  - listen: [\"127.0.0.1:{{p0}}\"]\n    locations:\n      - location: /\n        proxy_pass: http://app\n",
        up.addr
    );
    let gw = common::start_one(&yaml, 1).await;
    for (name, head) in [
        // A streamed body (chunked) and a buffered one (small Content-Length).
        (
            "chunked",
            "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        ),
        (
            "content-length",
            "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part",
        ),
    ] {
        let hits = up.hits();
        let mut slow = tokio::net::TcpStream::connect(gw.addr(0)).await.unwrap();
        slow.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        assert_eq!(
            common::get(gw.addr(0), "x", "/other").await.status,
            200,
            "others are served meanwhile"
        );
        let bytes = common::read_to_close(&mut slow).await;
        let waited = started.elapsed();
        let r = common::parse_responses(&bytes);
        assert_eq!(r[0].status, 408, "{name}");
        assert!(
            waited >= Duration::from_millis(900),
            "{name}: answered before the timeout: {waited:?}"
        );
        // A small body is read whole before forwarding: the upstream never
        // saw the slow request. A streamed one reached it as an aborted,
        // incomplete request (its head counts as a hit there).
        if name == "content-length" {
            assert_eq!(
                up.hits(),
                hits + 1,
                "{name}: only the other client's request reached the upstream"
            );
        }
    }
    gw.stop().await;
}

/// A client that asks for a large response and stops reading it: once a
/// write has waited send_timeout, the connection is reset (the response cut
/// short), while another client is served meanwhile.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_at_send_timeout() {
    let up = common::upstream("big").await;
    let yaml = format!(
        "http: {{ send_timeout: 1s }}\naccess_log: {{ path: \"off\" }}\nupstreams:\n  app: {{ servers: [\"{}\"] }}\nservers:\n  - listen: [\"127.0.0.1:{{p0}}\"]\n    locations:\n      - location: /\n        proxy_pass: http://app\n",
        up.addr
    );
    let gw = common::start_one(&yaml, 1).await;
    const SIZE: usize = 64 << 20;
    let mut slow = tokio::net::TcpStream::connect(gw.addr(0)).await.unwrap();
    slow.write_all(format!("GET /big/{SIZE} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Not reading: the socket buffers fill and ginx's writes wait.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(common::get(gw.addr(0), "x", "/small").await.status, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(common::IO_LIMIT, slow.read_to_end(&mut got)).await;
    let Ok(read) = read else {
        panic!("the connection was not closed");
    };
    assert!(
        got.len() < SIZE,
        "the whole response arrived ({} bytes): nothing was cut",
        got.len()
    );
    // Reset, not closed: what was queued for a client that does not read is
    // dropped by the kernel at once rather than kept until the client goes.
    assert_eq!(
        read.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionReset),
        "the connection ended without a reset after {} bytes",
        got.len()
    );
    gw.stop().await;
}

/// On a plain address that also speaks HTTP/2 (prior knowledge), the server
/// reads the first bytes to choose between HTTP/1 and HTTP/2: a client that
/// sends nothing, or only part of the HTTP/2 preface, is still closed at
/// client_header_timeout, while others (HTTP/1 and HTTP/2) are served.
#[tokio::test]
async fn the_header_timeout_holds_before_the_protocol_is_known() {
    let yaml = "http: { client_header_timeout: 1s }\naccess_log: { path: \"off\" }\nservers:\n  - listen: [\"127.0.0.1:{p0} http2\"]\n    locations: [{ location: /, return: 204 }]\n";
    let gw = common::start_one(yaml, 1).await;
    let mut silent = tokio::net::TcpStream::connect(gw.addr(0)).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(gw.addr(0)).await.unwrap();
    partial.write_all(b"PRI * HT").await.unwrap();
    let started = Instant::now();
    assert_eq!(common::get(gw.addr(0), "x", "/").await.status, 204);
    let mut h2 = common::h2_connect::<http_body_util::Empty<bytes::Bytes>>(gw.addr(0)).await;
    let request = http::Request::get("http://x/")
        .body(http_body_util::Empty::new())
        .unwrap();
    let response = tokio::time::timeout(common::IO_LIMIT, h2.send_request(request))
        .await
        .expect("an HTTP/2 answer in time")
        .unwrap();
    assert_eq!(response.status(), 204);
    for (name, stream) in [("silent", &mut silent), ("partial preface", &mut partial)] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(common::IO_LIMIT, stream.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the {name} connection was never closed");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900),
            "the {name} connection was closed before the timeout: {waited:?}"
        );
    }
    gw.stop().await;
}
