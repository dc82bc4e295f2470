//! The client socket, made known to tokio's reactor only once it has to wait.
//!
//! tokio registers a socket with its epoll instance when the socket becomes
//! a `TcpStream` (epoll_ctl ADD) and takes it out when it is dropped (DEL):
//! two system calls per connection, about 5 % of ginx's CPU for clients that
//! open a connection per request (perf, benches/compare small-close). Most
//! such connections never wait on their socket: the request is there when
//! the connection is accepted, and the response fits in the socket's send
//! buffer. So an accepted socket is read and written directly (it is
//! non-blocking), and registered only when a read or a write would block.
//! HAProxy does the same (speculative I/O); nginx registers at the accept
//! and lets the close take the socket out.
//!
//! One wait is put off rather than registered for: while ginx's own HTTP/1
//! side answers a request it watches the socket for a hang-up, and on an
//! unregistered socket that watch starts once the request has taken
//! [`HANGUP_WATCH_AFTER`]. The client wrapper (`super::conn`) puts the
//! connection's waker in [`DeferredWatches`], and one task wakes each when
//! its time comes. A timer of the connection's own would cost a trip
//! through tokio's timer wheel per connection and, being most often the
//! earliest timer there, a write to the reactor's eventfd to wake it
//! (strace: 16,000 writes for 20,000 connections).

use super::conn::ConnState;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long a request on an unregistered socket is answered before its
/// client is watched for a hang-up: a client that goes away from a quicker
/// request is noticed when its response is written.
pub const HANGUP_WATCH_AFTER: Duration = Duration::from_millis(100);

/// How much later than due a put-off hang-up watch may start.
const WAKE_BATCH: Duration = Duration::from_millis(10);

/// Room kept in the queue of put-off watches once it is empty (entries).
const KEEP_QUEUE: usize = 256;

/// Requests whose hang-up watch was put off, in the order they were (so in
/// the order they are due).
#[derive(Default)]
pub struct DeferredWatches {
    queue: Mutex<VecDeque<Deferred>>,
    /// The queue was empty and is not: the waking task looks again.
    first: tokio::sync::Notify,
}

struct Deferred {
    due: Instant,
    state: Arc<ConnState>,
    waker: Waker,
}

impl DeferredWatches {
    /// Wake `waker` in HANGUP_WATCH_AFTER, with its connection told to watch
    /// for a hang-up (if the request is done by then, the wake-up finds
    /// nothing to do).
    pub fn defer(&self, state: &Arc<ConnState>, waker: &Waker) {
        let deferred = Deferred {
            due: Instant::now() + HANGUP_WATCH_AFTER,
            state: state.clone(),
            waker: waker.clone(),
        };
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.push_back(deferred);
        if queue.len() == 1 {
            self.first.notify_one();
        }
    }

    /// The entries due by `now`, out of the queue; and when the next one is.
    fn take_due(&self, now: Instant) -> (Vec<Deferred>, Option<Instant>) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let due = queue.iter().take_while(|d| d.due <= now).count();
        let taken = queue.drain(..due).collect();
        if queue.is_empty() && queue.capacity() > KEEP_QUEUE {
            // A burst of new connections is over: its room goes too (10,000
            // connections at once left 40 bytes each behind).
            *queue = VecDeque::new();
        }
        (taken, queue.front().map(|d| d.due))
    }
}

/// The task that wakes put-off hang-up watches when they are due. Runs
/// until aborted.
pub async fn wake_deferred(watches: Arc<DeferredWatches>) {
    loop {
        let (due, next) = watches.take_due(Instant::now());
        for deferred in due {
            deferred.state.start_hangup_watch();
            deferred.waker.wake();
        }
        match next {
            // Up to WAKE_BATCH late, so that one wake-up of this task serves
            // the connections of that time together.
            Some(at) => tokio::time::sleep_until((at + WAKE_BATCH).into()).await,
            None => watches.first.notified().await,
        }
    }
}

pub struct ClientSocket(Inner);

enum Inner {
    /// Not known to the reactor: read and written directly.
    Direct {
        socket: std::net::TcpStream,
        /// The last read brought less than it asked for: the socket is most
        /// likely empty, and the next read waits for readiness rather than
        /// trying (a system call that would only say EAGAIN).
        drained: bool,
    },
    Registered(TcpStream),
    /// Registration failed (the socket was closed with it), or the socket
    /// was given up for parking.
    Gone,
}

impl ClientSocket {
    /// A socket just accepted, or taken out of the parking lot: non-blocking.
    pub fn direct(socket: std::net::TcpStream) -> Self {
        ClientSocket(Inner::Direct {
            socket,
            drained: false,
        })
    }

    /// Not (yet) registered with the reactor.
    pub fn is_direct(&self) -> bool {
        matches!(self.0, Inner::Direct { .. })
    }

    /// The socket, to set options on; None once it is gone.
    pub fn sock_ref(&self) -> Option<socket2::SockRef<'_>> {
        match &self.0 {
            Inner::Direct { socket, .. } => Some(socket2::SockRef::from(socket)),
            Inner::Registered(stream) => Some(socket2::SockRef::from(stream)),
            Inner::Gone => None,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.0 {
            Inner::Direct { socket, .. } => socket.local_addr(),
            Inner::Registered(stream) => stream.local_addr(),
            Inner::Gone => Err(gone()),
        }
    }

    /// Write what the socket takes now, without waiting.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match &self.0 {
            Inner::Direct { socket, .. } => (&*socket).write(buf),
            Inner::Registered(stream) => stream.try_write(buf),
            Inner::Gone => Err(gone()),
        }
    }

    /// The socket itself, out of the reactor (for the parking lot): nothing
    /// is left here.
    pub fn take_socket(&mut self) -> Option<std::net::TcpStream> {
        match std::mem::replace(&mut self.0, Inner::Gone) {
            Inner::Direct { socket, .. } => Some(socket),
            Inner::Registered(stream) => stream.into_std().ok(),
            Inner::Gone => None,
        }
    }

    /// The registered stream, registering the socket first if it is not.
    fn registered(&mut self) -> io::Result<&mut TcpStream> {
        // On a failed registration the socket is closed, and stays Gone.
        self.0 = match std::mem::replace(&mut self.0, Inner::Gone) {
            Inner::Direct { socket, .. } => Inner::Registered(TcpStream::from_std(socket)?),
            other => other,
        };
        match &mut self.0 {
            Inner::Registered(stream) => Ok(stream),
            _ => Err(gone()),
        }
    }

    /// Do `op` on the socket directly while it is unregistered; when it
    /// would block, register and let `registered` wait for readiness.
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&std::net::TcpStream) -> io::Result<T>,
        registered: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        // Most writes are on a registered socket (a kept-alive connection):
        // that case first, without the registering path.
        if let Inner::Registered(stream) = &mut self.0 {
            return registered(Pin::new(stream), cx);
        }
        if let Inner::Direct { socket, .. } = &self.0 {
            loop {
                match op(socket) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    done => return Poll::Ready(done),
                }
            }
        }
        match self.registered() {
            Ok(stream) => registered(Pin::new(stream), cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// What a socket that is gone answers.
fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the client socket is gone")
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match &mut this.0 {
            Inner::Registered(stream) => return Pin::new(stream).poll_read(cx, buf),
            Inner::Direct { socket, drained } if !*drained && buf.remaining() > 0 => {
                let want = buf.remaining();
                // SAFETY: recv writes (and reports) initialized bytes only;
                // exactly those are marked filled below.
                let unfilled = unsafe { buf.unfilled_mut() };
                match recv(socket, unfilled) {
                    Ok(n) => {
                        // SAFETY: recv initialized the first n bytes.
                        unsafe { buf.assume_init(n) };
                        buf.advance(n);
                        *drained = n < want;
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            Inner::Direct { .. } if buf.remaining() == 0 => return Poll::Ready(Ok(())),
            Inner::Direct { .. } => {}
            Inner::Gone => return Poll::Ready(Err(gone())),
        }
        match this.registered() {
            Ok(stream) => Pin::new(stream).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// One recv(2) into `buf`, again when interrupted.
fn recv(socket: &std::net::TcpStream, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    loop {
        match socket2::SockRef::from(socket).recv(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            done => return done,
        }
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(cx, |mut s| s.write(buf), |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_io(
            cx,
            |mut s| s.write_vectored(bufs),
            |s, cx| s.poll_write_vectored(cx, bufs),
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(())) // writes are not buffered here
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Inner::Direct { socket, .. } => Poll::Ready(socket.shutdown(std::net::Shutdown::Write)),
            Inner::Registered(stream) => Pin::new(stream).poll_shutdown(cx),
            Inner::Gone => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A connected pair on 127.0.0.1: ginx's side as an unregistered
    /// socket, once `sent` (from the client) has arrived in it.
    async fn pair(sent: &[u8]) -> (ClientSocket, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        client.write_all(sent).await.unwrap();
        let mut peek = vec![0u8; sent.len()];
        for _ in 0..400 {
            if accepted.peek(&mut peek).unwrap_or(0) == sent.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (ClientSocket::direct(accepted), client)
    }

    #[tokio::test]
    async fn what_is_there_is_read_and_answered_without_registering() {
        let (mut ginx, mut client) = pair(b"GET / HTTP/1.1\r\n\r\n").await;
        let mut buf = [0u8; 64];
        let n = ginx.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
        ginx.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert!(
            ginx.is_direct(),
            "a read and a write that did not wait registered the socket"
        );
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"HTTP/1.1 200 OK\r\n\r\n");
    }

    #[tokio::test]
    async fn a_read_that_would_wait_registers_and_is_woken() {
        let (mut ginx, mut client) = pair(b"").await;
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let n = ginx.read(&mut buf).await.unwrap();
            (buf[..n].to_vec(), ginx.is_direct())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(b"late").await.unwrap();
        let (read, still_direct) = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the waiting read was woken")
            .unwrap();
        assert_eq!(read, b"late");
        assert!(!still_direct, "a read that had to wait is registered");
    }

    #[tokio::test]
    async fn a_write_that_would_wait_registers_and_finishes() {
        let (mut ginx, mut client) = pair(b"").await;
        // More than the socket buffers take while the client does not read.
        const SIZE: usize = 16 << 20;
        let writer = tokio::spawn(async move {
            ginx.write_all(&vec![b'x'; SIZE]).await.unwrap();
            ginx.is_direct()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while got < SIZE {
            let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
                .await
                .expect("the writer went on")
                .unwrap();
            assert!(n > 0, "the writer closed early");
            got += n;
        }
        assert!(
            !writer.await.unwrap(),
            "a write that had to wait is registered"
        );
    }

    #[tokio::test]
    async fn a_put_off_watch_is_woken_when_due_and_its_room_let_go() {
        let watches = Arc::new(DeferredWatches::default());
        let task = tokio::spawn(wake_deferred(watches.clone()));
        let states: Vec<_> = (0..1000).map(|_| ConnState::new(false)).collect();
        let started = Instant::now();
        let mut deferred = false;
        let woken = std::future::poll_fn(|cx| {
            if !std::mem::replace(&mut deferred, true) {
                for state in &states {
                    watches.defer(state, cx.waker());
                }
            }
            match states.iter().all(|s| s.hangup_watch_started()) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }
        });
        tokio::time::timeout(Duration::from_secs(5), woken)
            .await
            .expect("the put-off watches were woken");
        assert!(started.elapsed() >= HANGUP_WATCH_AFTER, "woken early");
        let queue = watches.queue.lock().unwrap();
        assert!(queue.is_empty() && queue.capacity() <= KEEP_QUEUE);
        drop(queue);
        task.abort();
    }

    #[tokio::test]
    async fn a_socket_given_up_for_parking_is_the_same_socket() {
        let (mut ginx, mut client) = pair(b"x").await;
        let mut buf = [0u8; 4];
        assert_eq!(ginx.read(&mut buf).await.unwrap(), 1);
        let taken = ginx.take_socket().expect("the socket");
        assert!(ginx.take_socket().is_none(), "nothing is left once taken");
        (&taken).write_all(b"pong").unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"pong");
    }
}
