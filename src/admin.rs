//! The admin listener (`admin: { listen: ... }`): `GET /status` as JSON and
//! `GET /metrics` in Prometheus text format (written by prometheus-client,
//! not by hand). Metrics are recorded on the request path with one counter
//! or histogram update each; `/status` is built when asked.

use crate::serve::Shared;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub server: Arc<str>,
    pub location: Arc<str>,
    /// `2xx`, `4xx`, ...
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// Every metric ginx keeps.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub upstream_time: Family<UpstreamLabels, Histogram>,
    pub active_connections: Gauge,
    pub parked_connections: Gauge,
    pub reloads: Family<ResultLabels, Counter>,
    pub generation: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ginx");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by server, location and status class",
            requests.clone(),
        );
        let upstream_time = Family::<UpstreamLabels, Histogram>::new_with_constructor(|| {
            // 1 ms to about 16 s.
            Histogram::new(exponential_buckets(0.001, 2.0, 15))
        });
        registry.register(
            "upstream_response_seconds",
            "Time from sending a request upstream to its response head",
            upstream_time.clone(),
        );
        let active_connections = Gauge::default();
        registry.register(
            "active_connections",
            "Client connections open now",
            active_connections.clone(),
        );
        let parked_connections = Gauge::default();
        registry.register(
            "parked_connections",
            "Idle HTTP/1 client connections parked (socket kept, buffers freed)",
            parked_connections.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reloads",
            "Configuration reloads, by result (ok or failed)",
            reloads.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "config_generation",
            "The configuration generation in force",
            generation.clone(),
        );
        Metrics {
            registry,
            requests,
            upstream_time,
            active_connections,
            parked_connections,
            reloads,
            generation,
        }
    }
}

/// The request counters of one server/location, one per status class,
/// taken from the family once and kept beside the location.
pub struct StatusCounters([Counter; 5]);

impl StatusCounters {
    pub fn count(&self, status: u16) {
        self.0[(status / 100).clamp(1, 5) as usize - 1].inc();
    }
}

impl Metrics {
    /// The counters labelled `server`/`location`, one per status class.
    pub fn status_counters(&self, server: &Arc<str>, location: &Arc<str>) -> StatusCounters {
        StatusCounters([100, 200, 300, 400, 500].map(|status| {
            self.requests
                .get_or_create(&RequestLabels {
                    server: server.clone(),
                    location: location.clone(),
                    status: Self::status_class(status),
                })
                .clone()
        }))
    }

    pub fn status_class(status: u16) -> &'static str {
        match status / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// `/status`: the configuration in force, the last reload, the upstream servers.
pub fn status_json(shared: &Shared) -> serde_json::Value {
    let reload = shared
        .reload
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let generation = shared.current();
    let secs = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let upstreams: Vec<serde_json::Value> = generation
        .upstreams
        .iter()
        .map(|rt| {
            let servers: Vec<serde_json::Value> = rt
                .balancer
                .peers
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "server": &*p.name,
                        "address": p.addr.to_string(),
                        "weight": p.weight,
                        "backup": p.backup,
                        "down": p.down,
                        "healthy": p.state.is_healthy(),
                        "marked_down": p.state.is_marked_down(),
                        "in_flight": p.state.in_flight.load(Relaxed),
                        "fails": p.state.fails.load(Relaxed),
                    })
                })
                .collect();
            serde_json::json!({
                "name": &*rt.upstream.name,
                "balance": rt.upstream.balance.name(),
                "servers": servers,
            })
        })
        .collect();
    serde_json::json!({
        "generation": reload.generation,
        "main": generation.config.main_path.display().to_string(),
        "files": reload.files.iter().map(|(p, h)| serde_json::json!({ "path": p.display().to_string(), "crc32": h })).collect::<Vec<_>>(),
        "reloads": {
            "succeeded": reload.succeeded,
            "failed": reload.failed,
            "unchanged": reload.unchanged,
        },
        "last_reload": reload.last.as_ref().map(|a| serde_json::json!({
            "ok": a.ok,
            "at": secs(a.at),
            "cause": a.cause,
            "error": a.error,
        })),
        "listeners": generation.config.listeners.iter().map(|l| l.addr.to_string()).collect::<Vec<_>>(),
        "upstreams": upstreams,
        "active_connections": shared.metrics.active_connections.get(),
        "access_log_dropped": shared.access_log.dropped.load(Relaxed),
    })
}

/// Serve the admin endpoints on `addr` until the task is aborted.
pub async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = answer(&shared, req.uri().path());
                std::future::ready(Ok::<_, std::convert::Infallible>(response))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(shared: &Shared, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/status" => {
            let text = serde_json::to_string_pretty(&status_json(shared)).unwrap_or_default();
            (StatusCode::OK, "application/json", text)
        }
        // prometheus-client writes the OpenMetrics text format (it ends with `# EOF`).
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.render(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "GET /status or /metrics\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

/// Bind the admin address of the configuration, if any.
pub async fn start(
    shared: &Arc<Shared>,
    addr: Option<SocketAddr>,
) -> std::io::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("admin.listen {addr}: {e}")))?;
    tracing::info!(%addr, "admin endpoint: GET /status, GET /metrics");
    Ok(Some(tokio::spawn(serve(shared.clone(), listener))))
}
