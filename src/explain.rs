//! `ginx explain URL`: which server and location a request would reach, what
//! the rewrites do, and what would be answered or sent upstream, computed by
//! the same routing code that serves requests, with no network.

use crate::compile::{Action, Config, Listener};
use crate::route::{self, Outcome, RequestInfo};
use http::{HeaderMap, HeaderValue, Method, Uri, Version};
use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// What to explain.
pub struct ExplainRequest {
    pub url: String,
    pub method: Method,
    /// The address the request arrives on; by default the URL's port on a
    /// listener that has it.
    pub listen: Option<SocketAddr>,
    pub client: IpAddr,
    pub headers: Vec<(String, String)>,
}

impl ExplainRequest {
    pub fn get(url: &str) -> Self {
        ExplainRequest {
            url: url.to_string(),
            method: Method::GET,
            listen: None,
            client: IpAddr::V4(Ipv4Addr::LOCALHOST),
            headers: Vec::new(),
        }
    }
}

/// The report, or why there is none (bad URL, no listener).
pub fn explain(config: &Config, request: &ExplainRequest) -> Result<String, String> {
    let uri: Uri = request.url.parse().map_err(|e| {
        format!(
            "bad URL {:?}: {e}; expected e.g. http://example.com/path?x=1",
            request.url
        )
    })?;
    let scheme = uri.scheme_str().unwrap_or("http");
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "bad URL {:?}: the scheme must be http or https",
            request.url
        ));
    }
    let tls = scheme == "https";
    let authority = uri.authority().ok_or_else(|| {
        format!(
            "bad URL {:?}: it needs a host, e.g. http://example.com/",
            request.url
        )
    })?;
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let listener = pick_listener(config, request.listen, port)?;
    let local = if listener.addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), listener.addr.port())
    } else {
        listener.addr
    };

    // The request as a client would send it: origin-form target plus Host.
    let target: Uri = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|e| format!("bad URL path: {e}"))?;
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(authority.as_str()).map_err(|e| format!("bad host: {e}"))?,
    );
    for (k, v) in &request.headers {
        let name = http::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("bad header name {k:?}"))?;
        let value = HeaderValue::from_str(v).map_err(|_| format!("bad value for header {k:?}"))?;
        headers.append(name, value);
    }
    let info = RequestInfo {
        method: &request.method,
        uri: &target,
        headers: (&headers).into(),
        version: Version::HTTP_11,
        local,
        remote: SocketAddr::new(request.client, 50000),
        tls,
    };
    let mut trace = Vec::new();
    let routed = route::route(listener, &info, Some(&mut trace));

    let mut out = String::new();
    let _ = writeln!(out, "request:  {} {}", request.method, request.url);
    let _ = writeln!(
        out,
        "listener: {}{}",
        listener.addr,
        if listener.tls { " tls" } else { "" }
    );
    let server = routed.server;
    let names = if server.names.is_empty() {
        "(no server_name)".to_string()
    } else {
        server.names.join(" ")
    };
    let _ = writeln!(out, "server:   {} at {}", names, server.origin);
    match routed.location {
        Some(l) => {
            let _ = writeln!(out, "location: {:?} at {}", l.display_pattern(), l.origin);
        }
        None => {
            let _ = writeln!(out, "location: none");
        }
    }
    let _ = writeln!(out, "steps:");
    for line in &trace {
        let _ = writeln!(out, "  - {line}");
    }
    let _ = write!(out, "result:   ");
    match &routed.outcome {
        Outcome::Respond { status, body } => {
            let _ = writeln!(
                out,
                "answer {} with body {:?}",
                status.as_u16(),
                String::from_utf8_lossy(body)
            );
        }
        Outcome::Redirect { status, location } => {
            let _ = writeln!(
                out,
                "redirect {} to {}",
                status.as_u16(),
                String::from_utf8_lossy(location)
            );
        }
        Outcome::Close => {
            let _ = writeln!(out, "close the connection without an answer (return 444)");
        }
        Outcome::Error { status, reason } => {
            let _ = writeln!(out, "answer {} ({reason})", status.as_u16());
        }
        Outcome::Proxy { uri } => {
            let pass = routed
                .proxy_pass()
                .expect("a proxy outcome comes from a proxy location");
            let scheme = if pass.https { "https" } else { "http" };
            let _ = writeln!(
                out,
                "proxy_pass {} sends {} {}",
                pass.source,
                request.method,
                String::from_utf8_lossy(uri.as_bytes())
            );
            match &pass.target {
                crate::compile::actions::ProxyTarget::Upstream { name, .. } => {
                    if let Some(u) = config.upstream(name) {
                        let servers: Vec<String> = u
                            .servers
                            .iter()
                            .map(|s| {
                                let mut t = s.addr.to_string();
                                if s.weight != 1 {
                                    t.push_str(&format!(" weight={}", s.weight));
                                }
                                if s.backup {
                                    t.push_str(" backup");
                                }
                                if s.down {
                                    t.push_str(" down");
                                }
                                t
                            })
                            .collect();
                        let _ = writeln!(
                            out,
                            "          to upstream {name:?} at {} ({}, {scheme}): {}",
                            u.origin,
                            u.balance.name(),
                            servers.join(", ")
                        );
                    }
                }
                crate::compile::actions::ProxyTarget::Address(a) => {
                    let _ = writeln!(out, "          to {scheme}://{a}");
                }
            }
        }
    }
    if let Some(l) = routed.location {
        if let Action::Proxy(_) = l.action {
            if !l.headers.proxy_set_header.is_empty() {
                let names: Vec<&str> = l
                    .headers
                    .proxy_set_header
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect();
                let _ = writeln!(out, "          with proxy_set_header: {}", names.join(", "));
            }
        }
    }
    Ok(out)
}

fn pick_listener(
    config: &Config,
    listen: Option<SocketAddr>,
    port: u16,
) -> Result<&Listener, String> {
    let all: Vec<String> = config
        .listeners
        .iter()
        .map(|l| l.addr.to_string())
        .collect();
    match listen {
        Some(addr) => config
            .listener_for(addr)
            .ok_or_else(|| format!("no server listens on {addr} (listen addresses: {})", all.join(", "))),
        None => config
            .listeners
            .iter()
            .find(|l| l.addr.port() == port)
            .ok_or_else(|| {
                format!(
                    "no server listens on port {port}; give the port in the URL or --listen ADDR (listen addresses: {})",
                    all.join(", ")
                )
            }),
    }
}
