//! ginx's HTTP/2 server side: the h2 crate's connection, with every stream
//! answered inside the connection's own task.
//!
//! hyper's HTTP/2 server spawns a task per stream, and a stream's response
//! is flushed only once that task has woken the connection's. Here a stream
//! is a future kept by the connection (`FuturesUnordered`): no task to
//! spawn, schedule and free per request, and the poll that produced a
//! response also writes it. As with nginx, the streams of one connection
//! are served on one thread. What hyper's server did around the h2 crate is
//! done here the same way: its window sizes and buffer limits, the
//! connection-specific response fields removed, `date` added, a response
//! body sent as the peer's flow control allows, a client's reset cancelling
//! its request (and the upstream's), and a handler's refusal to answer
//! (`return 444`) a reset stream.

use super::body::ResponseBody;
use super::CloseWithoutAnswer;
use crate::forward::BoxError;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use h2::server::{Connection, Handshake, SendResponse};
use h2::{Reason, RecvStream, SendStream};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};
use tokio::io::{AsyncRead, AsyncWrite};

/// hyper's HTTP/2 server defaults, kept: the specification's 64 KiB windows
/// make a client wait on uploads and large responses.
const CONNECTION_WINDOW: u32 = 1024 * 1024;
const STREAM_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;

/// The limits of one connection (see `drive`, and ginx.yaml(5)).
pub struct Limits {
    pub max_concurrent_streams: u32,
    pub max_header_list_size: u32,
    pub max_pending_accept_reset_streams: usize,
    pub max_local_error_reset_streams: usize,
    /// keepalive_requests: streams taken on one connection before GOAWAY.
    pub max_streams: u64,
}

fn builder(limits: &Limits) -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size)
        .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
        .max_local_error_reset_streams(Some(limits.max_local_error_reset_streams));
    builder
}

enum State<I> {
    Handshaking(Handshake<I, Bytes>),
    Serving(Connection<I, Bytes>),
}

/// One HTTP/2 connection: the future ends when the connection has closed
/// (every stream answered after a GOAWAY, or the client gone), or fails on
/// a connection error.
pub struct Server<I, H, S> {
    state: State<I>,
    streams: FuturesUnordered<S>,
    /// What the connection is polled with (see `ConnectionWaker`).
    waker: Arc<ConnectionWaker>,
    conn_waker: Waker,
    /// Makes a stream's future from its request and its way back.
    serve_stream: H,
    /// graceful_shutdown came during the handshake.
    shutdown_asked: bool,
    /// Streams taken so far, and how many may be (`Limits::max_streams`).
    taken: u64,
    max_streams: u64,
}

impl<I, H, S> Server<I, H, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<RecvStream>, SendResponse<Bytes>) -> S + Unpin,
    S: Future<Output = ()>,
{
    pub fn new(io: I, limits: &Limits, serve_stream: H) -> Self {
        let waker = Arc::new(ConnectionWaker::default());
        Server {
            state: State::Handshaking(builder(limits).handshake(io)),
            streams: FuturesUnordered::new(),
            conn_waker: Waker::from(waker.clone()),
            waker,
            serve_stream,
            shutdown_asked: false,
            taken: 0,
            max_streams: limits.max_streams,
        }
    }

    /// GOAWAY: streams already open are answered, no new one is taken (a
    /// stream that crossed the GOAWAY is refused, as after
    /// keepalive_requests), and the connection closes once none is left.
    pub fn graceful_shutdown(&mut self) {
        self.max_streams = self.max_streams.min(self.taken);
        match &mut self.state {
            State::Handshaking(_) => self.shutdown_asked = true,
            State::Serving(conn) => conn.graceful_shutdown(),
        }
    }

    /// Read frames, write what is queued, take new streams. Ready(true):
    /// the connection is over; Ready(false): a stream was taken.
    fn poll_connection(&mut self) -> Poll<Result<bool, h2::Error>> {
        let State::Serving(conn) = &mut self.state else {
            return Poll::Pending;
        };
        let mut cx = Context::from_waker(&self.conn_waker);
        let mut took = false;
        loop {
            match conn.poll_accept(&mut cx) {
                Poll::Ready(Some(Ok((_, mut respond)))) if self.taken >= self.max_streams => {
                    // After a GOAWAY (keepalive_requests reached, an idle
                    // connection's end, a graceful stop). h2's first GOAWAY
                    // names no last stream (2^31-1), so streams keep coming
                    // until the client answers its PING, which an attacker
                    // never does. nginx ignores streams after its GOAWAY;
                    // here they are refused (REFUSED_STREAM: not processed,
                    // safe to retry) and cost nothing upstream.
                    respond.send_reset(Reason::REFUSED_STREAM);
                }
                Poll::Ready(Some(Ok((request, respond)))) => {
                    self.streams.push((self.serve_stream)(request, respond));
                    self.taken += 1;
                    took = true;
                    if self.taken >= self.max_streams {
                        // As nginx: GOAWAY once keepalive_requests streams
                        // were taken; those finish.
                        conn.graceful_shutdown();
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(true)),
                Poll::Pending if took => return Poll::Ready(Ok(false)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<I, H, S> Future for Server<I, H, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<RecvStream>, SendResponse<Bytes>) -> S + Unpin,
    S: Future<Output = ()>,
{
    type Output = Result<(), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.get_mut();
        me.waker.task.register(cx.waker());
        if let State::Handshaking(handshake) = &mut me.state {
            let mut conn = ready!(Pin::new(handshake).poll(cx))?;
            if me.shutdown_asked {
                conn.graceful_shutdown();
            }
            me.state = State::Serving(conn);
        }
        // Streams woken (by their upstreams, or new) run first; the look at
        // the connection that follows writes what they queued, reads what
        // came, and takes new streams, which then run at once. Bounded:
        // each further turn takes a stream, and the connection admits
        // max_concurrent_streams at once.
        loop {
            me.waker.streams_running.store(true, Ordering::SeqCst);
            while let Poll::Ready(Some(())) = me.streams.poll_next_unpin(cx) {}
            me.waker.streams_running.store(false, Ordering::SeqCst);
            match me.poll_connection()? {
                Poll::Ready(true) => return Poll::Ready(Ok(())),
                Poll::Ready(false) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The waker the connection is polled with. A stream that queues a frame
/// (a response, data) wakes the connection so that it is written; as the
/// streams run in the connection's own task, just before the connection is
/// looked at again in the same poll, such a wake would only make the task
/// run once more for nothing (a whole turn of h2's connection, about 1,900
/// instructions a request). Wakes that come while the streams run are
/// dropped: the look at the connection that follows them is unconditional,
/// and it reads the socket's readiness whatever woke it. Every other wake
/// (the socket, from the reactor) wakes the task.
#[derive(Default)]
struct ConnectionWaker {
    task: AtomicWaker,
    streams_running: AtomicBool,
}

impl Wake for ConnectionWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.streams_running.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// Answer one stream: the handler's response, or a reset when the handler
/// refuses to answer; dropped (with the handler's future, and so the
/// upstream request) when the client resets the stream.
///
/// A future written out rather than an `async fn`: the connection moves
/// each stream's future into its set (three copies), and an `async fn`
/// here kept the response, its head and its body twice over beside the
/// body's sending, 1,776 bytes; this holds each once.
pub fn answer<F>(handling: F, respond: SendResponse<Bytes>) -> Answer<F>
where
    F: Future<Output = Result<Response<ResponseBody>, CloseWithoutAnswer>> + Unpin,
{
    Answer {
        handling: Some(handling),
        respond,
        sending: None,
    }
}

pub struct Answer<F> {
    /// The handler, until it has answered (then dropped: a long body's
    /// sending does not keep the handler's state).
    handling: Option<F>,
    respond: SendResponse<Bytes>,
    /// The head is sent: the body goes out as flow control allows.
    sending: Option<SendingBody>,
}

impl<F> Future for Answer<F>
where
    F: Future<Output = Result<Response<ResponseBody>, CloseWithoutAnswer>> + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let me = self.get_mut();
        if let Some(handling) = &mut me.handling {
            let answered = match Pin::new(handling).poll(cx) {
                Poll::Ready(answered) => answered,
                // The client reset the stream: nothing to answer.
                Poll::Pending if me.respond.poll_reset(cx).is_ready() => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            };
            me.handling = None;
            let Ok(response) = answered else {
                // `return 444`: the stream is reset, as hyper does for a handler's error.
                me.respond.send_reset(Reason::INTERNAL_ERROR);
                return Poll::Ready(());
            };
            match send_head(response, &mut me.respond) {
                Some(sending) => me.sending = Some(sending),
                None => return Poll::Ready(()),
            }
        }
        match &mut me.sending {
            Some(sending) => sending.poll(cx),
            None => Poll::Ready(()),
        }
    }
}

/// Sends the response's head; what is left of the body to send, if any.
fn send_head(
    response: Response<ResponseBody>,
    respond: &mut SendResponse<Bytes>,
) -> Option<SendingBody> {
    let (mut head, body) = response.into_parts();
    strip_connection_fields(&mut head.headers);
    head.headers
        .entry(header::DATE)
        .or_insert_with(super::h1::date_value);
    let end = body.is_end_stream();
    if !end {
        if let Some(length) = body.size_hint().exact() {
            head.headers
                .entry(header::CONTENT_LENGTH)
                .or_insert_with(|| HeaderValue::from(length));
        }
    }
    match respond.send_response(Response::from_parts(head, ()), end) {
        Ok(_) if end => None,
        Ok(send) => Some(SendingBody {
            body,
            send,
            waiting: None,
        }),
        Err(_) => {
            respond.send_reset(Reason::INTERNAL_ERROR);
            None
        }
    }
}

/// A field that means something only on an HTTP/1 connection: not allowed
/// in HTTP/2 (RFC 9113, 8.2.2).
fn is_connection_field(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::TE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Remove the connection's fields, with those a Connection field names.
/// Looked for in one pass first: there are usually none (forwarding drops
/// an upstream's; ginx adds `Connection: close` to a connection's last
/// response), and a removal is a lookup each.
fn strip_connection_fields(headers: &mut HeaderMap) {
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_connection_field(name))
        .cloned()
        .collect();
    for name in doomed {
        if let Some(connection) = (name == header::CONNECTION)
            .then(|| headers.remove(header::CONNECTION))
            .flatten()
        {
            if let Ok(names) = connection.to_str() {
                for listed in names.split(',') {
                    headers.remove(listed.trim());
                }
            }
        }
        headers.remove(name);
    }
}

/// A response body being sent as the peer's flow control allows: a chunk
/// is sent once the stream has room for some of it (h2 splits it), trailers
/// end the stream, and a client's reset or a body error stop it.
struct SendingBody {
    body: ResponseBody,
    send: SendStream<Bytes>,
    /// A chunk taken from the body that waits for room.
    waiting: Option<(Bytes, bool)>,
}

impl SendingBody {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.send.poll_reset(cx).is_ready() {
                return Poll::Ready(());
            }
            if let Some((chunk, last)) = self.waiting.take() {
                while self.send.capacity() == 0 {
                    match self.send.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                        Poll::Pending => {
                            self.waiting = Some((chunk, last));
                            return Poll::Pending;
                        }
                    }
                }
                if self.send.send_data(chunk, last).is_err() || last {
                    return Poll::Ready(());
                }
                continue;
            }
            // The next frame is asked for before any room is reserved: a
            // reservation for a body that has nothing yet would hold back the
            // connection's window from other streams (hyper #4003).
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(chunk) => {
                        let last = self.body.is_end_stream();
                        if chunk.is_empty() {
                            if self.send.send_data(chunk, last).is_err() || last {
                                return Poll::Ready(());
                            }
                            continue;
                        }
                        // A claim of one byte: h2 raises it to what is buffered.
                        self.send.reserve_capacity(1);
                        self.waiting = Some((chunk, last));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.send.reserve_capacity(0);
                            let _ = self.send.send_trailers(trailers);
                            return Poll::Ready(());
                        }
                    }
                },
                Some(Err(_)) => {
                    self.send.send_reset(Reason::INTERNAL_ERROR);
                    return Poll::Ready(());
                }
                None => {
                    let _ = self.send.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// A request body read from its stream, its flow-control window given back
/// as it is read (the client may then send more).
pub struct StreamBody {
    recv: RecvStream,
    /// What Content-Length said is left, when it said.
    left: Option<u64>,
    data_done: bool,
}

impl StreamBody {
    pub fn new(recv: RecvStream, headers: &HeaderMap) -> Self {
        let left = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        StreamBody {
            recv,
            left,
            data_done: false,
        }
    }
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut this.left {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // A reset with NO_ERROR or CANCEL ends the body without
                // failing it (the client has what it wants), as with hyper.
                Some(Err(e)) => {
                    return match e.reason() {
                        Some(Reason::NO_ERROR | Reason::CANCEL) => Poll::Ready(None),
                        _ => Poll::Ready(Some(Err(e.into()))),
                    }
                }
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
