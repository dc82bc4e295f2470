//! One client connection: the IO wrapper that enforces the request-head limits
//! (431 / 414) and answers a slow head with 408, and the watchdog that applies
//! `client_header_timeout` and `keepalive_timeout`, which hyper's HTTP/1
//! server does not do the way nginx users expect.
//!
//! An HTTP/1 connection idle for [`PARK_AFTER`] is parked: its server side
//! (ginx's own, or hyper's connection, with their buffers) is dropped, then its task,
//! and only the socket is kept, in the parking lot (`super::park`), until
//! the next request's bytes arrive: an idle keep-alive connection costs
//! less than nginx's.
//!
//! The wrapper follows plain HTTP/1 bytes message by message (see
//! [`super::framing`]): a head that arrives with no request in flight is
//! answered here when too large or of another HTTP version; a pipelined
//! one is left to hyper's own limits, slightly above ours. Under TLS
//! nothing is scanned: the bytes are ciphertext; only the timers apply.

use super::framing::{Framing, FramingError, Verdict};
use super::respond::error_page_bytes;
use super::socket::{ClientSocket, DeferredWatches};
use crate::clock;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the connection task, the IO wrapper and the request handler share.
pub struct ConnState {
    /// When the connection was accepted (or resumed), on the coarse clock
    /// that every `_ms` field below counts in ([`crate::clock`]: these are
    /// deadlines in seconds, stamped a few times a request).
    start_ms: u64,
    /// Requests handed to the handler whose response has not finished.
    in_flight: AtomicU32,
    /// Requests seen on this connection, for keepalive_requests.
    requests: AtomicU64,
    /// Changes whenever a request starts or finishes: the wrapper restarts its
    /// head scan when it sees a new value.
    epoch: AtomicU32,
    /// When the current head's first byte arrived; 0 = none yet.
    head_started_ms: AtomicU64,
    /// When the connection last became idle.
    idle_since_ms: AtomicU64,
    /// The watchdog found the head too slow: the wrapper answers 408.
    head_timed_out: AtomicBool,
    /// The client spoke the HTTP/2 preface: heads are frames, not lines.
    http2: AtomicBool,
    /// A 101 was answered: the bytes are another protocol's now.
    upgraded: AtomicBool,
    /// The connection is being parked: hyper's shutdown must leave the socket open.
    parking: AtomicBool,
    /// A graceful stop: ginx's own HTTP/1 side closes once the request in
    /// hand is answered (hyper's is told by its own graceful_shutdown).
    draining: AtomicBool,
    /// Since when a write to the client has been
    /// waiting (the client is not reading); 0 = writes are going through.
    write_blocked_ms: AtomicU64,
    /// When it was last unparked: parking again
    /// waits PARK_AFTER from then too, so that the new hyper connection reads first.
    unparked_ms: AtomicU64,
    /// client_max_body_size (0: none) of request number `body_limit_of`,
    /// set by the handler once it has routed: the wrapper checks the
    /// request's declared chunk sizes against it.
    body_limit: AtomicU64,
    body_limit_of: AtomicU64,
    /// The chunk sizes request number `declared_body_of` has declared so far.
    declared_body: AtomicU64,
    declared_body_of: AtomicU64,
    /// Close the socket with a reset (SO_LINGER 0) rather than a FIN.
    reset: AtomicBool,
    /// A request whose hang-up watch was put off has taken
    /// HANGUP_WATCH_AFTER (`super::socket`): the wrapper registers the
    /// socket to watch it.
    hangup_watch: AtomicBool,
    /// A [`FramingError`] code: the wrapper refused the framing of request
    /// number `framing_error_of`.
    framing_error: AtomicU8,
    framing_error_of: AtomicU64,
    server_tokens: bool,
}

/// How long an HTTP/1 connection stays idle before it is parked.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// The request line of HTTP/2's connection preface, as far as an HTTP/1
/// parser reads before refusing it (RFC 9113, 3.4).
pub const H2_REQUEST_LINE: &[u8] = b"PRI * HTTP/2.0";

impl ConnState {
    pub fn new(server_tokens: bool) -> Arc<Self> {
        Arc::new(ConnState {
            start_ms: clock::coarse_ms(),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            epoch: AtomicU32::new(0),
            head_started_ms: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_timed_out: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            parking: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            unparked_ms: AtomicU64::new(0),
            write_blocked_ms: AtomicU64::new(0),
            body_limit: AtomicU64::new(0),
            body_limit_of: AtomicU64::new(0),
            declared_body: AtomicU64::new(0),
            declared_body_of: AtomicU64::new(0),
            reset: AtomicBool::new(false),
            hangup_watch: AtomicBool::new(false),
            framing_error: AtomicU8::new(0),
            framing_error_of: AtomicU64::new(0),
            server_tokens,
        })
    }

    /// A request head was parsed and handed to the handler. Returns how many
    /// requests this connection has seen, this one included.
    pub fn request_started(&self) -> u64 {
        self.in_flight.fetch_add(1, Relaxed);
        self.epoch.fetch_add(1, Relaxed);
        self.head_started_ms.store(0, Relaxed);
        self.requests.fetch_add(1, Relaxed) + 1
    }

    /// Ask the IO wrapper to answer 408 on hyper's next read.
    pub fn flag_head_timeout(&self) {
        self.head_timed_out.store(true, Relaxed);
    }

    /// Requests being answered now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// Requests (HTTP/2: streams) this connection has had.
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    pub fn is_http2(&self) -> bool {
        self.http2.load(Relaxed)
    }

    /// The connection speaks HTTP/2: ALPN chose h2, or it began with the
    /// preface (which a plain connection's reads notice themselves).
    pub fn mark_http2(&self) {
        self.http2.store(true, Relaxed);
    }

    /// Changes whenever a deadline may have moved: a request started or
    /// finished, or a head's first byte arrived.
    pub fn progress(&self) -> (u32, u64, u64) {
        (
            self.epoch.load(Relaxed),
            self.head_started_ms.load(Relaxed),
            self.write_blocked_ms.load(Relaxed),
        )
    }

    /// Ask the wrapper to watch for a hang-up (registering the socket).
    pub fn start_hangup_watch(&self) {
        self.hangup_watch.store(true, Relaxed);
    }

    pub fn hangup_watch_started(&self) -> bool {
        self.hangup_watch.load(Relaxed)
    }

    /// Note whether a write to the client went through or has to wait.
    fn note_write<T>(&self, polled: &Poll<T>) {
        let blocked = self.write_blocked_ms.load(Relaxed);
        match (polled.is_pending(), blocked != 0) {
            (true, false) => self.write_blocked_ms.store(clock::coarse_ms(), Relaxed),
            (false, true) => self.write_blocked_ms.store(0, Relaxed),
            _ => {}
        }
    }

    /// Ask the wrapper to let hyper's shutdown pass without closing the socket.
    pub fn start_parking(&self) {
        self.parking.store(true, Relaxed);
    }

    pub fn is_parking(&self) -> bool {
        self.parking.load(Relaxed)
    }

    /// Stop gracefully: answer the request in hand, then close.
    pub fn start_draining(&self) {
        self.draining.store(true, Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// The connection switched protocols (WebSocket): no more HTTP heads to check.
    pub fn mark_upgraded(&self) {
        self.upgraded.store(true, Relaxed);
    }

    /// Request number `request` may carry at most `limit` body bytes (0: no
    /// limit). False when its chunked body has already declared more.
    pub fn limit_body(&self, request: u64, limit: u64) -> bool {
        self.body_limit.store(limit, Relaxed);
        self.body_limit_of.store(request, Relaxed);
        limit == 0
            || self.declared_body_of.load(Relaxed) != request
            || self.declared_body.load(Relaxed) <= limit
    }

    /// The body limit of request number `request`, 0 until its handler has routed it.
    pub fn body_limit(&self, request: u64) -> u64 {
        if self.body_limit_of.load(Relaxed) == request {
            self.body_limit.load(Relaxed)
        } else {
            0
        }
    }

    pub fn note_declared_body(&self, request: u64, declared: u64) {
        self.declared_body_of.store(request, Relaxed);
        self.declared_body.store(declared, Relaxed);
    }

    /// The wrapper refuses the framing of request number `request`.
    pub fn flag_framing(&self, request: u64, why: FramingError) {
        if self.framing_error.load(Relaxed) == 0 {
            self.framing_error_of.store(request, Relaxed);
            self.framing_error.store(why.code(), Relaxed);
        }
    }

    /// What the wrapper found wrong in the framing of request number `request`.
    pub fn framing_error(&self, request: u64) -> Option<FramingError> {
        if self.framing_error_of.load(Relaxed) != request {
            return None;
        }
        FramingError::from_code(self.framing_error.load(Relaxed))
    }

    /// When the connection is dropped, reset it: the kernel discards what
    /// is queued for a client that will not read it.
    pub fn reset_on_close(&self) {
        self.reset.store(true, Relaxed);
    }

    /// The response (body included) has been handed to hyper.
    pub fn request_finished(&self) {
        self.idle_since_ms.store(clock::coarse_ms(), Relaxed);
        self.epoch.fetch_add(1, Relaxed);
        self.in_flight.fetch_sub(1, Relaxed);
    }
}

/// What a parked connection keeps of its client side.
pub struct Idle {
    pub socket: std::net::TcpStream,
    /// Requests served so far (keepalive_requests counts on).
    pub requests: u64,
    pub server_tokens: bool,
    /// keepalive_timeout ends here.
    pub close_at: Instant,
}

/// Connection limits that apply before and between requests.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    pub max_header_size: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub send_timeout: Duration,
    /// HTTP/1 answers the last request with `Connection: close`; an HTTP/2
    /// connection gets GOAWAY once it has had this many streams (as nginx).
    pub keepalive_requests: u64,
}

/// What the bytes on a client socket are.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// Plain HTTP/1: heads and chunked bodies are checked here.
    Http1,
    /// Plain HTTP/1, or HTTP/2 with prior knowledge (h2c) if the client
    /// starts with the preface.
    Http1OrH2c,
    /// TLS: ciphertext; only the timers apply (a slow head is closed).
    Tls,
}

/// The client socket as the server side (ginx's own HTTP/1 side, or hyper) sees it.
pub struct ClientIo {
    inner: ClientSocket,
    state: Arc<ConnState>,
    limits: HeadLimits,
    framing: Framing,
    /// A body's framing was refused: hyper's next read fails (the bytes
    /// before the fault were handed over, so that hyper has the whole head).
    failed: bool,
    wire: Wire,
    /// Bytes hyper had read but not used when the connection was parked,
    /// given back first (they were scanned when they arrived).
    replay: bytes::Bytes,
    /// Follow the bytes with `framing` as they are read: on for hyper. Off
    /// while ginx's own HTTP/1 side reads: it parses every head itself, and
    /// what it hands over to hyper is followed then (`hand_over`). The
    /// follower's pass over each read was about 700 instructions a request.
    scan: bool,
    /// Some bytes have been read from the client.
    read_any: bool,
    /// Writes so far, counted up to 2: TCP_NODELAY is set before the second.
    writes: u8,
    /// Where a put-off hang-up watch waits for its time.
    watches: Arc<DeferredWatches>,
    /// The request (by number) whose hang-up watch was put off; 0: none.
    deferred_for: u64,
}

impl ClientIo {
    pub fn new(
        inner: ClientSocket,
        state: Arc<ConnState>,
        limits: HeadLimits,
        wire: Wire,
        watches: Arc<DeferredWatches>,
    ) -> Self {
        ClientIo {
            inner,
            state,
            limits,
            framing: Framing::default(),
            failed: false,
            wire,
            replay: bytes::Bytes::new(),
            scan: true,
            read_any: false,
            writes: 0,
            watches,
            deferred_for: 0,
        }
    }

    /// ginx's own HTTP/1 side reads from here on (see `scan`).
    pub fn serve_natively(&mut self) {
        self.scan = false;
    }

    /// ginx's own HTTP/1 side hands the connection to hyper with what it
    /// had read and not served (a request head, and anything after it):
    /// hyper reads that first, followed from here on as if it had just
    /// arrived, as the bytes before were not.
    pub fn hand_over(&mut self, mut buffered: bytes::BytesMut) {
        let state = self.state.clone();
        let followed = self.wire != Wire::Tls && !state.is_http2() && !state.upgraded.load(Relaxed);
        if !self.scan && followed {
            self.scan = true;
            // Every request before this head was served without a body.
            self.framing = Framing::after(state.requests());
            let direct = state.in_flight.load(Relaxed) == 0;
            match self
                .framing
                .feed(&mut buffered, &state, self.limits.max_header_size, direct)
            {
                Verdict::Fine => {}
                Verdict::Reject(status, reason) => {
                    let _ = self.reject(status, reason);
                    buffered.clear();
                    self.failed = true;
                }
                Verdict::Cut(at) => {
                    buffered.truncate(at);
                    self.failed = true;
                }
            }
        }
        self.scan = true;
        self.unpark(buffered.freeze());
    }

    /// A parked connection whose client spoke again, served anew.
    pub fn resumed(
        inner: ClientSocket,
        requests: u64,
        server_tokens: bool,
        limits: HeadLimits,
        watches: Arc<DeferredWatches>,
    ) -> (Self, Arc<ConnState>) {
        let state = ConnState::new(server_tokens);
        let now = clock::coarse_ms();
        state.requests.store(requests, Relaxed);
        state.idle_since_ms.store(now, Relaxed);
        state.unparked_ms.store(now, Relaxed);
        let mut io = ClientIo::new(inner, state.clone(), limits, Wire::Http1, watches);
        // Parked between messages: every head so far was a request.
        io.framing = Framing::after(requests);
        // It has answered before, perhaps without TCP_NODELAY: set it at
        // the first write.
        io.writes = 1;
        (io, state)
    }

    /// An idle connection gives up its socket to be parked: None when it
    /// is due to close already (or the socket cannot be kept).
    pub fn into_idle(mut self) -> Option<Idle> {
        let Watch::Sleep(close_at) = watch(&self.state, &self.limits, false) else {
            return None;
        };
        // Out of tokio's reactor, if it was in it; this wrapper then goes,
        // the socket stays open.
        let socket = self.inner.take_socket()?;
        Some(Idle {
            socket,
            requests: self.state.requests(),
            server_tokens: self.state.server_tokens,
            close_at,
        })
    }

    /// `leftover` is what hyper had read and not used when its connection
    /// ended for parking: the next hyper connection reads it first.
    pub fn unpark(&mut self, leftover: bytes::Bytes) {
        self.state.parking.store(false, Relaxed);
        self.state.unparked_ms.store(clock::coarse_ms(), Relaxed);
        // An empty `Bytes` cut from hyper's buffer still holds all of that
        // buffer (8 KiB or more): keep only what is left to replay.
        self.replay = if leftover.is_empty() {
            bytes::Bytes::new()
        } else {
            bytes::Bytes::copy_from_slice(&leftover)
        };
    }

    /// Answer with one of ginx's pages directly on the socket and end the
    /// connection: used when hyper must not go on parsing. The page is a few
    /// hundred bytes, which a fresh socket buffer takes at once; if it does
    /// not, the client is not reading and is closed without it.
    fn reject(&mut self, status: http::StatusCode, reason: &str) -> io::Error {
        if self.wire != Wire::Tls {
            let page = error_page_bytes(status, self.state.server_tokens);
            let _ = self.inner.try_write(&page);
        }
        tracing::info!(status = status.as_u16(), reason, "closing connection");
        io::Error::new(io::ErrorKind::InvalidData, reason.to_string())
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay.split_to(n));
            return Poll::Ready(Ok(()));
        }
        if this.failed {
            return Poll::Ready(Err(framing_refused()));
        }
        if this.state.head_timed_out.load(Relaxed) {
            return Poll::Ready(Err(
                this.reject(http::StatusCode::REQUEST_TIMEOUT, "client_header_timeout")
            ));
        }
        if this.defers_hangup_watch() {
            // This task is woken when the request has taken
            // HANGUP_WATCH_AFTER, and the read is tried again then.
            let request = this.state.requests();
            if this.deferred_for != request {
                this.deferred_for = request;
                this.watches.defer(&this.state, cx.waker());
            }
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !matches!(result, Poll::Ready(Ok(()))) || this.wire == Wire::Tls {
            return result;
        }
        if buf.filled().len() == before {
            return result; // end of stream
        }
        let state = &*this.state;
        let first_read = !std::mem::replace(&mut this.read_any, true);
        if state.requests.load(Relaxed) == 0
            && first_read
            && buf.filled()[before..].starts_with(H2_REQUEST_LINE)
        {
            if this.wire == Wire::Http1 {
                // As nginx: the preface is a malformed HTTP/1 request here.
                return Poll::Ready(Err(this.reject(
                    http::StatusCode::BAD_REQUEST,
                    "HTTP/2 preface on a listener without http2",
                )));
            }
            // HTTP/2 prior knowledge: hyper's h2 limits apply from here on.
            state.http2.store(true, Relaxed);
        }
        if state.is_http2() || state.upgraded.load(Relaxed) {
            return result;
        }
        if !this.scan {
            // ginx's own HTTP/1 side: it reads during a request only to
            // see a hang-up, so bytes with no request in flight start a head.
            if state.in_flight.load(Relaxed) == 0 && state.head_started_ms.load(Relaxed) == 0 {
                state.head_started_ms.store(clock::coarse_ms(), Relaxed);
            }
            return result;
        }
        // No request in flight, none parsed and waiting: these bytes start
        // the next request, which may be answered here.
        let next_request = state.in_flight.load(Relaxed) == 0
            && this.framing.heads() == state.requests.load(Relaxed);
        if next_request && this.framing.at_head() && state.head_started_ms.load(Relaxed) == 0 {
            state.head_started_ms.store(clock::coarse_ms(), Relaxed);
        }
        let new = &mut buf.filled_mut()[before..];
        match this
            .framing
            .feed(new, state, this.limits.max_header_size, next_request)
        {
            Verdict::Fine => result,
            Verdict::Reject(status, reason) => Poll::Ready(Err(this.reject(status, reason))),
            Verdict::Cut(at) => {
                this.failed = true;
                if at == 0 {
                    return Poll::Ready(Err(framing_refused()));
                }
                buf.set_filled(before + at);
                result
            }
        }
    }
}

impl ClientIo {
    /// ginx's own HTTP/1 side reads during a request only to see a hang-up;
    /// on a socket not yet registered that watch waits (see `super::socket`):
    /// a request answered sooner costs no epoll_ctl.
    fn defers_hangup_watch(&self) -> bool {
        !self.scan
            && self.inner.is_direct()
            && self.state.in_flight.load(Relaxed) > 0
            && !self.state.hangup_watch_started()
    }

    /// TCP_NODELAY, set before the connection's second write rather than at
    /// the accept, as nginx does at the first keep-alive: Nagle's algorithm
    /// holds back only a write made while an earlier one is unacknowledged,
    /// and a client that closes after one small response (written at once)
    /// then costs one system call less.
    fn before_write(&mut self) {
        if self.writes < 2 {
            self.writes += 1;
            if self.writes == 2 {
                if let Some(socket) = self.inner.sock_ref() {
                    let _ = socket.set_tcp_nodelay(true);
                }
            }
        }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.before_write();
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.state.note_write(&polled);
        polled
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.before_write();
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.state.note_write(&polled);
        polled
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.state.parking.load(Relaxed) {
            return Poll::Ready(Ok(())); // the socket outlives this hyper connection
        }
        // A connection shuts its writing side only as it ends: the close that
        // follows (on drop) sends the FIN, a shutdown first is a system call
        // more. A tunnel (after an upgrade) may close one direction only.
        if !self.state.upgraded.load(Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What hyper reads once a body's framing was refused (the handler learns
/// why from the connection's state).
fn framing_refused() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "request body framing refused")
}

impl Drop for ClientIo {
    fn drop(&mut self) {
        if self.state.reset.load(Relaxed) {
            if let Some(socket) = self.inner.sock_ref() {
                let _ = socket.set_linger(Some(Duration::ZERO));
            }
        }
    }
}

/// What the watchdog decided at a deadline.
pub enum Watch {
    /// Nothing is due before this instant.
    Sleep(Instant),
    /// Idle for longer than allowed: close without a word (as nginx).
    CloseIdle,
    /// A head has been arriving for too long: answer 408.
    HeadTimeout,
    /// Idle between requests for PARK_AFTER: drop hyper's state, keep the socket.
    Park,
    /// A response has waited send_timeout for the client to read: close.
    SendTimeout,
}

/// Decide what is due now for the connection (`can_park`: HTTP/1 served by
/// a driver that can park).
pub fn watch(state: &ConnState, limits: &HeadLimits, can_park: bool) -> Watch {
    let now_ms = clock::coarse_ms();
    let blocked = state.write_blocked_ms.load(Relaxed);
    if blocked == 0 {
        return watch_reads(state, limits, can_park, now_ms);
    }
    let send_due = blocked + limits.send_timeout.as_millis() as u64;
    if now_ms >= send_due {
        return Watch::SendTimeout;
    }
    match watch_reads(state, limits, can_park, now_ms) {
        Watch::Sleep(at) => Watch::Sleep(at.min(clock::instant_at(send_due))),
        other => other,
    }
}

/// The deadlines of the reading side: heads, idle time, parking.
fn watch_reads(state: &ConnState, limits: &HeadLimits, can_park: bool, now_ms: u64) -> Watch {
    let at = clock::instant_at;
    if state.in_flight.load(Relaxed) > 0 {
        // A request is being handled: body and upstream timeouts apply there.
        let after = limits.keepalive_timeout.max(Duration::from_millis(100));
        return Watch::Sleep(at(now_ms + after.as_millis() as u64));
    }
    let head_started = state.head_started_ms.load(Relaxed);
    if state.requests.load(Relaxed) == 0 {
        // The first request, as nginx: client_header_timeout counts from the
        // accept, not from the first byte, so trickling bytes buys no time.
        let due = state.start_ms + limits.header_timeout.as_millis() as u64;
        return match (now_ms >= due, head_started != 0) {
            (false, _) => Watch::Sleep(at(due)),
            (true, true) => Watch::HeadTimeout,
            (true, false) => Watch::CloseIdle,
        };
    }
    if head_started != 0 {
        let due = head_started + limits.header_timeout.as_millis() as u64;
        return if now_ms >= due {
            Watch::HeadTimeout
        } else {
            Watch::Sleep(at(due))
        };
    }
    // Between requests: keepalive_timeout from the end of the last response.
    let idle_since = state.idle_since_ms.load(Relaxed);
    let due = idle_since + limits.keepalive_timeout.as_millis() as u64;
    let park_at = idle_since.max(state.unparked_ms.load(Relaxed)) + PARK_AFTER.as_millis() as u64;
    let can_park = can_park && !state.is_http2() && !state.upgraded.load(Relaxed);
    if now_ms >= due {
        Watch::CloseIdle
    } else if can_park && park_at < due {
        if now_ms >= park_at {
            Watch::Park
        } else {
            Watch::Sleep(at(park_at))
        }
    } else {
        Watch::Sleep(at(due))
    }
}
