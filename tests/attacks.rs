//! Hostile HTTP/1.1 input: every case of `tests/corpus/http1.txt` is sent as
//! raw bytes on a fresh connection to ginx, which proxies to a recording
//! upstream (a strict raw-TCP HTTP/1.1 parser written here). Checked per case:
//!
//! - the status of the first final response is the one the case expects;
//! - a rejected case (`close`): the connection is closed after the answer and
//!   the upstream received nothing;
//! - a forwarded case: the upstream received exactly that many requests;
//!
//! and for every request the upstream ever received, whatever the case:
//!
//! - its framing is consistent: at most one Content-Length or Transfer-Encoding
//!   (never both, never a look-alike such as `Content_Length`), the body is
//!   exactly what that header says, the chunked framing is strict, no control
//!   bytes in names or values, exactly one Host;
//! - ginx logged it: the access log (JSON) gained a line with `upstream_addr`
//!   for each request the upstream saw during the case.
//!
//! Every failure is collected and reported in one assertion at the end.
//!
//! The corpus format is described at the top of `tests/corpus/http1.txt`.
//!
//! `ATTACKS_ONLY=SUBSTRING` runs the cases whose name contains it.
//! `ATTACKS_NGINX=/usr/sbin/nginx` also runs every case against a real nginx
//! (started here on 127.0.0.1, proxying to its own recording upstream) and
//! prints nginx's answer next to ginx's; nginx's results never fail the test.

mod common;
use common::{start_one, IO_LIMIT};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// No case takes longer than this (ginx's header and body timeouts are 2s).
const CASE_LIMIT: Duration = Duration::from_secs(4);
/// After a complete response on a kept-alive connection: how long to wait
/// for anything more (a pipelined request's answer).
const IDLE_AFTER_RESPONSE: Duration = Duration::from_millis(300);
/// After a rejection: how long the server may take to close.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// The corpus.

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// ginx answers itself and closes; the upstream sees nothing.
    Close,
    /// The upstream receives exactly this many requests.
    Forwarded(usize),
}

#[derive(Debug, Clone)]
struct Outcome {
    statuses: Vec<u16>,
    kind: Kind,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let codes: Vec<String> = self.statuses.iter().map(|s| s.to_string()).collect();
        match self.kind {
            Kind::Close => write!(f, "{} close", codes.join("|")),
            Kind::Forwarded(1) => write!(f, "{} forwarded", codes.join("|")),
            Kind::Forwarded(n) => write!(f, "{} forwarded x{n}", codes.join("|")),
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    line: usize,
    /// Any one of these is a pass.
    expect: Vec<Outcome>,
    why: String,
    nginx: Option<String>,
    /// A defect ginx still has, tracked in an open issue: the case runs and
    /// is printed as KNOWN, not failed; once it passes, the run fails until
    /// the `known:` line is removed (the list can only shrink).
    known: Option<String>,
    /// Byte strings the upstream's head must contain / must not contain.
    upstream_has: Vec<Vec<u8>>,
    upstream_lacks: Vec<Vec<u8>>,
    request: Vec<u8>,
}

fn expect_text(e: &[Outcome]) -> String {
    e.iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// `\r \n \t \0 \v \f \\ \xHH`, and `{{N*TEXT}}` for TEXT (itself escaped)
/// repeated N times.
fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"{{") {
            // The matching `}}` (repetitions nest).
            let mut depth = 0;
            let mut j = i;
            let end = loop {
                if j + 1 >= b.len() {
                    return Err(format!("unclosed {{{{ in {s:?}"));
                }
                if b[j..].starts_with(b"{{") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"}}") {
                    depth -= 1;
                    if depth == 0 {
                        break j - i;
                    }
                    j += 2;
                } else {
                    j += 1;
                }
            };
            let inner = &s[i + 2..i + end];
            let (n, text) = inner
                .split_once('*')
                .ok_or_else(|| format!("{{{{N*TEXT}}}} expected, got {inner:?}"))?;
            let n: usize = n.trim().parse().map_err(|_| format!("bad count {n:?}"))?;
            let text = unescape(text)?;
            for _ in 0..n {
                out.extend_from_slice(&text);
            }
            i += end + 2;
            continue;
        }
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let Some(&c) = b.get(i + 1) else {
            // A trailing lone backslash: the line continues (nothing to add).
            break;
        };
        i += 2;
        match c {
            b'r' => out.push(b'\r'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'0' => out.push(0),
            b'v' => out.push(0x0b),
            b'f' => out.push(0x0c),
            b'\\' => out.push(b'\\'),
            b'x' => {
                let hex = s
                    .get(i..i + 2)
                    .ok_or_else(|| format!("short \\x in {s:?}"))?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("bad \\x{hex}"))?);
                i += 2;
            }
            other => return Err(format!("unknown escape \\{} in {s:?}", other as char)),
        }
    }
    Ok(out)
}

fn parse_outcome(text: &str) -> Result<Outcome, String> {
    let mut words = text.split_whitespace();
    let codes = words.next().ok_or("empty expect")?;
    let statuses = codes
        .split('|')
        .map(|c| c.parse::<u16>().map_err(|_| format!("bad status {c:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    let kind = match (words.next(), words.next()) {
        (Some("close"), None) => Kind::Close,
        (Some("forwarded"), None) => Kind::Forwarded(1),
        (Some("forwarded"), Some(n)) => Kind::Forwarded(
            n.strip_prefix('x')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("bad count {n:?}"))?,
        ),
        _ => {
            return Err(format!(
                "expected `CODE close` or `CODE forwarded [xN]`: {text:?}"
            ))
        }
    };
    Ok(Outcome { statuses, kind })
}

fn strip_comment(v: &str) -> &str {
    match v.find(" #") {
        Some(i) => v[..i].trim(),
        None => v.trim(),
    }
}

fn parse_corpus(text: &str) -> Result<Vec<Case>, String> {
    let mut cases: Vec<Case> = Vec::new();
    let mut in_request = false;
    let mut pending: Option<(Case, String)> = None;
    let finish = |p: Option<(Case, String)>, cases: &mut Vec<Case>| -> Result<(), String> {
        if let Some((mut c, req)) = p {
            c.request = unescape(&req).map_err(|e| format!("case {}: {e}", c.name))?;
            if c.expect.is_empty() {
                return Err(format!("case {} (line {}): no expect:", c.name, c.line));
            }
            if c.request.is_empty() {
                return Err(format!("case {} (line {}): no request", c.name, c.line));
            }
            if cases.iter().any(|o| o.name == c.name) {
                return Err(format!("case {} (line {}): duplicate name", c.name, c.line));
            }
            cases.push(c);
        }
        Ok(())
    };
    for (n, line) in text.lines().enumerate() {
        if let Some(name) = line.strip_prefix("=== ") {
            finish(pending.take(), &mut cases)?;
            in_request = false;
            pending = Some((
                Case {
                    name: name.trim().to_string(),
                    line: n + 1,
                    expect: Vec::new(),
                    why: String::new(),
                    nginx: None,
                    known: None,
                    upstream_has: Vec::new(),
                    upstream_lacks: Vec::new(),
                    request: Vec::new(),
                },
                String::new(),
            ));
            continue;
        }
        let Some((case, req)) = pending.as_mut() else {
            continue; // the preamble
        };
        if in_request {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            // Newlines in the file are not part of the request; a trailing
            // `\` (continuation) is dropped by unescape.
            req.push_str(line.trim_end_matches(['\n']));
            if req.ends_with('\\') && !req.ends_with("\\\\") {
                req.pop();
            }
            continue;
        }
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if t.starts_with("--- request") {
            in_request = true;
        } else if let Some(v) = t.strip_prefix("expect:") {
            for alt in strip_comment(v).split(" or ") {
                case.expect
                    .push(parse_outcome(alt).map_err(|e| format!("line {}: {e}", n + 1))?);
            }
        } else if let Some(v) = t.strip_prefix("why:") {
            case.why = v.trim().to_string();
        } else if let Some(v) = t.strip_prefix("nginx:") {
            case.nginx = Some(v.trim().to_string());
        } else if let Some(v) = t.strip_prefix("known:") {
            case.known = Some(v.trim().to_string());
        } else if let Some(v) = t.strip_prefix("upstream-has:") {
            case.upstream_has.push(unescape(v.trim())?);
        } else if let Some(v) = t.strip_prefix("upstream-lacks:") {
            case.upstream_lacks.push(unescape(v.trim())?);
        } else {
            return Err(format!("line {}: unknown line {t:?}", n + 1));
        }
    }
    finish(pending.take(), &mut cases)?;
    Ok(cases)
}

// ---------------------------------------------------------------------------
// The recording upstream: strict HTTP/1.1, records every request (complete or
// not) with what was wrong with it, answers `200 ok`.

#[derive(Debug, Clone)]
struct Received {
    raw: Vec<u8>,
    head: Vec<u8>,
    body: Vec<u8>,
    /// The connection ended before the request did.
    complete: bool,
    /// Framing or syntax faults: any is a failure of the case it arrived in.
    problems: Vec<String>,
}

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Recorder {
    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    fn since(&self, n: usize) -> Vec<Received> {
        self.seen.lock().unwrap()[n..].to_vec()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn show(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

enum Framing {
    Length(u64),
    Chunked,
    /// Cannot be delimited: record and close.
    Broken,
}

/// Check a head (without its final CRLFCRLF); returns the framing and the
/// problems found.
fn check_head(head: &[u8], problems: &mut Vec<String>) -> Framing {
    let mut lines = Vec::new();
    let mut rest = head;
    while let Some(i) = find(rest, b"\r\n") {
        lines.push(&rest[..i]);
        rest = &rest[i + 2..];
    }
    lines.push(rest);
    let request_line = lines[0];
    if request_line.contains(&b'\n') || request_line.contains(&b'\r') {
        problems.push(format!(
            "bare CR or LF in request line {:?}",
            show(request_line)
        ));
    }
    let parts: Vec<&[u8]> = request_line.split(|&c| c == b' ').collect();
    if parts.len() != 3
        || parts[0].is_empty()
        || !parts[0].iter().all(|&c| is_tchar(c))
        || parts[1].is_empty()
        || parts[1].iter().any(|&c| c <= 0x20 || c == 0x7f)
        || parts[2] != b"HTTP/1.1" && parts[2] != b"HTTP/1.0"
    {
        problems.push(format!("malformed request line {:?}", show(request_line)));
    } else if parts[1][0] != b'/' && parts[1] != b"*" && parts[0] != b"CONNECT" {
        // ginx is a gateway in front of an origin: origin-form only.
        problems.push(format!(
            "request target not in origin-form: {:?}",
            show(parts[1])
        ));
    }
    let mut cl: Vec<&[u8]> = Vec::new();
    let mut te: Vec<&[u8]> = Vec::new();
    let mut hosts = 0;
    for line in &lines[1..] {
        if line.first().is_some_and(|&c| c == b' ' || c == b'\t') {
            problems.push(format!("obs-fold line {:?}", show(line)));
            continue;
        }
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            problems.push(format!("header line without colon {:?}", show(line)));
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&c| is_tchar(c)) {
            problems.push(format!("malformed header name {:?}", show(name)));
        }
        if value.iter().any(|&c| (c < 0x20 && c != b'\t') || c == 0x7f) {
            problems.push(format!(
                "control byte in value of {:?}: {:?}",
                show(name),
                show(value)
            ));
        }
        let value = value.trim_ascii();
        let lower = name.to_ascii_lowercase();
        match lower.as_slice() {
            b"content-length" => cl.push(value),
            b"transfer-encoding" => te.push(value),
            b"host" => hosts += 1,
            _ => {
                // What a lenient parser downstream might take for a framing header.
                let folded: Vec<u8> = lower
                    .iter()
                    .map(|&c| if c == b'_' { b'-' } else { c })
                    .filter(|c| !c.is_ascii_whitespace())
                    .collect();
                if folded == b"content-length" || folded == b"transfer-encoding" {
                    problems.push(format!(
                        "framing look-alike header forwarded: {:?}",
                        show(name)
                    ));
                }
            }
        }
    }
    if parts.get(2).is_some_and(|v| *v == b"HTTP/1.1") && hosts != 1 {
        problems.push(format!("{hosts} Host headers in an HTTP/1.1 request"));
    }
    if !cl.is_empty() && !te.is_empty() {
        problems.push("both Content-Length and Transfer-Encoding".to_string());
    }
    if cl.len() > 1 {
        problems.push(format!("{} Content-Length headers", cl.len()));
    }
    if te.len() > 1 {
        problems.push(format!("{} Transfer-Encoding headers", te.len()));
    }
    if let Some(v) = te.last() {
        if v.eq_ignore_ascii_case(b"chunked") {
            return Framing::Chunked;
        }
        problems.push(format!(
            "Transfer-Encoding {:?} is not just chunked",
            show(v)
        ));
        return Framing::Broken;
    }
    if let Some(v) = cl.last() {
        if !v.is_empty() && v.len() <= 18 && v.iter().all(u8::is_ascii_digit) {
            return Framing::Length(std::str::from_utf8(v).unwrap().parse().unwrap());
        }
        problems.push(format!("malformed Content-Length {:?}", show(v)));
        return Framing::Broken;
    }
    Framing::Length(0)
}

/// Strict chunked body at the start of `buf`: Ok(None) = need more bytes,
/// Ok(Some((used, body))), Err(problem).
#[allow(clippy::type_complexity)]
fn parse_chunked(
    buf: &[u8],
    problems: &mut Vec<String>,
) -> Result<Option<(usize, Vec<u8>)>, String> {
    let mut pos = 0;
    let mut body = Vec::new();
    loop {
        let Some(end) = find(&buf[pos..], b"\r\n") else {
            if buf[pos..].contains(&b'\n') {
                return Err(format!("bare LF in chunk framing {:?}", show(&buf[pos..])));
            }
            if buf.len() - pos > 65536 {
                return Err("chunk-size line over 64k".into());
            }
            return Ok(None);
        };
        let line = &buf[pos..pos + end];
        if line.contains(&b'\n') || line.contains(&b'\r') {
            return Err(format!("bare CR/LF in chunk-size line {:?}", show(line)));
        }
        let (size, ext) = match line.iter().position(|&c| c == b';') {
            Some(i) => (line[..i].trim_ascii_end(), Some(&line[i + 1..])),
            None => (line, None),
        };
        if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!("malformed chunk size {:?}", show(line)));
        }
        if let Some(ext) = ext {
            if ext.iter().any(|&c| (c < 0x20 && c != b'\t') || c == 0x7f) {
                return Err(format!("control byte in chunk extension {:?}", show(ext)));
            }
        }
        let size = u64::from_str_radix(std::str::from_utf8(size).unwrap(), 16).unwrap();
        if size > 64 << 20 {
            return Err(format!("chunk of {size} bytes"));
        }
        pos += end + 2;
        if size == 0 {
            // Trailer section.
            loop {
                let Some(end) = find(&buf[pos..], b"\r\n") else {
                    return Ok(None);
                };
                let line = &buf[pos..pos + end];
                pos += end + 2;
                if line.is_empty() {
                    return Ok(Some((pos, body)));
                }
                let name = line.split(|&c| c == b':').next().unwrap_or(b"");
                if !line.contains(&b':')
                    || name.is_empty()
                    || !name.iter().all(|&c| is_tchar(c))
                    || line.iter().any(|&c| (c < 0x20 && c != b'\t') || c == 0x7f)
                {
                    return Err(format!("malformed trailer line {:?}", show(line)));
                }
                let lower = name.to_ascii_lowercase();
                if [&b"content-length"[..], b"transfer-encoding", b"host"]
                    .contains(&lower.as_slice())
                {
                    problems.push(format!("forbidden field in trailers {:?}", show(line)));
                }
            }
        }
        let size = size as usize;
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size;
        if &buf[pos..pos + 2] != b"\r\n" {
            return Err(format!(
                "chunk data not followed by CRLF: {:?}",
                show(&buf[pos..(pos + 16).min(buf.len())])
            ));
        }
        pos += 2;
    }
}

async fn recording_upstream() -> (SocketAddr, Recorder, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rec = Recorder::default();
    let seen = rec.clone();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            connections.spawn(serve_recorded(stream, seen.clone()));
        }
    });
    (addr, rec, task)
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16384];
    match tokio::time::timeout(IO_LIMIT, s.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

async fn serve_recorded(mut s: TcpStream, rec: Recorder) {
    let mut buf: Vec<u8> = Vec::new();
    let push = |r: Received| rec.seen.lock().unwrap().push(r);
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !read_more(&mut s, &mut buf).await {
                if !buf.is_empty() {
                    push(Received {
                        raw: buf.clone(),
                        head: buf.clone(),
                        body: Vec::new(),
                        complete: false,
                        problems: Vec::new(),
                    });
                }
                return;
            }
        };
        let head = buf[..head_end].to_vec();
        let mut problems = Vec::new();
        let framing = check_head(&head[..head_end - 4], &mut problems);
        buf.drain(..head_end);
        let (body_len, body, complete) = match framing {
            Framing::Broken => {
                push(Received {
                    raw: [head.clone(), buf.clone()].concat(),
                    head,
                    body: buf.clone(),
                    complete: true,
                    problems,
                });
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                return;
            }
            Framing::Length(n) => {
                let n = n as usize;
                let mut complete = true;
                while buf.len() < n {
                    if !read_more(&mut s, &mut buf).await {
                        complete = false;
                        break;
                    }
                }
                let take = n.min(buf.len());
                (take, buf[..take].to_vec(), complete)
            }
            Framing::Chunked => loop {
                match parse_chunked(&buf, &mut problems) {
                    Ok(Some((used, body))) => break (used, body, true),
                    Ok(None) => {
                        if !read_more(&mut s, &mut buf).await {
                            break (buf.len(), Vec::new(), false);
                        }
                    }
                    Err(p) => {
                        problems.push(p);
                        push(Received {
                            raw: [head.clone(), buf.clone()].concat(),
                            head,
                            body: Vec::new(),
                            complete: true,
                            problems,
                        });
                        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
                        return;
                    }
                }
            },
        };
        let raw = [head.clone(), buf[..body_len].to_vec()].concat();
        buf.drain(..body_len);
        push(Received {
            raw,
            head,
            body,
            complete,
            problems,
        });
        if !complete {
            return;
        }
        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// The client side.

#[derive(Debug)]
enum End {
    /// Orderly close (FIN).
    Closed,
    Reset(String),
    /// Still open when we stopped waiting.
    Open,
}

#[derive(Debug)]
struct Exchange {
    /// Final statuses in order (1xx skipped).
    statuses: Vec<u16>,
    interim: Vec<u16>,
    end: End,
    /// Bytes that are not a response.
    garbage: Option<String>,
}

/// Parse responses; returns (final statuses, interim statuses, complete?, garbage).
fn parse_responses(mut b: &[u8]) -> (Vec<u16>, Vec<u16>, bool, Option<String>) {
    let mut finals = Vec::new();
    let mut interim = Vec::new();
    while !b.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(b) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return (finals, interim, false, None),
            Err(e) => return (finals, interim, false, Some(format!("{e}: {:?}", show(b)))),
        };
        let code = resp.code.unwrap_or(0);
        let header = |n: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(n))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
        };
        let body_len = if (100..200).contains(&code) || code == 204 || code == 304 {
            0
        } else if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            match find(&b[len..], b"0\r\n\r\n") {
                Some(i) => i + 5,
                None => return (finals, interim, false, None),
            }
        } else if let Some(cl) = header("content-length") {
            cl.parse::<usize>().unwrap_or(0)
        } else {
            // Delimited by close: complete only when the connection ends.
            b.len() - len
        };
        if b.len() < len + body_len {
            return (finals, interim, false, None);
        }
        if (100..200).contains(&code) {
            interim.push(code);
        } else {
            finals.push(code);
        }
        b = &b[len + body_len..];
    }
    let complete = !finals.is_empty();
    (finals, interim, complete, None)
}

async fn exchange(addr: SocketAddr, request: &[u8], want_close: bool) -> Exchange {
    let stream = match tokio::time::timeout(IO_LIMIT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        other => {
            return Exchange {
                statuses: vec![],
                interim: vec![],
                end: End::Reset(format!("connect failed: {other:?}")),
                garbage: None,
            }
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let data = request.to_vec();
    // Write concurrently: the server may answer (and close) before it read everything.
    let writer = tokio::spawn(async move {
        let _ = tokio::time::timeout(CASE_LIMIT, wr.write_all(&data)).await;
        // Keep the write half open (no FIN) until the reader is done.
        tokio::time::sleep(CASE_LIMIT + CLOSE_WITHIN).await;
        drop(wr);
    });
    let started = tokio::time::Instant::now();
    let hard = started + CASE_LIMIT;
    let mut bytes = Vec::new();
    let mut first_done: Option<tokio::time::Instant> = None;
    let mut last_data = started;
    let end = loop {
        let deadline = match first_done {
            None => hard,
            Some(t) if want_close => (t + CLOSE_WITHIN).min(hard + CLOSE_WITHIN),
            Some(_) => (last_data + IDLE_AFTER_RESPONSE).min(hard),
        };
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Ok(Ok(0)) => break End::Closed,
            Ok(Ok(n)) => {
                bytes.extend_from_slice(&chunk[..n]);
                last_data = tokio::time::Instant::now();
                if first_done.is_none() {
                    let (finals, _, _, _) = parse_responses(&bytes);
                    if !finals.is_empty() {
                        first_done = Some(last_data);
                    }
                }
            }
            Ok(Err(e)) => break End::Reset(e.kind().to_string()),
            Err(_) => break End::Open,
        }
    };
    writer.abort();
    let (statuses, interim, _, garbage) = parse_responses(&bytes);
    Exchange {
        statuses,
        interim,
        end,
        garbage,
    }
}

// ---------------------------------------------------------------------------
// The servers under test.

/// JSON access-log lines so far with `upstream_addr` set.
fn logged_upstream_lines(path: &std::path::Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .is_some_and(|v| v["upstream_addr"].is_string())
        })
        .count()
}

/// nginx's combined log: lines whose upstream field (last) is not "-".
fn nginx_logged_upstream_lines(path: &std::path::Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter(|l| !l.ends_with(" ua=-")).count()
}

struct Target {
    addr: SocketAddr,
    recorder: Recorder,
    log: std::path::PathBuf,
    nginx_log: bool,
}

#[derive(Debug)]
struct Result1 {
    got: String,
    failures: Vec<String>,
}

async fn run_case(t: &Target, case: &Case) -> Result1 {
    let before = t.recorder.len();
    let log_before = if t.nginx_log {
        nginx_logged_upstream_lines(&t.log)
    } else {
        logged_upstream_lines(&t.log)
    };
    let want_close = case.expect.iter().all(|o| o.kind == Kind::Close);
    let ex = exchange(t.addr, &case.request, want_close).await;
    // Let an upstream connection that ginx aborted (a request it streamed,
    // then rejected) be recorded in this case, not the next.
    let settle = if matches!(ex.end, End::Open) { 30 } else { 100 };
    tokio::time::sleep(Duration::from_millis(settle)).await;
    let received = t.recorder.since(before);

    let end = match &ex.end {
        End::Closed => "closed".to_string(),
        End::Reset(e) => format!("reset ({e})"),
        End::Open => "open".to_string(),
    };
    let first = ex.statuses.first().copied();
    let complete_received = received.iter().filter(|r| r.complete).count();
    let bodies: Vec<usize> = received
        .iter()
        .filter(|r| r.complete)
        .map(|r| r.body.len())
        .collect();
    let got = format!(
        "{}{}{} {end}, upstream got {}{}{}",
        if ex.interim.is_empty() {
            String::new()
        } else {
            format!("{:?} then ", ex.interim)
        },
        first.map_or("no response".to_string(), |s| s.to_string()),
        if ex.statuses.len() > 1 {
            format!(" (all: {:?})", ex.statuses)
        } else {
            String::new()
        },
        if bodies.iter().any(|&b| b > 0) {
            format!("{complete_received} (body bytes {bodies:?})")
        } else {
            complete_received.to_string()
        },
        if received.len() > complete_received {
            format!(" + {} aborted", received.len() - complete_received)
        } else {
            String::new()
        },
        ex.garbage
            .as_ref()
            .map(|g| format!(", unparsable response bytes {g}"))
            .unwrap_or_default(),
    );

    // Which expected outcome (if any) holds.
    let mut failures = Vec::new();
    let mut outcome_errors = Vec::new();
    for o in &case.expect {
        let mut errs = Vec::new();
        match first {
            Some(s) if o.statuses.contains(&s) => {}
            _ => errs.push("status".to_string()),
        }
        match o.kind {
            Kind::Close => {
                if !matches!(ex.end, End::Closed | End::Reset(_)) {
                    errs.push("connection not closed after the answer".to_string());
                }
                // ginx streams request bodies (it does not buffer them as
                // nginx does), so a framing error found mid-body can leave the
                // upstream with an aborted, incomplete request. That is
                // allowed; a complete one never is.
                if complete_received > 0 {
                    errs.push(format!(
                        "upstream received {complete_received} complete request(s) ginx answered itself: {:?}",
                        received.iter().map(|r| show(&r.raw)).collect::<Vec<_>>()
                    ));
                }
            }
            Kind::Forwarded(n) => {
                if received.len() != n || complete_received != n {
                    errs.push(format!(
                        "upstream received {} request(s) ({} complete), expected {n}",
                        received.len(),
                        complete_received
                    ));
                }
            }
        }
        if errs.is_empty() {
            outcome_errors.clear();
            break;
        }
        outcome_errors.push(errs.join("; "));
    }
    if !outcome_errors.is_empty() {
        failures.push(outcome_errors.join(" / "));
    }
    // Whatever the case: what reached the upstream is consistent.
    for r in &received {
        for p in &r.problems {
            failures.push(format!(
                "upstream received a bad request ({p}): {:?}",
                show(&r.raw)
            ));
        }
    }
    if !received.is_empty() {
        // Header names may be re-cased on the way (hyper sends them lower-case):
        // these checks ignore ASCII case.
        let heads: Vec<u8> = received
            .iter()
            .flat_map(|r| r.head.to_ascii_lowercase())
            .collect();
        for has in &case.upstream_has {
            if find(&heads, &has.to_ascii_lowercase()).is_none() {
                failures.push(format!(
                    "upstream head lacks {:?}: {:?}",
                    show(has),
                    show(&heads)
                ));
            }
        }
        for lacks in &case.upstream_lacks {
            if find(&heads, &lacks.to_ascii_lowercase()).is_some() {
                failures.push(format!(
                    "upstream head contains {:?}: {:?}",
                    show(lacks),
                    show(&heads)
                ));
            }
        }
        // Every request the upstream saw has an access-log line.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let logged = if t.nginx_log {
                nginx_logged_upstream_lines(&t.log)
            } else {
                logged_upstream_lines(&t.log)
            } - log_before;
            if logged >= received.len() {
                break;
            }
            if Instant::now() > deadline {
                failures.push(format!(
                    "upstream received {} request(s) but the access log has {logged} line(s) with upstream_addr for this case",
                    received.len()
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Result1 { got, failures }
}

fn ginx_yaml(log: &std::path::Path, upstream: SocketAddr) -> String {
    format!(
        r#"
worker_threads: 2
access_log: {{ path: "{log}", format: json }}
error_log: {{ level: error }}
http:
  client_header_timeout: 2s
  client_body_timeout: 2s
servers:
  - listen: ["127.0.0.1:{{p0}}"]
    locations:
      - location: /
        proxy_pass: http://{upstream}
"#,
        log = log.display()
    )
}

/// A real nginx on 127.0.0.1 with the same shape of configuration.
struct Nginx {
    child: std::process::Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_nginx(
    bin: &str,
    dir: &std::path::Path,
    upstream: SocketAddr,
) -> (Nginx, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    log_format up '$remote_addr "$request" $status ua=$upstream_addr';
    access_log {dir}/nginx-access.log up;
    client_header_timeout 2s;
    client_body_timeout 2s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
        }}
    }}
}}
"#,
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = std::process::Command::new(bin)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start nginx");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nginx did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (Nginx { child }, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http1_corpus() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/http1.txt");
    let text = std::fs::read_to_string(&path).expect("corpus");
    let mut cases = parse_corpus(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(cases.len() >= 150, "only {} cases", cases.len());
    if let Ok(only) = std::env::var("ATTACKS_ONLY") {
        cases.retain(|c| c.name.contains(&only));
    }

    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("access.log");
    let (up_addr, recorder, up_task) = recording_upstream().await;
    let gw = start_one(&ginx_yaml(&log, up_addr), 1).await;
    let ginx = Target {
        addr: gw.addr(0),
        recorder,
        log: log.clone(),
        nginx_log: false,
    };

    let nginx = match std::env::var("ATTACKS_NGINX") {
        Ok(bin) => {
            let (n_up, n_rec, n_task) = recording_upstream().await;
            let (proc_, addr) = start_nginx(&bin, logdir.path(), n_up).await;
            Some((
                proc_,
                n_task,
                Target {
                    addr,
                    recorder: n_rec,
                    log: logdir.path().join("nginx-access.log"),
                    nginx_log: true,
                },
            ))
        }
        Err(_) => None,
    };

    let mut report = Vec::new();
    let mut passed = 0;
    let mut known = 0;
    for case in &cases {
        let r = run_case(&ginx, case).await;
        let nginx_result = match &nginx {
            Some((_, _, t)) => {
                let n = run_case(t, case).await;
                Some(format!(
                    "{} [{}]",
                    n.got,
                    if n.failures.is_empty() {
                        "meets expectation"
                    } else {
                        "differs"
                    }
                ))
            }
            None => None,
        };
        let ok = r.failures.is_empty();
        let label = match (ok, &case.known) {
            (true, None) => "PASS",
            (false, None) => "FAIL",
            (false, Some(_)) => "KNOWN",
            (true, Some(_)) => "FIXED",
        };
        println!(
            "{} {:<44} expect {:<28} ginx: {}{}",
            label,
            case.name,
            expect_text(&case.expect),
            r.got,
            nginx_result
                .as_ref()
                .map(|n| format!("\n     {:<44} nginx: {n}", ""))
                .unwrap_or_default(),
        );
        if ok && case.known.is_some() {
            report.push(format!(
                "{} (corpus line {}) now passes: remove its `known:` line ({})",
                case.name,
                case.line,
                case.known.as_deref().unwrap_or("")
            ));
        } else if ok {
            passed += 1;
        } else if case.known.is_some() {
            known += 1;
        } else {
            report.push(format!(
                "{} (corpus line {}): expected {}, got {}{}\n    request: {:?}\n    why: {}\n    {}",
                case.name,
                case.line,
                expect_text(&case.expect),
                r.got,
                case.nginx
                    .as_ref()
                    .map(|n| format!("; nginx: {n}"))
                    .unwrap_or_default(),
                show(&case.request[..case.request.len().min(300)]),
                case.why,
                r.failures.join("\n    "),
            ));
        }
    }
    println!(
        "\n{passed} of {} cases pass; {known} known defects (open issue 7)",
        cases.len()
    );
    drop(nginx);
    gw.stop().await;
    up_task.abort();
    assert!(
        report.is_empty(),
        "{} of {} cases fail:\n\n{}",
        report.len(),
        cases.len(),
        report.join("\n\n")
    );
}
