//! Upstream groups: validated and resolved at load time, so that the request
//! path only picks among ready addresses.

use super::check::Checker;
use super::template::{parse_template, Template};
use crate::config::error::{closest, Origin};
use crate::config::raw;
use serde_saphyr::Spanned;
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    IpHash,
    Hash,
    Random,
    TwoChoices,
}

impl Balance {
    /// The name as written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::IpHash => "ip_hash",
            Balance::Hash => "hash",
            Balance::Random => "random",
            Balance::TwoChoices => "two_choices",
        }
    }
}

const BALANCERS: &[&str] = &[
    "round_robin",
    "least_conn",
    "ip_hash",
    "hash",
    "random",
    "two_choices",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// When a failed attempt goes on to the next server (`next_upstream`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextUpstream {
    pub error: bool,
    pub timeout: bool,
    pub http_500: bool,
    pub http_502: bool,
    pub http_503: bool,
    pub http_504: bool,
    pub http_429: bool,
    pub non_idempotent: bool,
}

#[derive(Clone, Debug)]
pub struct UpstreamServer {
    /// The address as written (`host:port`): nginx's consistent hash uses it.
    pub addr: Arc<str>,
    pub resolved: Vec<SocketAddr>,
    pub weight: u32,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub max_conns: u32,
    pub backup: bool,
    pub down: bool,
    pub origin: Origin,
}

#[derive(Clone, Debug, Default)]
pub struct UpstreamTls {
    pub verify: bool,
    pub ca: Option<PathBuf>,
    pub sni: Option<String>,
    pub certificate: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub expect: (u16, u16),
}

#[derive(Clone, Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub origin: Origin,
    pub balance: Balance,
    pub hash_key: Option<Template>,
    pub servers: Vec<UpstreamServer>,
    pub keepalive: usize,
    pub keepalive_timeout: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub send_timeout: Duration,
    pub next_upstream: NextUpstream,
    pub next_upstream_tries: usize,
    pub protocol: Protocol,
    pub tls: UpstreamTls,
    /// The rustls client for `proxy_pass: https://` and the name it checks.
    pub tls_client: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    pub health_check: Option<HealthCheck>,
}

impl Upstream {
    /// The group behind a literal `proxy_pass: http://host:port`: one server
    /// with every default, as nginx makes an implicit upstream.
    pub fn implicit(addr: &str, resolved: Vec<SocketAddr>, origin: Origin) -> Upstream {
        Upstream {
            name: Arc::from(addr),
            origin: origin.clone(),
            balance: Balance::RoundRobin,
            hash_key: None,
            servers: vec![UpstreamServer {
                addr: Arc::from(addr),
                resolved,
                weight: 1,
                max_fails: 1,
                fail_timeout: Duration::from_secs(10),
                max_conns: 0,
                backup: false,
                down: false,
                origin,
            }],
            keepalive: 32,
            keepalive_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            next_upstream: NextUpstream {
                error: true,
                timeout: true,
                ..Default::default()
            },
            next_upstream_tries: 0,
            protocol: Protocol::Http1,
            tls: UpstreamTls {
                verify: true,
                ..Default::default()
            },
            tls_client: {
                let tls = UpstreamTls {
                    verify: true,
                    ..Default::default()
                };
                crate::tls::client_config(&tls, false)
                    .ok()
                    .zip(crate::tls::upstream_server_name(&tls, addr).ok())
            },
            health_check: None,
        }
    }
}

/// Resolve `host:port` now (load time), as nginx does for names in `server`.
pub fn resolve(addr: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("bad upstream address {addr:?}: expected host:port"));
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!(
            "bad upstream address {addr:?}: expected host:port with a port from 1 to 65535"
        ));
    }
    let found: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
        .collect();
    if found.is_empty() {
        return Err(format!("{host:?} resolves to no address"));
    }
    Ok(found)
}

pub fn compile_upstream(
    c: &mut Checker<'_>,
    name: &Spanned<String>,
    raw: &Spanned<raw::Upstream>,
    named: &HashSet<Arc<str>>,
) -> Upstream {
    let origin = c.origin(&name.referenced);
    let u = &raw.value;
    let balance = match u.balance.as_ref() {
        None => Balance::RoundRobin,
        Some(b) => match b.value.as_str() {
            "round_robin" => Balance::RoundRobin,
            "least_conn" => Balance::LeastConn,
            "ip_hash" => Balance::IpHash,
            "hash" => Balance::Hash,
            "random" => Balance::Random,
            "two_choices" => Balance::TwoChoices,
            other => {
                let hint = closest(other, BALANCERS.iter().copied())
                    .map(|k| format!(" (did you mean {k:?}?)"))
                    .unwrap_or_default();
                c.error(
                    b,
                    format!(
                        "balance: unknown balancer {other:?}{hint}; expected one of: {}",
                        BALANCERS.join(", ")
                    ),
                );
                Balance::RoundRobin
            }
        },
    };
    let hash_key = u
        .hash_key
        .as_ref()
        .and_then(|k| match parse_template(&k.value, named) {
            Ok(t) => Some(t),
            Err(e) => {
                c.error(k, format!("hash_key: {e}"));
                None
            }
        });
    if balance == Balance::Hash && hash_key.is_none() && u.hash_key.is_none() {
        c.push(
            origin.clone(),
            format!(
                "upstream {:?}: balance: hash needs a hash_key, e.g. hash_key: \"$request_uri\"",
                name.value
            ),
        );
    }
    if u.servers.is_empty() {
        c.push(
            origin.clone(),
            format!(
                "upstream {:?} has no servers: list at least one under servers:",
                name.value
            ),
        );
    }
    let mut servers = Vec::new();
    for s in &u.servers {
        let entry = &s.value;
        let Some(addr) = entry.addr.as_ref() else {
            c.push(
                c.origin(&s.referenced),
                "upstream server needs an addr: host:port",
            );
            continue;
        };
        // The shorthand form carries no position of its own: use the entry's.
        let addr_origin = if addr.referenced.line() == 0 {
            c.origin(&s.referenced)
        } else {
            c.origin(&addr.referenced)
        };
        let resolved = match resolve(&addr.value) {
            Ok(r) => r,
            Err(e) => {
                c.push(addr_origin.clone(), e);
                Vec::new()
            }
        };
        servers.push(UpstreamServer {
            addr: Arc::from(addr.value.as_str()),
            resolved,
            weight: c.number(entry.weight.as_ref(), "weight", 1, 1, 1_000_000) as u32,
            max_fails: c.number(entry.max_fails.as_ref(), "max_fails", 1, 0, 1_000_000) as u32,
            fail_timeout: c.duration(
                entry.fail_timeout.as_ref(),
                "fail_timeout",
                Duration::from_secs(10),
            ),
            max_conns: c.number(entry.max_conns.as_ref(), "max_conns", 0, 0, u32::MAX as u64)
                as u32,
            backup: entry.backup.as_ref().is_some_and(|b| b.value),
            down: entry.down.as_ref().is_some_and(|b| b.value),
            origin: addr_origin,
        });
    }
    if matches!(balance, Balance::Hash | Balance::IpHash) {
        if let Some(b) = servers.iter().find(|s| s.backup) {
            // nginx refuses backup servers with hash balancing, for good reason:
            // a key would move when the backup takes over.
            c.push(
                b.origin.clone(),
                "backup servers cannot be used with balance: hash or ip_hash (as nginx)",
            );
        }
    }
    let mut next = NextUpstream {
        error: true,
        timeout: true,
        ..Default::default()
    };
    if let Some(list) = u.next_upstream.as_ref() {
        next = NextUpstream::default();
        for item in &list.0 {
            match item.value.as_str() {
                "error" => next.error = true,
                "timeout" => next.timeout = true,
                "http_500" => next.http_500 = true,
                "http_502" => next.http_502 = true,
                "http_503" => next.http_503 = true,
                "http_504" => next.http_504 = true,
                "http_429" => next.http_429 = true,
                "non_idempotent" => next.non_idempotent = true,
                "off" => {}
                other => c.error(item, format!("next_upstream: unknown condition {other:?}; expected error, timeout, http_500, http_502, http_503, http_504, http_429, non_idempotent or off")),
            }
        }
    }
    let protocol = match u.protocol.as_ref().map(|p| p.value.as_str()) {
        None | Some("http1") => Protocol::Http1,
        Some("http2") => Protocol::Http2,
        Some(other) => {
            let p = u.protocol.as_ref().expect("matched Some");
            c.error(
                p,
                format!("protocol: unknown protocol {other:?}; expected http1 or http2"),
            );
            Protocol::Http1
        }
    };
    let mut tls = UpstreamTls {
        verify: true,
        ..Default::default()
    };
    if let Some(t) = u.tls.as_ref() {
        let t = &t.value;
        tls.verify = t.verify.as_ref().is_none_or(|v| v.value);
        tls.ca = t.ca.as_ref().map(|p| c.data_file(&p.value));
        tls.sni = t.sni.as_ref().map(|s| s.value.clone());
        tls.certificate = t.certificate.as_ref().map(|p| c.data_file(&p.value));
        tls.key = t.key.as_ref().map(|p| c.data_file(&p.value));
        if tls.certificate.is_some() != tls.key.is_some() {
            c.push(
                origin.clone(),
                "tls: a client certificate needs both certificate and key",
            );
        }
    }
    let tls_client = {
        let built =
            crate::tls::client_config(&tls, protocol == Protocol::Http2).and_then(|config| {
                crate::tls::upstream_server_name(&tls, &name.value).map(|n| (config, n))
            });
        match (built, u.tls.as_ref()) {
            (Ok(pair), _) => Some(pair),
            // Written TLS settings must work...
            (Err(e), Some(t)) => {
                c.push(
                    c.origin(&t.referenced),
                    format!("upstream {:?}: {e}", name.value),
                );
                None
            }
            // ...defaults that cannot (a name that is no TLS server name) only
            // matter to `https://`, which then answers 502 saying why.
            (Err(_), None) => None,
        }
    };
    let health_check = u.health_check.as_ref().map(|h| {
        let hv = &h.value;
        let expect = match hv.expect.as_ref() {
            None => (200, 399),
            Some(e) => match parse_status_range(&e.value) {
                Some(r) => r,
                None => {
                    c.error(
                        e,
                        format!(
                            "expect: bad status range {:?}; expected e.g. 200-399 or 200",
                            e.value
                        ),
                    );
                    (200, 399)
                }
            },
        };
        let path = hv
            .path
            .as_ref()
            .map_or("/".to_string(), |p| p.value.clone());
        if !path.starts_with('/') {
            c.push(
                c.origin(&h.referenced),
                format!("health_check: path {path:?} must start with /"),
            );
        }
        HealthCheck {
            path,
            interval: c.duration(hv.interval.as_ref(), "interval", Duration::from_secs(5)),
            timeout: c.duration(hv.timeout.as_ref(), "timeout", Duration::from_secs(2)),
            rise: c.number(hv.rise.as_ref(), "rise", 2, 1, 1000) as u32,
            fall: c.number(hv.fall.as_ref(), "fall", 3, 1, 1000) as u32,
            expect,
        }
    });
    Upstream {
        name: Arc::from(name.value.as_str()),
        origin,
        balance,
        hash_key,
        keepalive: c.number(u.keepalive.as_ref(), "keepalive", 32, 0, 100_000) as usize,
        keepalive_timeout: c.duration(
            u.keepalive_timeout.as_ref(),
            "keepalive_timeout",
            Duration::from_secs(60),
        ),
        connect_timeout: c.duration(
            u.connect_timeout.as_ref(),
            "connect_timeout",
            Duration::from_secs(5),
        ),
        read_timeout: c.duration(
            u.read_timeout.as_ref(),
            "read_timeout",
            Duration::from_secs(60),
        ),
        send_timeout: c.duration(
            u.send_timeout.as_ref(),
            "send_timeout",
            Duration::from_secs(60),
        ),
        next_upstream: next,
        next_upstream_tries: c.number(
            u.next_upstream_tries.as_ref(),
            "next_upstream_tries",
            0,
            0,
            1000,
        ) as usize,
        protocol,
        tls,
        tls_client,
        health_check,
        servers,
    }
}

fn parse_status_range(text: &str) -> Option<(u16, u16)> {
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
    ((100..=599).contains(&a) && (a..=599).contains(&b)).then_some((a, b))
}
