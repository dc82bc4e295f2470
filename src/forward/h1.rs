//! The HTTP/1.1 client of plain upstreams, run in the request's own task.
//!
//! hyper-util's client gives every upstream connection a task of its own:
//! the request goes to it through a channel, the response head comes back
//! through another, and its pool hands connections out through futures.
//! Under callgrind that machinery was about 19,000 of the 47,000
//! instructions of a small proxied request (benches/instructions). Here the
//! exchange is done where the request is served: the head (and a held body)
//! goes up in one write, the response head is parsed with httparse (the
//! parser hyper itself uses) straight into the header map the client gets,
//! the body is read only when the client side asks for more (so a slow
//! client slows the upstream read, not memory), and the connection goes back
//! to its peer's idle list when the body is done.
//!
//! [`super::forward`] uses it for HTTP/1 groups, plain or TLS (`https://`,
//! one pool each), when the request body is held whole (none, or buffered)
//! and no upgrade is asked; a streamed request body, an upgrade and HTTP/2
//! upstreams go through hyper-util.

use super::{Failure, FailureKind};
use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The largest response head (and trailer section) accepted; more is a 502,
/// as nginx answers "upstream sent too big header".
pub const MAX_HEAD: usize = 64 * 1024;
/// Header fields in a response head; more is a 502 (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// A chunk-size line longer than this (extensions included) is refused.
const MAX_CHUNK_LINE: usize = 4096;
/// Reads on a connection start at MIN_READ and adapt, as hyper's do: a read
/// that fills what it asked for doubles the next (up to MAX_READ), one that
/// brings less than a quarter halves it. So a connection that carries 16 KiB
/// responses reads each, head and body, in one call, a large body goes in
/// few reads, and small responses keep small buffers.
const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;
/// An idle connection keeps a read buffer up to this size (so 16 KiB
/// responses reuse theirs); a larger one is let go when it goes idle.
const KEEP_IDLE_BUFFER: usize = 64 * 1024;
/// How often idle connections are looked over for expiry and closes.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Idle connections beyond `keepalive` are closed once idle this long, not
/// at once as nginx does: when more requests are in flight than
/// `keepalive` (HTTP/2 clients multiplex hundreds), closing the surplus as
/// it comes back meant a new connection for a third of the requests of the
/// next burst (`benches/compare` h2-tls: 45,000 connects per 100,000
/// requests, half the requests per CPU-second). The surplus never exceeds
/// what was just in use at once.
const SURPLUS_IDLE: Duration = SWEEP_EVERY;

/// Idle keep-alive connections of one group, by peer slot (the peer's pool
/// alias, stable across reloads that keep the pool).
pub struct Pool {
    idle: Mutex<Idle>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    /// Some: every connection of this pool speaks TLS.
    tls: Option<TlsTarget>,
}

#[derive(Default)]
struct Idle {
    /// Oldest first: requests take from the back (the connection used last),
    /// the surplus goes from the front.
    by_slot: Vec<VecDeque<Kept>>,
    /// A sweeper task is running (it ends when nothing is left to watch).
    sweeping: bool,
}

struct Kept {
    conn: Box<Conn>,
    /// When it was put back, on the coarse clock ([`crate::clock`]).
    since_ms: u64,
}

impl Kept {
    fn idle_for(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.since_ms))
    }
}

/// Where a pool's connections go: plain TCP, or TLS over it (`https://`)
/// with the group's client settings and the name verified and sent as SNI.
#[derive(Clone)]
pub struct TlsTarget {
    pub connector: tokio_rustls::TlsConnector,
    pub name: rustls::pki_types::ServerName<'static>,
}

/// A connection's transport.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Held in a box (by the pool, a request, a response body): a response
/// body that carried its connection inline was 80 bytes larger, and a
/// response is moved a dozen times on its way to the client (see
/// `serve::body`). One box per upstream connection, not per request.
struct Conn {
    stream: Stream,
    /// Read but not yet consumed; empty whenever the connection is idle.
    buf: BytesMut,
    /// How much the next full-size read asks for (see MIN_READ).
    read_size: usize,
    /// The wait for a response head is timed by this one timer for the
    /// connection's life, not a new one a request (see `exchange`).
    read_timer: ReadTimer,
}

impl Conn {
    /// Nothing came from the server while the connection was idle: no close,
    /// no stray bytes. Costs no system call unless tokio saw it readable.
    fn is_quiet(&self) -> bool {
        if let Stream::Tls(tls) = &self.stream {
            // Decrypted bytes nobody asked for, or the server's close_notify.
            if !tls.get_ref().1.wants_read() {
                return false;
            }
        }
        let tcp = self.stream.tcp();
        let mut cx = Context::from_waker(Waker::noop());
        match tcp.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: closed, stray bytes, or readiness left from the last
            // read of the previous response. A one-byte read tells which
            // (a peek under TLS, whose bytes must not be taken).
            Poll::Ready(Ok(())) => match &self.stream {
                Stream::Plain(s) => matches!(
                    s.try_read(&mut [0u8; 1]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock
                ),
                Stream::Tls(_) => {
                    let mut byte = [0u8; 1];
                    let mut peeked = tokio::io::ReadBuf::new(&mut byte);
                    tcp.poll_peek(&mut cx, &mut peeked).is_pending()
                }
            },
        }
    }

    /// Read more into `buf`: up to `limit` bytes are wanted (what is left of
    /// a body, or anything), and room is made for `read_size` of them (a
    /// read takes what the spare room holds, which may be more).
    fn poll_fill(&mut self, cx: &mut Context<'_>, limit: u64) -> Poll<io::Result<usize>> {
        let full = self.read_size as u64 <= limit;
        let want = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .clamp(1, self.read_size);
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want);
        }
        let n = std::task::ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.stream),
            cx,
            &mut self.buf
        ))?;
        if full && n >= self.read_size {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        } else if full && n < self.read_size / 4 {
            self.read_size = (self.read_size / 2).max(MIN_READ);
        }
        Poll::Ready(Ok(n))
    }
}

impl Pool {
    /// `max_idle` connections kept per peer (the group's `keepalive`), each
    /// for `idle_timeout` at most.
    pub fn new(
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
        tls: Option<TlsTarget>,
    ) -> Arc<Self> {
        Arc::new(Pool {
            idle: Mutex::new(Idle::default()),
            max_idle,
            idle_timeout,
            connect_timeout,
            tls,
        })
    }

    /// The most recently used live idle connection to `slot`, if any.
    fn take(&self, slot: usize) -> Option<Box<Conn>> {
        let now_ms = crate::clock::coarse_ms();
        let mut stale = Vec::new();
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let list = idle.by_slot.get_mut(slot)?;
            let mut found = None;
            while let Some(kept) = list.pop_back() {
                if kept.idle_for(now_ms) >= self.idle_timeout {
                    // The newest has expired: so have the others.
                    stale.push(kept);
                    stale.extend(list.drain(..));
                    break;
                }
                if kept.conn.is_quiet() {
                    found = Some(kept.conn);
                    break;
                }
                stale.push(kept);
            }
            found
        };
        drop(stale); // closed outside the lock
        found
    }

    /// Keep `conn` for the next request to `slot`. Past `max_idle`, it is
    /// kept too, for SURPLUS_IDLE, in case the next burst needs it.
    fn put(self: &Arc<Self>, slot: usize, mut conn: Box<Conn>) {
        if self.max_idle == 0 {
            return;
        }
        if conn.read_size > KEEP_IDLE_BUFFER || conn.buf.capacity() > KEEP_IDLE_BUFFER {
            // Large bodies grew the reads (up to MAX_READ), and the empty
            // rest of the buffer still holds all of it: an idle connection
            // does not keep that much; its next read allocates.
            conn.buf = BytesMut::new();
        }
        let now_ms = crate::clock::coarse_ms();
        let mut oldest = None;
        let start_sweeper = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.by_slot.len() <= slot {
                idle.by_slot.resize_with(slot + 1, VecDeque::new);
            }
            let list = &mut idle.by_slot[slot];
            if list.len() >= self.max_idle
                && list
                    .front()
                    .is_some_and(|k| k.idle_for(now_ms) >= SURPLUS_IDLE)
            {
                oldest = list.pop_front();
            }
            list.push_back(Kept {
                conn,
                since_ms: now_ms,
            });
            !std::mem::replace(&mut idle.sweeping, true)
        };
        drop(oldest);
        if start_sweeper {
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// Close what has expired or was closed by its server; true when
    /// nothing is left (the sweeper then stops, and the next put restarts it).
    fn sweep_once(&self) -> bool {
        let mut closed = Vec::new();
        let now_ms = crate::clock::coarse_ms();
        let empty = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            for list in idle.by_slot.iter_mut() {
                for kept in std::mem::take(list) {
                    if kept.idle_for(now_ms) < self.idle_timeout && kept.conn.is_quiet() {
                        list.push_back(kept);
                    } else {
                        closed.push(kept);
                    }
                }
                // The surplus over max_idle that no burst has needed lately.
                while list.len() > self.max_idle
                    && list
                        .front()
                        .is_some_and(|k| k.idle_for(now_ms) >= SURPLUS_IDLE)
                {
                    closed.extend(list.pop_front());
                }
            }
            let empty = idle.by_slot.iter().all(VecDeque::is_empty);
            if empty {
                idle.sweeping = false;
            }
            empty
        };
        drop(closed);
        empty
    }
}

/// Once a second, close idle connections past keepalive_timeout and those
/// their server closed (which would otherwise sit in CLOSE_WAIT). Holds the
/// pool weakly: a pool dropped by a reload ends its sweeper.
async fn sweep(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        if pool.sweep_once() {
            return;
        }
    }
}

/// One request as it goes up.
pub struct Outgoing<'a> {
    /// Head and body, serialized by [`write_request`].
    pub bytes: &'a [u8],
    /// HEAD: the response has no body, whatever its head says.
    pub head_request: bool,
    /// The request may be sent again on a new connection when a kept one
    /// turns out to be closed (idempotent, or `non_idempotent` allowed).
    pub may_resend: bool,
}

/// Which upstream response headers the client gets.
pub struct ResponseFilter<'a> {
    pub hide: &'a [HeaderName],
    /// The client said `TE: trailers`: keep the Trailer announcement.
    pub keep_trailer: bool,
    /// The writer takes the fields from the head (`PassedFields`); else
    /// they go into the response's map.
    pub pass_fields: bool,
}

/// Writes a request head, then its body, into one buffer.
pub struct HeadWriter<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> HeadWriter<'a> {
    /// The request line; `room` is what the whole request will take, about.
    pub fn new(out: &'a mut Vec<u8>, method: &Method, target: &str, room: usize) -> Self {
        out.reserve(room);
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        if target.starts_with('?') {
            out.push(b'/'); // as hyper writes an empty path
        }
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        HeadWriter { out }
    }

    /// One field; the caller gives a valid name and value (from a header
    /// map, or checked).
    pub fn field(&mut self, name: &[u8], value: &[u8]) {
        self.field_with(name, |out| out.extend_from_slice(value));
    }

    /// One field whose value `value` writes in place (no buffer of its own).
    pub fn field_with(&mut self, name: &[u8], value: impl FnOnce(&mut Vec<u8>)) {
        self.out.extend_from_slice(name);
        self.out.extend_from_slice(b": ");
        value(self.out);
        self.out.extend_from_slice(b"\r\n");
    }

    /// Content-Length from the body itself (so that no `proxy_set_header`
    /// can make the framing lie; 0 is written only when the request had
    /// one), the end of the head, and the body.
    pub fn finish(self, body: &[u8], had_length: bool) {
        if !body.is_empty() || had_length {
            let mut digits = itoa::Buffer::new();
            let len = digits.format(body.len());
            self.out.extend_from_slice(b"content-length: ");
            self.out.extend_from_slice(len.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body);
    }
}

/// Send `request` to `addr` over a kept connection of `slot` or a new one,
/// and read the response head. A kept connection that the server had
/// closed (no byte of a response came) is replaced by a new one once.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    pool: &Arc<Pool>,
    slot: usize,
    addr: SocketAddr,
    request: &Outgoing<'_>,
    filter: &ResponseFilter<'_>,
    start: Instant,
    send_timeout: Duration,
    read_timeout: Duration,
) -> Result<(http::response::Parts, ResponseBody), Failure> {
    let mut kept = pool.take(slot);
    loop {
        let reused = kept.is_some();
        let mut conn = match kept.take() {
            Some(conn) => conn,
            None => connect(addr, pool, start + read_timeout).await?,
        };
        match exchange(
            &mut conn,
            request,
            filter,
            start,
            send_timeout,
            read_timeout,
        )
        .await
        {
            Ok(head) => return Ok(answer(pool, slot, conn, head)),
            Err(Exchanged::Nothing(e)) if reused && request.may_resend => {
                tracing::debug!(peer = %addr, error = %e, "a kept upstream connection was closed; sending on a new one");
            }
            Err(Exchanged::Nothing(e)) => {
                return Err(Failure {
                    kind: FailureKind::Error,
                    sent: true,
                    reason: describe_io(&e, "before answering"),
                })
            }
            Err(Exchanged::Failed(f)) => return Err(f),
        }
    }
}

/// A new connection to `addr`: TCP within connect_timeout, then for a TLS
/// pool the handshake, by `deadline` (the handshake counts towards
/// read_timeout, as it does for hyper-util's connections).
async fn connect(addr: SocketAddr, pool: &Pool, deadline: Instant) -> Result<Box<Conn>, Failure> {
    let connecting = tokio::time::timeout(pool.connect_timeout, TcpStream::connect(addr));
    let stream = not_sent(connecting.await, "connect", "connect_timeout")?;
    // Requests are written whole; Nagle would only hold the last piece.
    let _ = stream.set_nodelay(true);
    let stream = match &pool.tls {
        None => Stream::Plain(stream),
        Some(tls) => {
            // Boxed: a handshake's state is large, and every request's
            // future would carry room for it, new connection or not.
            let handshake = Box::pin(tls.connector.connect(tls.name.clone(), stream));
            let deadline = tokio::time::Instant::from_std(deadline);
            let done = tokio::time::timeout_at(deadline, handshake).await;
            let tls = not_sent(
                done,
                "TLS handshake",
                "read_timeout during the TLS handshake",
            )?;
            Stream::Tls(Box::new(tls))
        }
    };
    Ok(Box::new(Conn {
        stream,
        buf: BytesMut::new(),
        read_size: MIN_READ,
        read_timer: ReadTimer::default(),
    }))
}

/// A step of making a connection, timed: its failure is one of the server
/// (nothing of the request was sent), an error or a timeout.
fn not_sent<T>(
    step: Result<io::Result<T>, tokio::time::error::Elapsed>,
    what: &str,
    timeout: &str,
) -> Result<T, Failure> {
    match step {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => Err(Failure {
            kind: FailureKind::Error,
            sent: false,
            reason: format!("{what}: {e}"),
        }),
        Err(_) => Err(Failure {
            kind: FailureKind::Timeout,
            sent: false,
            reason: timeout.to_string(),
        }),
    }
}

enum Exchanged {
    /// The connection failed or closed before any byte of a response.
    Nothing(io::Error),
    Failed(Failure),
}

fn failed(kind: FailureKind, reason: impl Into<String>) -> Exchanged {
    Exchanged::Failed(Failure {
        kind,
        sent: true,
        reason: reason.into(),
    })
}

fn describe_io(e: &io::Error, when: &str) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => format!("upstream closed the connection {when}"),
        _ => format!("upstream connection failed {when}: {e}"),
    }
}

async fn exchange(
    conn: &mut Conn,
    request: &Outgoing<'_>,
    filter: &ResponseFilter<'_>,
    start: Instant,
    send_timeout: Duration,
    read_timeout: Duration,
) -> Result<Head, Exchanged> {
    let write = async {
        conn.stream.write_all(request.bytes).await?;
        conn.stream.flush().await // TLS: the last record out (no-op on TCP)
    };
    // Most requests go out at once, into an empty socket buffer: the
    // timer (and the clock read that sets it) only for one that waits.
    let mut write = std::pin::pin!(write);
    let at_once =
        std::future::poll_fn(|cx| Poll::Ready(std::future::Future::poll(write.as_mut(), cx))).await;
    let written = match at_once {
        Poll::Ready(done) => Ok(done),
        Poll::Pending => tokio::time::timeout(send_timeout, write).await,
    };
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(Exchanged::Nothing(e)),
        Err(_) => {
            return Err(failed(
                FailureKind::Timeout,
                "send_timeout while sending the request",
            ))
        }
    }
    let deadline = tokio::time::Instant::from_std(start + read_timeout);
    let mut timer = std::mem::take(&mut conn.read_timer);
    let head = {
        let reading = std::pin::pin!(read_head(conn, request.head_request, filter));
        timer.bound(deadline, reading).await
    };
    conn.read_timer = timer;
    head.unwrap_or_else(|| {
        Err(failed(
            FailureKind::Timeout,
            "read_timeout waiting for the response head",
        ))
    })
}

/// An upstream connection's timer for the wait for each response head.
///
/// `tokio::time::timeout` made a timer a request: put into tokio's timer
/// wheel when the head did not come at once (a lock, an insert), taken out
/// when it came (a lock, a removal); about 250 instructions and 40 lines of
/// code a proxied request. This one is made once, at the connection's first
/// wait, and each later deadline (later, as a request starts after the last,
/// unless a reload shortened read_timeout: tokio then moves it back in the
/// wheel) moves it forward, which tokio does with one atomic store while the
/// timer is in the wheel; it fires at the old deadline at most once and is
/// put back for the new one. Between requests it stays in the wheel,
/// holding the waker of the task that last waited on it; the next wait
/// gives it its own.
#[derive(Default)]
struct ReadTimer(Option<Pin<Box<tokio::time::Sleep>>>);

impl ReadTimer {
    /// `future`'s output, or None if `deadline` comes first.
    async fn bound<F: std::future::Future>(
        &mut self,
        deadline: tokio::time::Instant,
        mut future: Pin<&mut F>,
    ) -> Option<F::Output> {
        let mut armed = false;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = future.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            // Armed only for a head that did not come at once.
            let sleep = match &mut self.0 {
                Some(sleep) if !armed => {
                    sleep.as_mut().reset(deadline);
                    sleep
                }
                Some(sleep) => sleep,
                None => self.0.insert(Box::pin(tokio::time::sleep_until(deadline))),
            };
            armed = true;
            std::future::Future::poll(sleep.as_mut(), cx).map(|()| None)
        })
        .await
    }
}

/// The response fields the client never gets whatever the configuration
/// (hop-by-hop ones, Server, Date: what [`hidden_response_header`] drops
/// besides `proxy_hide_header`), told by the raw name, before a HeaderName
/// is made for it; Trailer stays when the client accepts trailers.
fn always_dropped(name: &[u8], keep_trailer: bool) -> bool {
    const DROPPED: [&[u8]; 8] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"server",
        b"date",
    ];
    DROPPED.iter().any(|d| d.eq_ignore_ascii_case(name))
        || (!keep_trailer && name.eq_ignore_ascii_case(b"trailer"))
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

struct Head {
    parts: http::response::Parts,
    /// The fields, when they go to the client straight from the head
    /// (`parts.headers` is empty then).
    passed: Option<Box<PassedFields>>,
    framing: Framing,
    /// The connection may carry another request once the body is read.
    reusable: bool,
}

async fn read_head(
    conn: &mut Conn,
    head_request: bool,
    filter: &ResponseFilter<'_>,
) -> Result<Head, Exchanged> {
    let mut received = false;
    loop {
        if !conn.buf.is_empty() {
            received = true;
            match parse_head(&mut conn.buf, head_request, filter)? {
                Parsed::Final(head) => return Ok(head),
                Parsed::Interim => continue,
                Parsed::Partial => {}
            }
            if conn.buf.len() >= MAX_HEAD {
                return Err(failed(FailureKind::Error, "upstream sent too big a header"));
            }
        }
        let read = std::future::poll_fn(|cx| conn.poll_fill(cx, u64::MAX)).await;
        match read {
            Ok(0) if !received => {
                return Err(Exchanged::Nothing(io::ErrorKind::UnexpectedEof.into()))
            }
            Ok(0) => {
                return Err(failed(
                    FailureKind::Error,
                    "upstream closed the connection in the middle of the response head",
                ))
            }
            Ok(_) => {}
            Err(e) if !received => return Err(Exchanged::Nothing(e)),
            Err(e) => {
                return Err(failed(
                    FailureKind::Error,
                    describe_io(&e, "while sending the response head"),
                ))
            }
        }
    }
}

enum Parsed {
    Partial,
    /// A 1xx other than 101, consumed: the final head follows.
    Interim,
    Final(Head),
}

/// What the framing headers of a head say, read before the map is built.
#[derive(Default)]
struct FramingFields {
    length: Option<u64>,
    /// Some: there is a Transfer-Encoding; true when its last coding is chunked.
    chunked: Option<bool>,
    close: bool,
    keep_alive: bool,
    /// Connection names other headers (to drop), besides close/keep-alive.
    options: bool,
}

fn invalid(reason: impl Into<String>) -> Exchanged {
    failed(FailureKind::Error, reason)
}

/// Parse the response head at the start of `buf`; on success it is taken
/// out of `buf`, which keeps what follows (the start of the body).
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    filter: &ResponseFilter<'_>,
) -> Result<Parsed, Exchanged> {
    // Offsets of each field's name and value in the head, so that the map
    // is built from slices of one shared buffer rather than from copies.
    let mut spans = Spans::<MAX_HEADERS>::new();
    let mut fields = FramingFields::default();
    let (len, code, version) = {
        // httparse fills what it uses: 3 KiB not zeroed per response.
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            &buf[..],
            &mut headers,
        );
        let len = match parsed {
            // A read may bring more than MAX_HEAD at once: the limit is on the head.
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
                return Err(invalid("upstream sent too big a header"))
            }
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(invalid("upstream sent too many header fields"))
            }
            Err(e) => {
                return Err(invalid(format!(
                    "upstream sent an invalid response head: {e}"
                )))
            }
        };
        for h in response.headers.iter() {
            spans.push(field_span(buf, h));
            read_framing_field(h.name.as_bytes(), h.value, &mut fields)?;
        }
        let version = match response.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        (len, response.code.unwrap_or(0), version)
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code)
        .map_err(|_| invalid(format!("upstream sent an invalid status {code}")))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(invalid(
            "upstream switched protocols though no upgrade was asked",
        ));
    }
    if status.is_informational() {
        return Ok(Parsed::Interim);
    }
    let options = match fields.options {
        true => connection_options(&head, spans.as_slice()),
        false => Vec::new(),
    };
    // Which fields the client gets, in order: kept as spans when the writer
    // takes them from the head (where the first Content-Length is noted),
    // else put in a map at once.
    let mut kept = Spans::<MAX_HEADERS>::new();
    let mut length_at = None;
    let mut map = (!filter.pass_fields)
        .then(|| HeaderMap::with_capacity(spans.as_slice().len() + ROOM_AFTER));
    for &span in spans.as_slice() {
        let raw_name = &head[span.0 as usize..span.1 as usize];
        if always_dropped(raw_name, filter.keep_trailer) {
            continue; // Server, Date, Connection…
        }
        // always_dropped took the fixed part of hidden_response_header (the
        // unit test below holds the two together): proxy_hide_header and the
        // fields Connection names are left.
        let named = |names: &[HeaderName]| {
            names
                .iter()
                .any(|n| n.as_str().as_bytes().eq_ignore_ascii_case(raw_name))
        };
        let is_length = raw_name.eq_ignore_ascii_case(b"content-length");
        let dropped = (named(filter.hide)
            && !(filter.keep_trailer && raw_name.eq_ignore_ascii_case(b"trailer")))
            || named(&options)
            || (is_length && (fields.chunked.is_some() || length_at.is_some()));
        if dropped {
            continue;
        }
        if is_length {
            length_at = Some(kept.as_slice().len());
        }
        match &mut map {
            Some(map) => append_field(map, &head, span)?,
            None => kept.push(span),
        }
    }
    // The spans pass to the writer; too many of them, or a Trailer kept:
    // a map after all. The parts made below come with an empty map: none
    // is made here when the fields pass straight.
    let (headers, passed) = match map {
        Some(map) => (Some(map), None),
        None => match PassedFields::new(&head, kept.as_slice(), length_at, filter.keep_trailer) {
            Some(passed) => (None, Some(passed)),
            None => {
                let mut map = HeaderMap::with_capacity(kept.as_slice().len() + ROOM_AFTER);
                for &span in kept.as_slice() {
                    append_field(&mut map, &head, span)?;
                }
                (Some(map), None)
            }
        },
    };
    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = match (no_body, fields.chunked, fields.length) {
        (true, _, _) => Framing::Empty,
        (false, Some(true), _) => Framing::Chunked,
        (false, Some(false), _) => Framing::UntilClose,
        (false, None, Some(0)) => Framing::Empty,
        (false, None, Some(n)) => Framing::Length(n),
        (false, None, None) => Framing::UntilClose,
    };
    let persistent = match version {
        Version::HTTP_11 => !fields.close,
        _ => fields.keep_alive && !fields.close,
    };
    // Both framings at once is a smuggling shape: read it, never reuse.
    let both = fields.chunked.is_some() && fields.length.is_some();
    let reusable = persistent && framing != Framing::UntilClose && !both;
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    if let Some(headers) = headers {
        parts.headers = headers;
    }
    Ok(Parsed::Final(Head {
        parts,
        passed,
        framing,
        reusable,
    }))
}

/// A field of `head` into `map`.
fn append_field(
    map: &mut HeaderMap,
    head: &Bytes,
    (ns, ne, vs, ve): Span,
) -> Result<(), Exchanged> {
    let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
        .map_err(|_| invalid("upstream sent an invalid header name"))?;
    let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
        .map_err(|_| invalid("upstream sent an invalid header value"))?;
    map.append(name, value);
    Ok(())
}

pub(crate) use crate::route::fields::{field_span, Span};

/// The spans of a head's fields, in order, up to `N` of them (httparse's
/// own limit for that head). Filled only as far as the head has fields:
/// zeroing the whole array was a 1-1.6 KiB memset a head.
pub(crate) struct Spans<const N: usize> {
    at: [std::mem::MaybeUninit<Span>; N],
    len: usize,
}

impl<const N: usize> Spans<N> {
    pub(crate) fn new() -> Self {
        Spans {
            at: [const { std::mem::MaybeUninit::uninit() }; N],
            len: 0,
        }
    }

    /// Panics past `N` (the index is checked), which httparse, given room
    /// for `N` fields, never yields.
    pub(crate) fn push(&mut self, span: Span) {
        self.at[self.len].write(span);
        self.len += 1;
    }

    pub(crate) fn as_slice(&self) -> &[Span] {
        // SAFETY: the first `len` entries were written by `push`, and
        // MaybeUninit<Span> has Span's layout.
        unsafe { std::slice::from_raw_parts(self.at.as_ptr().cast::<Span>(), self.len) }
    }
}

/// Most fields a response passes on straight from its head; one with more
/// gets a header map, as from hyper's client.
const PASSED_FIELDS: usize = 16;

/// Fields a response's map takes after an upstream's (Server, Date,
/// Content-Length and the like): a map that grows rebuilds its index.
const ROOM_AFTER: usize = 4;

/// An upstream response's fields as they came, slices of its head, for
/// ginx's own HTTP/1 side to write out without a header map: building a
/// map (a hashed name, an allocation or two, an insert per field) and
/// walking it again to write it was about 1,000 instructions of a proxied
/// request's 19,000. For every other writer (HTTP/2, hyper's HTTP/1) the
/// map is built as the head is read (`ResponseFilter::pass_fields`). The
/// fields have been checked: httparse takes only token names, and values
/// a header map accepts.
pub struct PassedFields {
    head: Bytes,
    fields: [Span; PASSED_FIELDS],
    len: usize,
    /// Which is the (first) Content-Length: the writer decides on it, as
    /// on the framing.
    length_at: Option<usize>,
}

/// One field of [`PassedFields`]: its name as the upstream wrote it.
pub struct PassedField<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub is_content_length: bool,
}

impl PassedFields {
    /// None when the map is the better way: too many fields, or a Trailer
    /// announcement kept for the client (which HTTP/1 writers handle).
    fn new(
        head: &Bytes,
        kept: &[Span],
        length_at: Option<usize>,
        keep_trailer: bool,
    ) -> Option<Box<Self>> {
        if kept.len() > PASSED_FIELDS || keep_trailer {
            return None;
        }
        let mut fields = [(0, 0, 0, 0); PASSED_FIELDS];
        fields[..kept.len()].copy_from_slice(kept);
        Some(Box::new(PassedFields {
            head: head.clone(),
            fields,
            len: kept.len(),
            length_at,
        }))
    }

    /// The fields in the upstream's order.
    pub fn iter(&self) -> impl Iterator<Item = PassedField<'_>> {
        self.fields[..self.len]
            .iter()
            .enumerate()
            .map(|(i, &(ns, ne, vs, ve))| PassedField {
                name: &self.head[ns as usize..ne as usize],
                value: &self.head[vs as usize..ve as usize],
                is_content_length: self.length_at == Some(i),
            })
    }

    /// Into a header map, for writers that need one.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        headers.reserve(self.len + ROOM_AFTER);
        crate::route::fields::append_spans(headers, &self.head, &self.fields[..self.len]);
    }
}

/// Note what Content-Length, Transfer-Encoding and Connection say.
fn read_framing_field(
    name: &[u8],
    value: &[u8],
    fields: &mut FramingFields,
) -> Result<(), Exchanged> {
    if name.eq_ignore_ascii_case(b"content-length") {
        for part in value.split(|&b| b == b',') {
            let digits = part.trim_ascii();
            let n = parse_decimal(digits)
                .ok_or_else(|| invalid("upstream sent an invalid Content-Length"))?;
            if fields.length.is_some_and(|m| m != n) {
                return Err(invalid("upstream sent two different Content-Lengths"));
            }
            fields.length = Some(n);
        }
    } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
        let last = value
            .rsplit(|&b| b == b',')
            .next()
            .unwrap_or(b"")
            .trim_ascii();
        fields.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
    } else if name.eq_ignore_ascii_case(b"connection") {
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                fields.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                fields.keep_alive = true;
            } else if !token.is_empty() {
                fields.options = true;
            }
        }
    }
    Ok(())
}

/// The header names a response's Connection lists (rare: most say only
/// keep-alive or close).
fn connection_options(head: &[u8], spans: &[Span]) -> Vec<HeaderName> {
    spans
        .iter()
        .filter(|s| head[s.0 as usize..s.1 as usize].eq_ignore_ascii_case(b"connection"))
        .flat_map(|s| head[s.2 as usize..s.3 as usize].split(|&b| b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect()
}

/// A Content-Length value: digits, at most 19 of them. Shared with the
/// server side.
pub(crate) fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

/// The parts and body of a response whose head was read.
fn answer(
    pool: &Arc<Pool>,
    slot: usize,
    conn: Box<Conn>,
    head: Head,
) -> (http::response::Parts, ResponseBody) {
    let state = match head.framing {
        Framing::Empty | Framing::Length(0) => State::Done,
        Framing::Length(n) => State::Length(n),
        Framing::Chunked => State::ChunkSize,
        Framing::UntilClose => State::UntilClose,
    };
    let mut body = ResponseBody {
        conn: Some(conn),
        state,
        home: head.reusable.then(|| (pool.clone(), slot)),
        early: None,
        passed: head.passed,
    };
    match state {
        State::Done => body.finish(),
        // The whole body came with the head (the usual small response): the
        // connection goes back now rather than when the client side has
        // sent the body on. Under HTTP/2 with many streams that wait was
        // long enough to need more connections than `keepalive` keeps.
        State::Length(n) if body.buffered().len() as u64 >= n => {
            body.early = Some(body.data(n));
            body.finish();
        }
        _ => {}
    }
    (head.parts, body)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// This many bytes of a Content-Length body are still to come.
    Length(u64),
    /// At a chunk-size line.
    ChunkSize,
    /// This many bytes of the current chunk are still to come.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// After the last chunk: trailer fields, then an empty line.
    Trailers,
    UntilClose,
    Done,
}

/// An upstream response body, read from its connection as the client side
/// polls for it.
pub struct ResponseBody {
    /// None once the body is done (the connection went back, or closed).
    conn: Option<Box<Conn>>,
    state: State,
    /// Where the connection goes when the body is done, if it may be reused.
    home: Option<(Arc<Pool>, usize)>,
    /// A body read whole with its head, still to be handed on.
    early: Option<Bytes>,
    /// The head's fields, until the writer takes them (see `PassedFields`).
    passed: Option<Box<PassedFields>>,
}

type Polled = Poll<Option<Result<Frame<Bytes>, super::BoxError>>>;

impl ResponseBody {
    /// The response's fields, when they were left in its head rather than
    /// put in its header map; once.
    pub fn take_passed(&mut self) -> Option<Box<PassedFields>> {
        self.passed.take()
    }

    /// The body is complete: give the connection back if it may carry
    /// another request and nothing unasked-for came after the body.
    fn finish(&mut self) {
        self.state = State::Done;
        let conn = self.conn.take();
        if let (Some(conn), Some((pool, slot))) = (conn, self.home.take()) {
            if conn.buf.is_empty() {
                pool.put(slot, conn);
            }
        }
    }

    fn fail(&mut self, why: String) -> Polled {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(why.into())))
    }

    /// Up to `limit` bytes already read, as a data frame.
    fn data(&mut self, limit: u64) -> Bytes {
        let conn = self
            .conn
            .as_mut()
            .expect("a body being read has its connection");
        let n = conn
            .buf
            .len()
            .min(usize::try_from(limit).unwrap_or(usize::MAX));
        conn.buf.split_to(n).freeze()
    }

    /// Read more; Ready(Ok(false)) when the server closed the connection.
    fn poll_more(&mut self, cx: &mut Context<'_>, limit: u64) -> Poll<io::Result<bool>> {
        let conn = self
            .conn
            .as_mut()
            .expect("a body being read has its connection");
        let n = std::task::ready!(conn.poll_fill(cx, limit))?;
        Poll::Ready(Ok(n > 0))
    }

    fn buffered(&self) -> &[u8] {
        self.conn.as_ref().map_or(&[], |c| &c.buf[..])
    }

    /// Consume `n` bytes of framing (chunk-size lines, CRLFs).
    fn consume(&mut self, n: usize) {
        if let Some(conn) = self.conn.as_mut() {
            let _ = conn.buf.split_to(n);
        }
    }

    fn poll_body(&mut self, cx: &mut Context<'_>) -> Polled {
        if let Some(data) = self.early.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            let have = self.buffered().len();
            match self.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) | State::ChunkData(left) if have > 0 => {
                    let data = self.data(left);
                    let left = left - data.len() as u64;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => {
                            self.finish();
                            State::Done
                        }
                        (State::Length(_), _) => State::Length(left),
                        (_, 0) => State::ChunkEnd,
                        (_, _) => State::ChunkData(left),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::UntilClose if have > 0 => {
                    let data = self.data(u64::MAX);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::ChunkSize => match find_line(self.buffered()) {
                    Some((line, used)) => match parse_chunk_size(line) {
                        Some(0) => {
                            self.consume(used);
                            self.state = State::Trailers;
                            continue;
                        }
                        Some(size) => {
                            self.consume(used);
                            self.state = State::ChunkData(size);
                            continue;
                        }
                        None => return self.fail("upstream sent an invalid chunk size".into()),
                    },
                    None if have > MAX_CHUNK_LINE => {
                        return self.fail("upstream sent too long a chunk-size line".into())
                    }
                    None => {}
                },
                State::ChunkEnd if have >= 2 => {
                    if &self.buffered()[..2] != b"\r\n" {
                        return self.fail("upstream sent a chunk without its CRLF".into());
                    }
                    self.consume(2);
                    self.state = State::ChunkSize;
                    continue;
                }
                State::Trailers if have >= 2 => {
                    if self.buffered().starts_with(b"\r\n") {
                        self.consume(2);
                        self.finish();
                        return Poll::Ready(None);
                    }
                    match parse_trailers(self.buffered()) {
                        Ok(Some((trailers, used))) => {
                            self.consume(used);
                            self.finish();
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(None) if have > MAX_HEAD => {
                            return self.fail("upstream sent too big a trailer section".into())
                        }
                        Ok(None) => {}
                        Err(why) => return self.fail(why),
                    }
                }
                _ => {}
            }
            // Not enough is buffered for the next step: read.
            let want = match self.state {
                State::Length(left) | State::ChunkData(left) => left,
                _ => u64::MAX,
            };
            match std::task::ready!(self.poll_more(cx, want)) {
                Ok(true) => {}
                Ok(false) if self.state == State::UntilClose => {
                    self.state = State::Done;
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(false) => {
                    return self
                        .fail("upstream closed the connection before the body was complete".into())
                }
                Err(e) => return self.fail(describe_io(&e, "while sending the body")),
            }
        }
    }
}

/// The first line of `buf` without its CRLF, and its length with it.
fn find_line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let end = memchr::memchr(b'\n', buf)?;
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    Some((line, end + 1))
}

/// A chunk-size line: hex digits, then optional whitespace and extensions.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let end = memchr::memchr(b';', line).unwrap_or(line.len());
    let digits = line[..end].trim_ascii();
    if digits.is_empty() {
        return None;
    }
    // Any number of digits (leading zeros are valid), but a value that fits.
    digits.iter().try_fold(0u64, |n, &d| {
        let v = (d as char).to_digit(16)?;
        n.checked_mul(16)?.checked_add(u64::from(v))
    })
}

/// The trailer section at the start of `buf` (through its empty line), if
/// it is all there.
type Trailers = Option<(HeaderMap, usize)>;

fn parse_trailers(buf: &[u8]) -> Result<Trailers, String> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete((used, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| "upstream sent an invalid trailer name".to_string())?;
                let value = HeaderValue::from_bytes(f.value)
                    .map_err(|_| "upstream sent an invalid trailer value".to_string())?;
                map.append(name, value);
            }
            Ok(Some((map, used)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(format!("upstream sent invalid trailers: {e}")),
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        self.get_mut().poll_body(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done && self.early.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(self.early.as_ref().map_or(0, |d| d.len() as u64)),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::hidden_response_header;
    use super::*;
    use http::header;

    #[test]
    fn spans_give_back_what_was_pushed_in_order() {
        let mut spans = Spans::<3>::new();
        assert!(spans.as_slice().is_empty());
        for i in 0..3 {
            spans.push((i, i + 1, i + 2, i + 3));
        }
        assert_eq!(
            spans.as_slice(),
            &[(0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5)]
        );
    }

    #[test]
    #[should_panic]
    fn spans_refuse_more_than_their_room() {
        let mut spans = Spans::<1>::new();
        spans.push((0, 0, 0, 0));
        spans.push((0, 0, 0, 0));
    }

    #[test]
    fn the_raw_name_check_drops_what_hidden_response_header_drops() {
        let always = super::super::HOP_BY_HOP
            .iter()
            .chain([&header::SERVER, &header::DATE]);
        for name in always {
            let keep_trailer = name == header::TRAILER;
            for raw in [name.as_str().to_string(), name.as_str().to_uppercase()] {
                assert!(
                    always_dropped(raw.as_bytes(), false),
                    "{raw} is not dropped by its raw name"
                );
                assert_eq!(always_dropped(raw.as_bytes(), true), !keep_trailer, "{raw}");
            }
        }
        for kept in ["content-type", "content-length", "dates", "tee", "x-server"] {
            assert!(!always_dropped(kept.as_bytes(), false), "{kept}");
            let name = HeaderName::from_static(kept);
            assert!(!hidden_response_header(&name, &[]), "{kept}");
        }
    }

    #[tokio::test]
    async fn an_idle_connection_keeps_a_small_read_buffer_and_lets_a_large_one_go() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut ends = Vec::new();
        let pool = Pool::new(4, Duration::from_secs(60), Duration::from_secs(1), None);
        for (slot, read_size) in [(0, MIN_READ), (1, MAX_READ)] {
            let stream = Stream::Plain(TcpStream::connect(addr).await.unwrap());
            ends.push(listener.accept().await.unwrap().0);
            let buf = BytesMut::with_capacity(read_size);
            pool.put(
                slot,
                Box::new(Conn {
                    stream,
                    buf,
                    read_size,
                    read_timer: ReadTimer::default(),
                }),
            );
        }
        let small = pool.take(0).expect("kept");
        assert!(small.buf.capacity() >= MIN_READ, "a small buffer is reused");
        let large = pool.take(1).expect("kept");
        assert_eq!(large.buf.capacity(), 0, "a large buffer is not kept idle");
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a"), Some(26));
        assert_eq!(parse_chunk_size(b"0"), Some(0));
        assert_eq!(parse_chunk_size(b"10 ; name=value"), Some(16));
        assert_eq!(
            parse_chunk_size(b"FFFFFFFFFFFFFFF"),
            Some(0xFFF_FFFF_FFFF_FFFF)
        );
        assert_eq!(parse_chunk_size(b"00000000000000000005"), Some(5));
        assert_eq!(parse_chunk_size(b"10000000000000000"), None);
        assert_eq!(parse_chunk_size(b""), None);
        assert_eq!(parse_chunk_size(b"-1"), None);
        assert_eq!(parse_chunk_size(b"0x10"), None);
    }

    #[test]
    fn request_framing_is_written_from_the_body() {
        let mut out = Vec::new();
        let mut w = HeadWriter::new(&mut out, &Method::POST, "?q", 10);
        w.field(b"x-a", b"1");
        w.finish(b"abc", false);
        assert_eq!(
            out,
            b"POST /?q HTTP/1.1\r\nx-a: 1\r\ncontent-length: 3\r\n\r\nabc"
        );
        let mut out = Vec::new();
        HeadWriter::new(&mut out, &Method::GET, "/", 10).finish(b"", true);
        assert_eq!(out, b"GET / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }

    /// A filter that hides nothing.
    fn no_hide(keep_trailer: bool, pass_fields: bool) -> ResponseFilter<'static> {
        ResponseFilter {
            hide: &[],
            keep_trailer,
            pass_fields,
        }
    }

    fn head(bytes: &[u8], head_request: bool) -> Result<Parsed, Exchanged> {
        parse_head(
            &mut BytesMut::from(bytes),
            head_request,
            &no_hide(false, true),
        )
    }

    fn final_head(bytes: &[u8]) -> Head {
        match head(bytes, false) {
            Ok(Parsed::Final(h)) => h,
            _ => panic!("not a final head: {:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = final_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::Length(5), true));
        let h = final_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(5));
        let h = final_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::Chunked, true));
        let h = final_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        );
        assert_eq!((h.framing, h.reusable), (Framing::Chunked, false));
        assert!(fields_of(&h).get(header::CONTENT_LENGTH).is_none());
        let h = final_head(b"HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::UntilClose, false));
        let h = final_head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.reusable, "HTTP/1.0 without keep-alive closes");
        let h =
            final_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n");
        assert!(h.reusable);
        let h = final_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.reusable);
        let h = final_head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(h.framing, Framing::Empty);
        assert!(matches!(
            head(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true),
            Ok(Parsed::Final(Head {
                framing: Framing::Empty,
                ..
            }))
        ));
        assert!(matches!(
            head(b"HTTP/1.1 100 Continue\r\n\r\n", false),
            Ok(Parsed::Interim)
        ));
        assert!(matches!(
            head(b"HTTP/1.1 200 OK\r\nContent-", false),
            Ok(Parsed::Partial)
        ));
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
        ] {
            assert!(
                matches!(head(bad, false), Err(Exchanged::Failed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn hop_by_hop_and_named_headers_are_dropped_at_parse() {
        let h = final_head(
            b"HTTP/1.1 200 OK\r\nServer: s\r\nDate: d\r\nConnection: keep-alive, X-Secret\r\n\
              X-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: yes\r\nContent-Length: 0\r\n\r\n",
        );
        let map = fields_of(&h);
        let names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept", "content-length"]);
    }

    /// A final head parsed with `filter`.
    fn filtered_head(bytes: &[u8], filter: &ResponseFilter<'_>) -> Head {
        match parse_head(&mut BytesMut::from(bytes), false, filter) {
            Ok(Parsed::Final(h)) => h,
            _ => panic!("not a final head: {:?}", String::from_utf8_lossy(bytes)),
        }
    }

    /// The fields a client gets, whichever way the head carries them.
    fn fields_of(h: &Head) -> HeaderMap {
        let mut map = h.parts.headers.clone();
        if let Some(passed) = &h.passed {
            assert!(map.is_empty(), "fields in the map and passed both");
            passed.append_to(&mut map);
        }
        map
    }

    #[test]
    fn fields_pass_straight_from_the_head_in_order_and_case() {
        let h = final_head(
            b"HTTP/1.1 200 OK\r\nServer: s\r\nContent-Type: text/plain\r\n\
              Content-Length: 2\r\nX-B: 1\r\nSet-Cookie: a=1\r\nset-cookie: b=2\r\n\r\n",
        );
        let passed = h.passed.as_ref().expect("few fields pass without a map");
        assert!(h.parts.headers.is_empty());
        let fields: Vec<(&[u8], &[u8], bool)> = passed
            .iter()
            .map(|f| (f.name, f.value, f.is_content_length))
            .collect();
        assert_eq!(
            fields,
            [
                (&b"Content-Type"[..], &b"text/plain"[..], false),
                (b"Content-Length", b"2", true),
                (b"X-B", b"1", false),
                (b"Set-Cookie", b"a=1", false),
                (b"set-cookie", b"b=2", false),
            ]
        );
        // As a map: lower-cased names, repeated ones kept.
        let map = fields_of(&h);
        assert_eq!(map.get_all("set-cookie").iter().count(), 2);
        assert_eq!(map["content-length"], "2");
    }

    #[test]
    fn many_fields_or_a_kept_trailer_go_in_a_map() {
        let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n".to_vec();
        for i in 0..=PASSED_FIELDS {
            bytes.extend_from_slice(format!("X-F{i}: {i}\r\n").as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
        let h = final_head(&bytes);
        assert!(h.passed.is_none());
        assert_eq!(h.parts.headers.len(), PASSED_FIELDS + 2);
        assert_eq!(h.parts.headers.keys().next().unwrap(), "content-length");

        let h = filtered_head(
            b"HTTP/1.1 200 OK\r\nTrailer: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            &no_hide(true, true),
        );
        assert!(h.passed.is_none());
        assert_eq!(h.parts.headers["trailer"], "x");

        // A writer that wants a map gets one.
        let h = filtered_head(
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n",
            &no_hide(false, false),
        );
        assert!(h.passed.is_none());
        assert_eq!(h.parts.headers["x-a"], "1");
    }

    #[test]
    fn proxy_hide_header_drops_a_passed_field_whatever_its_case() {
        let hide = [HeaderName::from_static("x-powered-by")];
        let filter = ResponseFilter {
            hide: &hide,
            keep_trailer: false,
            pass_fields: true,
        };
        let h = filtered_head(
            b"HTTP/1.1 200 OK\r\nX-Powered-By: php\r\nX-Kept: 1\r\nContent-Length: 0\r\n\r\n",
            &filter,
        );
        let names: Vec<&[u8]> = h.passed.as_ref().unwrap().iter().map(|f| f.name).collect();
        assert_eq!(names, [&b"X-Kept"[..], b"Content-Length"]);
    }
}
