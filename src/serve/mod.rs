//! Serving: bind the configured addresses, accept connections (capped by
//! `max_connections`), run HTTP/1.1 (ginx's own side in `h1` for requests
//! without a body, hyper's from a connection's first other request) and
//! HTTP/2 (hyper, on TLS by ALPN and on `http2` listeners), and hand each
//! request to `handle`.
//!
//! The configuration lives behind an `ArcSwap`: a request loads it once and
//! keeps that `Arc` to the end, so a swap never changes a request midway and
//! the request path takes no lock.

pub mod body;
pub mod conn;
pub mod framing;
pub mod h1;
mod h2;
mod park;
pub mod respond;
mod socket;

use crate::access_log::{AccessLog, Entry};
use crate::balance::PeerRegistry;
use crate::compile::{AccessLogTarget, Config};
use crate::forward::{self, ClientRegistry, UpstreamReport, UpstreamRuntime};
use crate::route::fields::{Fields, HeadFields};
use crate::route::{self, Outcome, RequestInfo};
use arc_swap::ArcSwap;
use body::ResponseBody;
use conn::{ClientIo, ConnState, HeadLimits, Watch, Wire};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use park::{Parked, ParkingLot};
use socket::{ClientSocket, DeferredWatches};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// One configuration with its run-time upstream side: what a request uses,
/// start to end.
pub struct Generation {
    pub config: Config,
    pub upstreams: Vec<UpstreamRuntime>,
}

/// HTTP/2 protections (see `drive`).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
pub const H2_MAX_PENDING_RESETS: usize = 20;
pub const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// State shared by every connection of a running gateway.
pub struct Shared {
    current: ArcSwap<Generation>,
    peers: PeerRegistry,
    clients: ClientRegistry,
    pub access_log: AccessLog,
    /// The health-check tasks of the generation in force.
    health_tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
    /// The bound listen sockets, by address.
    listeners: std::sync::Mutex<HashMap<SocketAddr, ListenerHandle>>,
    /// What the last reloads did, for /status and metrics.
    pub reload: std::sync::Mutex<crate::reload::ReloadState>,
    /// Told of each configuration put in force (by a save or by SIGHUP):
    /// the file watcher then watches what the new one names.
    pub config_changed: tokio::sync::Notify,
    pub metrics: crate::admin::Metrics,
    connections: Arc<Semaphore>,
    max_connections: usize,
    /// Idle HTTP/1 keep-alive connections, held without a task.
    parking: Arc<ParkingLot>,
    /// Requests whose hang-up watch was put off (`socket`).
    deferred_watches: Arc<DeferredWatches>,
}

impl Shared {
    /// The generation in force: a request loads it once and keeps it.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Put a new configuration in force in one atomic store. Balancer state
    /// and pooled connections of upstream servers it keeps are carried over.
    pub fn install(&self, config: Config) {
        let upstreams = self.clients.runtimes(&config, &self.peers);
        let checks = crate::health::spawn_checks(&upstreams);
        self.current
            .store(Arc::new(Generation { config, upstreams }));
        self.replace_health_tasks(checks);
    }

    fn replace_health_tasks(&self, tasks: Vec<JoinHandle<()>>) {
        let mut current = self.health_tasks.lock().unwrap_or_else(|e| e.into_inner());
        for old in current.drain(..) {
            old.abort();
        }
        *current = tasks;
    }
}

/// A running gateway: its bound addresses and the means to stop it.
pub struct Running {
    pub shared: Arc<Shared>,
    /// The addresses bound at start, in configuration order.
    pub bound: Vec<SocketAddr>,
    /// The admin endpoint's task, when `admin.listen` is set (a change of
    /// that address applies on restart).
    admin: Option<JoinHandle<()>>,
    /// The parking lot's task.
    parking: JoinHandle<()>,
    /// The task that wakes put-off hang-up watches.
    deferred_watches: JoinHandle<()>,
}

impl Running {
    /// Stop accepting, let in-flight requests finish for up to `grace`, then
    /// return. Returns true when every connection finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.shared.replace_health_tasks(Vec::new());
        if let Some(admin) = &self.admin {
            admin.abort();
        }
        let handles: Vec<ListenerHandle> = {
            let mut listeners = self
                .shared
                .listeners
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            listeners.drain().map(|(_, h)| h).collect()
        };
        for h in &handles {
            let _ = h.stop.send(true);
        }
        for h in handles {
            let _ = h.task.await;
        }
        self.shared.parking.close_all();
        self.parking.abort();
        // Every connection holds a permit: all permits back = all connections done.
        let all = self.shared.max_connections as u32;
        let finished = tokio::time::timeout(grace, self.shared.connections.acquire_many(all))
            .await
            .is_ok();
        self.deferred_watches.abort();
        finished
    }
}

/// One bound listen socket: its accept loop and the signal that stops it
/// (its connections then finish their requests and close).
pub struct ListenerHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// The socket (a descriptor of its own), to change its options on reload.
    socket: std::net::TcpListener,
    /// Whether TCP_DEFER_ACCEPT is on (`deferred`).
    deferred: bool,
}

impl Shared {
    /// Make the bound sockets match `config` and put it in force: new
    /// addresses are bound first (a failure changes nothing), then the
    /// configuration is swapped in, then new sockets start accepting and
    /// removed ones stop.
    pub fn apply(self: &Arc<Self>, config: Config) -> io::Result<()> {
        self.apply_with(config, Vec::new()).map(|_| ())
    }

    fn apply_with(
        self: &Arc<Self>,
        config: Config,
        prebound: Vec<std::net::TcpListener>,
    ) -> io::Result<Vec<SocketAddr>> {
        let wanted = addresses_to_bind(&config);
        let mut prebound: Vec<Option<std::net::TcpListener>> =
            prebound.into_iter().map(Some).collect();
        let mut fresh = Vec::new();
        {
            let current = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            for &addr in wanted.iter().filter(|a| !current.contains_key(a)) {
                let given = prebound
                    .iter_mut()
                    .find(|l| l.as_ref().and_then(|l| l.local_addr().ok()) == Some(addr))
                    .and_then(Option::take);
                let deferred = wants_deferred(&config, addr);
                let cannot = |e: io::Error| {
                    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
                };
                let listener = match given {
                    Some(std_listener) => {
                        std_listener.set_nonblocking(true)?;
                        set_deferred(&std_listener, deferred).map_err(cannot)?;
                        std_listener
                    }
                    None => bind(addr, deferred).map_err(cannot)?,
                };
                // A second descriptor of the socket, for a reload that turns
                // `deferred` on or off while it keeps listening.
                let handle = listener.try_clone().map_err(cannot)?;
                fresh.push((addr, listener, handle, deferred));
            }
        }
        let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let kept = listeners.iter_mut().filter(|(a, _)| wanted.contains(a));
        for (addr, handle) in kept {
            let deferred = wants_deferred(&config, *addr);
            if handle.deferred != deferred {
                match set_deferred(&handle.socket, deferred) {
                    Ok(()) => handle.deferred = deferred,
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, deferred, "cannot change deferred accept")
                    }
                }
            }
        }
        self.install(config);
        for (addr, listener, socket, deferred) in fresh {
            let (stop, stop_rx) = watch::channel(false);
            tracing::info!(%addr, deferred, "listening");
            let task = tokio::spawn(accept_loop(listener, self.clone(), stop_rx));
            let handle = ListenerHandle {
                stop,
                task,
                socket,
                deferred,
            };
            listeners.insert(addr, handle);
        }
        let removed: Vec<SocketAddr> = listeners
            .keys()
            .filter(|a| !wanted.contains(a))
            .copied()
            .collect();
        for addr in removed {
            if let Some(h) = listeners.remove(&addr) {
                tracing::info!(%addr, "no longer listening; open connections finish their requests");
                let _ = h.stop.send(true);
            }
        }
        Ok(wanted)
    }
}

/// Bind every listen address of `config` and start serving. `prebound`
/// sockets (already listening) are used for the addresses they are bound to,
/// which lets tests and socket activation hand over ports.
pub async fn start(config: Config, prebound: Vec<std::net::TcpListener>) -> io::Result<Running> {
    let max_connections = config.settings.max_connections;
    let admin_listen = config.settings.admin_listen;
    let peers = PeerRegistry::default();
    let clients = ClientRegistry::default();
    let access_log =
        AccessLog::start(&config.settings.access_log, config.settings.access_log_json)?;
    let upstreams = clients.runtimes(&config, &peers);
    let metrics = crate::admin::Metrics::default();
    let (parking, waiter) = ParkingLot::new(metrics.parked_connections.clone())?;
    let shared = Arc::new(Shared {
        current: ArcSwap::from_pointee(Generation {
            config: Config::empty(),
            upstreams,
        }),
        peers,
        clients,
        access_log,
        health_tasks: std::sync::Mutex::new(Vec::new()),
        listeners: std::sync::Mutex::new(HashMap::new()),
        reload: std::sync::Mutex::new(crate::reload::ReloadState::default()),
        metrics,
        connections: Arc::new(Semaphore::new(max_connections)),
        max_connections,
        parking: Arc::new(parking),
        deferred_watches: Arc::new(DeferredWatches::default()),
        config_changed: tokio::sync::Notify::new(),
    });
    let parking = tokio::spawn(park::run(shared.parking.clone(), waiter, {
        let shared = shared.clone();
        move |parked| {
            // A box, as a new connection's (see `accept_loop`).
            tokio::spawn(boxed(|| resume_http1(shared.clone(), parked)));
        }
    }));
    let bound = shared.apply_with(config, prebound)?;
    // Requests accepted before it runs are in its queue when it starts.
    let deferred_watches = tokio::spawn(socket::wake_deferred(shared.deferred_watches.clone()));
    crate::reload::record_success(&shared);
    let admin = crate::admin::start(&shared, admin_listen).await?;
    Ok(Running {
        shared,
        bound,
        admin,
        parking,
        deferred_watches,
    })
}

/// The sockets to bind: a wildcard address on a port covers the specific
/// addresses of that port (as nginx binds only `0.0.0.0:80` and picks the
/// server table by the connection's local address).
fn addresses_to_bind(config: &Config) -> Vec<SocketAddr> {
    let all: Vec<SocketAddr> = config.listeners.iter().map(|l| l.addr).collect();
    all.iter()
        .copied()
        .filter(|a| {
            a.ip().is_unspecified()
                || !all.iter().any(|w| {
                    w.ip().is_unspecified() && w.port() == a.port() && w.is_ipv4() == a.is_ipv4()
                })
        })
        .collect()
}

/// Whether the socket bound to `addr` defers accepting. A specific address
/// accepted by its port's wildcard socket cannot ask for it alone (compile
/// refuses that), so the socket's own listen entries decide.
fn wants_deferred(config: &Config, addr: SocketAddr) -> bool {
    config
        .listeners
        .iter()
        .any(|l| l.addr == addr && l.deferred)
}

/// nginx's `deferred`: TCP_DEFER_ACCEPT of 1 second, as nginx sets it. The
/// kernel then hands over a connection once its first bytes have come (or
/// the period is over), so that the first read finds the request instead
/// of waiting for it with a registration and a wake-up of its own.
#[cfg(target_os = "linux")]
fn set_deferred(socket: &impl std::os::fd::AsRawFd, on: bool) -> io::Result<()> {
    let seconds: libc::c_int = on.into();
    // SAFETY: a valid descriptor, and an int option of the given size.
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&seconds as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    match done {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(not(target_os = "linux"))]
fn set_deferred(_socket: &impl std::os::fd::AsRawFd, on: bool) -> io::Result<()> {
    if on {
        tracing::warn!("listen flag deferred is only supported on Linux; ignored");
    }
    Ok(())
}

fn bind(addr: SocketAddr, deferred: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // `[::]:80` and `0.0.0.0:80` are two listeners, as in nginx.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    set_deferred(&socket, deferred)?;
    socket.listen(1024)?;
    Ok(socket.into())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    // A socket bound to one address accepts connections to that address:
    // no getsockname per connection (a system call per request for clients
    // that close after each). A wildcard socket's connections are asked.
    let bound = listener
        .local_addr()
        .ok()
        .filter(|a| !a.ip().is_unspecified());
    // The listener is watched through an AsyncFd, not a tokio TcpListener:
    // that one registers each accepted socket with the reactor, and here
    // a socket is registered only once it has to wait (`socket`).
    let listener = mio::net::TcpListener::from_std(listener);
    // SAFETY: the AsyncFd owns the listener, whose descriptor stays open
    // and unchanged until the AsyncFd (and so the registration) is dropped.
    let registered =
        unsafe { AsyncFd::register_with_interest(listener, tokio::io::Interest::READABLE) };
    let listener = match registered {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch a listen socket; it accepts nothing");
            return;
        }
    };
    let mut backoff = Duration::from_millis(5);
    // The stop signal's future is made once (a new one per accept
    // registered with the channel anew), and `probe` sees a stop that
    // came while connections kept arriving (the select prefers them).
    let probe = stop.clone();
    let mut watching = stop.clone();
    let stopped = watching.changed();
    tokio::pin!(stopped);
    loop {
        if probe.has_changed().unwrap_or(true) {
            return;
        }
        // Take a connection slot first: past max_connections, accepts wait.
        let permit = match shared.connections.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return,
            Err(tokio::sync::TryAcquireError::NoPermits) => tokio::select! {
                p = shared.connections.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = &mut stopped => return,
            },
        };
        // `biased`: no random pick of which branch to poll first.
        let accepted = tokio::select! {
            biased;
            a = accept(&listener) => a,
            _ = &mut stopped => return,
        };
        match accepted {
            Ok((stream, remote)) => {
                backoff = Duration::from_millis(5);
                let slot = ConnSlot::new(permit, &shared.metrics.active_connections);
                // Spawned as a box: tokio moves a task's future whole at the
                // spawn and at each change of its stage, and a box is 8 bytes
                // where the connection's future is 200.
                tokio::spawn(boxed(|| {
                    serve_connection(shared.clone(), stream, bound, remote, stop.clone(), slot)
                }));
            }
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "accept failed; retrying in {:?}", backoff);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The next connection on `listener`: a non-blocking socket that tokio's
/// reactor does not know yet.
async fn accept(listener: &AsyncFd<mio::net::TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        // mio's accept: accept4 with SOCK_NONBLOCK, no fcntl afterwards.
        if let Ok(accepted) = ready.try_io(|l| l.get_ref().accept()) {
            return accepted
                .map(|(socket, remote)| (std::os::fd::OwnedFd::from(socket).into(), remote));
        }
    }
}

/// A connection's place among `max_connections`, from accept to close
/// (parked or not): it counts the connection as active and holds its permit.
pub struct ConnSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    active: prometheus_client::metrics::gauge::Gauge,
}

impl ConnSlot {
    fn new(
        permit: tokio::sync::OwnedSemaphorePermit,
        active: &prometheus_client::metrics::gauge::Gauge,
    ) -> Self {
        active.inc();
        ConnSlot {
            _permit: permit,
            active: active.clone(),
        }
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// Facts about a connection that every request on it needs.
#[derive(Clone, Copy)]
struct ConnInfo {
    local: SocketAddr,
    remote: SocketAddr,
    tls: bool,
}

async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    bound: Option<SocketAddr>,
    remote: SocketAddr,
    stop: watch::Receiver<bool>,
    slot: ConnSlot,
) {
    let Some(local) = bound.or_else(|| stream.local_addr().ok()) else {
        return;
    };
    // Connection-level settings are read once, from the configuration current
    // at accept time; a reload applies to new connections.
    let generation = shared.current();
    let config = &generation.config;
    let Some(listener) = config.listener_for(local) else {
        return;
    };
    let limits = HeadLimits {
        max_header_size: listener.limits.max_header_size,
        header_timeout: listener.limits.client_header_timeout,
        keepalive_timeout: listener.limits.keepalive_timeout,
        send_timeout: listener.limits.send_timeout,
        keepalive_requests: listener.limits.keepalive_requests,
    };
    let http2 = listener.http2;
    let tls = listener.tls_config.clone();
    let state = ConnState::new(config.settings.server_tokens);
    drop(generation);

    let Some(tls) = tls else {
        let wire = if http2 { Wire::Http1OrH2c } else { Wire::Http1 };
        let watches = shared.deferred_watches.clone();
        let io = ClientIo::new(
            ClientSocket::direct(stream),
            state.clone(),
            limits,
            wire,
            watches,
        );
        let info = ConnInfo {
            local,
            remote,
            tls: false,
        };
        // Boxed: a task's future is copied whole when it is spawned and at
        // each change of its stage, five copies per connection; kept small,
        // they cost a client that opens a connection per request about
        // 10 KiB of copying less (serve_tls below is boxed for that too).
        if http2 {
            return Box::pin(serve_plain_http2(shared, io, info, state, limits, stop)).await;
        }
        return Box::pin(drive_http1(shared, io, info, state, limits, stop, slot)).await;
    };
    // Under TLS the wrapper sees ciphertext: it keeps only the timers.
    // Boxed: a task's memory is its largest state, and an idle plain
    // connection should not carry the size of a TLS one.
    Box::pin(serve_tls(
        shared, stream, tls, remote, local, state, limits, stop,
    ))
    .await
}

/// A plain listener marked `http2`: HTTP/1 requests without a body on
/// ginx's own side; from the first other one, hyper's HTTP/1 server, or
/// from an HTTP/2 preface (which the parser refuses) its HTTP/2 one, each
/// reading what was read first.
async fn serve_plain_http2(
    shared: Arc<Shared>,
    mut io: ClientIo,
    info: ConnInfo,
    state: Arc<ConnState>,
    limits: HeadLimits,
    stop: watch::Receiver<bool>,
) {
    io.serve_natively();
    let ended = serve_native(&shared, io, info, &state, &limits, &stop, false).await;
    if let Some(h1::End::Handoff(io, buffered)) = ended {
        let mut io = *io;
        // Marked before the hand-over, which follows HTTP/1 framing otherwise.
        let http2 = handed_http2(&state, &buffered);
        io.hand_over(buffered);
        drive(shared, io, info, state, limits, stop, http2).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_tls(
    shared: Arc<Shared>,
    stream: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    remote: SocketAddr,
    local: SocketAddr,
    state: Arc<ConnState>,
    limits: HeadLimits,
    stop: watch::Receiver<bool>,
) {
    let watches = shared.deferred_watches.clone();
    let io = ClientIo::new(
        ClientSocket::direct(stream),
        state.clone(),
        limits,
        Wire::Tls,
        watches,
    );
    let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(io);
    match tokio::time::timeout(limits.header_timeout, handshake).await {
        Ok(Ok(tls_stream)) => {
            let info = ConnInfo {
                local,
                remote,
                tls: true,
            };
            if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                state.mark_http2();
                return drive(shared, tls_stream, info, state, limits, stop, true).await;
            }
            // HTTP/1 (or no ALPN): ginx's own HTTP/1 side first, then hyper
            // from the first request it does not serve (an unannounced
            // HTTP/2 preface included).
            let ended =
                serve_native(&shared, tls_stream, info, &state, &limits, &stop, false).await;
            if let Some(h1::End::Handoff(tls_stream, buffered)) = ended {
                let http2 = handed_http2(&state, &buffered);
                let io = h1::Rewound::new(buffered.freeze(), *tls_stream);
                drive(shared, io, info, state, limits, stop, http2).await;
            }
        }
        Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%remote, "TLS handshake not done within client_header_timeout"),
    }
}

/// HTTP/2's connection preface (RFC 9113, 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether what a connection handed over by ginx's own HTTP/1 side had
/// sent is an HTTP/2 preface, or the start of one (marked on `state` then):
/// that side refuses the request line as soon as it has read
/// `PRI * HTTP/2.0`, which may be before the rest has come, and before the
/// connection's first read saw it whole. The HTTP/2 server side (`h2`,
/// the h2 crate's handshake) reads and checks the whole preface.
fn handed_http2(state: &ConnState, buffered: &[u8]) -> bool {
    let n = buffered.len().min(H2_PREFACE.len());
    let http2 = n >= conn::H2_REQUEST_LINE.len() && buffered[..n] == H2_PREFACE[..n];
    if http2 {
        state.mark_http2();
    }
    http2
}

/// Serve with hyper, from the first request ginx's own HTTP/1 side did not
/// serve to the end, a connection that is not parked when idle (TLS, or a
/// plain listener with the `http2` flag): HTTP/2 when ALPN or the preface
/// said so, else HTTP/1.1. The protocol is known here, so hyper's server
/// for it is used directly rather than hyper-util's auto builder, which
/// would read the first bytes again to tell.
async fn drive<I>(
    shared: Arc<Shared>,
    io: I,
    info: ConnInfo,
    state: Arc<ConnState>,
    limits: HeadLimits,
    stop: watch::Receiver<bool>,
    http2: bool,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if !http2 {
        let read_buffer = read_buffer_size(&limits, info.tls);
        // Only a plain listener's connections park.
        let can_park = false;
        // Boxed: this future is a TLS connection's, which should not carry
        // the size of both hyper servers' states.
        Box::pin(serve_hyper_http1(
            &shared,
            io,
            info,
            &state,
            &limits,
            &stop,
            read_buffer,
            can_park,
        ))
        .await;
        return;
    }
    // HTTP/2 limits, set explicitly (documented in ginx.yaml(5)): at most 128
    // streams at once; a header list no larger than max_header_size (which
    // also bounds a CONTINUATION sequence); rapid reset: at most 20 streams
    // reset by the client before ginx has answered them are tolerated, and
    // 1,024 streams ginx had to reset for errors, before the connection is
    // closed with GOAWAY.
    let h2_limits = h2::Limits {
        max_concurrent_streams: H2_MAX_CONCURRENT_STREAMS,
        max_header_list_size: limits.max_header_size as u32,
        max_pending_accept_reset_streams: H2_MAX_PENDING_RESETS,
        max_local_error_reset_streams: H2_MAX_LOCAL_ERROR_RESETS,
        max_streams: limits.keepalive_requests,
    };
    let serve_stream = {
        let state = state.clone();
        move |request: Request<::h2::RecvStream>, respond| {
            let (parts, recv) = request.into_parts();
            let body = body::ClientBody::Right(h2::StreamBody::new(recv, &parts.headers));
            // Boxed, as hyper's (see `handle_request`): a stream's future
            // is moved into the connection's set of streams.
            let handling = boxed(|| {
                handle(
                    shared.clone(),
                    state.clone(),
                    info,
                    parts,
                    None,
                    Some(body),
                    None,
                )
            });
            h2::answer(handling, respond)
        }
    };
    // Boxed: HTTP/2's connection state is much larger than HTTP/1's.
    let mut conn = Box::pin(h2::Server::new(io, &h2_limits, serve_stream));
    watch_connection(
        conn.as_mut(),
        |c| c.get_mut().graceful_shutdown(),
        &state,
        &limits,
        stop,
        info.remote,
        false,
    )
    .await;
}

/// Serve a plain HTTP/1 connection until it closes or, idle, is parked.
/// Requests without a body are served by ginx's own HTTP/1 side (`h1`);
/// the first other one hands the connection to hyper's HTTP/1 server. An
/// idle connection is parked: its server side is dropped (buffers with it),
/// then this task, and the socket waits in the parking lot for the next
/// request.
/// (An `async move` block, as `handle`: `io` alone is 240 bytes.)
#[allow(clippy::manual_async_fn)] // arguments kept once: see `handle`
fn drive_http1(
    shared: Arc<Shared>,
    mut io: ClientIo,
    info: ConnInfo,
    state: Arc<ConnState>,
    limits: HeadLimits,
    stop: watch::Receiver<bool>,
    slot: ConnSlot,
) -> impl Future<Output = ()> {
    async move {
        let read_buffer = read_buffer_size(&limits, false);
        loop {
            io.serve_natively();
            let ended = serve_native(&shared, io, info, &state, &limits, &stop, true).await;
            match ended {
                Some(h1::End::Idle(idle)) => return park(&shared, *idle, limits, stop, slot),
                Some(h1::End::Handoff(handed, buffered)) => {
                    io = *handed;
                    // hyper reads what was read for it first.
                    io.hand_over(buffered);
                }
                Some(h1::End::Closed) | None => return,
            }
            let Some((handed, leftover)) =
                serve_hyper_http1(&shared, io, info, &state, &limits, &stop, read_buffer, true)
                    .await
            else {
                return;
            };
            io = handed;
            if leftover.is_empty() {
                return park(&shared, io, limits, stop, slot);
            }
            // The next request had begun to arrive: serve it on.
            io.unpark(leftover);
        }
    }
}

/// Serve `io` with ginx's own HTTP/1 side (`h1`) under the connection's
/// watchdog, until it closes, is to be parked (`can_park`), or is to be
/// handed to hyper. None: it closed, or the watchdog closed it. (An `async
/// move` block, as `handle`.)
#[allow(clippy::manual_async_fn)] // arguments kept once: see `handle`
fn serve_native<'a, I>(
    shared: &'a Arc<Shared>,
    io: I,
    info: ConnInfo,
    state: &'a Arc<ConnState>,
    limits: &'a HeadLimits,
    stop: &'a watch::Receiver<bool>,
    can_park: bool,
) -> impl Future<Output = Option<h1::End<I>>> + use<'a, I>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    async move {
        let handler = |parts, fields| {
            // Boxed, as hyper's (see `handle_request`).
            boxed(|| {
                handle(
                    shared.clone(),
                    state.clone(),
                    info,
                    parts,
                    Some(fields),
                    None,
                    None,
                )
            })
        };
        // A plain connection's head limit is max_header_size: a larger head
        // goes to hyper, and the client wrapper refuses it then (414 / 431).
        // Under TLS it is the size of hyper's buffer, which refuses it (431).
        let max_head = match info.tls {
            true => read_buffer_size(limits, true),
            false => limits.max_header_size,
        };
        let fair_share = match info.tls {
            true => h1::TLS_FAIR_SHARE,
            false => usize::MAX,
        };
        // Boxed, so that the task's own state stays small; built in its box
        // (1,096 bytes copied into cold memory a connection otherwise).
        let mut conn = boxed(|| h1::serve(io, state, max_head, fair_share, handler));
        watch_connection(
            conn.as_mut(),
            |_| drain_native(state),
            state,
            limits,
            stop.clone(),
            info.remote,
            can_park,
        )
        .await
    }
}

/// A graceful stop for ginx's own HTTP/1 side; parking (which also asks
/// for it) is told by the state's parking flag instead.
fn drain_native(state: &ConnState) {
    if !state.is_parking() {
        state.start_draining();
    }
}

/// Serve an HTTP/1 connection with hyper until it ends. When it ends idle
/// for parking (`can_park`), returns the socket and what hyper had read
/// and not used.
#[allow(clippy::too_many_arguments)]
async fn serve_hyper_http1<I>(
    shared: &Arc<Shared>,
    io: I,
    info: ConnInfo,
    state: &Arc<ConnState>,
    limits: &HeadLimits,
    stop: &watch::Receiver<bool>,
    read_buffer: usize,
    can_park: bool,
) -> Option<(I, bytes::Bytes)>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let shared = shared.clone();
        let state = state.clone();
        hyper::service::service_fn(move |req| {
            boxed(|| handle_request(shared.clone(), state.clone(), info, req))
        })
    };
    // Boxed, so that the task's own state stays small.
    let mut conn = Box::pin(
        hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .max_buf_size(read_buffer)
            .max_headers(MAX_HEADERS)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades(),
    );
    watch_connection(
        conn.as_mut(),
        |c| c.graceful_shutdown(),
        state,
        limits,
        stop.clone(),
        info.remote,
        can_park,
    )
    .await?;
    if !state.is_parking() {
        return None;
    }
    let parts = std::pin::Pin::into_inner(conn).into_parts()?;
    Some((parts.io.into_inner(), parts.read_buf))
}

/// Put an idle connection's socket in the parking lot (or close it, when
/// it is due to close already).
fn park(
    shared: &Shared,
    io: ClientIo,
    limits: HeadLimits,
    stop: watch::Receiver<bool>,
    slot: ConnSlot,
) {
    if let Some(idle) = io.into_idle() {
        shared.parking.park(Parked {
            idle,
            limits,
            stop,
            slot,
        });
    }
}

/// A parked connection's client sent something: serve the connection again.
async fn resume_http1(shared: Arc<Shared>, parked: Parked) {
    let Parked {
        idle,
        limits,
        stop,
        slot,
    } = parked;
    let stream = idle.socket;
    // Asked again rather than kept: a parked connection stays small.
    let (Ok(local), Ok(remote)) = (stream.local_addr(), stream.peer_addr()) else {
        return; // the client has gone already
    };
    // Its request is there: read directly, registered only if it waits.
    let stream = ClientSocket::direct(stream);
    let info = ConnInfo {
        local,
        remote,
        tls: false,
    };
    let watches = shared.deferred_watches.clone();
    let (io, state) = ClientIo::resumed(stream, idle.requests, idle.server_tokens, limits, watches);
    // Boxed, as in serve_connection.
    Box::pin(drive_http1(shared, io, info, state, limits, stop, slot)).await
}

/// hyper's read buffer bounds both a head and each read of a body. On plain
/// connections the IO wrapper enforces the head limit itself, so the buffer
/// can be large enough for fast uploads; under TLS it is the head limit.
fn read_buffer_size(limits: &HeadLimits, tls: bool) -> usize {
    let floor = if tls { 8192 } else { 256 * 1024 };
    (limits.max_header_size + 4096).max(floor)
}

/// Most header fields in one request head (hyper's default is 100; real
/// clients behind proxies send more). Their total size is max_header_size.
const MAX_HEADERS: usize = 256;

/// Drive a connection to its end, applying the idle and head timers and a
/// graceful stop (`graceful` asks the server side to finish in-flight
/// requests and close). Returns what the connection's future returned when
/// it ended by itself without an error; None when it failed or the
/// watchdog ended it.
async fn watch_connection<F, T, E, G>(
    mut conn: std::pin::Pin<&mut F>,
    mut graceful: G,
    state: &ConnState,
    limits: &HeadLimits,
    mut stop: watch::Receiver<bool>,
    remote: SocketAddr,
    can_park: bool,
) -> Option<T>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
    G: FnMut(std::pin::Pin<&mut F>),
{
    let mut stopping = false;
    let mut head_timeout_fired = false;
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    // What the timer is set to. It is moved only to wake earlier (or once it
    // has fired): a deadline that moved later is found when the timer fires
    // early and the loop looks again. Resetting it twice a request (as the
    // deadlines move at each request's start and end) was about 1,100
    // instructions a request in tokio's timer wheel.
    let mut armed: Option<Instant> = None;
    let mut fired = false;
    // After a GOAWAY for keepalive_requests: close once no stream is open and
    // this moment has passed (a client need not answer the GOAWAY's PING).
    let mut drain_by: Option<Instant> = None;
    // Made once: a new `changed()` per turn of the loop (two turns a
    // request) cost 900 instructions a request in registering with the
    // channel. Not polled again once it has fired (`stopping`).
    // Polled when its receiver has seen a change, and once to register:
    // polling it at every wake-up was about 350 instructions a request.
    // It registers once no request is in flight: until then the request
    // wakes the connection, which looks at the probe (an atomic load); a
    // connection that closes after its one request never registers (the
    // registration and its removal were about 450 instructions).
    let probe = stop.clone();
    let mut registered = false;
    let changed = stop.changed();
    tokio::pin!(changed);
    // After a look at the deadlines (Recheck), the connection's future is
    // not polled again at once: it already waits on what it needs. That
    // poll had been two more turns of the whole request path per request,
    // as the progress marks change when a request starts and when it ends.
    // It is polled at its next wake-up, or at once when the loop told it
    // something (a graceful stop, parking, a head timeout).
    let mut poll_conn = true;
    loop {
        if !stopping && state.is_http2() && state.requests() >= limits.keepalive_requests {
            // As nginx: GOAWAY after keepalive_requests streams (the h2
            // server has sent it, and refuses any stream after the limit);
            // those already open finish, then the connection closes. It
            // bounds what one connection can cost, however it paces its
            // streams (rapid reset included).
            stopping = true;
            graceful(conn.as_mut());
            poll_conn = true;
            drain_by = Some(tokio::time::Instant::now().into_std() + Duration::from_secs(1));
        }
        let sleep_until = match conn::watch(state, limits, can_park && !stopping) {
            Watch::Sleep(at) => at,
            Watch::Park if state.is_parking() => {
                // hyper is finishing its (idle) connection; give it a moment.
                tokio::time::Instant::now().into_std() + Duration::from_secs(1)
            }
            Watch::Park => {
                state.start_parking();
                graceful(conn.as_mut());
                poll_conn = true;
                tokio::time::Instant::now().into_std() + Duration::from_secs(1)
            }
            Watch::CloseIdle if state.is_http2() && !stopping => {
                // HTTP/2: say goodbye with GOAWAY rather than a bare close.
                stopping = true;
                graceful(conn.as_mut());
                poll_conn = true;
                tokio::time::Instant::now().into_std() + Duration::from_secs(5)
            }
            Watch::CloseIdle => {
                tracing::debug!(%remote, "closing idle connection");
                return None;
            }
            Watch::SendTimeout => {
                // As nginx's send_timeout: the client stopped reading. The
                // connection is reset, not closed (nginx's
                // reset_timedout_connection): what is queued will never be
                // read, and a close would leave it in the kernel until the
                // client gives up (seen: 1.8 GB for 2,000 slow readers).
                tracing::info!(%remote, "client did not read the response within send_timeout; resetting the connection");
                state.reset_on_close();
                return None;
            }
            Watch::HeadTimeout if head_timeout_fired => return None,
            Watch::HeadTimeout => {
                // Let the IO wrapper answer 408 on hyper's next read; give it a moment.
                head_timeout_fired = true;
                state.flag_head_timeout();
                poll_conn = true;
                tokio::time::Instant::now().into_std() + Duration::from_secs(1)
            }
        };
        let sleep_until = match drain_by {
            Some(by) => {
                let now = tokio::time::Instant::now().into_std();
                if now >= by && state.in_flight() == 0 {
                    tracing::debug!(%remote, "closing after keepalive_requests streams");
                    return None;
                }
                // Streams end on other tasks without waking this one: look again soon.
                sleep_until.min(by.max(now + Duration::from_millis(100)))
            }
            None => sleep_until,
        };
        // The deadlines are on the coarse clock (crate::clock). One that the
        // timer has reached and the clock has not (its tick came late) is
        // looked at again a millisecond on: set again for a moment already
        // past, the timer would fire at once, round and round until the tick.
        let sleep_until = match armed {
            Some(last) if fired && sleep_until <= last => last + Duration::from_millis(1),
            _ => sleep_until,
        };
        if fired || armed.is_none_or(|at| sleep_until < at) {
            timer.as_mut().reset(sleep_until.into());
            armed = Some(sleep_until);
            fired = false;
        }
        // Deadlines move when a request starts or ends and when a head's
        // first byte arrives: the state's progress marks those, and is
        // checked each time the connection is polled (no wake-up of its own).
        let seen = state.progress();
        let event = std::future::poll_fn(|cx| {
            if std::mem::replace(&mut poll_conn, true) {
                if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                    return Poll::Ready(Event::Ended(result));
                }
            }
            let look =
                probe.has_changed().unwrap_or(true) || (!registered && state.in_flight() == 0);
            registered |= look;
            if !stopping && look && changed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Stop);
            }
            if state.progress() != seen {
                return Poll::Ready(Event::Recheck);
            }
            if timer.as_mut().poll(cx).is_ready() {
                fired = true;
                return Poll::Ready(Event::Recheck);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Ended(Err(e)) => {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
                return None;
            }
            Event::Ended(Ok(done)) => return Some(done),
            Event::Stop => {
                stopping = true;
                graceful(conn.as_mut());
                poll_conn = true;
            }
            Event::Recheck => poll_conn = false,
        }
    }
}

/// What woke the watchdog.
enum Event<T, E> {
    Ended(Result<T, E>),
    Stop,
    Recheck,
}

/// Transfer codings ginx accepts: exactly one Transfer-Encoding, `chunked`.
/// Anything else (`gzip, chunked`, `chunked, chunked`, two headers) would be
/// decoded as plain chunked by the parser and passed on wrongly: 501, as nginx.
/// (Content-Length beside it: hyper drops the Content-Length, so the
/// client wrapper spots that shape; see `framing`.)
fn refuse_framing(headers: &http::HeaderMap) -> Option<(http::StatusCode, &'static str)> {
    let mut te = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    match (te.next(), te.next()) {
        (None, _) => None,
        (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => None,
        _ => Some((
            http::StatusCode::NOT_IMPLEMENTED,
            "Transfer-Encoding other than a single \"chunked\"",
        )),
    }
}

/// `return 444`: the handler's error makes hyper drop the connection unanswered.
#[derive(Debug)]
pub struct CloseWithoutAnswer;

impl std::fmt::Display for CloseWithoutAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closed without an answer (return 444)")
    }
}

impl std::error::Error for CloseWithoutAnswer {}

/// A future built in its box: `Box::pin(make())` builds it on the stack and
/// copies it whole into the box (forwarding's is 2 KiB, most of it room for
/// later states); with the box allocated first the compiler can build the
/// future in place. It does for forwarding's (callgrind: 230 instructions
/// of copying a request less) and for the HTTP/1 side's (80 a connection
/// less), not yet for the handler's.
#[inline(always)]
fn boxed<F: Future>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    let mut slot = Box::<F>::new_uninit();
    slot.write(make());
    // SAFETY: written just above. (`Box::write` does this safely, but from
    // Rust 1.87; ginx builds with 1.85.)
    Box::into_pin(unsafe { slot.assume_init() })
}

/// One request, start to end, on the generation current when it arrived.
///
/// Its future is boxed by the callers (the service function, `drive`'s
/// streams): hyper moves a request's future into its dispatcher, and an
/// HTTP/2 stream's is moved into the connection's set of streams; a box
/// makes each move 8 bytes instead of the few KiB that forwarding needs,
/// and a connection between requests holds no room for one.
fn handle_request(
    shared: Arc<Shared>,
    state: Arc<ConnState>,
    info: ConnInfo,
    mut req: Request<Incoming>,
) -> impl Future<Output = Result<Response<ResponseBody>, CloseWithoutAnswer>> {
    // An upgrade request (WebSocket) keeps its hook for after the 101.
    let upgrade =
        forward::wants_upgrade(req.headers().into()).then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    // `handle`'s own future, not one around it holding the request too.
    handle(
        shared,
        state,
        info,
        parts,
        None,
        Some(body::ClientBody::Left(body)),
        upgrade,
    )
}

/// A request from either server side: hyper's (`body` is its body; the
/// fields in the parts' map) or ginx's own HTTP/1 one (no body; the fields
/// where they stand in the head, `head_fields`, and the parts' map empty:
/// see `route::fields`).
///
/// A plain function returning an `async move` block, as are the other
/// futures made per request or per connection here and in `h1`: an `async
/// fn` keeps each argument twice in its future (as passed, and moved into
/// the body's locals), and a future is copied whole, padding and all, into
/// its box (`parts` alone is 224 bytes).
#[allow(clippy::manual_async_fn)] // arguments kept once: see above
fn handle(
    shared: Arc<Shared>,
    state: Arc<ConnState>,
    info: ConnInfo,
    parts: http::request::Parts,
    head_fields: Option<HeadFields>,
    body: Option<body::ClientBody>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> impl Future<Output = Result<Response<ResponseBody>, CloseWithoutAnswer>> {
    async move {
        let fields = match &head_fields {
            Some(head) => Fields::Head(head),
            None => Fields::Map(&parts.headers),
        };
        let (in_flight, request_number) = body::FinishGuard::start(state.clone());
        let generation = shared.current();
        // The request's time is for the access log only: no clock read without it.
        let logging = generation.config.settings.access_log != AccessLogTarget::Off;
        let started = logging.then(Instant::now);
        let mut entry = Entry::default();
        match respond(
            &generation,
            &shared.metrics,
            &state,
            info,
            &parts,
            fields,
            body,
            upgrade,
            request_number,
            &mut entry,
        )
        .await
        {
            Some(mut response) => {
                entry.status = response.status().as_u16();
                if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    state.mark_upgraded();
                }
                // The writer is the one started with ginx; a reload that turns the
                // log off is honoured by not writing (entries are filled only then).
                if let Some(started) = started {
                    response
                        .body_mut()
                        .log_on_drop(&shared.access_log, entry, started);
                }
                response.body_mut().finish_on_drop(in_flight);
                Ok(response)
            }
            None => Err(CloseWithoutAnswer),
        }
    }
}

/// The response for a request, or None to close the connection without one.
#[allow(clippy::too_many_arguments)]
#[allow(clippy::manual_async_fn)] // arguments kept once: see `handle`
fn respond<'a>(
    generation: &'a Generation,
    metrics: &'a crate::admin::Metrics,
    conn_state: &'a ConnState,
    conn: ConnInfo,
    parts: &'a http::request::Parts,
    fields: Fields<'a>,
    body: Option<body::ClientBody>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    request_number: u64,
    entry: &'a mut Entry,
) -> impl Future<Output = Option<Response<ResponseBody>>> + use<'a> {
    async move {
        // ginx's own HTTP/1 side (fields read in place) writes an
        // upstream's fields from its head, and Server; hyper's and HTTP/2
        // take them in the response's map (`respond::finish_headers`).
        let fields_in_map = matches!(fields, Fields::Map(_));
        let config = &generation.config;
        if config.settings.access_log != AccessLogTarget::Off {
            let header = |name: http::header::HeaderName| {
                fields
                    .get(&name)
                    .and_then(route::fields::visible_str)
                    .unwrap_or("")
                    .to_string()
            };
            entry.remote = Some(conn.remote);
            entry.time = Some(std::time::SystemTime::now());
            entry.request = format!("{} {} {:?}", parts.method, parts.uri, parts.version);
            entry.referer = header(http::header::REFERER);
            entry.user_agent = header(http::header::USER_AGENT);
            entry.host = header(http::header::HOST);
        }
        let settings = &config.settings;
        let Some(listener) = config.listener_for(conn.local) else {
            // The address was removed by a reload while this connection was open.
            let mut r = respond::page(
                http::StatusCode::SERVICE_UNAVAILABLE,
                settings.server_tokens,
            );
            respond::finish_headers(&mut r, settings, None, None, true, fields_in_map);
            return Some(r);
        };
        let close = request_number >= listener.limits.keepalive_requests;
        let info = RequestInfo {
            method: &parts.method,
            uri: &parts.uri,
            headers: fields,
            version: parts.version,
            local: conn.local,
            remote: conn.remote,
            tls: conn.tls,
        };
        // Without a body (ginx's own HTTP/1 side) there is no Transfer-Encoding.
        let framed = body.is_some().then(|| refuse_framing(&parts.headers));
        let refused = framed.flatten().or_else(|| {
            let e = conn_state.framing_error(request_number)?;
            Some((e.status(), e.reason()))
        });
        if let Some((status, reason)) = refused {
            entry.reason = Some(reason.to_string());
            tracing::info!(status = status.as_u16(), reason, client = %conn.remote, "request refused");
            let mut r = respond::page(status, settings.server_tokens);
            respond::finish_headers(&mut r, settings, None, None, true, fields_in_map);
            return Some(r);
        }
        let routed = route::route(listener, &info, None);
        let mut response = match &routed.outcome {
            Outcome::Close => return None,
            Outcome::Proxy { uri } => 'proxy: {
                // A chunked body has already declared more than the limit: answer
                // before contacting the upstream.
                let limit = routed.location.map_or(0, |l| l.client_max_body_size);
                if !conn_state.limit_body(request_number, limit) {
                    let over = framing::FramingError::OverBodyLimit;
                    let (status, reason) = (over.status(), over.reason());
                    entry.reason = Some(reason.to_string());
                    tracing::info!(status = status.as_u16(), reason, uri = %parts.uri, client = %conn.remote, "request refused");
                    break 'proxy respond::page(status, settings.server_tokens);
                }
                let mut report = UpstreamReport::default();
                // Boxed on its own: it would be 2 KiB of the handler's future,
                // moved whole with it; built in its box (see `boxed`), and a
                // `return` then moves none of it.
                let result = boxed(|| {
                    forward::forward(
                        &generation.upstreams,
                        &routed,
                        &info,
                        body,
                        upgrade,
                        uri,
                        &mut report,
                    )
                })
                .await;
                if let (Some(t), Some(rt)) = (
                    report.response_time,
                    report.group.and_then(|g| generation.upstreams.get(g)),
                ) {
                    rt.response_time
                        .get_or_init(|| {
                            let labels = crate::admin::UpstreamLabels {
                                upstream: rt.upstream.name.to_string(),
                            };
                            metrics.upstream_time.get_or_create(&labels).clone()
                        })
                        .observe(t.as_secs_f64());
                }
                entry.upstream_addr = report.addr;
                entry.upstream_status = report.status;
                entry.upstream_response_time = report.response_time;
                match result {
                    Ok(mut response) => {
                        // The native client fills the map itself for these
                        // writers (forward's `pass_fields`); fields left in
                        // the head would still get here, before what ginx
                        // adds, as ginx's HTTP/1 side writes them.
                        if fields_in_map {
                            if let Some(passed) = response.body_mut().take_passed() {
                                passed.append_to(response.headers_mut());
                            }
                        }
                        response
                    }
                    Err(mut e) => {
                        // The body stopped because the wrapper refused its framing:
                        // say why (hyper's error only says the body failed).
                        if let Some(framing) = conn_state.framing_error(request_number) {
                            e.status = framing.status();
                            e.reason = framing.reason().to_string();
                        }
                        entry.reason = Some(e.reason.clone());
                        tracing::info!(status = e.status.as_u16(), reason = %e.reason, uri = %parts.uri, client = %conn.remote, "request answered by ginx");
                        respond::page(e.status, settings.server_tokens)
                    }
                }
            }
            Outcome::Error { status, reason } => {
                entry.reason = Some(reason.to_string());
                tracing::info!(status = status.as_u16(), reason, uri = %parts.uri, client = %conn.remote, "request answered by ginx");
                respond::outcome_response(&routed.outcome, settings)
            }
            _ => respond::outcome_response(&routed.outcome, settings),
        };
        let rules = routed
            .location
            .map(|l| &l.headers)
            .unwrap_or(&routed.server.headers);
        let ctx = routed.var_context(&info);
        static NO_LOCATION: std::sync::LazyLock<Arc<str>> =
            std::sync::LazyLock::new(|| Arc::from("-"));
        let server = routed.server;
        let counters = match routed.location {
            Some(l) => l
                .counters
                .get_or_init(|| metrics.status_counters(&server.label, &l.label)),
            None => server
                .counters
                .get_or_init(|| metrics.status_counters(&server.label, &NO_LOCATION)),
        };
        counters.count(response.status().as_u16());
        // A 101's Connection says "upgrade": it must not be turned into "close".
        // After a malformed request (400) the connection is not trusted: close it, as nginx.
        let close = (close
            || response.status() == http::StatusCode::BAD_REQUEST
            || conn_state.framing_error(request_number).is_some())
            && response.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        respond::finish_headers(
            &mut response,
            settings,
            Some(rules),
            Some(&ctx),
            close,
            fields_in_map,
        );
        Some(response)
    }
}
