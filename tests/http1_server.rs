//! ginx's own HTTP/1 server side (src/serve/h1.rs) against hyper's, which
//! takes a connection over from its first request with a body: the same
//! request must get the same bytes from either (the Date aside), and a
//! connection must carry on correctly across the handover, plain and TLS.

mod common;
use bytes::Bytes;
use common::{read_to_close, start_one};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A body in pieces, of a length not told: hyper sends it chunked.
struct Pieces(VecDeque<Bytes>);

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// `/fixed`: a body of known length; `/pieces`: one of unknown length;
/// `/empty`: 204; anything else: "ok".
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let (status, pieces): (u16, &[&'static str]) = match req.uri().path() {
                            "/up/fixed" => (200, &["fixed body\n"]),
                            "/up/pieces" => (200, &["one ", "two ", "three\n"]),
                            "/up/empty" => (204, &[]),
                            _ => (200, &["ok\n"]),
                        };
                        let mut response = if req.uri().path() == "/up/fixed" {
                            http::Response::new(http_body_util::Either::Left(
                                http_body_util::Full::new(Bytes::from_static(b"fixed body\n")),
                            ))
                        } else {
                            http::Response::new(http_body_util::Either::Right(Pieces(
                                pieces
                                    .iter()
                                    .map(|p| Bytes::from_static(p.as_bytes()))
                                    .collect(),
                            )))
                        };
                        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        response
                            .headers_mut()
                            .insert("x-upstream", http::HeaderValue::from_static("yes"));
                        Ok::<_, std::convert::Infallible>(response)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn config(up: SocketAddr) -> String {
    r#"
server_tokens: true
http:
  keepalive_requests: 100
upstreams:
  app:
    servers: ["{UP}"]
servers:
  - listen: ["127.0.0.1:{p0}"]
    add_header: { X-Site: "one", X-Other: "two" }
    locations:
      - location: = /ret
        return: 200 "hello\n"
      - location: = /nobody
        return: 204
      - location: = /redir
        return: 301 /elsewhere
      - location: /up/
        proxy_pass: http://app
"#
    .replace("{UP}", &up.to_string())
}

/// A request with a body, answered by ginx with "fixed body\n": it hands the
/// connection to hyper.
const HANDOVER: &[u8] = b"POST /up/fixed HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc";
/// Pipelined behind each case: answered (and the connection closed) when the
/// case leaves the connection open.
const CLOSER: &[u8] = b"GET /ret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// The bytes of a date field's value replaced, to compare two responses.
fn without_dates(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("date: ") {
        out.push_str(&rest[..at + 6]);
        out.push_str("<date>");
        rest = &rest[(at + 6 + 29).min(rest.len())..];
    }
    out.push_str(rest);
    out
}

/// Where the first response in `bytes` ends (a Content-Length body).
fn first_response_len(bytes: &[u8]) -> usize {
    let text = String::from_utf8_lossy(bytes);
    let head_end = text.find("\r\n\r\n").expect("a response head") + 4;
    let length: usize = text[..head_end]
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content-length");
    head_end + length
}

async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_to_close(&mut s).await
}

#[tokio::test]
async fn ginx_and_hyper_write_the_same_response_bytes() {
    let up = upstream().await;
    let gw = start_one(&config(up), 1).await;
    let cases: &[&[u8]] = &[
        b"GET /ret HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HEAD /ret HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /ret HTTP/1.0\r\n\r\n",
        b"GET /ret HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"GET /ret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /ret HTTP/1.1\r\nHost: x\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
        b"GET /nobody HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /redir HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /ret HTTP/1.1\r\n\r\n",
        b"GET http://x/ret?a=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"DELETE /ret HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"GET /up/fixed HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /up/pieces HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /up/pieces HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"HEAD /up/pieces HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /up/empty HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for case in cases {
        let name = String::from_utf8_lossy(case)
            .lines()
            .next()
            .unwrap()
            .to_string();
        let native = exchange(gw.addr(0), &[*case, CLOSER].concat()).await;
        let handed = exchange(gw.addr(0), &[HANDOVER, *case, CLOSER].concat()).await;
        let first = first_response_len(&handed);
        assert!(
            handed.starts_with(b"HTTP/1.1 200 OK\r\n")
                && String::from_utf8_lossy(&handed[..first]).ends_with("fixed body\n"),
            "{name}: the handover request was not answered: {:?}",
            String::from_utf8_lossy(&handed)
        );
        let hyper = &handed[first..];
        assert!(!native.is_empty(), "{name}: no answer");
        assert_eq!(
            without_dates(&native),
            without_dates(hyper),
            "{name}: ginx's own side (left) and hyper's (right) differ"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_connection_carries_on_across_the_handover() {
    let up = upstream().await;
    let gw = start_one(&config(up), 1).await;
    // Bodiless, with a body (hyper from here), bodiless again: one connection.
    let mut s = TcpStream::connect(gw.addr(0)).await.unwrap();
    let requests = [
        &b"GET /ret HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        HANDOVER,
        b"GET /up/pieces HTTP/1.1\r\nHost: x\r\n\r\n",
        CLOSER,
    ]
    .concat();
    s.write_all(&requests).await.unwrap();
    let text = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 4, "{text}");
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    let bodies: Vec<usize> = ["hello\n", "fixed body\n", "three\n"]
        .iter()
        .map(|b| text.find(b).unwrap_or_else(|| panic!("no {b:?} in {text}")))
        .collect();
    assert!(
        bodies.windows(2).all(|w| w[0] < w[1]),
        "out of order: {text}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_plain_http2_listener_serves_http1_here_and_h2c_through_hyper() {
    let up = upstream().await;
    let yaml = config(up).replace(
        r#"listen: ["127.0.0.1:{p0}"]"#,
        r#"listen: ["127.0.0.1:{p0} http2"]"#,
    );
    assert!(yaml.contains(" http2\"]"));
    let gw = start_one(&yaml, 1).await;
    // HTTP/1: ginx's side, then hyper's from the request with a body.
    let mut s = TcpStream::connect(gw.addr(0)).await.unwrap();
    let requests = [
        &b"GET /ret HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        HANDOVER,
        CLOSER,
    ]
    .concat();
    s.write_all(&requests).await.unwrap();
    let text = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{text}");
    assert!(text.contains("fixed body\n"), "{text}");
    // HTTP/2 with prior knowledge: the preface goes to hyper.
    let mut h2 = common::h2_connect::<http_body_util::Empty<Bytes>>(gw.addr(0)).await;
    for path in ["/ret", "/up/pieces"] {
        let req = http::Request::builder()
            .uri(format!("http://x{path}"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let resp = tokio::time::timeout(common::IO_LIMIT, h2.send_request(req))
            .await
            .expect("answered in time")
            .unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert!(body.ends_with(b"\n"), "{body:?}");
    }
    gw.stop().await;
}
