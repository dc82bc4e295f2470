//! The response body type: an enum rather than a boxed trait object, so that
//! a response ginx makes costs one small allocation beyond its bytes, and an
//! upstream's body streams through with `read_timeout` between reads. It
//! carries guards that tell the connection (idle timers) and the peer
//! (in-flight count) when the response is done, and the access-log line,
//! written then with the bytes sent and the request's time.

use super::conn::ConnState;
use crate::access_log::{AccessLog, Entry};
use crate::forward::{BoxError, InFlight, UpstreamBody};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::time::Sleep;

/// Boxed: a response is moved a dozen times on its way to the client
/// (through each future that returns it), and with the body inline it was
/// 248 bytes, each move a call to memcpy; with a pointer it is 120, which
/// the compiler moves in a few instructions.
pub struct ResponseBody(Box<Held>);

struct Held {
    inner: Inner,
    guard: Option<FinishGuard>,
    log: Option<Box<PendingLog>>,
    /// `Server: ginx` is for the writer to add, before the map's field of
    /// this index (see `respond::finish_headers`).
    server_field: Option<usize>,
}

enum Inner {
    Full(Option<Bytes>),
    Upstream {
        body: UpstreamBody,
        /// read_timeout between two pieces of the body.
        timer: IdleTimer,
        _in_flight: InFlight,
    },
    /// The upstream's body failed: the error waits one turn, so that hyper
    /// first flushes what it has of the response (it flushes when the body
    /// is pending; an error aborts the connection unflushed), as nginx
    /// sends what it received before closing. A variant of its own rather
    /// than a field of `Upstream`, which stays smaller.
    Failed {
        error: Option<BoxError>,
        _in_flight: InFlight,
    },
}

/// Counts a request in flight on its connection from the moment it starts
/// until dropped: with the response body once hyper has sent it, or earlier
/// when the handler ends without one or is cancelled (an HTTP/2 stream reset).
pub struct FinishGuard(Arc<ConnState>);

impl FinishGuard {
    /// Start a request; returns the guard and the request's number on the connection.
    pub fn start(state: Arc<ConnState>) -> (Self, u64) {
        let number = state.request_started();
        (FinishGuard(state), number)
    }
}

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The access-log line of this response, written when the body is done.
struct PendingLog {
    log: AccessLog,
    entry: Entry,
    started: Instant,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(mut pending) = self.log.take() {
            pending.entry.request_time = pending.started.elapsed();
            pending.log.write(&pending.entry);
        }
    }
}

impl ResponseBody {
    fn new(inner: Inner) -> Self {
        ResponseBody(Box::new(Held {
            inner,
            guard: None,
            log: None,
            server_field: None,
        }))
    }

    pub fn empty() -> Self {
        Self::new(Inner::Full(None))
    }

    pub fn full(data: Bytes) -> Self {
        Self::new(Inner::Full((!data.is_empty()).then_some(data)))
    }

    /// An upstream's body, streamed; the peer counts the request in flight
    /// until it is done.
    pub fn upstream(body: UpstreamBody, read_timeout: Duration, in_flight: InFlight) -> Self {
        Self::new(Inner::Upstream {
            body,
            timer: IdleTimer::new(read_timeout),
            _in_flight: in_flight,
        })
    }

    /// Write `entry` to `log` when this body is done (bytes and time filled in).
    pub fn log_on_drop(&mut self, log: &AccessLog, entry: Entry, started: Instant) {
        if log.is_on() {
            self.0.log = Some(Box::new(PendingLog {
                log: log.clone(),
                entry,
                started,
            }));
        }
    }

    /// The upstream's fields, when the native client left them in its
    /// response head for ginx's HTTP/1 side to copy
    /// (`forward::PassedFields`); once.
    pub fn take_passed(&mut self) -> Option<Box<crate::forward::PassedFields>> {
        match &mut self.0.inner {
            Inner::Upstream { body, .. } => body.take_passed(),
            _ => None,
        }
    }

    /// Leave `Server: ginx` to the writer, to put where a map would have
    /// it: before the map's field (name) of index `at`, or last
    /// (`respond::finish_headers`).
    pub fn leave_server_field(&mut self, at: usize) {
        self.0.server_field = Some(at);
    }

    /// Where `Server: ginx` goes, when it is the writer's to add.
    pub fn server_field(&self) -> Option<usize> {
        self.0.server_field
    }

    /// Tie the end of this body to the connection's request accounting.
    pub fn finish_on_drop(&mut self, guard: FinishGuard) {
        self.0.guard = Some(guard);
    }

    fn poll_inner(
        inner: &mut Inner,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match inner {
            Inner::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Inner::Failed { error, .. } => Poll::Ready(error.take().map(Err)),
            Inner::Upstream { body, timer, .. } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    timer.progressed();
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::error!(error = %e, cause = ?e.source(), "upstream response body failed; the client's response is cut short");
                    // The upstream's body goes now; its request stays in
                    // flight until the error has been handed on.
                    if let Inner::Upstream { _in_flight, .. } =
                        std::mem::replace(inner, Inner::Full(None))
                    {
                        *inner = Inner::Failed {
                            error: Some(e),
                            _in_flight,
                        };
                    }
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => {
                    if timer.expired(cx) {
                        tracing::error!("read_timeout while reading the upstream response body");
                        return Poll::Ready(Some(Err(
                            "read_timeout reading the upstream response body".into(),
                        )));
                    }
                    Poll::Pending
                }
            },
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self.0;
        let polled = Self::poll_inner(&mut this.inner, cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(log)) = (&polled, this.log.as_mut()) {
            if let Some(data) = frame.data_ref() {
                log.entry.bytes_sent += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.0.inner {
            Inner::Full(d) => d.is_none(),
            Inner::Upstream { body, .. } => body.is_end_stream(),
            Inner::Failed { error, .. } => error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0.inner {
            Inner::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            Inner::Upstream { body, .. } => body.size_hint(),
            Inner::Failed { .. } => SizeHint::default(),
        }
    }
}

/// A limit on the pause between two reads that costs a clock read per read
/// rather than a timer per pause: one `Sleep` is made at the first pause,
/// and when it fires after data came meanwhile, it is moved on instead of
/// made again (a timer made and dropped per piece of a large body was a
/// visible share of its cost).
pub struct IdleTimer {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// When data last came, once the sleep exists.
    last: Option<Instant>,
}

impl IdleTimer {
    pub fn new(limit: Duration) -> Self {
        IdleTimer {
            limit,
            sleep: None,
            last: None,
        }
    }

    /// Data came.
    pub fn progressed(&mut self) {
        if self.sleep.is_some() {
            self.last = Some(Instant::now());
        }
    }

    /// Nothing came on this poll: has `limit` passed since data last came
    /// (or since the first pause)? Registers the waker when not.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = self.limit;
        let sleep = match &mut self.sleep {
            Some(sleep) => sleep,
            None => {
                self.last = None;
                self.sleep.insert(Box::pin(tokio::time::sleep(limit)))
            }
        };
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            match self.last.take() {
                Some(last) if last + limit > Instant::now() => {
                    sleep.as_mut().reset((last + limit).into());
                }
                _ => return true,
            }
        }
    }
}

/// A request's body as the server side hands it to forwarding: hyper's
/// (HTTP/1 connections it serves) on the left, an HTTP/2 stream's (`h2`)
/// on the right.
pub type ClientBody = http_body_util::Either<hyper::body::Incoming, super::h2::StreamBody>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A response is moved a dozen times between the upstream's reader and
    /// the client's writer (futures' outputs, `Result`s, parts and body
    /// taken apart). Up to 128 bytes the compiler moves it inline, in eight
    /// 16-byte loads and stores; past that each move is a call to memcpy
    /// (336 bytes were about 770 instructions a request, 248 about 380).
    /// The body is a pointer for that: the head's parts are 112 bytes.
    #[test]
    fn a_response_moves_in_128_bytes() {
        let size = std::mem::size_of::<http::Response<ResponseBody>>();
        assert!(size <= 128, "Response<ResponseBody> is {size} bytes");
    }

    /// Poll the timer as a body would after each pause.
    async fn expired(timer: &mut IdleTimer) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(timer.expired(cx))).await
    }

    #[tokio::test]
    async fn idle_timer_counts_from_the_last_data() {
        let limit = Duration::from_millis(300);
        let mut timer = IdleTimer::new(limit);
        let started = Instant::now();
        // Data every 150 ms for over three times the limit: never expired.
        for _ in 0..7 {
            assert!(!expired(&mut timer).await);
            tokio::time::sleep(Duration::from_millis(150)).await;
            timer.progressed();
        }
        assert!(started.elapsed() > limit * 3);
        // Then nothing: expired once the limit has passed since the last data.
        let last = Instant::now();
        let deadline = last + Duration::from_secs(5);
        while !expired(&mut timer).await {
            assert!(Instant::now() < deadline, "never expired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            last.elapsed() >= limit,
            "expired early: {:?}",
            last.elapsed()
        );
    }
}
