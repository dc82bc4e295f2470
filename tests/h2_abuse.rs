//! HTTP/2 abuse, from a raw client: frames are written by hand over a TCP
//! socket (9-byte header + payload, HPACK as literals without Huffman), so
//! the attacks are exactly what a hostile client would send, not what a
//! well-behaved library allows. Each test bounds what it sends and every wait.
//!
//! - `rapid_reset_is_answered_with_goaway`: HEADERS immediately followed by
//!   RST_STREAM(CANCEL), up to 2,000 streams (CVE-2023-44487), sent as fast
//!   as the client can. ginx answers GOAWAY(ENHANCE_YOUR_CALM,
//!   "too_many_resets") at the 21st stream and closes the connection; a
//!   connection opened before the attack, and new ones, are served afterwards.
//! - `paced_rapid_reset_is_contained`: the same, 20 streams per write with a
//!   2 ms pause, which h2's reset guard does not catch (see the test): every
//!   stream is taken up, and each one to a proxying location makes ginx open
//!   an upstream connection. keepalive_requests (500 here) ends it: GOAWAY
//!   once the connection has had that many streams, as nginx does, and
//!   streams after it are refused: no more than one upstream connection per
//!   stream taken, and no more than 500 in all, however far the server lags
//!   behind the client's writes; an earlier connection and new ones are all
//!   served afterwards.
//! - `streams_past_keepalive_requests_are_refused`: with keepalive_requests
//!   3, six requests in one write: three are answered, the other three
//!   refused with RST_STREAM(REFUSED_STREAM), then GOAWAY and a close.
//! - `a_stream_after_an_idle_goaway_is_refused`: an idle connection's
//!   GOAWAY (keepalive_timeout 1s), then a new stream: REFUSED_STREAM.
//! - `continuation_flood_is_answered_with_goaway`: one HEADERS without
//!   END_HEADERS followed by up to 10,000 CONTINUATION frames of 1 KiB, with
//!   `max_header_size: 4k`. ginx answers GOAWAY after a handful of frames and
//!   closes; others are served.
//! - `streams_past_the_concurrency_limit_are_refused`: 200 streams opened and
//!   never finished. ginx advertises SETTINGS_MAX_CONCURRENT_STREAMS 128,
//!   takes up exactly 128 (the upstream sees 128 requests) and refuses each
//!   of the other 72 with RST_STREAM(REFUSED_STREAM); the connection stays
//!   usable once the client cancels its streams.
//! - `an_oversized_header_list_is_refused`: ginx advertises
//!   SETTINGS_MAX_HEADER_LIST_SIZE 4096; one HEADERS block that decodes to
//!   more than that is answered 431, a RST_STREAM or a GOAWAY (ginx sends a
//!   431 with END_STREAM), never 200; the connection stays usable.
//! - `memory_does_not_grow_under_repeated_attacks`: the ginx binary's VmRSS
//!   before and after five rounds of rapid reset (both kinds) and
//!   CONTINUATION flood grows by less than 20 MiB, and no file descriptors
//!   are left open (the figures are printed).
//!
//! Run with `--nocapture` to see what ginx sent back for each attack.

mod common;
use common::{start_one, Binary, IO_LIMIT};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// Frame types (RFC 9113, section 6).
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

// Error codes (RFC 9113, section 7).
const NO_ERROR: u32 = 0x0;
const PROTOCOL_ERROR: u32 = 0x1;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const COMPRESSION_ERROR: u32 = 0x9;
const ENHANCE_YOUR_CALM: u32 = 0xb;

const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Two listeners: `{p0}` speaks HTTP/2 by prior knowledge (and HTTP/1.1),
/// `{p1}` HTTP/1 only, to check that other clients are still served.
const YAML: &str = r#"
http:
  max_header_size: 4k
servers:
  - listen: ["127.0.0.1:{p0} http2", "127.0.0.1:{p1}"]
    locations:
      - location: /
        return: 200 "ok\n"
"#;

/// YAML with one more line in its `http` block, such as `keepalive_requests: 3`.
fn yaml_with(http_setting: &str) -> String {
    YAML.replace(
        "max_header_size: 4k",
        &format!("max_header_size: 4k\n  {http_setting}"),
    )
}

fn code_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        PROTOCOL_ERROR => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x6 => "FRAME_SIZE_ERROR",
        REFUSED_STREAM => "REFUSED_STREAM",
        CANCEL => "CANCEL",
        COMPRESSION_ERROR => "COMPRESSION_ERROR",
        ENHANCE_YOUR_CALM => "ENHANCE_YOUR_CALM",
        _ => "other",
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    assert!(
        payload.len() < 1 << 14,
        "within the default SETTINGS_MAX_FRAME_SIZE"
    );
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an N-bit prefix (RFC 7541, 5.1).
fn hpack_int(out: &mut Vec<u8>, prefix_bits: u8, first: u8, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A literal header field without indexing, new name, no Huffman (RFC 7541, 6.2.2).
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_int(out, 7, 0x00, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 7, 0x00, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// The header block of `GET path` (no dynamic table state is created).
fn request_block(path: &str) -> Vec<u8> {
    // Static table: 2 is `:method: GET`, 6 is `:scheme: http`.
    let mut out = vec![0x82, 0x86];
    literal(&mut out, ":path", path);
    literal(&mut out, ":authority", "x");
    out
}

/// Decode an HPACK integer at `*i`.
fn hpack_uint(b: &[u8], i: &mut usize, prefix_bits: u8) -> Option<usize> {
    let max = (1usize << prefix_bits) - 1;
    let mut value = (*b.get(*i)? as usize) & max;
    *i += 1;
    if value < max {
        return Some(value);
    }
    let mut shift = 0;
    loop {
        let byte = *b.get(*i)?;
        *i += 1;
        value += ((byte & 0x7f) as usize) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
}

/// Huffman-coded digits (RFC 7541, appendix B: '0'-'2' are 5 bits, '3'-'9' 6).
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let (mut code, mut len, mut out) = (0u32, 0u32, String::new());
    for byte in bytes {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            let digit = match (len, code) {
                (5, 0..=2) => Some(code),
                (6, 25..=31) => Some(code - 22),
                _ => None,
            };
            if let Some(d) = digit {
                out.push(char::from(b'0' + d as u8));
                (code, len) = (0, 0);
            } else if len >= 8 {
                return None;
            }
        }
    }
    // What is left is padding: the start of EOS, all ones.
    (len < 8 && code == (1 << len) - 1).then_some(out)
}

/// The `:status` of a response header block (always its first field), as
/// the h2 crate encodes it: static index, or a literal with the `:status`
/// name and a (usually Huffman-coded) value. None when not understood.
fn status_of(block: &[u8]) -> Option<u16> {
    let mut i = 0;
    loop {
        let b = *block.get(i)?;
        if b & 0xe0 == 0x20 {
            hpack_uint(block, &mut i, 5)?; // dynamic table size update
            continue;
        }
        if b & 0x80 != 0 {
            let index = hpack_uint(block, &mut i, 7)?;
            return [200, 204, 206, 304, 400, 404, 500]
                .get(index.checked_sub(8)?)
                .copied();
        }
        let prefix = if b & 0x40 != 0 { 6 } else { 4 };
        let index = hpack_uint(block, &mut i, prefix)?;
        if !(8..=14).contains(&index) {
            return None;
        }
        let huffman = *block.get(i)? & 0x80 != 0;
        let len = hpack_uint(block, &mut i, 7)?;
        let raw = block.get(i..i + len)?;
        let text = if huffman {
            huffman_digits(raw)?
        } else {
            String::from_utf8(raw.to_vec()).ok()?
        };
        return text.parse().ok();
    }
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

#[derive(Debug, Clone)]
struct GoAway {
    last_stream: u32,
    code: u32,
    debug: String,
    /// Since the connection was opened.
    at: Duration,
}

/// Everything of note the server sent on one connection.
#[derive(Debug, Default)]
struct Seen {
    goaway: Option<GoAway>,
    /// (stream, error code) of each RST_STREAM.
    resets: Vec<(u32, u32)>,
    /// (stream, status) of each response HEADERS (None: not decoded).
    statuses: Vec<(u32, Option<u16>)>,
    /// How the connection ended, and when (since it was opened).
    closed: Option<(String, Duration)>,
}

impl Seen {
    fn refused(&self) -> Vec<u32> {
        self.resets
            .iter()
            .filter(|(_, code)| *code == REFUSED_STREAM)
            .map(|(id, _)| *id)
            .collect()
    }

    fn status(&self, stream: u32) -> Option<Option<u16>> {
        self.statuses
            .iter()
            .find(|(id, _)| *id == stream)
            .map(|(_, s)| *s)
    }

    fn summary(&self) -> String {
        let goaway = match &self.goaway {
            Some(g) => format!(
                "GOAWAY {} (0x{:x}) last_stream={} debug={:?} after {:?}",
                code_name(g.code),
                g.code,
                g.last_stream,
                g.debug,
                g.at
            ),
            None => "no GOAWAY".to_string(),
        };
        let closed = match &self.closed {
            Some((how, at)) => format!("closed ({how}) after {at:?}"),
            None => "not closed".to_string(),
        };
        let mut codes: Vec<(u32, usize)> = Vec::new();
        for (_, code) in &self.resets {
            match codes.iter_mut().find(|(c, _)| c == code) {
                Some((_, n)) => *n += 1,
                None => codes.push((*code, 1)),
            }
        }
        let resets: Vec<String> = codes
            .iter()
            .map(|(c, n)| format!("{n}x{}", code_name(*c)))
            .collect();
        format!(
            "{goaway}; {closed}; RST_STREAM: [{}]; responses: {:?}",
            resets.join(", "),
            self.statuses.iter().map(|(_, s)| *s).collect::<Vec<_>>()
        )
    }
}

/// A raw HTTP/2 client connection.
struct Client {
    s: TcpStream,
    buf: Vec<u8>,
    settings: Vec<(u16, u32)>,
    seen: Seen,
    opened: Instant,
}

impl Client {
    /// Connect, send the preface and an empty SETTINGS, read the server's
    /// SETTINGS (its first frame) and acknowledge it.
    async fn connect(addr: SocketAddr) -> Client {
        Client::connect_split(addr, None).await
    }

    /// As `connect`, with the preface and SETTINGS sent in two writes when
    /// `split` says where: that many bytes, then the rest 100 ms later, so
    /// that the server reads them apart.
    async fn connect_split(addr: SocketAddr, split: Option<usize>) -> Client {
        let s = tokio::time::timeout(IO_LIMIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        s.set_nodelay(true).unwrap();
        let mut c = Client {
            s,
            buf: Vec::new(),
            settings: Vec::new(),
            seen: Seen::default(),
            opened: Instant::now(),
        };
        let hello = [PREFACE, &frame(SETTINGS, 0, 0, &[])].concat();
        let (first, rest) = hello.split_at(split.unwrap_or(hello.len()));
        c.send(first).await.expect("send the preface");
        if !rest.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.send(rest).await.expect("send the rest of the preface");
        }
        let first = c
            .read_frame(Instant::now() + IO_LIMIT)
            .await
            .expect("the server's SETTINGS");
        assert!(
            first.kind == SETTINGS && first.flags & ACK == 0,
            "the server's first frame is SETTINGS, got type {}",
            first.kind
        );
        c.settings = first
            .payload
            .chunks_exact(6)
            .map(|p| {
                (
                    u16::from_be_bytes([p[0], p[1]]),
                    u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                )
            })
            .collect();
        c.send(&frame(SETTINGS, ACK, 0, &[]))
            .await
            .expect("acknowledge SETTINGS");
        c
    }

    fn setting(&self, id: u16) -> Option<u32> {
        self.settings
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, v)| *v)
    }

    fn is_open(&self) -> bool {
        self.seen.closed.is_none()
    }

    fn mark_closed(&mut self, how: String) {
        if self.seen.closed.is_none() {
            self.seen.closed = Some((how, self.opened.elapsed()));
        }
    }

    /// Write all of `bytes`; an error (or a peer that stops reading for
    /// IO_LIMIT) is returned as text.
    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        match tokio::time::timeout(IO_LIMIT, self.s.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write error: {e}")),
            Err(_) => Err(format!("write stalled for {IO_LIMIT:?}")),
        }
    }

    fn take_frame(&mut self) -> Option<Frame> {
        if self.buf.len() < 9 {
            return None;
        }
        let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
        if self.buf.len() < 9 + len {
            return None;
        }
        let head: Vec<u8> = self.buf.drain(..9 + len).collect();
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload: head[9..].to_vec(),
        })
    }

    fn absorb(&mut self, f: &Frame) {
        let p = &f.payload;
        match f.kind {
            GOAWAY if p.len() >= 8 && self.seen.goaway.is_none() => {
                self.seen.goaway = Some(GoAway {
                    last_stream: u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff,
                    code: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
                    debug: String::from_utf8_lossy(&p[8..]).into_owned(),
                    at: self.opened.elapsed(),
                });
            }
            RST_STREAM if p.len() == 4 => {
                let code = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
                self.seen.resets.push((f.stream, code));
            }
            HEADERS if self.seen.status(f.stream).is_none() => {
                let mut start = 0;
                let mut end = p.len();
                if f.flags & PADDED != 0 {
                    start = 1;
                    end = end.saturating_sub(p.first().copied().unwrap_or(0) as usize);
                }
                if f.flags & PRIORITY != 0 {
                    start += 5;
                }
                let status = p.get(start..end).and_then(status_of);
                self.seen.statuses.push((f.stream, status));
            }
            _ => {}
        }
    }

    /// The next frame, or None when the connection ended or `deadline` passed
    /// (then `seen.closed` tells which).
    async fn read_frame(&mut self, deadline: Instant) -> Option<Frame> {
        loop {
            if let Some(f) = self.take_frame() {
                self.absorb(&f);
                return Some(f);
            }
            if !self.is_open() {
                return None;
            }
            self.buf.reserve(64 * 1024);
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.s.read_buf(&mut self.buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) => self.mark_closed("EOF".to_string()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => self.mark_closed(format!("read error: {e}")),
            }
        }
    }

    /// Take in whatever the server sends within `wait`.
    async fn pump(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        while self.read_frame(deadline).await.is_some() {}
    }

    /// Read until the server closes the connection, at most `limit`.
    async fn until_closed(&mut self, limit: Duration) -> bool {
        self.pump(limit).await;
        !self.is_open()
    }

    /// Read until `stream` has a response, a RST_STREAM or the connection
    /// ends, at most IO_LIMIT; its status if it got one.
    async fn wait_status(&mut self, stream: u32) -> Option<u16> {
        let deadline = Instant::now() + IO_LIMIT;
        loop {
            if let Some(status) = self.seen.status(stream) {
                return status;
            }
            if self.seen.resets.iter().any(|(id, _)| *id == stream) {
                return None;
            }
            self.read_frame(deadline).await?;
        }
    }

    /// `GET path` on `stream`, answered within IO_LIMIT.
    async fn get(&mut self, stream: u32, path: &str) -> Option<u16> {
        let headers = frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &request_block(path),
        );
        self.send(&headers).await.ok()?;
        self.wait_status(stream).await
    }
}

/// What one attack sent and what came back.
struct Attack {
    name: &'static str,
    /// Units (streams, or CONTINUATION frames) sent, out of `planned`.
    sent: usize,
    planned: usize,
    write_error: Option<String>,
    /// Without a GOAWAY: the status of a normal request sent afterwards on
    /// the same connection (None inside: no answer).
    followup: Option<Option<u16>>,
    /// From connecting to the end (closed, or the follow-up answered).
    elapsed: Duration,
    seen: Seen,
}

impl Attack {
    fn report(&self) {
        println!(
            "{}: sent {} of {}{} in {:?}; {}{}",
            self.name,
            self.sent,
            self.planned,
            self.write_error
                .as_deref()
                .map(|e| format!(" (then {e})"))
                .unwrap_or_default(),
            self.elapsed,
            self.seen.summary(),
            self.followup
                .map(|s| format!("; then a normal request on it: {s:?}"))
                .unwrap_or_default()
        );
    }
}

/// Rapid reset (CVE-2023-44487): HEADERS(END_STREAM) then RST_STREAM(CANCEL)
/// at once, `batch` streams per write, up to 2,000 streams, stopping as soon
/// as the server sends GOAWAY or closes. Between writes the client takes in
/// what has come, waiting `pause` (zero: not at all, as fast as it can).
/// Afterwards: with a GOAWAY, read until the server closes (IO_LIMIT);
/// without one, send a normal request on the same connection and record
/// its status in `followup`.
async fn rapid_reset(addr: SocketAddr, path: &str, batch: usize, pause: Duration) -> Attack {
    const STREAMS: usize = 2000;
    let mut c = Client::connect(addr).await;
    let block = request_block(path);
    let (mut sent, mut write_error) = (0, None);
    while sent < STREAMS && c.seen.goaway.is_none() && c.is_open() {
        let mut bytes = Vec::new();
        for _ in 0..batch.min(STREAMS - sent) {
            let id = 2 * sent as u32 + 1;
            bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
            bytes.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
            sent += 1;
        }
        if let Err(e) = c.send(&bytes).await {
            write_error = Some(e);
            break;
        }
        c.pump(pause).await;
    }
    let mut followup = None;
    if c.seen.goaway.is_none() && c.is_open() {
        // A GOAWAY may still be on its way.
        c.pump(Duration::from_millis(300)).await;
    }
    if c.seen.goaway.is_none() && c.is_open() {
        followup = Some(c.get(2 * sent as u32 + 1, path).await);
    } else {
        c.until_closed(IO_LIMIT).await;
    }
    Attack {
        name: if pause.is_zero() {
            "rapid reset"
        } else {
            "paced rapid reset"
        },
        sent,
        planned: STREAMS,
        write_error,
        followup,
        elapsed: c.opened.elapsed(),
        seen: c.seen,
    }
}

/// CONTINUATION flood: HEADERS without END_HEADERS, then up to 10,000
/// CONTINUATION frames of about 1 KiB (one 1,000-byte header field each),
/// 16 per write, stopping as soon as the server sends GOAWAY or closes.
async fn continuation_flood(addr: SocketAddr) -> Attack {
    const FRAMES: usize = 10_000;
    const BATCH: usize = 16;
    let mut c = Client::connect(addr).await;
    let (mut sent, mut write_error) = (0, None);
    if let Err(e) = c
        .send(&frame(HEADERS, END_STREAM, 1, &request_block("/")))
        .await
    {
        write_error = Some(e);
    }
    let value = "a".repeat(1000);
    while write_error.is_none() && sent < FRAMES && c.seen.goaway.is_none() && c.is_open() {
        let mut bytes = Vec::new();
        for _ in 0..BATCH {
            let mut block = Vec::new();
            literal(&mut block, &format!("x-flood-{sent:05}"), &value);
            bytes.extend(frame(CONTINUATION, 0, 1, &block));
            sent += 1;
        }
        if let Err(e) = c.send(&bytes).await {
            write_error = Some(e);
            break;
        }
        c.pump(Duration::from_millis(2)).await;
    }
    c.until_closed(IO_LIMIT).await;
    Attack {
        name: "CONTINUATION flood",
        sent,
        planned: FRAMES,
        write_error,
        followup: None,
        elapsed: c.opened.elapsed(),
        seen: c.seen,
    }
}

/// A new HTTP/2 connection to `h2` and an HTTP/1.1 request to `h1` are both
/// answered 200.
async fn still_serves(h2: SocketAddr, h1: SocketAddr) {
    let mut c = Client::connect(h2).await;
    assert_eq!(
        c.get(1, "/").await,
        Some(200),
        "a new HTTP/2 connection is served: {}",
        c.seen.summary()
    );
    let r = common::get(h1, "x", "/").await;
    assert_eq!(r.status, 200, "an HTTP/1.1 client is served");
}

/// The attack was stopped by the server, not by running out of things to
/// send: a GOAWAY with one of `code` and a close, within `before` units.
fn assert_cut_short(a: &Attack, code: &[u32], before: usize) {
    assert_goaway_and_close(a, code);
    assert!(
        a.sent <= before,
        "{}: {} sent before the server reacted (at most {before} expected)",
        a.name,
        a.sent
    );
}

/// The server answered with a GOAWAY with one of `code` and closed the
/// connection within 5 s.
fn assert_goaway_and_close(a: &Attack, code: &[u32]) {
    let goaway = a
        .seen
        .goaway
        .as_ref()
        .unwrap_or_else(|| panic!("{}: no GOAWAY; {}", a.name, a.seen.summary()));
    assert!(
        code.contains(&goaway.code),
        "{}: GOAWAY {} (0x{:x}), expected one of {code:?}",
        a.name,
        code_name(goaway.code),
        goaway.code
    );
    let (how, at) = a
        .seen
        .closed
        .as_ref()
        .unwrap_or_else(|| panic!("{}: not closed within {IO_LIMIT:?}", a.name));
    assert!(
        *at < Duration::from_secs(5),
        "{}: closed ({how}) only after {at:?}",
        a.name
    );
}

/// No reset stream was answered, and a paced rapid reset is stopped: GOAWAY
/// (NO_ERROR once keepalive_requests streams are used, or ENHANCE_YOUR_CALM
/// if h2's reset guard fires first) and a close. How many streams the
/// client got out before the GOAWAY reached it depends on how far the
/// server lags behind its writes (on a loaded machine, all 2,000 can be on
/// their way); what is bounded is the server's work, which the caller
/// checks upstream.
fn assert_paced_contained(a: &Attack) {
    let last_reset = (2 * a.sent as u32).saturating_sub(1);
    assert!(
        a.seen.statuses.iter().all(|(id, _)| *id > last_reset),
        "{}: a reset stream was answered: {}",
        a.name,
        a.seen.summary()
    );
    assert_goaway_and_close(a, &[NO_ERROR, ENHANCE_YOUR_CALM]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_answered_with_goaway() {
    let gw = start_one(YAML, 2).await;
    // A client connected before the attack, to be served after it.
    let mut bystander = Client::connect(gw.addr(0)).await;

    let attack = rapid_reset(gw.addr(0), "/", 100, Duration::ZERO).await;
    attack.report();
    // h2 allows 20 streams reset before ginx took them up; GOAWAY comes
    // within the next write or so, not after 2,000 streams.
    assert_cut_short(&attack, &[ENHANCE_YOUR_CALM], 1000);
    let goaway = attack.seen.goaway.as_ref().unwrap();
    assert!(
        goaway.last_stream < 2 * 1000,
        "GOAWAY's last stream {}",
        goaway.last_stream
    );

    assert_eq!(
        bystander.get(1, "/").await,
        Some(200),
        "a connection opened before the attack is served: {}",
        bystander.seen.summary()
    );
    still_serves(gw.addr(0), gw.addr(1)).await;
    gw.stop().await;
}

/// h2's rapid-reset guard (max_pending_accept_reset_streams 20) counts
/// streams reset *before ginx took them up*, at once: a client that paces
/// its resets (20 per write, then 2 ms for ginx to catch up) does not trip
/// it, and each reset stream starts its request (ginx opens an upstream
/// connection for it, then drops it). What bounds the attack is
/// keepalive_requests, applied to HTTP/2 as nginx does: GOAWAY once the
/// connection has had that many streams, and any stream after them refused. Each reset stream costs at most one
/// upstream connection attempt and no answer; a connection opened before,
/// and new ones, are served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_rapid_reset_is_contained() {
    let up = common::upstream("up").await;
    let yaml = format!(
        r#"
http: {{ keepalive_requests: 500 }}
upstreams:
  app: {{ servers: ["{}"] }}
servers:
  - listen: ["127.0.0.1:{{p0}} http2", "127.0.0.1:{{p1}}"]
    locations:
      - location: /
        return: 200 "ok\n"
      - location: /up/
        proxy_pass: http://app
"#,
        up.addr
    );
    let gw = start_one(&yaml, 2).await;
    let mut bystander = Client::connect(gw.addr(0)).await;
    let connects = || up.connections.load(std::sync::atomic::Ordering::SeqCst);

    let attack = rapid_reset(gw.addr(0), "/up/x", 20, Duration::from_millis(2)).await;
    attack.report();
    println!(
        "paced rapid reset: the upstream accepted {} connections and saw {} requests",
        connects(),
        up.hits()
    );
    assert_paced_contained(&attack);
    assert!(
        connects() <= attack.sent.min(500),
        "at most one upstream connection per stream taken, and no more than \
         keepalive_requests (500) streams taken: {} connections for {} streams sent",
        connects(),
        attack.sent
    );
    assert_eq!(
        bystander.get(1, "/up/y").await,
        Some(200),
        "a connection opened before the attack is served: {}",
        bystander.seen.summary()
    );
    still_serves(gw.addr(0), gw.addr(1)).await;
    up.kill();
    gw.stop().await;
}

/// keepalive_requests 3, and 6 requests in one write: the first 3 are
/// answered, the other 3 refused (RST_STREAM REFUSED_STREAM, safe to retry
/// elsewhere) rather than served, and the connection ends with GOAWAY.
/// h2's first GOAWAY names no last stream (2^31-1), and until the client
/// answers its PING every new stream would be taken up, so a client that
/// never answers could go on well past the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_keepalive_requests_are_refused() {
    let gw = start_one(&yaml_with("keepalive_requests: 3"), 2).await;
    let mut c = Client::connect(gw.addr(0)).await;
    let block = request_block("/");
    let all: Vec<u8> = (0..6)
        .flat_map(|i| frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &block))
        .collect();
    c.send(&all).await.expect("send 6 HEADERS");
    let deadline = Instant::now() + IO_LIMIT;
    while c.seen.statuses.len() + c.seen.resets.len() < 6 && c.read_frame(deadline).await.is_some()
    {
    }
    c.until_closed(IO_LIMIT).await;
    println!("past keepalive_requests: {}", c.seen.summary());
    for id in [1, 3, 5] {
        assert_eq!(
            c.seen.status(id),
            Some(Some(200)),
            "stream {id}: {}",
            c.seen.summary()
        );
    }
    assert_eq!(c.seen.refused(), vec![7, 9, 11], "{}", c.seen.summary());
    assert_eq!(c.seen.statuses.len(), 3, "{}", c.seen.summary());
    let goaway = c.seen.goaway.as_ref().expect("a GOAWAY");
    assert_eq!(goaway.code, NO_ERROR, "{}", c.seen.summary());
    assert!(!c.is_open(), "closed: {}", c.seen.summary());
    still_serves(gw.addr(0), gw.addr(1)).await;
    gw.stop().await;
}

/// keepalive_timeout 1s: an idle HTTP/2 connection gets GOAWAY, and a
/// stream sent after it (the client never answers the GOAWAY's PING) is
/// refused rather than served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_after_an_idle_goaway_is_refused() {
    let gw = start_one(&yaml_with("keepalive_timeout: 1s"), 2).await;
    let mut c = Client::connect(gw.addr(0)).await;
    assert_eq!(c.get(1, "/").await, Some(200), "{}", c.seen.summary());
    let deadline = Instant::now() + IO_LIMIT;
    while c.seen.goaway.is_none() && c.read_frame(deadline).await.is_some() {}
    let goaway = c
        .seen
        .goaway
        .as_ref()
        .expect("GOAWAY for an idle connection");
    assert_eq!(goaway.code, NO_ERROR, "{}", c.seen.summary());
    assert_eq!(c.get(3, "/").await, None, "{}", c.seen.summary());
    assert_eq!(c.seen.refused(), vec![3], "{}", c.seen.summary());
    println!("after an idle GOAWAY: {}", c.seen.summary());
    drop(c);
    still_serves(gw.addr(0), gw.addr(1)).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_answered_with_goaway() {
    let gw = start_one(YAML, 2).await;
    let attack = continuation_flood(gw.addr(0)).await;
    attack.report();
    // With 4k headers and 16 KiB frames h2 allows 5 CONTINUATION frames
    // (ENHANCE_YOUR_CALM, "too_many_continuations"); a block past the header
    // list limit can also end as COMPRESSION_ERROR. Either stops the flood.
    assert_cut_short(&attack, &[ENHANCE_YOUR_CALM, COMPRESSION_ERROR], 100);
    assert!(
        attack.seen.status(1).is_none(),
        "the flooded request was never answered: {}",
        attack.seen.summary()
    );
    still_serves(gw.addr(0), gw.addr(1)).await;
    gw.stop().await;
}

/// A preface may come in pieces: ginx's own HTTP/1 side refuses the
/// request line `PRI * HTTP/2.0` as soon as it has read that much, or
/// waits for more when it has read less, and the connection is served as
/// HTTP/2 from there as when the preface came whole. (Split before 14
/// bytes, the connection's reads did not see the preface; split at 14-23,
/// what is handed over is only the start of one.)
#[tokio::test]
async fn a_preface_read_in_pieces_is_still_http2() {
    let gw = start_one(YAML, 2).await;
    for split in [3, 10, 14, 16, 20, PREFACE.len()] {
        let mut c = Client::connect_split(gw.addr(0), Some(split)).await;
        assert_eq!(
            c.get(1, "/").await,
            Some(200),
            "preface split at {split}: {}",
            c.seen.summary()
        );
        assert_eq!(c.get(3, "/").await, Some(200), "split at {split}: stream 3");
    }
    still_serves(gw.addr(0), gw.addr(1)).await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_concurrency_limit_are_refused() {
    const STREAMS: u32 = 200;
    // Streams held open: their requests reach an upstream that waits 30 s
    // before answering, and the client never ends them.
    let up = common::upstream("held").await;
    let yaml = format!(
        r#"
upstreams:
  app: {{ servers: ["{}"] }}
http:
  max_header_size: 4k
servers:
  - listen: ["127.0.0.1:{{p0}} http2", "127.0.0.1:{{p1}}"]
    locations:
      - location: /
        return: 200 "ok\n"
      - location: /slow/
        proxy_pass: http://app
"#,
        up.addr
    );
    let gw = start_one(&yaml, 2).await;
    let mut c = Client::connect(gw.addr(0)).await;
    let max = c.setting(SETTINGS_MAX_CONCURRENT_STREAMS);
    println!("SETTINGS from ginx: {:?}", c.settings);
    assert_eq!(max, Some(128), "SETTINGS_MAX_CONCURRENT_STREAMS");
    let max = max.unwrap();

    let block = request_block("/slow/30000");
    let all: Vec<u8> = (0..STREAMS)
        .flat_map(|i| frame(HEADERS, END_HEADERS, 2 * i + 1, &block))
        .collect();
    let started = Instant::now();
    c.send(&all).await.expect("send 200 HEADERS");
    let beyond: Vec<u32> = (max..STREAMS).map(|i| 2 * i + 1).collect();
    let deadline = Instant::now() + IO_LIMIT;
    while c.seen.refused().len() < beyond.len() && c.seen.goaway.is_none() {
        if c.read_frame(deadline).await.is_none() {
            break;
        }
    }
    let refused_in = started.elapsed();
    // Anything more (a wrong reset of an accepted stream) would come now.
    c.pump(Duration::from_millis(300)).await;
    println!(
        "too many streams: {} refused within {refused_in:?}; {}",
        c.seen.refused().len(),
        c.seen.summary()
    );
    assert!(
        c.seen.goaway.is_none(),
        "refusing streams needs no GOAWAY: {}",
        c.seen.summary()
    );
    assert_eq!(
        c.seen.refused(),
        beyond,
        "exactly the streams past the first {max} are refused"
    );
    assert_eq!(
        c.seen.resets.len(),
        beyond.len(),
        "no other resets: {:?}",
        c.seen.resets
    );
    // The first 128 are really being served: the upstream sees each of them.
    let deadline = Instant::now() + IO_LIMIT;
    while up.hits() < max as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        up.hits(),
        max as usize,
        "the upstream saw the accepted streams only"
    );

    // The client cancels its streams: the connection is usable again.
    let cancels: Vec<u8> = (0..max)
        .flat_map(|i| frame(RST_STREAM, 0, 2 * i + 1, &CANCEL.to_be_bytes()))
        .collect();
    c.send(&cancels).await.expect("send the cancels");
    let next = 2 * STREAMS + 1;
    assert_eq!(
        c.get(next, "/").await,
        Some(200),
        "a request after the cancels: {}",
        c.seen.summary()
    );
    drop(c);
    still_serves(gw.addr(0), gw.addr(1)).await;
    up.kill();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_header_list_is_refused() {
    let gw = start_one(YAML, 2).await;
    let mut c = Client::connect(gw.addr(0)).await;
    assert_eq!(
        c.setting(SETTINGS_MAX_HEADER_LIST_SIZE),
        Some(4096),
        "SETTINGS_MAX_HEADER_LIST_SIZE is max_header_size"
    );
    // About 6 KiB of headers once decoded, in one HEADERS frame (under the
    // 16 KiB frame size): over max_header_size (4k).
    let mut block = request_block("/");
    for i in 0..6 {
        literal(&mut block, &format!("x-big-{i}"), &"b".repeat(1000));
    }
    c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await
        .expect("send the HEADERS");
    let started = Instant::now();
    let deadline = started + IO_LIMIT;
    let reacted = |s: &Seen| {
        s.status(1).is_some() || s.resets.iter().any(|(id, _)| *id == 1) || s.goaway.is_some()
    };
    while !reacted(&c.seen) {
        if c.read_frame(deadline).await.is_none() {
            break;
        }
    }
    let took = started.elapsed();
    // A 431 may be followed by a RST_STREAM: take that in too.
    c.pump(Duration::from_millis(300)).await;
    let status = c.seen.status(1);
    let reset = c
        .seen
        .resets
        .iter()
        .find(|(id, _)| *id == 1)
        .map(|(_, code)| code_name(*code));
    println!(
        "oversized header list: within {took:?}: status {status:?}, RST_STREAM {reset:?}, {}",
        c.seen.summary()
    );
    assert!(
        status == Some(Some(431)) || reset.is_some() || c.seen.goaway.is_some(),
        "431, RST_STREAM or GOAWAY expected: {}",
        c.seen.summary()
    );
    assert_ne!(status, Some(Some(200)), "the oversized request was served");
    if c.seen.goaway.is_none() && c.is_open() {
        // A stream error only: the connection goes on.
        assert_eq!(
            c.get(3, "/").await,
            Some(200),
            "the same connection serves a normal request: {}",
            c.seen.summary()
        );
    }
    still_serves(gw.addr(0), gw.addr(1)).await;
    gw.stop().await;
}

/// Open file descriptors of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_does_not_grow_under_repeated_attacks() {
    const ROUNDS: usize = 5;
    const BOUND_KIB: u64 = 20 * 1024;
    let up = common::upstream("up").await;
    let yaml = format!(
        r#"
access_log: {{ path: "off" }}
upstreams:
  app: {{ servers: ["{}"] }}
http:
  max_header_size: 4k
  keepalive_requests: 500
servers:
  - listen: ["127.0.0.1:{{p0}} http2"]
    locations:
      - location: /
        return: 200 "ok\n"
      - location: /up/
        proxy_pass: http://app
"#,
        up.addr
    );
    let ginx = Binary::start(&yaml).await;
    let pid = ginx.child.id();
    // Served once each way, so that the figure includes a warmed-up server.
    still_serves(ginx.addr, ginx.addr).await;
    let (before, fds_before) = (ginx.rss_kib(), fd_count(pid));
    println!("VmRSS before: {before} KiB, {fds_before} fds");
    for round in 1..=ROUNDS {
        let reset = rapid_reset(ginx.addr, "/", 100, Duration::ZERO).await;
        reset.report();
        assert_cut_short(&reset, &[ENHANCE_YOUR_CALM], 1000);
        // The paced variant makes ginx take up every stream (see
        // paced_rapid_reset_is_contained): the most work per round.
        let paced = rapid_reset(ginx.addr, "/up/x", 20, Duration::from_millis(2)).await;
        paced.report();
        assert_paced_contained(&paced);
        let flood = continuation_flood(ginx.addr).await;
        flood.report();
        assert_cut_short(&flood, &[ENHANCE_YOUR_CALM, COMPRESSION_ERROR], 100);
        println!(
            "VmRSS after round {round}: {} KiB, {} fds",
            ginx.rss_kib(),
            fd_count(pid)
        );
    }
    // Let closed connections' tasks finish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    still_serves(ginx.addr, ginx.addr).await;
    let (after, fds_after) = (ginx.rss_kib(), fd_count(pid));
    let growth = after.saturating_sub(before);
    println!(
        "VmRSS after {ROUNDS} rounds: {after} KiB (growth {growth} KiB, bound {BOUND_KIB} KiB), \
         {fds_after} fds; the upstream accepted {} connections",
        up.connections.load(std::sync::atomic::Ordering::SeqCst)
    );
    assert!(
        growth < BOUND_KIB,
        "VmRSS grew from {before} KiB to {after} KiB over {ROUNDS} rounds of attacks"
    );
    assert!(
        fds_after <= fds_before + 8,
        "file descriptors went from {fds_before} to {fds_after}: connections left open"
    );
    up.kill();
}
