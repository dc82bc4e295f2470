//! Message bodies through the proxy, byte for byte: response framing
//! (Content-Length, chunked, close-delimited) as the client sees it, request
//! bodies (chunked, over the buffering threshold, `Expect: 100-continue`),
//! bodiless answers (HEAD, 204, 304) and trailers. Where the echo upstream is
//! not enough, a raw-TCP upstream written here answers with scripted bytes so
//! the framing ginx receives is exactly what the test says.

mod common;
use common::{start_one, upstream, IO_LIMIT};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// ---------------------------------------------------------------------------
// A raw upstream: reads each request head (and a Content-Length body), records
// the head, and writes the scripted reply in parts, a short pause between them
// so that ginx sees them as separate reads.

struct Reply {
    parts: Vec<Vec<u8>>,
    /// Close the connection after the reply (needed for close-delimited bodies).
    close: bool,
}

impl Reply {
    fn keep(parts: Vec<Vec<u8>>) -> Self {
        Reply {
            parts,
            close: false,
        }
    }
    fn close(parts: Vec<Vec<u8>>) -> Self {
        Reply { parts, close: true }
    }
}

struct RawUpstream {
    addr: SocketAddr,
    /// Every request head received, in order (request line and headers).
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_upstream(script: fn(&str) -> Reply) -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            connections.spawn(serve_raw(stream, script, seen.clone()));
        }
    });
    RawUpstream { addr, heads, task }
}

async fn serve_raw(mut s: TcpStream, script: fn(&str) -> Reply, heads: Arc<Mutex<Vec<String>>>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // The head, bounded in time; EOF or a timeout ends the connection.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(IO_LIMIT, s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        // A Content-Length body is read and dropped (tests here send none upstream).
        if common::read_length_body(&mut s, &mut buf, &head)
            .await
            .is_none()
        {
            return;
        }
        heads.lock().unwrap().push(head.clone());
        let reply = script(&head);
        for (i, part) in reply.parts.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            match tokio::time::timeout(IO_LIMIT, s.write_all(part)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
        if reply.close {
            let _ = s.shutdown().await;
            return;
        }
    }
}

/// The request target of a raw head ("GET /x HTTP/1.1" → "/x").
fn target(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

fn method(head: &str) -> &str {
    head.split(' ').next().unwrap_or("")
}

/// Whether the head carries a header of this name.
fn head_has(head: &str, name: &str) -> bool {
    head.lines().skip(1).any(|l| {
        l.split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case(name))
    })
}

// ---------------------------------------------------------------------------
// The client side: a response parser that knows every framing, so the test
// sees exactly how ginx framed what it sent.

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Framing {
    /// No body by the rules (HEAD, 1xx, 204, 304).
    NoBody,
    Length,
    Chunked,
    /// Delimited by the end of the connection.
    Close,
}

#[derive(Debug)]
struct Parsed {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
    framing: Framing,
}

impl Parsed {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parse the responses in `bytes`, which answer requests whose methods are
/// `methods` in order; every byte must belong to one of them.
fn parse_all(mut bytes: &[u8], methods: &[&str]) -> Vec<Parsed> {
    let whole = String::from_utf8_lossy(bytes).into_owned();
    let mut out = Vec::new();
    for m in methods {
        assert!(
            !bytes.is_empty(),
            "expected {} responses, got {}: {whole:?}",
            methods.len(),
            out.len()
        );
        let (parsed, used) = parse_one(bytes, *m == "HEAD");
        out.push(parsed);
        bytes = &bytes[used..];
    }
    assert!(
        bytes.is_empty(),
        "bytes after the last expected response: {:?}",
        String::from_utf8_lossy(bytes)
    );
    out
}

fn parse_one(bytes: &[u8], head_request: bool) -> (Parsed, usize) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = resp.parse(bytes) else {
        panic!(
            "unparsable response head: {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(2000)])
        );
    };
    let status = resp.code.unwrap();
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let rest = &bytes[head_len..];
    let mut parsed = Parsed {
        status,
        headers: headers.clone(),
        body: Vec::new(),
        trailers: Vec::new(),
        framing: Framing::NoBody,
    };
    if head_request || status < 200 || status == 204 || status == 304 {
        return (parsed, head_len);
    }
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        assert!(
            get("content-length").is_none(),
            "both Transfer-Encoding and Content-Length: {headers:?}"
        );
        let (body, trailers, used) = decode_chunked(rest);
        parsed.body = body;
        parsed.trailers = trailers;
        parsed.framing = Framing::Chunked;
        return (parsed, head_len + used);
    }
    if let Some(len) = get("content-length") {
        let len: usize = len.parse().expect("numeric Content-Length");
        assert!(
            rest.len() >= len,
            "Content-Length {len} but only {} body bytes came",
            rest.len()
        );
        parsed.body = rest[..len].to_vec();
        parsed.framing = Framing::Length;
        return (parsed, head_len + len);
    }
    parsed.body = rest.to_vec();
    parsed.framing = Framing::Close;
    (parsed, bytes.len())
}

type Fields = Vec<(String, String)>;

/// Decode a chunked body strictly: (body, trailer fields, bytes used).
fn decode_chunked(bytes: &[u8]) -> (Vec<u8>, Fields, usize) {
    let mut body = Vec::new();
    let mut pos = 0;
    let line = |pos: usize| -> (&[u8], usize) {
        let end = find(&bytes[pos..], b"\r\n").unwrap_or_else(|| {
            panic!(
                "chunked body cut short at byte {pos}: {:?}",
                String::from_utf8_lossy(&bytes[pos..bytes.len().min(pos + 200)])
            )
        });
        (&bytes[pos..pos + end], pos + end + 2)
    };
    loop {
        let (size_line, next) = line(pos);
        let size_text = String::from_utf8_lossy(size_line);
        let size_hex = size_text.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .unwrap_or_else(|_| panic!("bad chunk size line {size_text:?} at byte {pos}"));
        pos = next;
        if size == 0 {
            let mut trailers = Vec::new();
            loop {
                let (field, next) = line(pos);
                pos = next;
                if field.is_empty() {
                    return (body, trailers, pos);
                }
                let field = String::from_utf8_lossy(field);
                let (k, v) = field.split_once(':').expect("trailer field with a colon");
                trailers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        assert!(
            bytes.len() >= pos + size + 2,
            "chunk of {size} bytes cut short at byte {pos}"
        );
        body.extend_from_slice(&bytes[pos..pos + size]);
        pos += size;
        assert_eq!(
            &bytes[pos..pos + 2],
            b"\r\n",
            "chunk data not followed by CRLF"
        );
        pos += 2;
    }
}

/// Deterministic bytes that show a shift or a lost piece.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A gateway proxying everything to `up`, request bodies limited to 1m.
async fn gateway_to(up: SocketAddr) -> common::Gateway {
    let yaml = r#"
upstreams:
  app: { servers: ["{UP}"] }
servers:
  - listen: ["127.0.0.1:{p0}"]
    client_max_body_size: 1m
    locations:
      - location: /
        proxy_pass: http://app
"#
    .replace("{UP}", &up.to_string());
    start_one(&yaml, 1).await
}

/// The request body the echo upstream saw (after its blank line).
fn echoed_body(body: &[u8]) -> &[u8] {
    let i = find(body, b"\n\n").expect("echo text ends with a blank line");
    &body[i + 2..]
}

fn echoed_header(body: &[u8], name: &str) -> Option<String> {
    let i = find(body, b"\n\n").expect("echo text ends with a blank line");
    let text = String::from_utf8_lossy(&body[..i]);
    let prefix = format!("{name}: ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
}

// ---------------------------------------------------------------------------
// Response framing.

fn content_length_script(head: &str) -> Reply {
    let body = pattern(100_000);
    let mut head_bytes = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Up: cl\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if target(head) == "/small" {
        return Reply::keep(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: small\r\n\r\nhello".to_vec(),
        ]);
    }
    // The head and the first bytes in one write, the rest in uneven pieces.
    head_bytes.extend_from_slice(&body[..1000]);
    Reply::keep(vec![
        head_bytes,
        body[1000..40_000].to_vec(),
        body[40_000..].to_vec(),
    ])
}

#[tokio::test]
async fn content_length_response_arrives_exactly_on_a_kept_connection() {
    let up = raw_upstream(content_length_script).await;
    let gw = gateway_to(up.addr).await;
    // Two requests on one connection: the first body must end exactly where
    // its Content-Length says, or the second response would not parse.
    let bytes = common::raw(
        gw.addr(0),
        b"GET /big HTTP/1.1\r\nHost: x\r\n\r\nGET /small HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let rs = parse_all(&bytes, &["GET", "GET"]);
    assert_eq!(rs[0].status, 200);
    assert_eq!(rs[0].framing, Framing::Length);
    assert_eq!(rs[0].header("content-length"), Some("100000"));
    assert_eq!(rs[0].header("x-up"), Some("cl"));
    assert!(rs[0].body == pattern(100_000), "body differs");
    assert_eq!(rs[1].header("x-up"), Some("small"));
    assert_eq!(rs[1].body, b"hello");
    gw.stop().await;
}

fn chunked_script(_head: &str) -> Reply {
    let big = pattern(5000);
    // Sizes in upper and lower case hex, a chunk extension, and writes that
    // split a size line and a chunk's data.
    let mut second = b"1\r\n".to_vec();
    second.extend_from_slice(&big[..1]);
    second.extend_from_slice(b"\r\n1387;ext=\"v\"\r\n"); // 0x1387 = 4999
    second.extend_from_slice(&big[1..2500]);
    let mut third = big[2500..].to_vec();
    third.extend_from_slice(b"\r\na\r\n0123456789\r\n0\r\n\r\n");
    Reply::keep(vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Up: chunked\r\n\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n".to_vec(),
        b"1".to_vec(),
        b"0\r\n0123456789ABCDEF\r\n".to_vec(),
        second,
        third,
    ])
}

fn chunked_expected() -> Vec<u8> {
    let mut want = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEF".to_vec();
    want.extend_from_slice(&pattern(5000));
    want.extend_from_slice(b"0123456789");
    want
}

#[tokio::test]
async fn chunked_response_is_reframed_exactly() {
    let up = raw_upstream(chunked_script).await;
    let gw = gateway_to(up.addr).await;
    let bytes = common::raw(
        gw.addr(0),
        b"GET /c1 HTTP/1.1\r\nHost: x\r\n\r\nGET /c2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let rs = parse_all(&bytes, &["GET", "GET"]);
    for r in &rs {
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-up"), Some("chunked"));
        // No length is known in advance: chunked again, valid, nothing lost.
        assert_eq!(r.framing, Framing::Chunked, "{:?}", r.headers);
        assert!(r.body == chunked_expected(), "body differs: {:?}", r.body);
        assert!(r.trailers.is_empty());
    }
    // To an HTTP/1.0 client, which knows no chunked: close-delimited.
    let bytes = common::raw(gw.addr(0), b"GET /c3 HTTP/1.0\r\nHost: x\r\n\r\n").await;
    let r = &parse_all(&bytes, &["GET"])[0];
    assert!(r.header("transfer-encoding").is_none());
    assert!(r.body == chunked_expected(), "HTTP/1.0 body differs");
    gw.stop().await;
}

fn close_delimited_script(_head: &str) -> Reply {
    let body = pattern(300_000);
    let mut first = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/octet-stream\r\nX-Up: close\r\n\r\n".to_vec();
    first.extend_from_slice(&body[..100]);
    Reply::close(vec![
        first,
        body[100..150_000].to_vec(),
        body[150_000..].to_vec(),
    ])
}

#[tokio::test]
async fn close_delimited_response_arrives_whole() {
    let up = raw_upstream(close_delimited_script).await;
    let gw = gateway_to(up.addr).await;
    // HTTP/1.1 client: the body must be framed (chunked) so the connection
    // can go on; a second request on it proves the first body ended right.
    let bytes = common::raw(
        gw.addr(0),
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let rs = parse_all(&bytes, &["GET", "GET"]);
    for r in &rs {
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-up"), Some("close"));
        assert_eq!(r.framing, Framing::Chunked, "{:?}", r.headers);
        assert_eq!(r.body.len(), 300_000);
        assert!(r.body == pattern(300_000), "body differs");
    }
    // HTTP/1.0 client: close-delimited again, whole.
    let bytes = common::raw(gw.addr(0), b"GET /c HTTP/1.0\r\nHost: x\r\n\r\n").await;
    let r = &parse_all(&bytes, &["GET"])[0];
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 300_000);
    assert!(r.body == pattern(300_000), "HTTP/1.0 body differs");
    assert_eq!(up.heads().len(), 3);
    gw.stop().await;
}

fn truncated_script(head: &str) -> Reply {
    if target(head) == "/chunked" {
        // Two chunks, then the connection ends without the last chunk.
        return Reply::close(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".to_vec(),
            b"6\r\n world\r\n".to_vec(),
        ]);
    }
    // Content-Length 100000, half of it, then the end of the connection.
    let mut first = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
    first.extend_from_slice(&pattern(50_000));
    Reply::close(vec![first])
}

#[tokio::test]
async fn a_truncated_upstream_body_is_not_passed_off_as_complete() {
    let up = raw_upstream(truncated_script).await;
    let gw = gateway_to(up.addr).await;
    // Content-Length: the client gets the promised length and fewer bytes,
    // then the close, so it can tell.
    let bytes = common::raw(gw.addr(0), b"GET /length HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let end = find(&bytes, b"\r\n\r\n").expect("a head") + 4;
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 100000\r\n"), "{head}");
    assert!(bytes.len() - end < 100_000, "a cut body must stay short");
    // Chunked: the client must not get the last chunk that would mark the
    // body complete.
    let bytes = common::raw(gw.addr(0), b"GET /chunked HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "a cut chunked body was completed: {text:?}"
    );
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// Request bodies.

#[tokio::test]
async fn chunked_request_body_arrives_whole() {
    let up = upstream("echo").await;
    let gw = gateway_to(up.addr).await;
    let data = pattern(150_000);
    let mut s = TcpStream::connect(gw.addr(0)).await.unwrap();
    let head = b"POST /upload HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";
    s.write_all(head).await.unwrap();
    // Chunks of uneven sizes, one with an extension, written with pauses.
    let mut sent = 0;
    for (i, size) in [1usize, 15, 4096, 65_536, 80_000 - 1, 353]
        .iter()
        .enumerate()
    {
        let mut chunk = if i == 2 {
            format!("{size:x};name=value\r\n").into_bytes()
        } else {
            format!("{size:X}\r\n").into_bytes()
        };
        chunk.extend_from_slice(&data[sent..sent + size]);
        chunk.extend_from_slice(b"\r\n");
        sent += size;
        s.write_all(&chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(sent, data.len());
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let bytes = common::read_to_close(&mut s).await;
    let r = &parse_all(&bytes, &["POST"])[0];
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let got = echoed_body(&r.body);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the upstream got different bytes");
    gw.stop().await;
}

#[tokio::test]
async fn request_body_over_the_buffering_threshold_arrives_whole() {
    let up = upstream("echo").await;
    let gw = gateway_to(up.addr).await;
    // 200000 bytes: over the 64 KiB that ginx buffers, under the 1m limit.
    let data = pattern(200_000);
    let r = common::send(gw.addr(0), "POST", "x", "/upload", &data).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        echoed_header(&r.body, "content-length").as_deref(),
        Some("200000")
    );
    let got = echoed_body(&r.body);
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the upstream got different bytes");
    // And one under the threshold (buffered for retries) for comparison.
    let small = pattern(60_000);
    let r = common::send(gw.addr(0), "PUT", "x", "/upload", &small).await;
    assert_eq!(r.status, 200);
    assert!(echoed_body(&r.body) == small);
    gw.stop().await;
}

/// Send a head with `Expect: 100-continue`, wait for the interim answer
/// without sending the body, then send it; the final response, parsed.
async fn expect_continue(addr: SocketAddr, body: &[u8]) -> (String, Parsed) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let interim_end = tokio::time::timeout(IO_LIMIT, async {
        loop {
            if let Some(i) = find(&got, b"\r\n\r\n") {
                return i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before 100 Continue: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no 100 Continue within {IO_LIMIT:?} while the client waits"));
    let interim = String::from_utf8_lossy(&got[..interim_end]).into_owned();
    let mut rest = got[interim_end..].to_vec();
    s.write_all(body).await.unwrap();
    rest.extend(common::read_to_close(&mut s).await);
    let r = parse_all(&rest, &["POST"]).remove(0);
    (interim, r)
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body() {
    let up = upstream("echo").await;
    let gw = gateway_to(up.addr).await;
    // A small body (read whole before forwarding) and a large one (streamed).
    for body in [b"hello world".to_vec(), pattern(200_000)] {
        let (interim, r) = expect_continue(gw.addr(0), &body).await;
        assert!(
            interim.starts_with("HTTP/1.1 100 Continue\r\n"),
            "interim answer: {interim:?}"
        );
        assert_eq!(r.status, 200);
        // ginx answered the 100 itself: Expect does not go up (as nginx).
        let echoed = String::from_utf8_lossy(&r.body).to_ascii_lowercase();
        assert!(!echoed.contains("\nexpect:"), "{echoed}");
        let got = echoed_body(&r.body);
        assert_eq!(got.len(), body.len());
        assert!(got == body, "the upstream got different bytes");
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// Responses without a body.

fn bodiless_script(head: &str) -> Reply {
    let text: &[u8] = match (method(head), target(head)) {
        ("HEAD", _) => b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\nContent-Type: application/x-test\r\nETag: \"v1\"\r\nX-Up: head\r\n\r\n",
        (_, "/204") => b"HTTP/1.1 204 No Content\r\nX-Up: 204\r\n\r\n",
        (_, "/304") => b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nX-Up: 304\r\n\r\n",
        // A 304 may carry the Content-Length the GET would have had.
        (_, "/304-length") => b"HTTP/1.1 304 Not Modified\r\nETag: \"v2\"\r\nContent-Length: 5000\r\nX-Up: 304-length\r\n\r\n",
        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: after\r\n\r\nafter",
    };
    Reply::keep(vec![text.to_vec()])
}

/// Head-only bytes: nothing may follow the blank line.
fn only_a_head(bytes: &[u8]) -> Parsed {
    let end = find(bytes, b"\r\n\r\n").expect("a complete head") + 4;
    assert!(
        end == bytes.len(),
        "bytes after the head: {:?}",
        String::from_utf8_lossy(&bytes[end..])
    );
    parse_all(bytes, &["HEAD"]).remove(0)
}

#[tokio::test]
async fn head_gets_the_upstream_headers_and_no_body() {
    let up = raw_upstream(bodiless_script).await;
    let gw = gateway_to(up.addr).await;
    let bytes = common::raw(
        gw.addr(0),
        b"HEAD /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let r = only_a_head(&bytes);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-up"), Some("head"));
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert_eq!(r.header("content-type"), Some("application/x-test"));
    assert_eq!(
        r.header("content-length"),
        Some("5000"),
        "HEAD keeps the upstream's Content-Length"
    );
    assert!(r.header("transfer-encoding").is_none());
    assert!(method(&up.heads()[0]) == "HEAD", "{:?}", up.heads());
    // On a kept connection, a following request parses right after the head.
    let bytes = common::raw(
        gw.addr(0),
        b"HEAD /file HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let rs = parse_all(&bytes, &["HEAD", "GET"]);
    assert_eq!(rs[0].header("x-up"), Some("head"));
    assert_eq!(rs[1].body, b"after");
    gw.stop().await;
}

#[tokio::test]
async fn no_content_and_not_modified_have_no_body() {
    let up = raw_upstream(bodiless_script).await;
    let gw = gateway_to(up.addr).await;
    for (path, up_tag) in [
        ("/204", "204"),
        ("/304", "304"),
        ("/304-length", "304-length"),
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let r = only_a_head(&common::raw(gw.addr(0), req.as_bytes()).await);
        assert_eq!(r.status, path[1..4].parse::<u16>().unwrap());
        assert_eq!(r.header("x-up"), Some(up_tag));
        assert!(
            r.header("transfer-encoding").is_none(),
            "{path}: {:?}",
            r.headers
        );
        if path == "/204" {
            assert!(r.header("content-length").is_none(), "{:?}", r.headers);
        }
    }
    // All three on one connection, then a normal answer: no stray body bytes.
    let bytes = common::raw(
        gw.addr(0),
        b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\nGET /304 HTTP/1.1\r\nHost: x\r\n\r\nGET /304-length HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let rs = parse_all(&bytes, &["GET", "GET", "GET", "GET"]);
    let statuses: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [204, 304, 304, 200]);
    assert_eq!(rs[3].body, b"after");
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// Trailers.

fn trailer_script(_head: &str) -> Reply {
    Reply::keep(vec![
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\nX-Up: trailer\r\n\r\n5\r\nhello\r\n".to_vec(),
        b"6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n".to_vec(),
    ])
}

#[tokio::test]
async fn trailers_and_the_body_around_them() {
    let up = raw_upstream(trailer_script).await;
    let gw = gateway_to(up.addr).await;
    // A client that asked for trailers.
    let bytes = common::raw(
        gw.addr(0),
        b"GET /t HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    let r = &parse_all(&bytes, &["GET"])[0];
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-up"), Some("trailer"));
    assert_eq!(r.framing, Framing::Chunked);
    assert_eq!(r.body, b"hello world", "the body is intact");
    // The trailer passes to an HTTP/1.1 client that sent `TE: trailers`
    // (hyper writes only the trailer fields that `Trailer` announces).
    assert_eq!(r.trailer("x-checksum"), Some("abc"), "{:?}", r.trailers);
    assert_eq!(r.header("trailer"), Some("X-Checksum"));
    // And the upstream was told that the client takes trailers.
    assert!(head_has(&up.heads()[0], "te"), "{:?}", up.heads());

    // A client that did not ask gets no trailer fields, and the body intact.
    let bytes = common::raw(
        gw.addr(0),
        b"GET /t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let r = &parse_all(&bytes, &["GET"])[0];
    assert_eq!(r.body, b"hello world");
    assert!(r.trailers.is_empty(), "{:?}", r.trailers);
    // This client did not ask: the upstream is not told it takes trailers.
    assert!(!head_has(&up.heads()[1], "te"), "{:?}", up.heads());
    gw.stop().await;
}

/// A gateway whose plain `http2` address proxies everything to `upstream`.
async fn h2_proxy(upstream: SocketAddr) -> common::Gateway {
    let yaml = r#"
upstreams:
  app: { servers: ["{UP}"] }
servers:
  - listen: ["127.0.0.1:{p0} http2"]
    locations:
      - location: /
        proxy_pass: http://app
"#
    .replace("{UP}", &upstream.to_string());
    start_one(&yaml, 1).await
}

/// An HTTP/2 request body without content-length has no length an HTTP/1
/// server could be told: it goes up chunked, whole, whatever the method
/// (hyper's client would send it on a GET as no body at all).
#[tokio::test]
async fn an_http2_body_of_unknown_length_reaches_an_http1_upstream_whole() {
    use http_body_util::BodyExt;
    let up = upstream("a").await;
    let gw = h2_proxy(up.addr).await;
    let mut sender = common::h2_connect(gw.addr(0)).await;
    for method in ["GET", "POST"] {
        let chunks = ["hello ", "from ", "h2"].map(|c| {
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(bytes::Bytes::from(c)))
        });
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
        let request = http::Request::builder()
            .method(method)
            .uri("http://x/echo")
            .body(body)
            .unwrap();
        let response = tokio::time::timeout(IO_LIMIT, sender.send_request(request))
            .await
            .expect("an answer in time")
            .unwrap();
        assert_eq!(response.status(), 200);
        let text = tokio::time::timeout(IO_LIMIT, response.into_body().collect())
            .await
            .expect("the body in time")
            .unwrap()
            .to_bytes();
        let text = String::from_utf8_lossy(&text);
        assert!(text.ends_with("\n\nhello from h2"), "{method}: {text}");
        assert!(
            text.contains("transfer-encoding: chunked"),
            "{method}: {text}"
        );
    }
    gw.stop().await;
}

/// An HTTP/2 client on a plain `http2` address, with the h2 crate (which
/// lets a test set its window and reset a stream), its connection task
/// spawned.
async fn h2c(addr: SocketAddr, window: u32) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn h2_get(path: &str) -> http::Request<()> {
    http::Request::get(format!("http://x{path}"))
        .body(())
        .unwrap()
}

/// A response far larger than the client's window goes out as the client
/// gives window back, whole and in order.
#[tokio::test]
async fn a_large_http2_response_is_sent_as_the_clients_window_allows() {
    let up = upstream("a").await;
    let gw = h2_proxy(up.addr).await;
    let mut client = h2c(gw.addr(0), 16 * 1024).await;
    let size = 1 << 20;
    let (response, _) = client
        .send_request(h2_get(&format!("/big/{size}")), true)
        .unwrap();
    let response = tokio::time::timeout(IO_LIMIT, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut got = 0;
    let deadline = tokio::time::Instant::now() + IO_LIMIT;
    while let Some(chunk) = tokio::time::timeout_at(deadline, body.data())
        .await
        .expect("the body in time")
    {
        let chunk = chunk.unwrap();
        assert!(chunk.iter().all(|&b| b == b'x'));
        got += chunk.len();
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    assert_eq!(got, size);
    gw.stop().await;
}

/// A client's RST_STREAM cancels its request, and with it the upstream's:
/// the upstream connection is closed rather than waited on.
#[tokio::test]
async fn an_http2_reset_cancels_the_upstream_request() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = h2_proxy(upstream.local_addr().unwrap()).await;
    let mut client = h2c(gw.addr(0), 65_535).await;
    let (_response, mut stream) = client.send_request(h2_get("/wait"), true).unwrap();
    let (mut conn, _) = tokio::time::timeout(IO_LIMIT, upstream.accept())
        .await
        .unwrap()
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(IO_LIMIT, conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the request came whole");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"GET /wait "));
    stream.send_reset(h2::Reason::CANCEL);
    let n = tokio::time::timeout(IO_LIMIT, conn.read(&mut buf))
        .await
        .expect("the upstream connection closed once the client reset")
        .unwrap();
    assert_eq!(n, 0);
    gw.stop().await;
}

/// `return 444` on HTTP/2 resets the stream (there is no connection of its
/// own to close); the connection serves on.
#[tokio::test]
async fn return_444_over_http2_resets_the_stream_only() {
    let yaml = r#"
servers:
  - listen: ["127.0.0.1:{p0} http2"]
    locations:
      - location: /gone
        return: 444
      - location: /
        return: 200 "here\n"
"#;
    let gw = start_one(yaml, 1).await;
    let mut client = h2c(gw.addr(0), 65_535).await;
    let (response, _) = client.send_request(h2_get("/gone"), true).unwrap();
    let refused = tokio::time::timeout(IO_LIMIT, response).await.unwrap();
    let e = refused.expect_err("no answer");
    assert_eq!(e.reason(), Some(h2::Reason::INTERNAL_ERROR), "{e}");
    let (response, _) = client.send_request(h2_get("/"), true).unwrap();
    let response = tokio::time::timeout(IO_LIMIT, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    gw.stop().await;
}
