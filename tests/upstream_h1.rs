//! The native HTTP/1.1 client of plain upstreams (src/forward/h1.rs), seen
//! from both ends over real sockets: interim 1xx heads, when a connection is
//! kept and when it must not be, kept connections that the server closed,
//! keepalive_timeout, chunk extensions and bad chunk sizes, and the heads it
//! refuses. The upstreams are raw TCP servers written here, so the bytes
//! ginx receives are exactly what each test says, and they count the
//! connections they accept.

mod common;
use common::{start_one, IO_LIMIT};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

// ---------------------------------------------------------------------------
// A raw upstream: reads each request (head and Content-Length body) and
// performs the steps its script returns for it.

/// One request as the raw upstream read it.
struct Req {
    head: String,
    body: Vec<u8>,
    /// Which accepted connection it came on (1 for the first).
    conn: usize,
    /// Its place on that connection (1 for the first).
    nth: usize,
}

impl Req {
    fn method(&self) -> &str {
        self.head.split(' ').next().unwrap_or("")
    }
    fn target(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }
}

enum Step {
    Write(Vec<u8>),
    Pause(Duration),
    /// Wake the test waiting in `RawUpstream::marked`.
    Mark,
    /// Close the connection (an orderly FIN) and serve no more on it.
    Close,
}

fn write(bytes: impl AsRef<[u8]>) -> Step {
    Step::Write(bytes.as_ref().to_vec())
}

fn pause(ms: u64) -> Step {
    Step::Pause(Duration::from_millis(ms))
}

type Script = dyn Fn(&Req) -> Vec<Step> + Send + Sync;

struct RawUpstream {
    addr: SocketAddr,
    /// TCP connections accepted.
    accepted: Arc<AtomicUsize>,
    /// Requests read, on all connections.
    requests: Arc<AtomicUsize>,
    marks: Arc<Notify>,
    /// How long each connection stayed idle after its last response before
    /// ginx closed it (the read returned 0).
    idle_closes: mpsc::UnboundedReceiver<Duration>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    fn accepted(&self) -> usize {
        self.accepted.load(SeqCst)
    }
    fn requests(&self) -> usize {
        self.requests.load(SeqCst)
    }
    async fn marked(&self) {
        tokio::time::timeout(IO_LIMIT, self.marks.notified())
            .await
            .expect("the upstream did not reach its mark");
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A raw upstream that keeps each connection as long as ginx does.
async fn raw_upstream(script: impl Fn(&Req) -> Vec<Step> + Send + Sync + 'static) -> RawUpstream {
    raw_upstream_idle(None, script).await
}

/// With `idle_close`, the upstream closes a connection on which no request
/// came for that long (a server's own keep-alive timeout).
async fn raw_upstream_idle(
    idle_close: Option<Duration>,
    script: impl Fn(&Req) -> Vec<Step> + Send + Sync + 'static,
) -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let marks = Arc::new(Notify::new());
    let (closes_tx, idle_closes) = mpsc::unbounded_channel();
    let script: Arc<Script> = Arc::new(script);
    let (acc, reqs, mk) = (accepted.clone(), requests.clone(), marks.clone());
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let conn = acc.fetch_add(1, SeqCst) + 1;
            connections.spawn(serve_raw(
                stream,
                conn,
                idle_close,
                script.clone(),
                reqs.clone(),
                mk.clone(),
                closes_tx.clone(),
            ));
        }
    });
    RawUpstream {
        addr,
        accepted,
        requests,
        marks,
        idle_closes,
        task,
    }
}

async fn serve_raw(
    mut s: TcpStream,
    conn: usize,
    idle_close: Option<Duration>,
    script: Arc<Script>,
    requests: Arc<AtomicUsize>,
    marks: Arc<Notify>,
    idle_closes: mpsc::UnboundedSender<Duration>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut nth = 0;
    let mut idle_since = Instant::now();
    loop {
        let wait = idle_close.unwrap_or(IO_LIMIT);
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout(wait, s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                Ok(Ok(_)) if buf.is_empty() && nth > 0 => {
                    let _ = idle_closes.send(idle_since.elapsed());
                    return;
                }
                // EOF, an error, or idle for `wait`: the server closes.
                _ => {
                    let _ = s.shutdown().await;
                    return;
                }
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let Some(body) = common::read_length_body(&mut s, &mut buf, &head).await else {
            return;
        };
        nth += 1;
        requests.fetch_add(1, SeqCst);
        let req = Req {
            head,
            body,
            conn,
            nth,
        };
        for step in script(&req) {
            match step {
                Step::Write(bytes) => {
                    // ginx may close first (a head it refuses): stop quietly.
                    match tokio::time::timeout(IO_LIMIT, s.write_all(&bytes)).await {
                        Ok(Ok(())) => {}
                        _ => return,
                    }
                }
                Step::Pause(d) => tokio::time::sleep(d).await,
                Step::Mark => marks.notify_one(),
                Step::Close => {
                    let _ = s.shutdown().await;
                    return;
                }
            }
        }
        idle_since = Instant::now();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A 200 with a Content-Length body and `extra` header lines.
fn ok(body: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A body that tells which connection and which request on it answered.
fn whoami(req: &Req) -> String {
    format!(
        "conn={} nth={} {} {}",
        req.conn,
        req.nth,
        req.method(),
        req.target()
    )
}

// ---------------------------------------------------------------------------
// The gateway and the client side.

/// A gateway proxying everything to `up`; `group` holds extra settings of
/// the upstream group, one `key: value` a line.
async fn gateway(up: SocketAddr, group: &str) -> common::Gateway {
    let settings: String = group
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("    {}\n", l.trim()))
        .collect();
    let yaml = format!(
        r#"
upstreams:
  app:
    servers: ["{up}"]
{settings}servers:
  - listen: ["127.0.0.1:{{p0}}"]
    locations:
      - location: /
        proxy_pass: http://app
"#
    );
    start_one(&yaml, 1).await
}

/// A response as the client got it, up to the close of the connection.
#[derive(Debug)]
struct Got {
    status: u16,
    head: String,
    body: Vec<u8>,
    /// The body ended where its framing says (Content-Length reached, or the
    /// last chunk and the end of the trailers seen).
    complete: bool,
    /// All bytes the client got.
    raw: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send `request` (which should say `Connection: close`) to ginx and read
/// the one response until ginx closes.
async fn fetch_raw(addr: SocketAddr, request: &[u8], head_request: bool) -> Got {
    let raw = common::raw(addr, request).await;
    let end = find(&raw, b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&raw)))
        + 4;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let rest = &raw[end..];
    let mut got = Got {
        status,
        head,
        body: Vec::new(),
        complete: false,
        raw: raw.clone(),
    };
    let chunked = got
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let length = got.header("content-length").map(|v| v.parse::<usize>());
    if head_request || status == 204 || status == 304 {
        got.complete = rest.is_empty();
    } else if chunked {
        let (body, complete, used) = decode_chunked(rest);
        got.body = body;
        got.complete = complete && used == rest.len();
    } else if let Some(length) = length {
        let length = length.expect("a numeric Content-Length");
        got.body = rest[..rest.len().min(length)].to_vec();
        got.complete = rest.len() == length;
    } else {
        // Close-delimited: whatever came is the body.
        got.body = rest.to_vec();
        got.complete = true;
    }
    got
}

async fn fetch(addr: SocketAddr, method: &str, target: &str) -> Got {
    let req = format!("{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    fetch_raw(addr, req.as_bytes(), method == "HEAD").await
}

/// A chunked body, strictly: (data, whether the last chunk and the end of
/// the trailer section came, bytes used). Stops at anything malformed.
fn decode_chunked(bytes: &[u8]) -> (Vec<u8>, bool, usize) {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(eol) = find(&bytes[pos..], b"\r\n") else {
            return (body, false, pos);
        };
        let line = String::from_utf8_lossy(&bytes[pos..pos + eol]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return (body, false, pos);
        };
        pos += eol + 2;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(eol) = find(&bytes[pos..], b"\r\n") else {
                    return (body, false, pos);
                };
                pos += eol + 2;
                if eol == 0 {
                    return (body, true, pos);
                }
            }
        }
        if bytes.len() < pos + size + 2 || &bytes[pos + size..pos + size + 2] != b"\r\n" {
            let end = bytes.len().min(pos + size);
            body.extend_from_slice(&bytes[pos..end]);
            return (body, false, bytes.len());
        }
        body.extend_from_slice(&bytes[pos..pos + size]);
        pos += size + 2;
    }
}

/// `n` sequential GETs of `target`, each on its own client connection.
async fn gets(addr: SocketAddr, target: &str, n: usize) -> Vec<Got> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(fetch(addr, "GET", target).await);
    }
    out
}

fn assert_all_ok(got: &[Got]) {
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.status, 200, "request {i}: {g:?}");
        assert!(g.complete, "request {i} incomplete: {g:?}");
    }
}

// ---------------------------------------------------------------------------
// 1. Interim responses.

fn interim_script(req: &Req) -> Vec<Step> {
    let hints = b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n";
    let cont = b"HTTP/1.1 100 Continue\r\n\r\n";
    let last = ok(
        &format!("final body {}", req.body.len()),
        "X-Final: yes\r\n",
    );
    if req.target() == "/trickle" {
        // Everything in pieces of 7 bytes: heads parsed from partial reads.
        let mut all = hints.to_vec();
        all.extend_from_slice(cont);
        all.extend_from_slice(&last);
        return all.chunks(7).flat_map(|c| [write(c), pause(1)]).collect();
    }
    if req.target() == "/split" {
        // Each head in its own write: the client reads again after each 1xx.
        vec![write(hints), pause(20), write(cont), pause(20), write(last)]
    } else {
        // All three in one write: the 1xx heads are consumed from the buffer.
        let mut all = hints.to_vec();
        all.extend_from_slice(cont);
        all.extend_from_slice(&last);
        vec![write(all)]
    }
}

#[tokio::test]
async fn interim_1xx_heads_are_skipped_and_the_final_response_arrives_exactly() {
    let up = raw_upstream(interim_script).await;
    let gw = gateway(up.addr, "").await;
    let a = gw.addr(0);
    for target in ["/split", "/together", "/trickle"] {
        let r = fetch(a, "GET", target).await;
        assert_eq!(r.status, 200, "{target}: {r:?}");
        assert_eq!(r.text(), "final body 0", "{target}");
        assert!(r.complete, "{target}: {r:?}");
        assert_eq!(r.header("x-final"), Some("yes"));
        assert_eq!(r.header("link"), None, "a 1xx's fields leaked: {r:?}");
        let text = String::from_utf8_lossy(&r.raw);
        assert!(
            !text.contains("103") && !text.contains("100 Continue"),
            "{target}: an interim head reached the client: {text:?}"
        );
    }
    // A small POST goes the same way (its body is sent whole with the head).
    let r = fetch_raw(
        a,
        b"POST /split HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
        false,
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "final body 3"));
    // The final body ended where its length said: the connection was kept
    // and carried every request.
    assert_eq!(up.requests(), 4);
    assert_eq!(up.accepted(), 1, "the connection was not reused after 1xx");
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 2. When a connection is reused.

#[tokio::test]
async fn content_length_responses_reuse_one_connection() {
    let up = raw_upstream(|req| vec![write(ok(&whoami(req), ""))]).await;
    let gw = gateway(up.addr, "").await;
    let got = gets(gw.addr(0), "/a", 5).await;
    assert_all_ok(&got);
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.text(), format!("conn=1 nth={} GET /a", i + 1));
    }
    assert_eq!(up.accepted(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn bodiless_responses_leave_the_connection_reusable() {
    // HEAD (with a Content-Length of the body it does not send), 204, 304
    // and Content-Length: 0 have no body: the next response must be read
    // from the next byte.
    let up = raw_upstream(|req| {
        let reply = match (req.method(), req.target()) {
            ("HEAD", _) => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec(),
            (_, "/204") => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            (_, "/304") => b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n".to_vec(),
            (_, "/empty") => ok("", ""),
            _ => ok(&whoami(req), ""),
        };
        vec![write(reply)]
    })
    .await;
    let gw = gateway(up.addr, "").await;
    let a = gw.addr(0);
    let r = fetch(a, "HEAD", "/h").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("10"));
    assert!(r.complete, "{r:?}");
    assert_eq!(fetch(a, "GET", "/204").await.status, 204);
    assert_eq!(fetch(a, "GET", "/304").await.status, 304);
    let r = fetch(a, "GET", "/empty").await;
    assert_eq!((r.status, r.body.len(), r.complete), (200, 0, true));
    let r = fetch(a, "GET", "/after").await;
    assert_eq!(r.text(), "conn=1 nth=5 GET /after");
    assert_eq!(up.accepted(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn connection_close_from_the_upstream_is_obeyed() {
    // The upstream says close and closes.
    let up = raw_upstream(|req| {
        vec![
            write(ok(&whoami(req), "Connection: close\r\n")),
            Step::Close,
        ]
    })
    .await;
    let gw = gateway(up.addr, "").await;
    let got = gets(gw.addr(0), "/c", 5).await;
    assert_all_ok(&got);
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.text(), format!("conn={} nth=1 GET /c", i + 1));
    }
    assert_eq!(up.accepted(), 5);
    gw.stop().await;

    // The upstream says close but leaves the socket open (and would answer
    // more): ginx must still not send another request on it.
    let up = raw_upstream(|req| vec![write(ok(&whoami(req), "Connection: close\r\n"))]).await;
    let gw = gateway(up.addr, "").await;
    let got = gets(gw.addr(0), "/c", 5).await;
    assert_all_ok(&got);
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.text(), format!("conn={} nth=1 GET /c", i + 1));
    }
    assert_eq!(
        up.accepted(),
        5,
        "a connection the server closed was reused"
    );
    gw.stop().await;
}

fn http10(body: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.0 200 OK\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn http10_responses_are_kept_only_with_keep_alive() {
    // HTTP/1.0 without keep-alive, and the server closes: all succeed.
    let up = raw_upstream(|req| vec![write(http10(&whoami(req), "")), Step::Close]).await;
    let gw = gateway(up.addr, "").await;
    let got = gets(gw.addr(0), "/ten", 5).await;
    assert_all_ok(&got);
    assert!(got.iter().all(|g| g.text().ends_with("nth=1 GET /ten")));
    assert_eq!(up.accepted(), 5);
    gw.stop().await;

    // HTTP/1.0 without keep-alive, the socket left open: not reused.
    let up = raw_upstream(|req| vec![write(http10(&whoami(req), ""))]).await;
    let gw = gateway(up.addr, "").await;
    let got = gets(gw.addr(0), "/ten", 5).await;
    assert_all_ok(&got);
    assert!(got.iter().all(|g| g.text().ends_with("nth=1 GET /ten")));
    assert_eq!(
        up.accepted(),
        5,
        "an HTTP/1.0 connection without keep-alive was reused"
    );
    gw.stop().await;

    // HTTP/1.0 with Connection: keep-alive: reused.
    let up =
        raw_upstream(|req| vec![write(http10(&whoami(req), "Connection: keep-alive\r\n"))]).await;
    let gw = gateway(up.addr, "").await;
    let got = gets(gw.addr(0), "/ten", 5).await;
    assert_all_ok(&got);
    assert_eq!(got[4].text(), "conn=1 nth=5 GET /ten");
    assert_eq!(up.accepted(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn keepalive_zero_opens_a_connection_per_request() {
    let up = raw_upstream(|req| vec![write(ok(&whoami(req), ""))]).await;
    let gw = gateway(up.addr, "keepalive: 0").await;
    let got = gets(gw.addr(0), "/z", 5).await;
    assert_all_ok(&got);
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.text(), format!("conn={} nth=1 GET /z", i + 1));
    }
    assert_eq!(up.accepted(), 5);
    gw.stop().await;
}

/// What a desynchronized client would take for the next response.
const SMUGGLED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Smuggled: 1\r\n\r\nEVIL";

#[tokio::test]
async fn bytes_after_a_content_length_body_make_the_connection_unusable() {
    // The extra bytes in the same write as the body.
    let up = raw_upstream(|req| {
        let mut reply = ok(&whoami(req), "");
        if req.target() == "/dirty" {
            reply.extend_from_slice(SMUGGLED);
        }
        vec![write(reply)]
    })
    .await;
    let gw = gateway(up.addr, "").await;
    let a = gw.addr(0);
    let r = fetch(a, "GET", "/dirty").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "conn=1 nth=1 GET /dirty", "exactly the body");
    assert!(r.complete && !String::from_utf8_lossy(&r.raw).contains("EVIL"));
    let r = fetch(a, "GET", "/next").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        "conn=2 nth=1 GET /next",
        "the next request went on the dirty connection"
    );
    assert_eq!(r.header("x-smuggled"), None);
    assert_eq!(up.accepted(), 2);
    gw.stop().await;

    // The extra bytes a little after the body, once ginx has the
    // connection back in its idle list.
    let up = raw_upstream(|req| {
        let mut steps = vec![write(ok(&whoami(req), ""))];
        if req.target() == "/dirty" {
            steps.extend([pause(30), write(SMUGGLED), Step::Mark]);
        }
        steps
    })
    .await;
    let gw = gateway(up.addr, "").await;
    let a = gw.addr(0);
    let r = fetch(a, "GET", "/dirty").await;
    assert_eq!(r.text(), "conn=1 nth=1 GET /dirty");
    up.marked().await;
    let r = fetch(a, "GET", "/next").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.text(),
        "conn=2 nth=1 GET /next",
        "an idle connection with stray bytes was reused"
    );
    assert_eq!(up.accepted(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn a_body_after_a_204_and_a_doubly_framed_response_are_not_reused() {
    let up = raw_upstream(|req| {
        let reply: Vec<u8> = match req.target() {
            // A 204 has no body, whatever follows it.
            "/204" => b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            // Both framings: read as chunked (RFC 9112 6.3), then closed.
            "/both" => {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n\
                         5\r\nhello\r\n0\r\n\r\n"
                    .to_vec()
            }
            _ => ok(&whoami(req), ""),
        };
        vec![write(reply)]
    })
    .await;
    let gw = gateway(up.addr, "").await;
    let a = gw.addr(0);
    let r = fetch(a, "GET", "/204").await;
    assert_eq!(r.status, 204);
    assert!(r.complete, "a 204 got a body: {r:?}");
    assert_eq!(fetch(a, "GET", "/n").await.text(), "conn=2 nth=1 GET /n");
    let r = fetch(a, "GET", "/both").await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
    assert!(r.complete, "{r:?}");
    assert_eq!(r.header("content-length"), None, "{r:?}");
    // /both went on the kept connection 2, which is then not kept.
    assert_eq!(fetch(a, "GET", "/n").await.text(), "conn=3 nth=1 GET /n");
    gw.stop().await;
}

#[tokio::test]
async fn keepalive_caps_the_idle_connections_kept() {
    let mut up = raw_upstream(|req| match req.target() {
        "/slow" => vec![pause(200), write(ok(&whoami(req), ""))],
        _ => vec![write(ok(&whoami(req), ""))],
    })
    .await;
    let gw = gateway(up.addr, "keepalive: 2").await;
    let a = gw.addr(0);
    let burst = || async move {
        let mut all = tokio::task::JoinSet::new();
        for _ in 0..4 {
            all.spawn(async move { fetch(a, "GET", "/slow").await });
        }
        while let Some(r) = all.join_next().await {
            assert_eq!(r.unwrap().status, 200);
        }
    };
    // Four at once: four connections.
    burst().await;
    assert_eq!(up.accepted(), 4);
    // Four at once again right after: the surplus over keepalive was kept
    // for that (nginx would have closed it and connected twice more).
    burst().await;
    assert_eq!(
        up.accepted(),
        4,
        "the surplus of a burst was closed at once"
    );
    // Two of them are kept; ginx closes the other two once they have been
    // idle a second (a sweep runs every second).
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(4), up.idle_closes.recv())
            .await
            .expect("more idle connections kept than keepalive allows");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), up.idle_closes.recv())
            .await
            .is_err(),
        "fewer idle connections kept than keepalive allows"
    );
    // The two kept ones carry the next requests.
    for _ in 0..4 {
        let r = fetch(a, "GET", "/fast").await;
        assert!(
            r.text().ends_with("GET /fast") && !r.text().contains("nth=1"),
            "{r:?}"
        );
    }
    assert_eq!(up.accepted(), 4);
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 3. Kept connections that the server closed.

#[tokio::test]
async fn an_upstream_closing_right_after_each_keep_alive_answer_costs_no_request() {
    // The response says nothing of closing (HTTP/1.1, keep-alive), then the
    // server closes at once.
    let up = raw_upstream(|req| vec![write(ok(&whoami(req), "")), Step::Close]).await;
    let gw = gateway(up.addr, "").await;
    let got = gets(gw.addr(0), "/gone", 10).await;
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.status, 200, "request {i} failed: {g:?}");
        assert!(g.text().ends_with("nth=1 GET /gone"), "{g:?}");
    }
    assert_eq!(up.accepted(), up.requests());
    gw.stop().await;
}

/// Answers the first request of each connection and keeps it; on a second
/// request it closes without answering (as a server whose own idle timeout
/// fires as the request arrives).
fn one_per_connection(req: &Req) -> Vec<Step> {
    match req.nth {
        1 => vec![write(ok(&whoami(req), ""))],
        _ => vec![Step::Close],
    }
}

#[tokio::test]
async fn a_get_on_a_kept_connection_closed_unanswered_is_sent_again_on_a_new_one() {
    let up = raw_upstream(one_per_connection).await;
    let gw = gateway(up.addr, "").await;
    let got = gets(gw.addr(0), "/again", 5).await;
    for (i, g) in got.iter().enumerate() {
        assert_eq!(g.status, 200, "request {i}: {g:?}");
        assert_eq!(g.text(), format!("conn={} nth=1 GET /again", i + 1));
    }
    // Each request after the first went on the kept connection, was closed
    // unanswered, and went again on a new one.
    assert_eq!(up.accepted(), 5);
    assert_eq!(up.requests(), 9);
    gw.stop().await;
}

#[tokio::test]
async fn a_post_on_a_kept_connection_closed_unanswered_is_resent_only_if_allowed() {
    let post = b"POST /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 4\r\n\r\ndata";
    // Default next_upstream: a POST that was sent is not sent again (as
    // nginx): 502, and the upstream saw it once.
    let up = raw_upstream(one_per_connection).await;
    let gw = gateway(up.addr, "").await;
    assert_eq!(fetch_raw(gw.addr(0), post, false).await.status, 200);
    assert_eq!(fetch_raw(gw.addr(0), post, false).await.status, 502);
    assert_eq!((up.accepted(), up.requests()), (1, 2));
    gw.stop().await;

    // With non_idempotent: sent again on a new connection.
    let up = raw_upstream(one_per_connection).await;
    let gw = gateway(up.addr, "next_upstream: [error, timeout, non_idempotent]").await;
    assert_eq!(fetch_raw(gw.addr(0), post, false).await.status, 200);
    let r = fetch_raw(gw.addr(0), post, false).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.text(), "conn=2 nth=1 POST /p");
    assert_eq!((up.accepted(), up.requests()), (2, 3));
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 4. keepalive_timeout, and servers that close idle connections.

#[tokio::test]
async fn idle_connections_are_closed_at_keepalive_timeout() {
    let mut up = raw_upstream(|req| vec![write(ok(&whoami(req), ""))]).await;
    let gw = gateway(up.addr, "keepalive_timeout: 1s").await;
    let a = gw.addr(0);
    // Within the timeout the connection is reused.
    assert_eq!(fetch(a, "GET", "/1").await.text(), "conn=1 nth=1 GET /1");
    assert_eq!(fetch(a, "GET", "/2").await.text(), "conn=1 nth=2 GET /2");
    // Then ginx closes it, not at once and not much later than 1s.
    let idle = tokio::time::timeout(Duration::from_secs(4), up.idle_closes.recv())
        .await
        .expect("ginx kept an idle upstream connection over 4s with keepalive_timeout 1s")
        .unwrap();
    assert!(
        idle >= Duration::from_millis(900),
        "closed after {idle:?}, before keepalive_timeout"
    );
    // The next request goes on a new connection, without error.
    assert_eq!(fetch(a, "GET", "/3").await.text(), "conn=2 nth=1 GET /3");
    assert_eq!(up.accepted(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn a_server_closing_its_idle_connection_causes_no_error() {
    // The server closes a connection idle for 100 ms (with a FIN).
    let up = raw_upstream_idle(Some(Duration::from_millis(100)), |req| {
        vec![write(ok(&whoami(req), ""))]
    })
    .await;
    let gw = gateway(up.addr, "").await;
    let a = gw.addr(0);
    for i in 1..=4 {
        let r = fetch(a, "GET", "/idle").await;
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.text(), format!("conn={i} nth=1 GET /idle"));
        // Past the server's idle timeout, well before ginx's sweep (1 s).
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Each request found the kept connection closed before sending on it.
    assert_eq!((up.accepted(), up.requests()), (4, 4));
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 5. Chunked framing.

#[tokio::test]
async fn chunk_extensions_are_ignored_and_the_body_ends_exactly() {
    let up = raw_upstream(|req| {
        let body: &[u8] = match req.target() {
            "/ext" => b"5;ext=1\r\nhello\r\n0\r\n\r\n",
            _ => b"6 ; a=b;c=\"x;y\"\r\n world\r\n0;last=1\r\n\r\n",
        };
        let mut reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        reply.extend_from_slice(body);
        vec![write(reply)]
    })
    .await;
    let gw = gateway(up.addr, "").await;
    let r = fetch(gw.addr(0), "GET", "/ext").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    assert!(r.complete, "{r:?}");
    let r = fetch(gw.addr(0), "GET", "/more").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), " world");
    assert!(r.complete, "{r:?}");
    // The last chunk ended the first body: the connection was reused.
    assert_eq!(up.accepted(), 1);
    gw.stop().await;
}

/// A chunk-size line may have any number of leading zeros (RFC 9112 7.1,
/// `chunk-size = 1*HEXDIG`); nginx and hyper accept them, and so does ginx
/// (it once refused more than 15 digits and cut the body).
#[tokio::test]
async fn chunk_sizes_with_leading_zeros_are_valid() {
    let up = raw_upstream(|req| {
        let body: &[u8] = match req.target() {
            "/size" => b"0000000000000005\r\nhello\r\n0\r\n\r\n",
            _ => b"5\r\nhello\r\n00000000000000000\r\n\r\n",
        };
        let mut reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        reply.extend_from_slice(body);
        vec![write(reply)]
    })
    .await;
    let gw = gateway(up.addr, "").await;
    for target in ["/size", "/last"] {
        let r = fetch(gw.addr(0), "GET", target).await;
        assert_eq!(r.status, 200, "{target}");
        assert!(r.complete && r.text() == "hello", "{target}: {r:?}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn an_invalid_chunk_size_cuts_the_response() {
    let up = raw_upstream(|req| {
        let body: &[u8] = match req.target() {
            "/first" => b"zz\r\nhello\r\n0\r\n\r\n",
            "/second" => b"5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n",
            // Hex digits then junk: not a size either (a parser that takes
            // the leading digits would pass the rest off as complete).
            "/third" => b"5zz\r\nhello\r\n0\r\n\r\n",
            _ => return vec![write(ok(&whoami(req), ""))],
        };
        let mut reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        reply.extend_from_slice(body);
        vec![write(reply)]
    })
    .await;
    let gw = gateway(up.addr, "").await;
    let a = gw.addr(0);
    for (target, conn) in [("/first", 1), ("/second", 2), ("/third", 3)] {
        let r = fetch(a, "GET", target).await;
        // Either nothing of it (502) or a 200 whose body never completes.
        assert!(
            r.status == 502 || (r.status == 200 && !r.complete),
            "{target}: a body with a bad chunk size was passed off as complete: {r:?}"
        );
        assert!(!r.text().contains("world"), "{target}: {r:?}");
        // The broken connection is not reused.
        let r = fetch(a, "GET", "/ok").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("conn={} nth=1 GET /ok", conn + 1));
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// 6. Heads refused.

/// A response head of about `kib` KiB (header lines of 1000 bytes).
fn big_head(kib: usize, complete: bool) -> Vec<u8> {
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..kib * 1024 / 1000 {
        head.extend_from_slice(format!("X-Pad-{i:02}: ").as_bytes());
        head.extend_from_slice(&[b'a'; 1000 - 12]);
        head.extend_from_slice(b"\r\n");
    }
    if complete {
        head.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
    }
    head
}

#[tokio::test]
async fn a_response_head_over_64_kib_is_a_502() {
    let up = raw_upstream(|req| match req.target() {
        // Just under the limit: accepted whole.
        "/60k" => vec![write(big_head(60, true))],
        "/80k" => vec![write(big_head(80, true))],
        // Over the limit and never finished: refused at the limit, without
        // waiting for read_timeout.
        _ => vec![write(big_head(80, false)), pause(10_000)],
    })
    .await;
    let gw = gateway(up.addr, "read_timeout: 5s").await;
    let a = gw.addr(0);
    let r = fetch(a, "GET", "/60k").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
    assert!(r.header("x-pad-59").is_some_and(|v| v.len() == 988));
    let r = fetch(a, "GET", "/80k").await;
    assert_eq!(r.status, 502, "{}", r.head.len());
    let started = Instant::now();
    let r = fetch(a, "GET", "/endless").await;
    assert_eq!(r.status, 502);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a head over the limit was waited on for {:?}",
        started.elapsed()
    );
    gw.stop().await;
}

#[tokio::test]
async fn switching_protocols_unasked_is_a_502() {
    let up = raw_upstream(|req| match req.target() {
        // What follows a 101 is the new protocol, even if it looks like an
        // HTTP response: the 101 is not an interim head to skip.
        "/switch" => vec![write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nraw bytes",
        )],
        _ => vec![write(ok(&whoami(req), ""))],
    })
    .await;
    let gw = gateway(up.addr, "").await;
    let r = fetch(gw.addr(0), "GET", "/switch").await;
    assert_eq!(r.status, 502, "{r:?}");
    assert!(!String::from_utf8_lossy(&r.raw).contains("raw bytes"));
    // The switched connection is not reused either.
    let r = fetch(gw.addr(0), "GET", "/after").await;
    assert_eq!(r.text(), "conn=2 nth=1 GET /after");
    gw.stop().await;
}

// ---------------------------------------------------------------------------
// The response head as the client gets it.

/// The header lines of a response head, without its status line and Date.
fn field_lines(head: &str) -> Vec<&str> {
    head.split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty() && !l.starts_with("date:"))
        .collect()
}

#[tokio::test]
async fn an_upstreams_fields_reach_the_client_in_its_order_lower_cased() {
    // Repeated names apart from each other, mixed case, hop-by-hop and
    // Connection-named fields among them.
    let up = raw_upstream(|_| {
        vec![write(
            "HTTP/1.1 200 OK\r\nServer: upstream\r\nSet-Cookie: a=1\r\nX-Mid: m\r\n\
             Connection: keep-alive, X-Hop\r\nX-Hop: gone\r\nDate: then\r\n\
             set-cookie: b=2\r\nCONTENT-TYPE: text/plain\r\nContent-Length: 2\r\n\
             Keep-Alive: timeout=5\r\nX-Last: l\r\n\r\nok",
        )]
    })
    .await;
    let gw = gateway(up.addr, "").await;
    let expected = [
        "set-cookie: a=1",
        "x-mid: m",
        "set-cookie: b=2",
        "content-type: text/plain",
        "content-length: 2",
        "x-last: l",
        "server: ginx",
        "connection: close", // the client asked for it
    ];
    let r = fetch(gw.addr(0), "GET", "/").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(field_lines(&r.head), expected, "{:?}", r.head);
    assert_eq!(r.head.matches("date: ").count(), 1, "ginx's own Date only");
    // HEAD: the same fields, the upstream's Content-Length among them.
    let r = fetch(gw.addr(0), "HEAD", "/").await;
    assert_eq!(field_lines(&r.head), expected, "{:?}", r.head);
    assert!(r.complete && r.body.is_empty());
    gw.stop().await;
}

/// The upstream answers with the head it got, as its body.
fn echo_head(req: &Req) -> Vec<Step> {
    vec![write(ok(&req.head, ""))]
}

#[tokio::test]
async fn a_bodiless_request_goes_up_with_its_fields_as_the_client_spelled_them() {
    let up = raw_upstream(echo_head).await;
    let gw = gateway(up.addr, "").await;
    let request = b"GET /x HTTP/1.1\r\nHost: x\r\nX-Mixed-Case: One\r\nuser-AGENT: t\r\n\
        X-SECRET: s\r\nX_Under: u\r\nX-Forwarded-Proto: gopher\r\n\
        Connection: close, x-secret\r\n\r\n";
    let got = fetch_raw(gw.addr(0), request, false).await;
    assert_eq!(got.status, 200);
    let sent = got.text();
    let lines: Vec<&str> = sent
        .split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .collect();
    // As nginx: the client's spelling, not a map's lower case.
    assert!(lines.contains(&"X-Mixed-Case: One"), "{sent:?}");
    assert!(lines.contains(&"user-AGENT: t"), "{sent:?}");
    // Dropped whatever their case: what Connection names, Connection, `_`.
    for gone in ["x-secret", "connection", "x_under"] {
        assert!(
            !lines
                .iter()
                .any(|l| l.to_ascii_lowercase().starts_with(gone)),
            "{gone} went up: {sent:?}"
        );
    }
    // ginx's own fields replace the client's, once each.
    let named = |name: &str| {
        lines
            .iter()
            .filter(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .count()
    };
    assert!(lines.contains(&"x-forwarded-proto: http"), "{sent:?}");
    assert_eq!(named("x-forwarded-proto"), 1, "{sent:?}");
    assert_eq!(named("host"), 1, "{sent:?}");
    assert_eq!(named("x-forwarded-for"), 1, "{sent:?}");
    gw.stop().await;
}

#[tokio::test]
async fn read_timeout_counts_from_each_request_on_a_kept_connection() {
    // One upstream connection, read_timeout 1 s. The second request starts
    // 0.8 s after the first and is answered 0.5 s later: past the first
    // request's deadline, within its own. The third is answered only after
    // 1.6 s: 504 at its own deadline, not at once.
    let up = raw_upstream(|req| match req.nth {
        1 => vec![write(ok(&whoami(req), ""))],
        2 => vec![pause(500), write(ok(&whoami(req), ""))],
        _ => vec![pause(1_600), write(ok(&whoami(req), ""))],
    })
    .await;
    let gw = gateway(up.addr, "read_timeout: 1s").await;
    let first = fetch(gw.addr(0), "GET", "/1").await;
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, "conn=1 nth=1 GET /1")
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let second = fetch(gw.addr(0), "GET", "/2").await;
    assert_eq!(
        (second.status, second.text().as_str()),
        (200, "conn=1 nth=2 GET /2")
    );
    let asked = Instant::now();
    let third = fetch(gw.addr(0), "GET", "/3").await;
    assert_eq!(third.status, 504, "{}", third.text());
    assert!(
        asked.elapsed() >= Duration::from_millis(900),
        "504 after {:?}, before the third request's own read_timeout",
        asked.elapsed()
    );
    assert_eq!(up.accepted(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_reload_that_shortens_read_timeout_holds_on_a_kept_connection() {
    // The kept connection's timer was set for the old read_timeout (10 s);
    // after a reload to 300 ms the next wait must end at 300 ms (504), not
    // when the upstream answers at 1.5 s.
    let up = raw_upstream(|req| match req.nth {
        1 => vec![write(ok(&whoami(req), ""))],
        _ => vec![pause(1_500), write(ok(&whoami(req), ""))],
    })
    .await;
    let gw = gateway(up.addr, "read_timeout: 10s").await;
    let first = fetch(gw.addr(0), "GET", "/1").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let main = gw.dir.path().join("ginx.yaml");
    let shorter = std::fs::read_to_string(&main)
        .unwrap()
        .replace("read_timeout: 10s", "read_timeout: 300ms");
    std::fs::write(&main, shorter).unwrap();
    let shared = gw.running.as_ref().unwrap().shared.clone();
    assert!(
        ginx::reload::reload(&shared, &main, "test").await,
        "the reload was refused"
    );
    let asked = Instant::now();
    let second = fetch(gw.addr(0), "GET", "/2").await;
    assert_eq!(second.status, 504, "{}", second.text());
    assert!(
        asked.elapsed() < Duration::from_millis(1_400),
        "504 after {:?}: the old deadline held",
        asked.elapsed()
    );
    assert_eq!(up.accepted(), 1, "the kept connection was not the one used");
    gw.stop().await;
}
