//! The response body type: an enum rather than a boxed trait object, so that
//! a response costs no allocation beyond its bytes. It carries a guard that
//! tells the connection when the response is done (for the idle timers and
//! `in_flight`).

use super::conn::ConnState;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub struct ResponseBody {
    data: Option<Bytes>,
    guard: Option<FinishGuard>,
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
            data: None,
            guard: None,
        }
    }

    pub fn full(data: Bytes) -> Self {
        ResponseBody {
            data: (!data.is_empty()).then_some(data),
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
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}
