//! The response body type: an enum rather than a boxed trait object, so that
//! a response ginx makes costs no allocation beyond its bytes, and an
//! upstream's body streams through with `read_timeout` between reads. It
//! carries guards that tell the connection (idle timers) and the peer
//! (in-flight count) when the response is done.

use super::conn::ConnState;
use crate::forward::{BoxError, InFlight};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

pub struct ResponseBody {
    inner: Inner,
    guard: Option<FinishGuard>,
}

enum Inner {
    Full(Option<Bytes>),
    Upstream {
        body: Incoming,
        read_timeout: Duration,
        timer: Option<Pin<Box<Sleep>>>,
        _in_flight: InFlight,
    },
}

/// Marks the request finished when dropped (hyper drops the body once it is sent).
struct FinishGuard(Arc<ConnState>);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

impl ResponseBody {
    pub fn empty() -> Self {
        ResponseBody {
            inner: Inner::Full(None),
            guard: None,
        }
    }

    pub fn full(data: Bytes) -> Self {
        ResponseBody {
            inner: Inner::Full((!data.is_empty()).then_some(data)),
            guard: None,
        }
    }

    /// An upstream's body, streamed; the peer counts the request in flight
    /// until it is done.
    pub fn upstream(body: Incoming, read_timeout: Duration, in_flight: InFlight) -> Self {
        ResponseBody {
            inner: Inner::Upstream {
                body,
                read_timeout,
                timer: None,
                _in_flight: in_flight,
            },
            guard: None,
        }
    }

    /// Tie the end of this body to the connection's request accounting.
    pub fn finish_on_drop(&mut self, state: Arc<ConnState>) {
        self.guard = Some(FinishGuard(state));
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.inner {
            Inner::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Inner::Upstream {
                body,
                read_timeout,
                timer,
                ..
            } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    *timer = None;
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::error!(error = %e, "upstream response body failed; the client's response is cut short");
                    Poll::Ready(Some(Err(e.into())))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => {
                    let limit = *read_timeout;
                    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                    if t.as_mut().poll(cx).is_ready() {
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

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(d) => d.is_none(),
            Inner::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            Inner::Upstream { body, .. } => body.size_hint(),
        }
    }
}
