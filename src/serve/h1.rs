//! ginx's own HTTP/1.1 server side, for the request most traffic is: a
//! head without a body (no Content-Length other than 0, no
//! Transfer-Encoding), without Upgrade, Expect or TE, and not CONNECT.
//! Such a request is parsed here, handed to the handler, and its response
//! written here, with no more work than that takes: hyper's connection
//! machinery was about 12,000 instructions per proxied request, 40 % of
//! ginx's whole cost for a small keep-alive request.
//!
//! Anything else — a request with a body, an upgrade, a head httparse
//! refuses, a head with more fields than [`MAX_FIELDS`] — hands the
//! connection, with every byte read so far, to hyper's HTTP/1 server for
//! the rest of its life (or until it is parked): bodies, `100-continue`,
//! upgrades and the answers to malformed requests keep hyper's tested
//! behaviour, and which side answered cannot be told from the wire.
//!
//! The response is written as hyper's server encoder writes it: names in
//! lower case and in the map's order, `Connection` values on one line,
//! `content-length` added when the body's length is known and chunked
//! encoding when it is not (close-delimited for HTTP/1.0), `date` last,
//! an HTTP/1.0 client answered in HTTP/1.0 with `connection: keep-alive`
//! when it asked for it. Two differences, both for heads ginx never
//! makes: a `Transfer-Encoding` or `Trailer` field in a response is not
//! written (the framing is this module's to choose; hop-by-hop fields are
//! stripped from upstream responses anyway), and trailer fields are not
//! sent (a client that did not send `TE: trailers` did not ask for them).

use super::body::ResponseBody;
use super::conn::ConnState;
use super::CloseWithoutAnswer;
use crate::forward::PassedFields;
use crate::route::fields::HeadFields;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Most header fields in a head served here; a head with more goes to
/// hyper, which allows 256 (a real 150-field request must be forwarded).
pub const MAX_FIELDS: usize = 64;
/// hyper's limit on a request target: a longer one goes to hyper (414).
const MAX_URI: usize = u16::MAX as usize - 1;
/// The read buffer's size, made again when less than MIN_ROOM is left.
const READ_SIZE: usize = 8 * 1024;
const MIN_ROOM: usize = 1024;
/// Body pieces up to this size are copied behind the head (or chunk
/// line), so that one write carries both; larger ones go by `writev`.
const COPY_UNDER: usize = 8 * 1024;
/// Copied pieces are written once they add up to this, even while more
/// are ready: an upstream that sends a large body in small chunks, faster
/// than the client reads, would otherwise have all of it copied here.
const WRITE_COPIED_AT: usize = 64 * 1024;
/// On a TLS connection, a response that has written this much of its body
/// since it last let the other connections of its thread run yields
/// before writing more (`serve`'s `fair_share`). Without it, a large body
/// whose upstream keeps up went out in one poll (reads and writes rarely
/// block on fast peers) while the connections woken meanwhile waited for
/// all of it: 50 transfers of 1 MiB over TLS on one thread had a p99 of
/// 1.8-3.5x their p50 (HAProxy's 1.1x), 1.5-1.7x with this, at the same
/// requests per CPU-second (`benches/compare` 1m-tls). On plain
/// connections, where a byte costs no encryption, the same yields cost
/// 1 MiB bodies 10 % of their requests per CPU-second and their p99 was
/// already below nginx's and HAProxy's, so there a body is never cut.
/// Bodies of one piece (most responses) end before it applies.
pub const TLS_FAIR_SHARE: usize = 128 * 1024;
/// An idle connection does not keep a larger write buffer than this.
const KEEP_OUT: usize = 64 * 1024;

/// How a connection served here ended. The connection is boxed in it: a
/// plain client connection is 240 bytes and a TLS one 1,440, and with
/// them inline the connection's output was copied on its way out of each
/// poll, twice a request, though a connection ends only once.
pub enum End<I> {
    /// Closed (by either side), or to be closed: nothing more to do.
    Closed,
    /// Idle (nothing read of a next request), and asked to give its
    /// socket up for parking.
    Idle(Box<I>),
    /// A request this module does not serve: the connection goes on with
    /// hyper, which must read `BytesMut` (that request, and any after it)
    /// before the socket.
    Handoff(Box<I>, BytesMut),
}

/// A request head served here: its fields are in `fields`, not in the
/// parts' (empty) map (see `route::fields`).
struct Head {
    parts: http::request::Parts,
    fields: HeadFields,
    /// The client keeps the connection open after this request.
    keep_alive: bool,
}

// Returned once per request, by value: a box would be an allocation more.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// The head has not all arrived.
    Partial,
    Simple(Head),
    /// Not for this module: hyper's.
    Other,
}

/// Serve `io` until it closes, is to be parked (`state.is_parking()` once
/// idle), or meets a request for hyper. `handle` answers a request;
/// `max_head` is the most a head may take before hyper is left to refuse
/// it; `fair_share` how much of a body is written before the connection
/// lets others run (TLS_FAIR_SHARE, or usize::MAX for never). A graceful
/// stop (`state.is_draining()`) closes the connection once the request in
/// hand is answered.
/// (An `async move` block, for the reason given at `serve::handle`: `io`
/// alone is 240 bytes.)
#[allow(clippy::manual_async_fn)] // arguments kept once: see `serve::handle`
pub fn serve<I, H, F>(
    mut io: I,
    state: &ConnState,
    max_head: usize,
    fair_share: usize,
    mut handle: H,
) -> impl Future<Output = io::Result<End<I>>> + use<'_, I, H, F>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(http::request::Parts, HeadFields) -> F,
    F: Future<Output = Result<Response<ResponseBody>, CloseWithoutAnswer>>,
{
    async move {
        let mut buf = BytesMut::new();
        // Room for a usual response head: no reallocation while it is written.
        let mut out = Vec::with_capacity(1024);
        loop {
            let head = loop {
                if !buf.is_empty() {
                    match parse_request(&mut buf, max_head) {
                        Parsed::Simple(head) => break head,
                        Parsed::Other => return Ok(End::Handoff(Box::new(io), buf)),
                        Parsed::Partial if buf.len() > max_head => {
                            return Ok(End::Handoff(Box::new(io), buf))
                        }
                        Parsed::Partial => {}
                    }
                }
                let read = std::future::poll_fn(|cx| {
                    if buf.is_empty() && (state.is_parking() || state.is_draining()) {
                        return Poll::Ready(Ok(None));
                    }
                    poll_fill(&mut io, cx, &mut buf).map_ok(Some)
                })
                .await?;
                match read {
                    None if state.is_parking() => return Ok(End::Idle(Box::new(io))),
                    None => {
                        let _ = io.shutdown().await;
                        return Ok(End::Closed);
                    }
                    // The client closed (in the middle of a head or not): as
                    // hyper, close without a word.
                    Some(0) => return Ok(End::Closed),
                    Some(_) => {}
                }
            };
            // The head is taken apart in a block of its own, so that its
            // storage ends here rather than being kept in this future across
            // the awaits below.
            let (handling, method, version, mut keep_alive) = {
                let Head {
                    parts,
                    fields,
                    keep_alive,
                } = head;
                let (method, version) = (parts.method.clone(), parts.version);
                (handle(parts, fields), method, version, keep_alive)
            };
            // In a block, so that neither the handler's future nor the
            // answer's first place is kept while the response is written.
            let response = {
                // While the request is handled, the socket is read on: a
                // client that hangs up cancels its request (and the
                // upstream's), as with hyper; what a pipelining client sends
                // meanwhile waits in `buf`. A refused framing in what follows
                // (InvalidData from the client wrapper) is not a hang-up: it
                // is for the request that carries it, after this one is
                // answered.
                tokio::pin!(handling);
                let mut refused = false;
                let answered = std::future::poll_fn(|cx| {
                    if let Poll::Ready(answer) = handling.as_mut().poll(cx) {
                        return Poll::Ready(Some(answer));
                    }
                    while !refused && buf.len() < max_head {
                        match poll_fill(&mut io, cx, &mut buf) {
                            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                                refused = true
                            }
                            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(None),
                            Poll::Ready(Ok(_)) => {}
                            Poll::Pending => break,
                        }
                    }
                    Poll::Pending
                })
                .await;
                match answered {
                    Some(Ok(response)) => response,
                    None | Some(Err(_)) => return Ok(End::Closed), // the client went, or `return 444`
                }
            };
            if state.is_draining() {
                keep_alive = false;
            }
            let exchange = Exchange {
                method: &method,
                version,
                keep_alive,
            };
            let keep_open =
                write_response(&mut io, &mut out, response, &exchange, fair_share).await?;
            if !keep_open {
                let _ = io.shutdown().await;
                return Ok(End::Closed);
            }
            if out.capacity() > KEEP_OUT {
                out = Vec::new();
            }
        }
    }
}

/// Read more of the client's bytes into `buf`. Room is made only when
/// little is left: the head before holds on to the buffer until its
/// request is done, and making room then would mean a new one.
fn poll_fill<I: AsyncRead + Unpin>(
    io: &mut I,
    cx: &mut std::task::Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    if buf.capacity() == 0 {
        // The connection's first read: made at its size, which costs a fifth
        // of what `reserve` does growing an empty buffer.
        *buf = BytesMut::with_capacity(READ_SIZE);
    } else if buf.capacity() - buf.len() < MIN_ROOM {
        buf.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Parse the request head at the start of `buf`; a head served here is
/// taken out of it, and `buf` keeps what follows. A head longer than
/// `max_head` is hyper's (to refuse).
fn parse_request(buf: &mut BytesMut, max_head: usize) -> Parsed {
    let mut framing = Fields::default();
    let (len, method, path, version, spans) = {
        let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
        let mut request = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut request,
            &buf[..],
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) if len <= max_head => len,
            Ok(httparse::Status::Complete(_)) => return Parsed::Other,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            // Malformed, or more fields than MAX_FIELDS: hyper's to answer.
            Err(_) => return Parsed::Other,
        };
        let (Some(method), Some(path), Some(minor)) =
            (request.method, request.path, request.version)
        else {
            return Parsed::Other;
        };
        let Ok(method) = Method::from_bytes(method.as_bytes()) else {
            return Parsed::Other;
        };
        if method == Method::CONNECT || path.len() > MAX_URI {
            return Parsed::Other;
        }
        let version = match minor {
            0 => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        framing.keep_alive = version == Version::HTTP_11;
        // Offsets of each field's name and value in the head: the request's
        // fields are slices of one shared buffer rather than copies.
        let mut spans = Vec::with_capacity(request.headers.len());
        for field in request.headers.iter() {
            if !framing.note(field.name.as_bytes(), field.value) {
                return Parsed::Other;
            }
            spans.push(crate::route::fields::field_span(buf, field));
        }
        let path_at = path.as_ptr() as usize - buf.as_ptr() as usize;
        (len, method, path_at..path_at + path.len(), version, spans)
    };
    let head = buf.split_to(len).freeze();
    let Ok(uri) = http::Uri::from_maybe_shared(head.slice(path)) else {
        return give_back(buf, head); // hyper answers 400
    };
    // httparse admits exactly the names and values a header map does
    // (tokens; no control byte but tab, no DEL), as `HeadFields` needs.
    let fields = HeadFields::new(head, spans);
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    Parsed::Simple(Head {
        parts,
        fields,
        keep_alive: framing.keep_alive,
    })
}

/// A head taken out of `buf` turned out to be hyper's: put it back in front.
fn give_back(buf: &mut BytesMut, head: Bytes) -> Parsed {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(buf);
    *buf = whole;
    Parsed::Other
}

/// What the fields of a request head say about serving it here.
#[derive(Default)]
struct Fields {
    keep_alive: bool,
    /// A `Connection: close` was seen: a later `keep-alive` does not undo it.
    close: bool,
    length_seen: bool,
}

impl Fields {
    /// Note one field; false when the request is not one served here.
    fn note(&mut self, name: &[u8], value: &[u8]) -> bool {
        let is = |wanted: &[u8]| name.len() == wanted.len() && name.eq_ignore_ascii_case(wanted);
        match name.len() {
            2 if is(b"te") => false,
            6 if is(b"expect") => false,
            7 if is(b"upgrade") => false,
            17 if is(b"transfer-encoding") => false,
            14 if is(b"content-length") => {
                // Only one, saying 0: any body is hyper's.
                let first = !self.length_seen;
                self.length_seen = true;
                first && value.trim_ascii() == b"0"
            }
            10 if is(b"connection") => {
                // As hyper: once any Connection line says close, the
                // connection closes; HTTP/1.0 stays open on keep-alive.
                if self.close || has_token(value, b"close") {
                    self.close = true;
                    self.keep_alive = false;
                } else if !self.keep_alive {
                    self.keep_alive = has_token(value, b"keep-alive");
                }
                true
            }
            _ => true,
        }
    }
}

/// Does a comma-separated field value hold `token` (case aside)? As
/// hyper, a value with bytes beyond visible ASCII holds nothing.
fn has_token(value: &[u8], token: &[u8]) -> bool {
    if !value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return false;
    }
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The request a response answers, as far as writing it goes.
struct Exchange<'a> {
    method: &'a Method,
    version: Version,
    /// Keep the connection open after this response (unless it says close).
    keep_alive: bool,
}

impl Exchange<'_> {
    fn connect_success(&self, status: StatusCode) -> bool {
        *self.method == Method::CONNECT && status.is_success()
    }

    /// A body may be written (and chunked).
    fn can_have_body(&self, status: StatusCode) -> bool {
        !(*self.method == Method::HEAD
            || self.connect_success(status)
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED)
    }

    fn can_have_content_length(&self, status: StatusCode) -> bool {
        !(status.is_informational()
            || self.connect_success(status)
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED)
    }
}

/// How the body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Encoder {
    /// Exactly this many bytes (0: none are written).
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0, length unknown).
    UntilClose,
}

/// Write the response; true when the connection stays open after it.
///
/// The head is encoded before the future is made, so that the future
/// holds the body alone, not the whole response as well.
fn write_response<'a, I>(
    io: &'a mut I,
    out: &'a mut Vec<u8>,
    response: Response<ResponseBody>,
    exchange: &Exchange<'_>,
    fair_share: usize,
) -> impl Future<Output = io::Result<bool>> + use<'a, I>
where
    I: AsyncWrite + Unpin,
{
    let (parts, mut body) = response.into_parts();
    let length = match body.is_end_stream() {
        true => None,
        false => Some(body.size_hint().exact()),
    };
    out.clear();
    let passed = body.take_passed();
    let server_at = body.server_field();
    let (encoder, is_last) =
        encode_head(out, parts, passed.as_deref(), server_at, length, exchange);
    async move {
        let ended = match encoder {
            Encoder::Length(0) => {
                drop(body); // HEAD, 204, 304, or nothing to send
                io.write_all(out).await?;
                true
            }
            _ => write_body(io, out, &mut body, encoder, fair_share).await?,
        };
        io.flush().await?; // TLS: the last record out (no-op on TCP)
        Ok(ended && !is_last && encoder != Encoder::UntilClose)
    }
}

/// Write the body as `encoder` says, after what `out` holds (the head).
/// Returns false when the body ended short of its length or failed: the
/// connection must close.
async fn write_body<I, B>(
    io: &mut I,
    out: &mut Vec<u8>,
    body: &mut B,
    encoder: Encoder,
    fair_share: usize,
) -> io::Result<bool>
where
    I: AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
{
    let mut remaining = match encoder {
        Encoder::Length(n) => n,
        _ => u64::MAX,
    };
    // Body bytes written since this connection last let others run.
    let mut written = 0;
    loop {
        // Polled once first: a body that has its next piece ready (ginx's
        // own, or an upstream's already read) goes out with the head in
        // one write; one that must wait lets the head go first.
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await;
        let frame = match polled {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    io.write_all(out).await?;
                    out.clear();
                }
                std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
            }
        };
        let data = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailer fields: not sent (see the module's note); they end the body.
                Err(_) => break,
            },
            Some(Err(_)) => {
                // The upstream's body failed (logged where it failed): send
                // what there is, and close; the client sees the body cut short.
                io.write_all(out).await?;
                return Ok(false);
            }
            None => break,
        };
        if data.is_empty() {
            continue;
        }
        let data = match encoder {
            Encoder::Length(_) if data.len() as u64 > remaining => data.slice(..remaining as usize),
            _ => data,
        };
        if encoder == Encoder::Chunked {
            let mut size = [0u8; 18];
            out.extend_from_slice(hex_line(data.len(), &mut size));
        }
        let tail: &[u8] = if encoder == Encoder::Chunked {
            b"\r\n"
        } else {
            b""
        };
        if data.len() <= COPY_UNDER {
            out.extend_from_slice(&data);
            out.extend_from_slice(tail);
            if out.len() >= WRITE_COPIED_AT {
                io.write_all(out).await?;
                out.clear();
            }
        } else {
            write_all_vectored(
                io,
                &mut [IoSlice::new(out), IoSlice::new(&data), IoSlice::new(tail)],
            )
            .await?;
            out.clear();
        }
        if let Encoder::Length(_) = encoder {
            remaining -= data.len() as u64;
            if remaining == 0 {
                break;
            }
        }
        if body.is_end_stream() {
            break;
        }
        written += data.len();
        if written >= fair_share {
            written = 0;
            tokio::task::yield_now().await;
        }
    }
    let complete = match encoder {
        Encoder::Length(_) => remaining == 0,
        Encoder::Chunked => {
            out.extend_from_slice(b"0\r\n\r\n");
            true
        }
        Encoder::UntilClose => true,
    };
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    Ok(complete)
}

/// `{len:x}\r\n` in `room`.
fn hex_line(len: usize, room: &mut [u8; 18]) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut at = 16;
    let mut n = len;
    loop {
        at -= 1;
        room[at] = DIGITS[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    room[16] = b'\r';
    room[17] = b'\n';
    &room[at..]
}

/// Write every byte of `slices`, by `writev` where the stream has it.
async fn write_all_vectored<I>(io: &mut I, mut slices: &mut [IoSlice<'_>]) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = io.write_vectored(slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// Write the status line and fields into `out` as hyper's server encoder
/// does; returns how the body goes and whether this is the connection's
/// last response. `length`: None when there is no body, Some(None) when
/// its length is unknown.
fn encode_head(
    out: &mut Vec<u8>,
    parts: http::response::Parts,
    passed: Option<&PassedFields>,
    server_at: Option<usize>,
    length: Option<Option<u64>>,
    exchange: &Exchange<'_>,
) -> (Encoder, bool) {
    let status = parts.status;
    let mut headers = parts.headers;
    let mut keep_alive = exchange.keep_alive;
    // The reply's version is the response's (an upstream's HTTP/1.0 stays
    // so), and HTTP/1.0 for an HTTP/1.0 client, which stays open only when
    // the reply says keep-alive.
    let mut version = parts.version;
    // A Connection value the reply must add: into the map when it has a
    // Connection field (the values are joined on one line), else written
    // where the map would have put it, after its fields (no insert, which
    // could grow the map).
    let mut connection_added: Option<&'static str> = None;
    if exchange.version == Version::HTTP_10 {
        let connection = headers.get_all(header::CONNECTION);
        let says_keep_alive = connection
            .iter()
            .any(|v| has_token(v.as_bytes(), b"keep-alive"));
        if !says_keep_alive {
            if version == Version::HTTP_10 {
                keep_alive = false;
            } else if keep_alive {
                connection_added = Some("keep-alive");
            }
        }
        version = Version::HTTP_10;
    } else if !keep_alive
        && !headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"close"))
    {
        connection_added = Some("close");
    }
    // Only looked up when a value is to be added: most replies add none.
    let connection_in_map = connection_added.is_some() && headers.contains_key(header::CONNECTION);
    if let (Some(value), true) = (connection_added, connection_in_map) {
        headers.append(header::CONNECTION, HeaderValue::from_static(value));
    }
    let mut is_last = !keep_alive || status == StatusCode::SWITCHING_PROTOCOLS;

    if version != Version::HTTP_10 && status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(match version {
            Version::HTTP_10 => b"HTTP/1.0 ",
            _ => b"HTTP/1.1 ",
        });
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    let mut encoder = None;
    // An upstream's fields straight from its head first (as the other
    // writers have them first in the map), then the map, with `Server`
    // where the map would have had it (`server_at`).
    for field in passed.iter().flat_map(|p| p.iter()) {
        if !field.is_content_length {
            write_lowercase_field(out, field.name, field.value);
        } else if encoder.is_none() {
            encoder = length_field(out, b"content-length", field.value, length, exchange);
        }
    }
    let mut server_at = server_at;
    let mut names_written = 0;
    let mut wrote_date = false;
    let mut previous: Option<&HeaderName> = None;
    for (name, value) in headers.iter() {
        let first_of_name = previous != Some(name);
        if first_of_name {
            if previous == Some(&header::CONNECTION) {
                out.extend_from_slice(b"\r\n"); // end of the joined Connection line
            }
            if server_at == Some(names_written) {
                out.extend_from_slice(b"server: ginx\r\n");
                server_at = None;
            }
            names_written += 1;
        }
        previous = Some(name);
        match *name {
            header::CONTENT_LENGTH => {
                if encoder.is_none() {
                    encoder = length_field(
                        out,
                        name.as_str().as_bytes(),
                        value.as_bytes(),
                        length,
                        exchange,
                    );
                }
            }
            header::TRANSFER_ENCODING | header::TRAILER => {}
            header::CONNECTION => {
                if !is_last && has_token(value.as_bytes(), b"close") {
                    is_last = true;
                }
                if first_of_name {
                    out.extend_from_slice(b"connection: ");
                } else {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(value.as_bytes());
            }
            _ => {
                if *name == header::DATE {
                    wrote_date = true;
                }
                write_field(out, name, value);
            }
        }
    }
    if previous == Some(&header::CONNECTION) {
        out.extend_from_slice(b"\r\n");
    }
    if server_at.is_some() {
        out.extend_from_slice(b"server: ginx\r\n");
    }
    if let (Some(value), false) = (connection_added, connection_in_map) {
        out.extend_from_slice(b"connection: ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    let encoder = match encoder {
        Some(encoder) => encoder,
        None => match length {
            Some(None) => {
                if version == Version::HTTP_10 || !exchange.can_have_body(status) {
                    Encoder::UntilClose
                } else {
                    out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    Encoder::Chunked
                }
            }
            None | Some(Some(0)) => {
                if exchange.can_have_content_length(status) && *exchange.method != Method::HEAD {
                    out.extend_from_slice(b"content-length: 0\r\n");
                }
                Encoder::Length(0)
            }
            Some(Some(n)) => {
                if exchange.can_have_content_length(status) {
                    out.extend_from_slice(b"content-length: ");
                    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    out.extend_from_slice(b"\r\n");
                    Encoder::Length(n)
                } else {
                    Encoder::Length(0)
                }
            }
        },
    };
    let encoder = match exchange.can_have_body(status) {
        true => encoder,
        false => Encoder::Length(0),
    };
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        date::extend(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (encoder, is_last)
}

fn write_field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    write_raw_field(out, name.as_str().as_bytes(), value.as_bytes());
}

/// A field whose name and value are valid (from a map, or checked by the
/// parser that found them).
fn write_raw_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A field from an upstream's head, its name lower-cased as a header map
/// would: the reply is the same, byte for byte, whichever writer sends it.
fn write_lowercase_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let at = out.len();
    write_raw_field(out, name, value);
    out[at..at + name.len()].make_ascii_lowercase();
}

/// The reply's first Content-Length field (`value`): written, and the
/// body's encoder it sets, when it goes with the body (`length`: None
/// without a body, Some(None) when its length is unknown); the body's
/// own length decides otherwise.
fn length_field(
    out: &mut Vec<u8>,
    name: &[u8],
    value: &[u8],
    length: Option<Option<u64>>,
    exchange: &Exchange<'_>,
) -> Option<Encoder> {
    match length {
        Some(Some(known)) => {
            write_raw_field(out, name, value);
            Some(Encoder::Length(known))
        }
        // An invalid length for a body of unknown length is left out: the
        // body goes by the rules of encode_head.
        Some(None) => {
            let n = crate::forward::parse_decimal(value)?;
            write_raw_field(out, name, value);
            Some(Encoder::Length(n))
        }
        // No body: only a reply to HEAD tells the length.
        None if *exchange.method == Method::HEAD => {
            write_raw_field(out, name, value);
            Some(Encoder::Length(0))
        }
        None => None,
    }
}

/// The `date` field's value for HTTP/2 responses (`h2`): shared, not copied.
pub fn date_value() -> HeaderValue {
    date::value()
}

/// The `date` field's value, formatted once a second per thread.
mod date {
    use http::HeaderValue;
    use std::cell::RefCell;
    use std::time::{Duration, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }

    fn with<T>(f: impl FnOnce(&HeaderValue) -> T) -> T {
        // The coarse clock (crate::clock): the second is all that is shown.
        let second = crate::clock::coarse_unix_secs();
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != second {
                let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(second));
                let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
                    .unwrap_or_else(|_| HeaderValue::from_static(""));
                *cached = (second, value);
            }
            f(&cached.1)
        })
    }

    pub fn extend(out: &mut Vec<u8>) {
        with(|value| out.extend_from_slice(value.as_bytes()));
    }

    pub fn value() -> HeaderValue {
        with(HeaderValue::clone)
    }
}

/// A stream whose first bytes were already read (by ginx's own HTTP/1
/// side): they are given back before the stream's own.
pub struct Rewound<I> {
    read: Bytes,
    inner: I,
}

impl<I> Rewound<I> {
    pub fn new(read: Bytes, inner: I) -> Self {
        Rewound { read, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewound<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            let given = self.read.split_to(n);
            buf.put_slice(&given);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewound<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// See `End`: whatever the connection's type, the output stays small.
    #[test]
    fn an_end_holds_its_connection_boxed() {
        type Tls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
        assert!(std::mem::size_of::<Tls>() > 1000);
        let size = std::mem::size_of::<io::Result<End<Tls>>>();
        assert!(size <= 48, "io::Result<End<TlsStream>> is {size} bytes");
    }

    fn parsed(head: &str) -> Parsed {
        parse_request(&mut BytesMut::from(head.as_bytes()), 8192)
    }

    fn keep_alive(head: &str) -> bool {
        match parsed(head) {
            Parsed::Simple(h) => h.keep_alive,
            _ => panic!("not served here: {head:?}"),
        }
    }

    #[test]
    fn only_requests_without_a_body_upgrade_or_expectation_are_served_here() {
        for head in [
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "HEAD /a?b HTTP/1.0\r\n\r\n",
            "DELETE / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert!(matches!(parsed(head), Parsed::Simple(_)), "{head:?}");
        }
        let many: String = (0..=MAX_FIELDS).map(|i| format!("X-{i}: v\r\n")).collect();
        for head in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc".to_string(),
            "GET / HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n".into(),
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n".into(),
            "GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n".into(),
            "GET / HTTP/1.1\r\nTE: trailers\r\n\r\n".into(),
            "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n".into(),
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".into(),
            "GET / HTTP/1.1\r\nBad Name: v\r\n\r\n".into(),
            format!("GET / HTTP/1.1\r\n{many}\r\n"),
        ] {
            assert!(matches!(parsed(&head), Parsed::Other), "{head:?}");
        }
        assert!(matches!(
            parsed("GET / HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        ));
        // A head over the limit is hyper's (the client wrapper refuses it).
        let head = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut buf = BytesMut::from(head.as_bytes());
        assert!(matches!(
            parse_request(&mut buf, head.len() - 1),
            Parsed::Other
        ));
        assert_eq!(&buf[..], head.as_bytes(), "the head stays whole for hyper");
        assert!(matches!(
            parse_request(&mut buf, head.len()),
            Parsed::Simple(_)
        ));
    }

    #[test]
    fn a_head_for_hyper_stays_whole_in_the_buffer() {
        // The URI is refused only once the head has been cut out of the buffer.
        // (httparse takes `<` in a target, http::Uri does not: hyper answers 400.)
        let bytes = b"GET /a<b HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(matches!(parse_request(&mut buf, 8192), Parsed::Other));
        assert_eq!(&buf[..], bytes, "the head is put back in front");
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n"[..]);
        assert!(matches!(parse_request(&mut buf, 8192), Parsed::Simple(_)));
        assert_eq!(&buf[..], b"GET /next HTTP/1.1\r\n", "what follows stays");
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_as_hyper() {
        assert!(keep_alive("GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep_alive("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep_alive(
            "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
        ));
        assert!(!keep_alive(
            "GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n"
        ));
        assert!(!keep_alive(
            "GET / HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(keep_alive("GET / HTTP/1.1\r\nConnection: closed\r\n\r\n"));
    }

    /// A body of `left` pieces of `size` bytes, each ready at once, noting
    /// how many turns a neighbouring task had taken when each was asked for.
    struct ReadyPieces {
        left: usize,
        size: usize,
        turns: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        seen: Vec<usize>,
    }

    impl ReadyPieces {
        fn new(left: usize, size: usize) -> Self {
            ReadyPieces {
                left,
                size,
                turns: Default::default(),
                seen: Vec::new(),
            }
        }
    }

    impl Body for ReadyPieces {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            let this = self.get_mut();
            if this.left == 0 {
                return Poll::Ready(None);
            }
            this.left -= 1;
            this.seen
                .push(this.turns.load(std::sync::atomic::Ordering::Relaxed));
            let piece = Bytes::from(vec![b'x'; this.size]);
            Poll::Ready(Some(Ok(http_body::Frame::data(piece))))
        }

        fn is_end_stream(&self) -> bool {
            self.left == 0
        }
    }

    #[tokio::test]
    async fn a_large_body_lets_the_other_connections_run_between_its_shares() {
        let (pieces, size) = (16, 64 * 1024);
        let mut body = ReadyPieces::new(pieces, size);
        let turns = body.turns.clone();
        let neighbour_turns = turns.clone();
        let neighbour = tokio::spawn(async move {
            for _ in 0..10_000 {
                turns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        });
        let (mut sink, mut out) = (Vec::new(), Vec::new());
        let length = Encoder::Length((pieces * size) as u64);
        let complete = write_body(&mut sink, &mut out, &mut body, length, TLS_FAIR_SHARE).await;
        assert!(complete.unwrap());
        assert_eq!(sink.len(), pieces * size);
        // The neighbour had a turn after each share, except after the last.
        let turns_between = body.seen.windows(2).filter(|w| w[1] > w[0]).count();
        assert_eq!(turns_between, pieces * size / TLS_FAIR_SHARE - 1);

        // With no share (plain connections), the body goes out in one turn.
        let mut body = ReadyPieces::new(pieces, size);
        body.turns = neighbour_turns.clone();
        let complete = write_body(&mut sink, &mut out, &mut body, length, usize::MAX).await;
        assert!(complete.unwrap());
        assert!(body.seen.windows(2).all(|w| w[1] == w[0]));
        neighbour.abort();
    }

    #[test]
    fn a_body_of_one_piece_is_written_in_one_poll() {
        let mut body = ReadyPieces::new(1, 4 * TLS_FAIR_SHARE);
        let (mut sink, mut out) = (Vec::new(), Vec::new());
        let length = Encoder::Length(4 * TLS_FAIR_SHARE as u64);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        {
            let share = TLS_FAIR_SHARE;
            let write = std::pin::pin!(write_body(&mut sink, &mut out, &mut body, length, share));
            assert!(matches!(write.poll(&mut cx), Poll::Ready(Ok(true))));
        }
        assert_eq!(sink.len(), 4 * TLS_FAIR_SHARE);
    }

    /// Takes everything, noting the largest single write.
    #[derive(Default)]
    struct LargestWrite {
        total: usize,
        largest: usize,
    }

    impl AsyncWrite for LargestWrite {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.total += buf.len();
            this.largest = this.largest.max(buf.len());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn small_pieces_ready_at_once_are_written_as_they_add_up() {
        // 1 MiB in 1 KiB chunks, all ready: written in writes of about
        // WRITE_COPIED_AT (64 KiB), not copied whole before a single one.
        for encoder in [Encoder::Chunked, Encoder::Length(1 << 20)] {
            let mut body = ReadyPieces::new(1024, 1024);
            let (mut sink, mut out) = (LargestWrite::default(), Vec::new());
            let complete = write_body(&mut sink, &mut out, &mut body, encoder, usize::MAX).await;
            assert!(complete.unwrap());
            assert!(sink.total >= 1 << 20);
            assert!(
                sink.largest <= 128 * 1024,
                "{:?}: a write of {}",
                encoder,
                sink.largest
            );
        }
    }

    #[test]
    fn chunk_size_lines() {
        let mut room = [0u8; 18];
        assert_eq!(hex_line(0, &mut room), b"0\r\n");
        assert_eq!(hex_line(255, &mut room), b"ff\r\n");
        assert_eq!(hex_line(0x1_0000, &mut room), b"10000\r\n");
    }
}
