//! Forwarding a request to its upstream group: pick a peer with the group's
//! balancer, send the request over a pooled keep-alive connection with the
//! spec's header rules, stream both bodies with backpressure, and on failure
//! go on to the next peer as `next_upstream` allows, never to one already
//! tried and never re-sending a non-idempotent request unless told to.
//!
//! Request bodies up to [`REPLAYABLE_BODY`] bytes with a Content-Length are
//! read first, so that a failed attempt can be repeated on another peer (as
//! nginx buffers bodies); larger and chunked bodies stream through in one
//! attempt.

use crate::balance::{Balancer, PeerRegistry, PeerState, PickInput};
use crate::compile::upstream::{Balance, NextUpstream, Protocol};
use crate::compile::{Config, Location, Upstream};
use crate::route::fields::{is_named, visible_str, Fields};
use crate::route::{RequestInfo, Routed, UpstreamUri};
use crate::serve::body::{ClientBody, IdleTimer};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

mod h1;
/// For the server side's head parse and writing (`serve::h1`).
pub(crate) use h1::parse_decimal;
pub use h1::PassedFields;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bodies this size or smaller (with a Content-Length) are read before the
/// first attempt, so that a retry can send them again.
pub const REPLAYABLE_BODY: u64 = 64 * 1024;

/// The pooled client of plain upstreams (see [`PeerAliases`]).
pub type UpstreamClient = Client<AliasConnector, RequestBody>;

/// Short names for the peers of a plain HTTP/1 pool. hyper-util's pool finds
/// a connection by the request's scheme and authority, hashed byte by byte
/// with SipHash: about 1,400 instructions a lookup for `127.0.0.1:8080`,
/// two lookups a request, 5 % of a small proxied request. Requests to such a
/// group carry an alias instead (`0`, `1`, ...: one per address the pool has
/// seen, never reused, so that a reload that keeps the pool keeps what each
/// alias means), and [`AliasConnector`] dials the address it stands for.
#[derive(Default)]
pub struct PeerAliases(std::sync::RwLock<Vec<std::net::SocketAddr>>);

impl PeerAliases {
    /// The peer's number in this pool (also its slot in the native pool).
    fn slot(&self, addr: std::net::SocketAddr) -> usize {
        let mut addrs = self.0.write().unwrap_or_else(|e| e.into_inner());
        addrs.iter().position(|a| *a == addr).unwrap_or_else(|| {
            addrs.push(addr);
            addrs.len() - 1
        })
    }

    fn alias(&self, addr: std::net::SocketAddr) -> http::uri::Authority {
        http::uri::Authority::try_from(self.slot(addr).to_string())
            .expect("digits are an authority")
    }

    /// The address `host` stands for; None when it is not an alias (a
    /// socket address is never digits alone).
    fn addr(&self, host: &str) -> Option<std::net::SocketAddr> {
        let i: usize = host.parse().ok()?;
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(i)
            .copied()
    }
}

/// hyper-util's HttpConnector, dialling the address a pool alias stands for
/// (a real address is dialled as it is).
#[derive(Clone)]
pub struct AliasConnector {
    inner: HttpConnector,
    aliases: Arc<PeerAliases>,
}

impl tower_service::Service<Uri> for AliasConnector {
    type Response = <HttpConnector as tower_service::Service<Uri>>::Response;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let uri = match uri.host().and_then(|h| self.aliases.addr(h)) {
            Some(addr) => match Uri::try_from(format!("http://{addr}")) {
                Ok(real) => real,
                Err(e) => return Box::pin(std::future::ready(Err(e.into()))),
            },
            None => uri,
        };
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// What forwarding needs of one upstream group at run time.
pub struct UpstreamRuntime {
    pub upstream: Arc<Upstream>,
    pub balancer: Arc<Balancer>,
    pub client: UpstreamClient,
    /// The native HTTP/1.1 client's idle connections (see [`h1`]), and each
    /// peer's slot in it (index = peer index).
    native: Arc<h1::Pool>,
    slots: Vec<usize>,
    /// For `proxy_pass: https://`: the same pool settings over TLS, for the
    /// native client and for hyper-util's.
    native_tls: Option<Arc<h1::Pool>>,
    pub tls_client: Option<TlsUpstreamClient>,
    /// A location proxies to this group with `https://` (health checks use TLS then).
    pub used_with_https: bool,
    /// Each peer's address as a URI authority, made once (index = peer index).
    authorities: Vec<http::uri::Authority>,
    /// What requests through `client` name each peer by: its alias in a
    /// plain HTTP/1 pool, its address for HTTP/2 (where the authority is
    /// sent as `:authority`).
    pool_authorities: Vec<http::uri::Authority>,
    /// Its response-time histogram, looked up once rather than per request.
    pub response_time: std::sync::OnceLock<prometheus_client::metrics::histogram::Histogram>,
}

pub type TlsUpstreamClient = Client<crate::tls::UpstreamConnector, RequestBody>;

/// Pools (clients) by upstream name and the settings that shape them, so a
/// reload that keeps a group keeps its open connections, plain and TLS.
#[derive(Default)]
pub struct ClientRegistry {
    clients: Mutex<HashMap<ClientKey, Pools>>,
}

/// One group's pools, plain and TLS, and the aliases of the plain one.
#[derive(Clone)]
struct Pools {
    plain: UpstreamClient,
    native: Arc<h1::Pool>,
    native_tls: Option<Arc<h1::Pool>>,
    tls: Option<TlsUpstreamClient>,
    aliases: Arc<PeerAliases>,
}

/// What a pool depends on; for TLS, the settings and the contents of the
/// files they name (a new CA or client certificate means a new pool).
type ClientKey = (Arc<str>, usize, Duration, Duration, bool, String);

fn client_key(u: &Upstream) -> ClientKey {
    let files: Vec<u32> = [&u.tls.ca, &u.tls.certificate, &u.tls.key]
        .into_iter()
        .flatten()
        .map(|p| crc32fast::hash(&std::fs::read(p).unwrap_or_default()))
        .collect();
    let tls = format!("{:?}{files:?}", u.tls);
    (
        u.name.clone(),
        u.keepalive,
        u.keepalive_timeout,
        u.connect_timeout,
        u.protocol == Protocol::Http2,
        tls,
    )
}

/// A pooled client over `connector` with the group's pool settings.
fn pool_client<C>(u: &Upstream, connector: C) -> Client<C, RequestBody>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(u.keepalive)
        .pool_idle_timeout(u.keepalive_timeout)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .http2_only(u.protocol == Protocol::Http2)
        // forward() names the Host (the URI may hold a pool alias).
        .set_host(false)
        .build(connector)
}

impl UpstreamRuntime {
    /// What a request through `client` names peer `i` by (its pool key).
    pub fn pool_authority(&self, i: usize) -> &http::uri::Authority {
        &self.pool_authorities[i]
    }
}

impl ClientRegistry {
    /// The run-time side of every upstream of `config`; peer state and pools
    /// of groups that were there before are carried over.
    pub fn runtimes(&self, config: &Config, peers: &PeerRegistry) -> Vec<UpstreamRuntime> {
        let balancers = peers.build(&config.upstreams);
        let https_groups: std::collections::HashSet<&str> = config
            .listeners
            .iter()
            .flat_map(|l| l.servers.iter())
            .flat_map(|s| s.locations.iter())
            .filter_map(|l| match &l.action {
                crate::compile::Action::Proxy(p) if p.https => Some(p.proxy_host()),
                _ => None,
            })
            .collect();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept = HashMap::new();
        let runtimes = config
            .upstreams
            .iter()
            .zip(balancers)
            .map(|(u, balancer)| {
                let key = client_key(u);
                let pools = clients.remove(&key).unwrap_or_else(|| {
                    let mut connector = HttpConnector::new();
                    connector.set_connect_timeout(Some(u.connect_timeout));
                    connector.set_nodelay(true);
                    let aliases = Arc::new(PeerAliases::default());
                    let connector = AliasConnector {
                        inner: connector,
                        aliases: aliases.clone(),
                    };
                    let tls = u.tls_client.as_ref().map(|(config, name)| {
                        pool_client(
                            u,
                            crate::tls::UpstreamConnector::new(
                                config.clone(),
                                name.clone(),
                                u.connect_timeout,
                            ),
                        )
                    });
                    let native_pool = |tls| {
                        h1::Pool::new(u.keepalive, u.keepalive_timeout, u.connect_timeout, tls)
                    };
                    let native_tls = u.tls_client.as_ref().map(|(config, name)| {
                        native_pool(Some(h1::TlsTarget {
                            connector: tokio_rustls::TlsConnector::from(config.clone()),
                            name: name.clone(),
                        }))
                    });
                    Pools {
                        plain: pool_client(u, connector),
                        native: native_pool(None),
                        native_tls,
                        tls,
                        aliases,
                    }
                });
                kept.insert(key, pools.clone());
                let used_with_https = https_groups.contains(&*u.name);
                let authorities: Vec<http::uri::Authority> = balancer
                    .peers
                    .iter()
                    .map(|p| {
                        http::uri::Authority::try_from(p.addr.to_string())
                            .expect("a socket address is an authority")
                    })
                    .collect();
                let pool_authorities = match u.protocol {
                    Protocol::Http1 => balancer
                        .peers
                        .iter()
                        .map(|p| pools.aliases.alias(p.addr))
                        .collect(),
                    Protocol::Http2 => authorities.clone(),
                };
                let slots = balancer
                    .peers
                    .iter()
                    .map(|p| pools.aliases.slot(p.addr))
                    .collect();
                UpstreamRuntime {
                    upstream: u.clone(),
                    balancer,
                    client: pools.plain,
                    native: pools.native,
                    native_tls: pools.native_tls,
                    slots,
                    tls_client: pools.tls,
                    used_with_https,
                    authorities,
                    pool_authorities,
                    response_time: Default::default(),
                }
            })
            .collect();
        *clients = kept;
        runtimes
    }
}

/// Why a request could not be forwarded: the status ginx answers and why.
#[derive(Debug)]
pub struct ForwardError {
    pub status: StatusCode,
    pub reason: String,
}

impl ForwardError {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        ForwardError {
            status,
            reason: reason.into(),
        }
    }
}

/// What the access log and the response need to know of the attempt that answered.
#[derive(Debug, Default, Clone)]
pub struct UpstreamReport {
    /// Which of the generation's upstream groups was used.
    pub group: Option<usize>,
    pub addr: Option<std::net::SocketAddr>,
    pub status: Option<u16>,
    pub response_time: Option<Duration>,
}

/// Forward one request. `upstream_uri` is the path and query to send.
pub async fn forward(
    runtimes: &[UpstreamRuntime],
    routed: &Routed<'_>,
    info: &RequestInfo<'_>,
    body: Option<ClientBody>,
    client_upgrade: Option<OnUpgrade>,
    upstream_uri: &UpstreamUri,
    report: &mut UpstreamReport,
) -> Result<Response<crate::serve::body::ResponseBody>, ForwardError> {
    let (Some(location), Some(pass)) = (routed.location, routed.proxy_pass()) else {
        return Err(ForwardError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "not a proxying location",
        ));
    };
    let Some((group, rt)) = runtimes
        .iter()
        .enumerate()
        .find(|(_, r)| *r.upstream.name == *pass.proxy_host())
    else {
        return Err(ForwardError::new(
            StatusCode::BAD_GATEWAY,
            format!("no upstream {:?} in this configuration", pass.proxy_host()),
        ));
    };
    report.group = Some(group);
    let upstream = &rt.upstream;
    let read_timeout = location.proxy_read_timeout.unwrap_or(upstream.read_timeout);
    let send_timeout = location.proxy_send_timeout.unwrap_or(upstream.send_timeout);

    // Fields read in place: the request came from ginx's own HTTP/1 side,
    // which writes an upstream's fields from its head (`h1::PassedFields`);
    // the other writers want a map, built as the head is read.
    let pass_fields = matches!(info.headers, Fields::Head(_));
    let mut body = read_request_body(info, location, body).await?;
    let upgrade = client_upgrade.and_then(|on| upgrade_protocol(info.headers).map(|p| (on, p)));
    let protocol = upgrade.as_ref().map(|(_, p)| p.clone());
    // A body of unknown length (HTTP/2 without content-length) goes to an
    // HTTP/1 server chunked. Said explicitly: hyper's client sends such a
    // body on a GET or HEAD as no body at all.
    let chunked_up = upstream.protocol == Protocol::Http1
        && matches!(body, HeldBody::Streaming(..))
        && !info.headers.contains(&header::CONTENT_LENGTH);
    let build_headers = || {
        let mut headers = upstream_headers(info, routed, location);
        if chunked_up {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
        }
        if let Some(protocol) = &protocol {
            // WebSocket and other upgrades: the two hop-by-hop headers go up as sent.
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        headers
    };
    // HTTP/1 (plain, or TLS with usable settings) with a body held whole
    // and no upgrade: the native client, which writes the head itself
    // (write_upstream_request).
    let native_pool = match pass.https {
        false => Some(&rt.native),
        true => rt.native_tls.as_ref(),
    };
    let native = native_pool.is_some()
        && upstream.protocol == Protocol::Http1
        && upgrade.is_none()
        && body.replayable();
    // For hyper-util: the first attempt takes these; a retry builds them
    // again (rare, and cheaper than cloning on every request).
    let mut first_headers = (!native).then(build_headers);
    // A request without a Host (HTTP/1.0) goes to an HTTP/1 server with the
    // server's address as its Host.
    let needs_host = upstream.protocol == Protocol::Http1
        && first_headers
            .as_ref()
            .is_some_and(|h| !h.contains_key(header::HOST));
    let mut upgrade = upgrade.map(|(on, _)| on);
    let path_and_query = match upstream_uri.to_path_and_query() {
        Ok(p) => p,
        Err(e) => {
            return Err(ForwardError::new(
                StatusCode::BAD_REQUEST,
                format!("cannot build the upstream URI: {e}"),
            ))
        }
    };
    let scheme = if pass.https {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    };
    let hash_key = match (&upstream.balance, &upstream.hash_key) {
        (Balance::Hash, Some(t)) => routed.var_context(info).expand(t),
        _ => Vec::new(),
    };
    let idempotent = is_idempotent(info.method);
    let client_trailers = accepts_trailers(info.headers);
    let filter = h1::ResponseFilter {
        hide: &location.headers.proxy_hide_header,
        keep_trailer: client_trailers,
        pass_fields,
    };
    // Sized once for what usually goes up: the client's head and what ginx
    // adds to it (growing an empty Vec costs four times the allocation).
    let mut wire = Vec::with_capacity(match native {
        true => info.headers.head_len().unwrap_or(1024) + upstream_uri.as_bytes().len() + 256,
        false => 0,
    });
    let peers = rt.balancer.peers.len();
    let max_tries = match upstream.next_upstream_tries {
        0 => peers,
        n => n.min(peers),
    }
    .max(1);

    // On the stack: a request tries one server, seldom more than a few.
    let mut tried: smallvec::SmallVec<[usize; 4]> = smallvec::SmallVec::new();
    let mut last_error: Option<ForwardError> = None;
    while tried.len() < max_tries {
        let Some(i) = rt.balancer.pick(&PickInput {
            client: info.remote.ip(),
            hash_key: &hash_key,
            tried: &tried,
        }) else {
            break;
        };
        tried.push(i);
        let peer = &rt.balancer.peers[i];
        report.addr = Some(peer.addr);
        let in_flight = InFlight::new(&peer.state);
        let started = Instant::now();
        let result = if let Some(pool) = native_pool.filter(|_| native) {
            wire.clear();
            write_upstream_request(
                &mut wire,
                info,
                routed,
                location,
                path_and_query.as_str(),
                rt.authorities[i].as_str(),
                body.held(),
            );
            let outgoing = h1::Outgoing {
                bytes: &wire,
                head_request: info.method == Method::HEAD,
                may_resend: idempotent || upstream.next_upstream.non_idempotent,
            };
            h1::send(
                pool,
                rt.slots[i],
                peer.addr,
                &outgoing,
                &filter,
                started,
                send_timeout,
                read_timeout,
            )
            .await
            .map(|(parts, body)| Response::from_parts(parts, UpstreamBody::Native(body)))
        } else {
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(scheme.clone());
            uri.authority = Some(match pass.https {
                true => rt.authorities[i].clone(),
                false => rt.pool_authorities[i].clone(),
            });
            uri.path_and_query = Some(path_and_query.clone());
            let Ok(uri) = Uri::from_parts(uri) else {
                return Err(ForwardError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot build the upstream URI",
                ));
            };
            let (attempt_body, progress) = body.for_attempt();
            let mut request = Request::new(attempt_body);
            *request.method_mut() = info.method.clone();
            *request.uri_mut() = uri;
            *request.headers_mut() = first_headers.take().unwrap_or_else(build_headers);
            if needs_host {
                // As hyper-util would from the URI, which may hold an alias.
                if let Ok(host) = HeaderValue::from_str(rt.authorities[i].as_str()) {
                    request.headers_mut().insert(header::HOST, host);
                }
            }
            let progress = progress.as_deref();
            let sent = match (&rt.tls_client, pass.https) {
                (_, false) => {
                    send(
                        &rt.client,
                        request,
                        started,
                        progress,
                        send_timeout,
                        read_timeout,
                    )
                    .await
                }
                (Some(tls), true) => {
                    send(tls, request, started, progress, send_timeout, read_timeout).await
                }
                (None, true) => {
                    return Err(ForwardError::new(
                        StatusCode::BAD_GATEWAY,
                        format!("upstream {:?} has no usable TLS settings", upstream.name),
                    ))
                }
            };
            sent.map(|r| r.map(UpstreamBody::Hyper))
        };
        report.response_time = Some(started.elapsed());
        let retry_body_ok = body.replayable();
        match result {
            Ok(response) => {
                let status = response.status();
                report.status = Some(status.as_u16());
                if status_listed(&upstream.next_upstream, status) {
                    peer.record_failure();
                    let may_retry =
                        retry_body_ok && (idempotent || upstream.next_upstream.non_idempotent);
                    if may_retry && tried.len() < max_tries {
                        tracing::warn!(upstream = %upstream.name, peer = %peer.addr, status = status.as_u16(), "upstream answered a status listed in next_upstream; trying the next server");
                        continue;
                    }
                } else {
                    peer.record_success();
                }
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client) = upgrade.take() {
                        return Ok(splice_upgrade(response, client, location, in_flight));
                    }
                }
                return Ok(downstream_response(
                    response,
                    location,
                    read_timeout,
                    in_flight,
                    client_trailers,
                ));
            }
            Err(failure) => {
                if body.limit_exceeded() {
                    return Err(ForwardError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request body over client_max_body_size",
                    ));
                }
                if let Some(e) = body.client_error() {
                    return Err(e);
                }
                peer.record_failure();
                let listed = match failure.kind {
                    FailureKind::Timeout => upstream.next_upstream.timeout,
                    FailureKind::Error => upstream.next_upstream.error,
                };
                let resend_ok =
                    !failure.sent || idempotent || upstream.next_upstream.non_idempotent;
                tracing::error!(
                    upstream = %upstream.name,
                    peer = %peer.addr,
                    attempt = tried.len(),
                    "upstream failed: {}", failure.reason
                );
                let status = if failure.kind == FailureKind::Timeout {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                last_error = Some(ForwardError::new(
                    status,
                    format!("{} {}", peer.addr, failure.reason),
                ));
                if !(listed && resend_ok && retry_body_ok) {
                    break;
                }
            }
        }
    }
    Err(last_error.unwrap_or_else(|| {
        ForwardError::new(
            StatusCode::BAD_GATEWAY,
            format!("no live upstream server in {:?}", upstream.name),
        )
    }))
}

fn status_listed(next: &NextUpstream, status: StatusCode) -> bool {
    match status.as_u16() {
        500 => next.http_500,
        502 => next.http_502,
        503 => next.http_503,
        504 => next.http_504,
        429 => next.http_429,
        _ => false,
    }
}

/// Counts a request in flight on a peer until dropped (with the response body).
pub struct InFlight(Arc<PeerState>);

impl InFlight {
    fn new(state: &Arc<PeerState>) -> Self {
        state.in_flight.fetch_add(1, Relaxed);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum FailureKind {
    Timeout,
    Error,
}

struct Failure {
    kind: FailureKind,
    /// False when the connection could not be made: nothing was sent, so
    /// even a non-idempotent request may go to the next server.
    sent: bool,
    reason: String,
}

/// Send and wait for the response head. While a streamed body is still
/// going up, `send_timeout` bounds each pause in it; once it is sent (or when
/// there is none), `read_timeout` bounds the wait for the head.
async fn send<C>(
    client: &Client<C, RequestBody>,
    request: Request<RequestBody>,
    start: Instant,
    progress: Option<&BodyProgress>,
    send_timeout: Duration,
    read_timeout: Duration,
) -> Result<Response<Incoming>, Failure>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let response = client.request(request);
    tokio::pin!(response);
    loop {
        let deadline = match progress {
            Some(p) if !p.done.load(Relaxed) => p.last_activity(start) + send_timeout,
            Some(p) => p.last_activity(start) + read_timeout,
            None => start + read_timeout,
        };
        tokio::select! {
            result = &mut response => {
                                return result.map_err(|e| {
                    let reason = describe_client_error(&e);
                    // A connect timeout is a timeout (504), as nginx; nothing was sent.
                                        let timed_out = ["timeout", "timed out", "deadline has elapsed"].iter().any(|t| reason.contains(t));
                    let kind = if timed_out { FailureKind::Timeout } else { FailureKind::Error };
                    Failure { kind, sent: !e.is_connect(), reason }
                });
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                if Instant::now() >= deadline {
                    let sending = progress.is_some_and(|p| !p.done.load(Relaxed));
                    let what = if sending { "send_timeout while sending the request body" } else { "read_timeout waiting for the response head" };
                                        return Err(Failure { kind: FailureKind::Timeout, sent: true, reason: what.to_string() });
                }
            }
        }
    }
}

/// The error chain in one line: "connection refused", "connection reset", ...
fn describe_client_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.dedup();
    parts.join(": ")
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded in either direction.
/// A static, not a const: a const array would be built and dropped at each use.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// What a client's field is to the native client's writer, by its name
/// (in any case): one match on the length and a comparison or two, where a
/// test of each name the writer cares about was a dozen comparisons a field.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FieldKind {
    ContentLength,
    TransferEncoding,
    Host,
    Te,
    Expect,
    Connection,
    /// One of [`HOP_BY_HOP`] other than Connection, TE and Transfer-Encoding.
    HopByHop,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    Other,
}

impl FieldKind {
    #[inline(always)]
    fn of(name: &[u8]) -> FieldKind {
        let is = |wanted: &[u8]| name.eq_ignore_ascii_case(wanted);
        match name.len() {
            2 if is(b"te") => FieldKind::Te,
            4 if is(b"host") => FieldKind::Host,
            6 if is(b"expect") => FieldKind::Expect,
            7 if is(b"trailer") || is(b"upgrade") => FieldKind::HopByHop,
            10 if is(b"connection") => FieldKind::Connection,
            10 if is(b"keep-alive") => FieldKind::HopByHop,
            14 if is(b"content-length") => FieldKind::ContentLength,
            15 if is(b"x-forwarded-for") => FieldKind::XForwardedFor,
            16 if is(b"proxy-connection") => FieldKind::HopByHop,
            16 if is(b"x-forwarded-host") => FieldKind::XForwardedHost,
            17 if is(b"transfer-encoding") => FieldKind::TransferEncoding,
            17 if is(b"x-forwarded-proto") => FieldKind::XForwardedProto,
            _ => FieldKind::Other,
        }
    }

    /// Hop-by-hop ([`HOP_BY_HOP`]).
    fn hop_by_hop(self) -> bool {
        matches!(
            self,
            FieldKind::HopByHop
                | FieldKind::Connection
                | FieldKind::Te
                | FieldKind::TransferEncoding
        )
    }
}

/// Remove hop-by-hop headers and every header that Connection names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in connection_options(headers).iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// The header names that Connection lists. Host is never one: a client
/// cannot make ginx drop it.
fn connection_options(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| *n != header::HOST)
        .collect()
}

/// The field names that a request's Connection fields list, read where
/// they stand: `connection_options` without a HeaderName made per token
/// (a copy for each that is not a standard name, `close` among them) or a
/// list to hold them: about 700 instructions for a `Connection: close`.
/// The one Connection field most requests have is found once, not at each
/// field asked about, and its tokens are compared as bytes.
enum ConnectionOptions<'a> {
    /// The only Connection field holds one token (`close`, `keep-alive`:
    /// most that have one).
    Token(&'a [u8]),
    /// The value of the only Connection field (empty without one).
    One(&'a [u8]),
    /// Several Connection fields: each is read.
    Many(Fields<'a>),
}

impl<'a> ConnectionOptions<'a> {
    /// From what a pass over the fields saw: the fields are not searched again.
    fn seen(seen: &SeenFields<'a>, headers: Fields<'a>) -> Self {
        match seen.connections {
            0 | 1 => match seen.connection.unwrap_or_default() {
                one if !one.contains(&b',') => ConnectionOptions::Token(one.trim_ascii()),
                list => ConnectionOptions::One(list),
            },
            _ => ConnectionOptions::Many(headers),
        }
    }

    /// `name` (in any case) is among them (Host never is: it is not the
    /// client's to drop).
    fn names(&self, name: &[u8]) -> bool {
        let lists = |value: &[u8]| {
            value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(name))
        };
        !is_named(name, b"host")
            && match self {
                ConnectionOptions::Token(token) => token.eq_ignore_ascii_case(name),
                ConnectionOptions::One(value) => lists(value),
                ConnectionOptions::Many(fields) => fields.get_all(&header::CONNECTION).any(lists),
            }
    }
}

/// An upstream response's headers as the client gets them: without the
/// hop-by-hop ones and those Connection names, Server and Date (ginx sends
/// its own) and `proxy_hide_header`. One pass over the names finds which
/// are there, so that each absent one costs no hashed lookup (a response
/// has few headers; most of these are rarely among them).
fn clean_response_headers(headers: &mut HeaderMap, location: &Location) {
    let hide = &location.headers.proxy_hide_header;
    let mut doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| hidden_response_header(k, hide))
        .cloned()
        .collect();
    if doomed.contains(&header::CONNECTION) {
        doomed.extend(connection_options(headers));
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// A response header the client never gets from the upstream: hop-by-hop,
/// Server and Date (ginx sends its own), or named by `proxy_hide_header`.
/// The fields a Connection header names are dropped too, by the callers.
fn hidden_response_header(name: &HeaderName, hide: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(name)
        || *name == header::SERVER
        || *name == header::DATE
        || hide.contains(name)
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The request headers sent upstream: the client's, less hop-by-hop ones;
/// Host unchanged (from `:authority` for HTTP/2); X-Forwarded-For with the
/// client appended; X-Forwarded-Proto and -Host; then `proxy_set_header`
/// ("" removes). Public for the fuzz target that re-parses what is sent.
pub fn upstream_headers(
    info: &RequestInfo<'_>,
    routed: &Routed<'_>,
    location: &Location,
) -> HeaderMap {
    let mut headers = info.headers.to_map();
    let accepts_trailers = accepts_trailers(info.headers);
    // Most requests carry none of the headers removed below: one pass over
    // the names finds out, and spares a hashed removal per candidate.
    let needs_cleaning = headers
        .keys()
        .any(|k| HOP_BY_HOP.contains(k) || k == header::EXPECT || k.as_str().contains('_'));
    if needs_cleaning {
        strip_hop_by_hop(&mut headers);
        // As nginx: headers with `_` are dropped; CGI-style servers fold `_`
        // and `-`, so `Content_Length` could pass for Content-Length there.
        let underscored: Vec<HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().contains('_'))
            .cloned()
            .collect();
        for name in underscored {
            headers.remove(name);
        }
        // ginx answers `Expect: 100-continue` itself; the upstream gets the body anyway.
        headers.remove(header::EXPECT);
    }
    // A chunked request body goes up chunked (serve refuses any other
    // Transfer-Encoding). Its length is unknown, and hyper's client frames a
    // GET, HEAD or CONNECT of unknown length as bodiless and drops the body;
    // naming the coding makes it send the chunks (other methods were chunked
    // anyway; an HTTP/2 upstream drops the header). Found by fuzz/
    // upstream_request: fuzz/regressions/upstream_request/get-chunked-body.
    if info.headers.contains(&header::TRANSFER_ENCODING) {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    // An absolute-form target's authority is the request's host (RFC 9112
    // 3.2.2): the Host sent up is the one the request was routed by.
    if info.version == http::Version::HTTP_11 || info.version == http::Version::HTTP_10 {
        if let Some(v) = info
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(header::HOST, v);
        }
    }
    if accepts_trailers {
        // gRPC needs it, and trailers can only come back if it goes up.
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if !headers.contains_key(header::HOST) {
        if let Some(v) = info
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            headers.insert(header::HOST, v);
        }
    }
    let mut xff = Vec::with_capacity(48);
    for v in info.headers.get_all(&X_FORWARDED_FOR) {
        xff.extend_from_slice(v);
        xff.extend_from_slice(b", ");
    }
    write_ip(&mut xff, info.remote.ip());
    if let Ok(v) = HeaderValue::from_bytes(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(info.scheme()),
    );
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    if !location.headers.proxy_set_header.is_empty() {
        let ctx = routed.var_context(info);
        for (name, template) in location.headers.proxy_set_header.iter() {
            let value = ctx.expand(template);
            if value.is_empty() {
                headers.remove(name);
            } else if let Ok(v) = HeaderValue::from_bytes(&value) {
                headers.insert(name.clone(), v);
            }
        }
    }
    headers
}

/// The request as the native client sends it: the head [`upstream_headers`]
/// would build (the same fields and values; order aside), written straight
/// out rather than through a copy of the client's header map, then the
/// body. That copy and the inserts into it were a tenth of a small proxied
/// request's instructions. `fallback_host` (the peer's address) is the Host
/// of a request that ends up with none. fuzz/checks.rs holds the two to
/// the same output.
pub fn write_upstream_request(
    out: &mut Vec<u8>,
    info: &RequestInfo<'_>,
    routed: &Routed<'_>,
    location: &Location,
    target: &str,
    fallback_host: &str,
    body: &[u8],
) {
    let client = info.headers;
    // proxy_set_header first: a value replaces the client's field, "" removes
    // it, and a value that is not a valid field value changes nothing.
    let set: Vec<(&HeaderName, Vec<u8>)> = if location.headers.proxy_set_header.is_empty() {
        Vec::new()
    } else {
        let ctx = routed.var_context(info);
        location
            .headers
            .proxy_set_header
            .iter()
            .map(|(name, template)| (name, ctx.expand(template)))
            .filter(|(_, v)| v.iter().all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t'))
            .collect()
    };
    // A client's field (any case), and one of ginx's own, set by the
    // configuration.
    let is_set = |name: &[u8]| {
        set.iter()
            .any(|(n, _)| is_named(name, n.as_str().as_bytes()))
    };
    let own_is_set = |name: &HeaderName| set.iter().any(|(n, _)| *n == name);
    let seen = SeenFields::of(client);
    let cleaning = seen.cleaning;
    // Looked up only when a hop-by-hop field is there (Connection is one).
    let options = cleaning.then(|| ConnectionOptions::seen(&seen, client));
    let option = |name: &[u8]| options.as_ref().is_some_and(|o| o.names(name));
    let room = seen.room
        + set
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    let mut w = h1::HeadWriter::new(out, info.method, target, room + 192 + body.len());
    let mut had_length = false;
    for (name, value) in client.iter() {
        let kind = FieldKind::of(name);
        if kind == FieldKind::ContentLength {
            had_length = !(is_set(name) || option(name));
            continue;
        }
        let dropped = (cleaning
            && (kind.hop_by_hop()
                || kind == FieldKind::Expect
                || option(name)
                || name.contains(&b'_')))
            || matches!(
                kind,
                FieldKind::TransferEncoding
                    | FieldKind::Host
                    | FieldKind::XForwardedFor
                    | FieldKind::XForwardedProto
                    | FieldKind::XForwardedHost
            )
            || is_set(name);
        if !dropped {
            w.field(name, value);
        }
    }
    // Host: an absolute-form target's authority, else the client's Host,
    // else HTTP/2's :authority.
    let absolute = matches!(
        info.version,
        http::Version::HTTP_11 | http::Version::HTTP_10
    )
    .then(|| info.uri.authority())
    .flatten();
    let mut host_written = false;
    let first_host: Option<&[u8]> = match absolute {
        Some(a) => Some(a.as_str().as_bytes()),
        None => seen
            .host
            .or_else(|| info.uri.authority().map(|a| a.as_str().as_bytes())),
    };
    if !own_is_set(&header::HOST) {
        match (absolute, seen.hosts) {
            (None, 2..) => {
                for v in client.get_all(&header::HOST) {
                    w.field(b"host", v);
                }
            }
            _ => {
                if let Some(h) = first_host {
                    w.field(b"host", h);
                }
            }
        }
        host_written = first_host.is_some();
    }
    if seen.te && accepts_trailers(client) && !own_is_set(&header::TE) {
        w.field(b"te", b"trailers");
    }
    if !own_is_set(&X_FORWARDED_FOR) {
        w.field_with(b"x-forwarded-for", |out| {
            if seen.forwarded_for {
                for v in client.get_all(&X_FORWARDED_FOR) {
                    out.extend_from_slice(v);
                    out.extend_from_slice(b", ");
                }
            }
            write_ip(out, info.remote.ip());
        });
    }
    if !own_is_set(&X_FORWARDED_PROTO) {
        w.field(b"x-forwarded-proto", info.scheme().as_bytes());
    }
    if let (Some(h), false) = (first_host, own_is_set(&X_FORWARDED_HOST)) {
        w.field(b"x-forwarded-host", h);
    }
    for (name, value) in &set {
        if value.is_empty() {
            continue; // removed
        }
        if **name == header::CONTENT_LENGTH {
            had_length = true;
        } else if **name != header::TRANSFER_ENCODING {
            w.field(name.as_str().as_bytes(), value);
        }
        host_written |= **name == header::HOST;
    }
    if !host_written {
        w.field(b"host", fallback_host.as_bytes());
    }
    w.finish(body, had_length);
}

/// What one pass over a client's request fields finds, so that the
/// fields a request usually lacks cost no hashed lookup each.
struct SeenFields<'a> {
    /// Bytes the fields take as `name: value\r\n`.
    room: usize,
    /// A hop-by-hop field, Expect, or a name with `_`: some are dropped.
    cleaning: bool,
    host: Option<&'a [u8]>,
    hosts: usize,
    te: bool,
    forwarded_for: bool,
    /// The first Connection field's value, and how many there are.
    connection: Option<&'a [u8]>,
    connections: usize,
}

impl<'a> SeenFields<'a> {
    fn of(client: Fields<'a>) -> Self {
        let mut seen = SeenFields {
            room: 0,
            cleaning: false,
            host: None,
            hosts: 0,
            te: false,
            forwarded_for: false,
            connection: None,
            connections: 0,
        };
        for (name, value) in client.iter() {
            seen.room += name.len() + value.len() + 4;
            let kind = FieldKind::of(name);
            if kind == FieldKind::Host {
                seen.hosts += 1;
                seen.host.get_or_insert(value);
                continue;
            }
            if kind == FieldKind::Connection {
                seen.connections += 1;
                seen.connection.get_or_insert(value);
            }
            seen.te |= kind == FieldKind::Te;
            seen.forwarded_for |= kind == FieldKind::XForwardedFor;
            seen.cleaning |= kind.hop_by_hop() || kind == FieldKind::Expect || name.contains(&b'_');
        }
        seen
    }
}

/// `ip` in its usual text form, appended to `out`; IPv4 by hand, as
/// formatting machinery showed in profiles of the request path.
fn write_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            // Into a buffer of the longest text's size, then one copy: a
            // push a digit checked the vector's room each time (14 of a
            // request's code lines).
            let mut text = [b'.'; 15];
            let mut len = 0;
            for octet in v4.octets() {
                if octet >= 100 {
                    text[len] = b'0' + octet / 100;
                    len += 1;
                }
                if octet >= 10 {
                    text[len] = b'0' + octet / 10 % 10;
                    len += 1;
                }
                text[len] = b'0' + octet % 10;
                len += 2; // past the dot that follows
            }
            out.extend_from_slice(&text[..len - 1]);
        }
        std::net::IpAddr::V6(_) => out.extend_from_slice(ip.to_string().as_bytes()),
    }
}

/// The upstream's response as the client gets it: hop-by-hop headers,
/// `proxy_hide_header`, and the upstream's own Server and Date removed (ginx
/// sets its own, as nginx does); the body streams with `read_timeout` between reads.
fn downstream_response(
    response: Response<UpstreamBody>,
    location: &Location,
    read_timeout: Duration,
    in_flight: InFlight,
    client_accepts_trailers: bool,
) -> Response<crate::serve::body::ResponseBody> {
    let (mut parts, body) = response.into_parts();
    // The native client filtered the headers as it parsed them.
    if let UpstreamBody::Hyper(_) = body {
        let announced = match client_accepts_trailers {
            true => parts.headers.get(header::TRAILER).cloned(),
            false => None,
        };
        clean_response_headers(&mut parts.headers, location);
        if let Some(t) = announced {
            // The announcement is what lets hyper send the trailer fields on HTTP/1.1.
            parts.headers.insert(header::TRAILER, t);
        }
    }
    let body = crate::serve::body::ResponseBody::upstream(body, read_timeout, in_flight);
    Response::from_parts(parts, body)
}

/// Did the client say `TE: trailers` (gRPC clients do, over HTTP/2 too)?
fn accepts_trailers(headers: Fields<'_>) -> bool {
    // Few requests have a TE (`contains` passes over the names).
    headers.contains(&header::TE)
        && headers
            .get_all(&header::TE)
            .filter_map(visible_str)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// The protocol a request asks to upgrade to (`Connection: upgrade` plus
/// `Upgrade`). Public for the fuzz target that rebuilds upstream requests.
pub fn upgrade_protocol(headers: Fields<'_>) -> Option<HeaderValue> {
    let asks = headers
        .get_all(&header::CONNECTION)
        .filter_map(visible_str)
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(&header::UPGRADE))
        .flatten()
        .and_then(|v| HeaderValue::from_bytes(v).ok())
}

/// Whether a request asks for an upgrade (so the handler keeps its upgrade hook).
pub fn wants_upgrade(headers: Fields<'_>) -> bool {
    upgrade_protocol(headers).is_some()
}

/// The upstream agreed to switch protocols: answer the client with its 101,
/// then splice the two connections as byte streams until either side closes.
fn splice_upgrade(
    mut response: Response<UpstreamBody>,
    client: OnUpgrade,
    location: &Location,
    in_flight: InFlight,
) -> Response<crate::serve::body::ResponseBody> {
    let upstream = hyper::upgrade::on(&mut response);
    let (mut parts, _) = response.into_parts();
    let protocol = parts.headers.get(header::UPGRADE).cloned();
    clean_response_headers(&mut parts.headers, location);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(p) = protocol {
        parts.headers.insert(header::UPGRADE, p);
    }
    tokio::spawn(async move {
        let _in_flight = in_flight;
        match (client.await, upstream.await) {
            (Ok(client), Ok(upstream)) => {
                let mut client = hyper_util::rt::TokioIo::new(client);
                let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            (Err(e), _) | (_, Err(e)) => tracing::warn!(error = %e, "upgrade failed after 101"),
        }
    });
    Response::from_parts(parts, crate::serve::body::ResponseBody::empty())
}

/// How a streamed request body is going, for the send timeout.
#[derive(Default)]
pub struct BodyProgress {
    /// Milliseconds after the attempt started when the last chunk went up (0: none yet).
    last_ms: AtomicU64,
    done: AtomicBool,
    started: std::sync::OnceLock<Instant>,
}

impl BodyProgress {
    fn touch(&self) {
        let start = *self.started.get_or_init(Instant::now);
        self.last_ms
            .store(start.elapsed().as_millis() as u64 + 1, Relaxed);
    }
    fn last_activity(&self, fallback: Instant) -> Instant {
        match (self.started.get(), self.last_ms.load(Relaxed)) {
            (Some(s), ms) if ms > 0 => *s + Duration::from_millis(ms - 1),
            _ => fallback,
        }
    }
}

/// The client's request body as forwarding holds it.
enum HeldBody {
    Empty,
    /// Read whole: can be sent again on a retry.
    Buffered(Bytes),
    /// Streams through once; taken by the first attempt.
    Streaming(Option<StreamedBody>, Arc<StreamFlags>),
}

#[derive(Default)]
struct StreamFlags {
    over_limit: AtomicBool,
    client_error: Mutex<Option<String>>,
}

impl HeldBody {
    fn replayable(&self) -> bool {
        !matches!(self, HeldBody::Streaming(..))
    }

    /// The body when held whole (empty otherwise).
    fn held(&self) -> &[u8] {
        match self {
            HeldBody::Buffered(b) => b,
            _ => &[],
        }
    }

    fn for_attempt(&mut self) -> (RequestBody, Option<Arc<BodyProgress>>) {
        match self {
            HeldBody::Empty => (RequestBody::Full(None), None),
            HeldBody::Buffered(b) => (RequestBody::Full(Some(b.clone())), None),
            HeldBody::Streaming(s, _) => match s.take() {
                Some(body) => {
                    let progress = body.progress.clone();
                    (RequestBody::Stream(Box::new(body)), Some(progress))
                }
                None => (RequestBody::Full(None), None),
            },
        }
    }

    fn limit_exceeded(&self) -> bool {
        matches!(self, HeldBody::Streaming(_, f) if f.over_limit.load(Relaxed))
    }

    fn client_error(&self) -> Option<ForwardError> {
        let HeldBody::Streaming(_, flags) = self else {
            return None;
        };
        let why = flags
            .client_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let status = if why.contains("timeout") {
            StatusCode::REQUEST_TIMEOUT
        } else {
            StatusCode::BAD_REQUEST
        };
        Some(ForwardError::new(status, why))
    }
}

/// Decide how to hold the body: 413 at once when Content-Length is over the
/// limit; read it when small; else stream it.
async fn read_request_body(
    info: &RequestInfo<'_>,
    location: &Location,
    body: Option<ClientBody>,
) -> Result<HeldBody, ForwardError> {
    let limit = location.client_max_body_size;
    let length = info
        .headers
        .get(&header::CONTENT_LENGTH)
        .and_then(visible_str)
        .and_then(|v| v.parse::<u64>().ok());
    if limit > 0 && length.is_some_and(|n| n > limit) {
        return Err(ForwardError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Content-Length over client_max_body_size",
        ));
    }
    // None: ginx's own HTTP/1 side serves only requests without a body.
    let Some(body) = body.filter(|b| !b.is_end_stream() && length != Some(0)) else {
        return Ok(HeldBody::Empty);
    };
    if length.is_some_and(|n| n <= REPLAYABLE_BODY) {
        let collected = tokio::time::timeout(location.client_body_timeout, body.collect()).await;
        return match collected {
            Ok(Ok(c)) => Ok(HeldBody::Buffered(c.to_bytes())),
            Ok(Err(e)) => Err(ForwardError::new(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            )),
            Err(_) => Err(ForwardError::new(
                StatusCode::REQUEST_TIMEOUT,
                "client_body_timeout",
            )),
        };
    }
    let flags = Arc::new(StreamFlags::default());
    let streamed = StreamedBody {
        inner: body,
        seen: 0,
        limit: if limit == 0 { u64::MAX } else { limit },
        timer: IdleTimer::new(location.client_body_timeout),
        progress: Arc::new(BodyProgress::default()),
        flags: flags.clone(),
    };
    Ok(HeldBody::Streaming(Some(streamed), flags))
}

/// An upstream's response body, from hyper-util's client or the native one.
pub enum UpstreamBody {
    Hyper(Incoming),
    Native(h1::ResponseBody),
}

impl UpstreamBody {
    /// The response's fields when the native client left them in the head
    /// (see `h1::PassedFields`); once.
    pub fn take_passed(&mut self) -> Option<Box<PassedFields>> {
        match self {
            UpstreamBody::Hyper(_) => None,
            UpstreamBody::Native(b) => b.take_passed(),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
            UpstreamBody::Native(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) => b.is_end_stream(),
            UpstreamBody::Native(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(b) => b.size_hint(),
            UpstreamBody::Native(b) => b.size_hint(),
        }
    }
}

/// The body sent upstream.
pub enum RequestBody {
    Full(Option<Bytes>),
    Stream(Box<StreamedBody>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Stream(s) => Pin::new(s.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Full(d) => d.is_none(),
            RequestBody::Stream(s) => s.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |b| b.len() as u64)),
            RequestBody::Stream(s) => s.inner.size_hint(),
        }
    }
}

/// The client's body streaming upstream: counted against
/// client_max_body_size, with client_body_timeout between reads.
pub struct StreamedBody {
    inner: ClientBody,
    seen: u64,
    limit: u64,
    /// client_body_timeout between two pieces of the body.
    timer: IdleTimer,
    progress: Arc<BodyProgress>,
    flags: Arc<StreamFlags>,
}

impl StreamedBody {
    fn fail(&self, why: &str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        *self
            .flags
            .client_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
        Poll::Ready(Some(Err(why.to_string().into())))
    }
}

impl Body for StreamedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.limit {
                        this.flags.over_limit.store(true, Relaxed);
                        return Poll::Ready(Some(Err(
                            "request body over client_max_body_size".into()
                        )));
                    }
                }
                this.timer.progressed();
                this.progress.touch();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.progress.touch();
                this.progress.done.store(true, Relaxed);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => this.fail(&format!("reading the request body: {e}")),
            Poll::Pending => {
                if this.timer.expired(cx) {
                    return this.fail("client_body_timeout while reading the request body");
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// nginx's rule: POST, LOCK and PATCH are not idempotent; other methods are.
pub fn is_idempotent(method: &Method) -> bool {
    !matches!(method.as_str(), "POST" | "LOCK" | "PATCH")
}

#[cfg(test)]
mod tests {
    use super::write_ip;

    #[test]
    fn ip_text_is_the_standard_form() {
        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "127.0.0.1",
            "255.200.109.1",
            "::1",
            "2001:db8::8",
        ] {
            let mut out = b"x, ".to_vec();
            write_ip(&mut out, ip.parse().unwrap());
            assert_eq!(out, format!("x, {ip}").into_bytes());
        }
    }

    #[test]
    fn field_kinds_name_what_they_say_in_any_case() {
        use super::{FieldKind, HOP_BY_HOP};
        for name in &HOP_BY_HOP {
            let lower = name.as_str();
            for spelled in [lower.to_string(), lower.to_ascii_uppercase()] {
                assert!(FieldKind::of(spelled.as_bytes()).hop_by_hop(), "{spelled}");
            }
        }
        let kinds = [
            ("Content-Length", FieldKind::ContentLength),
            ("transfer-encoding", FieldKind::TransferEncoding),
            ("HOST", FieldKind::Host),
            ("te", FieldKind::Te),
            ("Expect", FieldKind::Expect),
            ("CONNECTION", FieldKind::Connection),
            ("Keep-Alive", FieldKind::HopByHop),
            ("X-Forwarded-For", FieldKind::XForwardedFor),
            ("x-forwarded-proto", FieldKind::XForwardedProto),
            ("X-Forwarded-Host", FieldKind::XForwardedHost),
            ("x-forwarded-hosts", FieldKind::Other),
            ("hosts", FieldKind::Other),
            ("content-type", FieldKind::Other),
        ];
        for (name, kind) in kinds {
            assert_eq!(FieldKind::of(name.as_bytes()), kind, "{name}");
        }
        assert!(!FieldKind::Other.hop_by_hop() && !FieldKind::Expect.hop_by_hop());
    }

    #[test]
    fn connection_options_are_found_in_every_field_and_token() {
        use super::ConnectionOptions;
        use http::header::{HeaderMap, HeaderValue, CONNECTION};
        let named = |values: &[&str], name: &str| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(CONNECTION, HeaderValue::from_str(v).unwrap());
            }
            let fields: super::Fields = (&headers).into();
            ConnectionOptions::seen(&super::SeenFields::of(fields), fields).names(name.as_bytes())
        };
        assert!(named(&["close"], "close"));
        assert!(!named(&["close"], "x-secret"));
        assert!(named(&["close, X-Secret"], "x-secret"));
        assert!(named(&[" , keep-alive ,x-a"], "x-a"));
        assert!(!named(&["host"], "host"), "Host is never dropped");
        assert!(!named(&["Host"], "HOST"), "in any case");
        assert!(named(&["x-a"], "X-A"), "names compared without case");
        // One token alone (compared whole, trimmed), or no Connection at all.
        assert!(named(&[" Keep-Alive "], "keep-alive"));
        assert!(!named(&["close"], "clos") && !named(&["clos"], "close"));
        assert!(!named(&[], "close"));
        // Tokens over several fields: the last field's are found too.
        let long = ["a, b", "c,d", "e", "close, X-Late"];
        for name in ["a", "d", "e", "close", "x-late"] {
            assert!(named(&long, name), "{name}");
        }
        assert!(!named(&long, "x-other"));
    }
}
