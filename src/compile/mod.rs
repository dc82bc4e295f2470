//! Raw configuration → one immutable, validated runtime configuration.
//!
//! Everything that can be wrong is found here (addresses, regexes, variables,
//! upstream references, duplicates), with its file:line:column, so that the
//! request path never meets a configuration error. The result holds, per
//! listen address, a host table and per server a location table.

pub mod actions;
pub mod check;
pub mod hosts;
pub mod locations;
pub mod template;
pub mod upstream;

use crate::config::error::{closest, ConfigError, ConfigErrors, Origin};
use crate::config::load::{Loaded, SourceFile};
use crate::config::raw::{self, HeaderMapRaw, Text, TextList};
use crate::config::units::{parse_listen, ListenSpec};
use actions::{
    parse_return, parse_rewrite, split_proxy_pass, ProxyPass, ProxyTarget, Return, Rewrite,
};
use check::Checker;
use hosts::{parse_name, HostTable, HostTableBuilder, NamePattern};
use http::header::HeaderName;
use ipnet::IpNet;
use locations::{LocationKey, LocationKind, LocationTable};
use serde_saphyr::Spanned;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use template::{parse_template, Template};
pub use upstream::Upstream;

/// Client-side limits; `http:` gives the defaults, a server or location may override.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub client_max_body_size: u64,
    pub client_header_timeout: Duration,
    pub client_body_timeout: Duration,
    pub keepalive_timeout: Duration,
    /// Between two successful writes of a response to the client (nginx's send_timeout).
    pub send_timeout: Duration,
    pub keepalive_requests: u64,
    pub max_header_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            client_max_body_size: 1 << 20,
            client_header_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(75),
            send_timeout: Duration::from_secs(60),
            keepalive_requests: 1000,
            max_header_size: 32 << 10,
        }
    }
}

/// Header rules that inherit http → server → location; a level that sets a
/// map replaces the inherited one, as nginx.
#[derive(Clone, Debug, Default)]
pub struct HeaderRules {
    pub add_header: Arc<[(HeaderName, Template)]>,
    pub proxy_set_header: Arc<[(HeaderName, Template)]>,
    pub proxy_hide_header: Arc<[HeaderName]>,
}

/// One `allow` / `deny` entry; `net: None` is `all`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRule {
    pub allow: bool,
    pub net: Option<IpNet>,
}

/// Is `ip` let through by `rules` (first match wins; no match lets it through)?
pub fn access_allows(rules: &[AccessRule], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    rules
        .iter()
        .find(|r| r.net.is_none_or(|n| n.contains(&ip)))
        .is_none_or(|r| r.allow)
}

#[derive(Clone, Debug)]
pub enum Action {
    Return(Return),
    Proxy(ProxyPass),
    /// Only rewrites: when none of them answers, 404 (nginx would look for a file).
    None,
}

pub struct Location {
    pub origin: Origin,
    /// `display_pattern()`, made once: the metrics label.
    pub label: Arc<str>,
    pub kind: LocationKind,
    pub pattern: String,
    pub rewrites: Vec<(Rewrite, Origin)>,
    pub action: Action,
    pub client_max_body_size: u64,
    pub client_body_timeout: Duration,
    pub headers: HeaderRules,
    pub access: Arc<[AccessRule]>,
    pub proxy_read_timeout: Option<Duration>,
    pub proxy_send_timeout: Option<Duration>,
    /// Its request counters, looked up once (the first request) rather than
    /// hashed by label on every request.
    pub counters: std::sync::OnceLock<crate::admin::StatusCounters>,
}

impl Location {
    /// `= /x`, `^~ /x`, `~* \.png$` as written.
    pub fn display_pattern(&self) -> &str {
        &self.label
    }
}

pub struct Server {
    pub origin: Origin,
    /// The first name, else where it is written: the metrics label.
    pub label: Arc<str>,
    /// Names as written; the first is `$server_name`.
    pub names: Vec<String>,
    pub limits: Limits,
    pub headers: HeaderRules,
    pub access: Arc<[AccessRule]>,
    pub locations: Vec<Location>,
    pub table: LocationTable,
    /// The server's certificate, when it has `tls:`.
    pub tls: Option<crate::tls::ServerCert>,
    /// It wrote a `tls:` block (which may have failed to load, already reported).
    pub has_tls_block: bool,
    /// Counters of requests answered with no location (as Location::counters).
    pub counters: std::sync::OnceLock<crate::admin::StatusCounters>,
}

impl Server {
    pub fn primary_name(&self) -> &str {
        self.names.first().map_or("", String::as_str)
    }
}

/// One listen address and the servers on it.
pub struct Listener {
    pub addr: SocketAddr,
    pub tls: bool,
    pub http2: bool,
    /// `deferred` on any of its listen entries: its socket accepts a
    /// connection once the first bytes have come (TCP_DEFER_ACCEPT).
    pub deferred: bool,
    pub servers: Vec<Arc<Server>>,
    pub hosts: Arc<HostTable>,
    /// Connection-level limits come from the address's default server, as nginx.
    pub limits: Limits,
    /// For a `tls` address: certificates by SNI, protocols, ALPN.
    pub tls_config: Option<Arc<rustls::ServerConfig>>,
}

impl Listener {
    pub fn default_server(&self) -> &Arc<Server> {
        &self.servers[self.hosts.default_server()]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Off,
    File(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub worker_threads: Option<usize>,
    pub error_log_level: tracing::Level,
    pub error_log_format: LogFormat,
    pub access_log: AccessLogTarget,
    pub access_log_json: bool,
    pub server_tokens: bool,
    pub shutdown_timeout: Duration,
    pub admin_listen: Option<SocketAddr>,
    pub max_connections: usize,
}

/// A compiled configuration: immutable, shared by every request that started on it.
pub struct Config {
    pub settings: Settings,
    pub listeners: Vec<Listener>,
    pub upstreams: Vec<Arc<Upstream>>,
    pub sources: Vec<SourceFile>,
    /// The include patterns with a wildcard (see `Loaded::include_patterns`).
    pub include_patterns: Vec<PathBuf>,
    pub main_path: Arc<Path>,
    /// Things worth saying that do not stop the configuration (e.g. a server
    /// name given twice on one address).
    pub warnings: Vec<ConfigError>,
    /// Certificates, keys and CAs the configuration read: a change to one is a reload.
    pub data_files: Vec<PathBuf>,
}

impl Config {
    /// A configuration with nothing in it: the placeholder before the first one.
    pub fn empty() -> Config {
        Config {
            settings: Settings {
                worker_threads: None,
                error_log_level: tracing::Level::INFO,
                error_log_format: LogFormat::Text,
                access_log: AccessLogTarget::Off,
                access_log_json: false,
                server_tokens: true,
                shutdown_timeout: Duration::from_secs(30),
                admin_listen: None,
                max_connections: 10_000,
            },
            listeners: Vec::new(),
            upstreams: Vec::new(),
            sources: Vec::new(),
            include_patterns: Vec::new(),
            main_path: Arc::from(Path::new("")),
            warnings: Vec::new(),
            data_files: Vec::new(),
        }
    }
}

impl Config {
    /// The listener table for a connection's local address: the exact address,
    /// else the wildcard address on the same port (nginx binds only the wildcard).
    pub fn listener_for(&self, local: SocketAddr) -> Option<&Listener> {
        self.listeners
            .iter()
            .find(|l| l.addr == local)
            .or_else(|| {
                self.listeners.iter().find(|l| {
                    l.addr.port() == local.port()
                        && l.addr.ip().is_unspecified()
                        && l.addr.is_ipv4() == local.is_ipv4()
                })
            })
            .or_else(|| {
                self.listeners
                    .iter()
                    .find(|l| l.addr.port() == local.port() && l.addr.ip().is_unspecified())
            })
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| &*u.name == name)
    }
}

/// One file's upstreams and servers, with the file's path.
type FileParts<'a> = (
    Arc<Path>,
    &'a raw::OrderedMap<Text, Spanned<raw::Upstream>>,
    &'a Vec<Spanned<raw::Server>>,
);

/// A server on one address: its index, its listen entry and where that is written.
type ListenMember<'a> = (usize, &'a ListenSpec, &'a Origin);

/// Load and compile in one step, as `ginx -t` and a reload do.
pub fn load_and_compile(main: &Path) -> Result<Config, ConfigErrors> {
    let loaded = crate::config::load::load(main)?;
    compile(loaded)
}

/// Compile what was loaded, collecting every error.
pub fn compile(loaded: Loaded) -> Result<Config, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let mut warnings = Vec::new();
    let mut data_files: Vec<PathBuf> = Vec::new();
    let main_file = loaded.main_path.clone();

    // Every file's parts in load order: main first.
    let mut parts: Vec<FileParts<'_>> = vec![(
        main_file.clone(),
        &loaded.main.upstreams,
        &loaded.main.servers,
    )];
    for (path, inc) in &loaded.includes {
        parts.push((path.clone(), &inc.upstreams, &inc.servers));
    }

    let named = collect_capture_names(&parts);

    let (settings, http_limits, http_headers) = {
        let mut c = Checker::new(&main_file, &mut errors);
        compile_settings(&mut c, &loaded.main, &named)
    };

    // Upstreams, with duplicates reported with both places.
    let mut upstreams: Vec<Arc<Upstream>> = Vec::new();
    for (file, ups, _) in &parts {
        let mut c = Checker::new(file, &mut errors);
        for (name, body) in &ups.0 {
            let origin = c.origin(&name.referenced);
            if let Some(first) = upstreams.iter().find(|u| *u.name == *name.value) {
                c.push(
                    origin,
                    format!(
                        "upstream {:?} is defined twice: first at {}",
                        name.value, first.origin
                    ),
                );
                continue;
            }
            upstreams.push(Arc::new(upstream::compile_upstream(
                &mut c, name, body, &named,
            )));
            data_files.append(&mut c.files);
        }
    }
    let upstream_names: Vec<&str> = upstreams.iter().map(|u| &*u.name).collect();

    // Servers, then the listen addresses they share.
    let mut servers: Vec<CompiledServer> = Vec::new();
    for (file, _, list) in &parts {
        for raw_server in list.iter() {
            let mut c = Checker::new(file, &mut errors);
            let ctx = ServerContext {
                named: &named,
                upstream_names: &upstream_names,
                http_limits: &http_limits,
                http_headers: &http_headers,
            };
            servers.push(compile_server(&mut c, raw_server, &ctx));
            warnings.append(&mut c.warnings);
            data_files.append(&mut c.files);
        }
    }
    // A literal `proxy_pass: http://host:port` is an implicit group of one
    // server, named by its address, as nginx makes one.
    for (server, _, _) in &servers {
        for location in &server.locations {
            if let Action::Proxy(ProxyPass {
                target: ProxyTarget::Address(addr),
                ..
            }) = &location.action
            {
                if upstreams.iter().any(|u| *u.name == **addr) {
                    continue;
                }
                if let Ok(resolved) = upstream::resolve(addr) {
                    upstreams.push(Arc::new(Upstream::implicit(
                        addr,
                        resolved,
                        location.origin.clone(),
                    )));
                }
            }
        }
    }
    let listeners = build_listeners(&servers, &mut errors, &mut warnings);

    // Report in reading order: by file (load order), then line and column.
    let file_rank = |f: &Path| {
        loaded
            .sources
            .iter()
            .position(|s| &*s.path == f)
            .unwrap_or(usize::MAX)
    };
    errors
        .0
        .sort_by_key(|e| (file_rank(&e.origin.file), e.origin.line, e.origin.column));
    errors.into_result(Config {
        settings,
        listeners,
        upstreams,
        sources: loaded.sources,
        include_patterns: loaded.include_patterns,
        main_path: loaded.main_path,
        warnings,
        data_files,
    })
}

/// Named groups of every regex in the configuration: nginx makes each one a
/// variable, usable anywhere.
fn collect_capture_names(parts: &[FileParts<'_>]) -> HashSet<Arc<str>> {
    let mut names = HashSet::new();
    let mut add = |pattern: &str| {
        if let Ok(ast) = regex_syntax::Parser::new().parse(pattern) {
            collect_names_from_hir(&ast, &mut names);
        }
    };
    for (_, _, servers) in parts {
        for s in servers.iter() {
            for n in s.value.server_name.iter().flat_map(|l| l.0.iter()) {
                if let Some(re) = n.value.strip_prefix('~') {
                    add(re);
                }
            }
            for l in &s.value.locations {
                if let Some(p) = l.value.location.as_ref() {
                    let t = p.value.trim_start();
                    if let Some(re) = t.strip_prefix("~*").or_else(|| t.strip_prefix('~')) {
                        add(re.trim());
                    }
                }
                for r in l.value.rewrite.iter().flat_map(|l| l.0.iter()) {
                    if let Ok(words) = actions::split_words(&r.value) {
                        if let Some(re) = words.first() {
                            add(re);
                        }
                    }
                }
            }
        }
    }
    names
}

fn collect_names_from_hir(hir: &regex_syntax::hir::Hir, names: &mut HashSet<Arc<str>>) {
    use regex_syntax::hir::HirKind;
    match hir.kind() {
        HirKind::Capture(c) => {
            if let Some(n) = &c.name {
                names.insert(Arc::from(&**n));
            }
            collect_names_from_hir(&c.sub, names);
        }
        HirKind::Concat(v) | HirKind::Alternation(v) => {
            v.iter().for_each(|h| collect_names_from_hir(h, names))
        }
        HirKind::Repetition(r) => collect_names_from_hir(&r.sub, names),
        _ => {}
    }
}

fn compile_settings(
    c: &mut Checker<'_>,
    m: &raw::MainFile,
    named: &HashSet<Arc<str>>,
) -> (Settings, Limits, HeaderRules) {
    let worker_threads = m
        .worker_threads
        .as_ref()
        .map(|t| c.number(Some(t), "worker_threads", 1, 1, 1024) as usize);
    let mut error_log_level = tracing::Level::INFO;
    let mut error_log_format = LogFormat::Text;
    if let Some(e) = m.error_log.as_ref() {
        if let Some(l) = e.value.level.as_ref() {
            error_log_level = match l.value.as_str() {
                "trace" => tracing::Level::TRACE,
                "debug" => tracing::Level::DEBUG,
                "info" | "notice" => tracing::Level::INFO,
                "warn" => tracing::Level::WARN,
                "error" | "crit" | "alert" | "emerg" => tracing::Level::ERROR,
                other => {
                    c.error(l, format!("error_log.level: unknown level {other:?}; expected trace, debug, info, warn or error"));
                    tracing::Level::INFO
                }
            };
        }
        error_log_format = log_format(c, e.value.format.as_ref(), "error_log.format", "text");
    }
    let mut access_log = AccessLogTarget::Stdout;
    let mut access_log_json = false;
    if let Some(a) = m.access_log.as_ref() {
        if let Some(p) = a.value.path.as_ref() {
            access_log = match p.value.as_str() {
                "stdout" => AccessLogTarget::Stdout,
                "off" => AccessLogTarget::Off,
                path => AccessLogTarget::File(c.path(path)),
            };
        }
        if let Some(f) = a.value.format.as_ref() {
            access_log_json = match f.value.as_str() {
                "combined" => false,
                "json" => true,
                other => {
                    c.error(f, format!("access_log.format: unknown format {other:?}; expected combined or json"));
                    false
                }
            };
        }
    }
    let admin_listen =
        m.admin
            .as_ref()
            .and_then(|a| match a.value.listen.value.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    c.error(
                        &a.value.listen,
                        format!(
                            "admin.listen: bad address {:?}; expected IP:PORT, e.g. 127.0.0.1:9901",
                            a.value.listen.value
                        ),
                    );
                    None
                }
            });
    let defaults = Limits::default();
    let (limits, max_connections, headers) = match m.http.as_ref() {
        None => (defaults, 10_000, HeaderRules::default()),
        Some(h) => {
            let h = &h.value;
            let limits = resolve_limits(
                c,
                LimitKeys {
                    client_max_body_size: h.client_max_body_size.as_ref(),
                    client_header_timeout: h.client_header_timeout.as_ref(),
                    client_body_timeout: h.client_body_timeout.as_ref(),
                    keepalive_timeout: h.keepalive_timeout.as_ref(),
                    send_timeout: h.send_timeout.as_ref(),
                    keepalive_requests: h.keepalive_requests.as_ref(),
                    max_header_size: h.max_header_size.as_ref(),
                },
                &defaults,
            );
            let max = c.number(
                h.max_connections.as_ref(),
                "max_connections",
                10_000,
                1,
                10_000_000,
            ) as usize;
            let headers = header_rules(
                c,
                &HeaderRules::default(),
                h.add_header.as_ref(),
                h.proxy_set_header.as_ref(),
                h.proxy_hide_header.as_ref(),
                named,
            );
            (limits, max, headers)
        }
    };
    let settings = Settings {
        worker_threads,
        error_log_level,
        error_log_format,
        access_log,
        access_log_json,
        server_tokens: m.server_tokens.as_ref().is_none_or(|b| b.value),
        shutdown_timeout: c.duration(
            m.shutdown_timeout.as_ref(),
            "shutdown_timeout",
            Duration::from_secs(30),
        ),
        admin_listen,
        max_connections,
    };
    (settings, limits, headers)
}

fn log_format(c: &mut Checker<'_>, t: Option<&Text>, key: &str, default: &str) -> LogFormat {
    match t.map_or(default, |t| t.value.as_str()) {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            if let Some(t) = t {
                c.error(
                    t,
                    format!("{key}: unknown format {other:?}; expected text or json"),
                );
            }
            LogFormat::Text
        }
    }
}

/// The client limits one level (http or a server) writes.
struct LimitKeys<'a> {
    client_max_body_size: Option<&'a Text>,
    client_header_timeout: Option<&'a Text>,
    client_body_timeout: Option<&'a Text>,
    keepalive_timeout: Option<&'a Text>,
    send_timeout: Option<&'a Text>,
    keepalive_requests: Option<&'a Text>,
    max_header_size: Option<&'a Text>,
}

/// A level's limits: what it writes, else what it inherits from `base`.
fn resolve_limits(c: &mut Checker<'_>, keys: LimitKeys<'_>, base: &Limits) -> Limits {
    Limits {
        client_max_body_size: c.size(
            keys.client_max_body_size,
            "client_max_body_size",
            base.client_max_body_size,
        ),
        client_header_timeout: c.duration(
            keys.client_header_timeout,
            "client_header_timeout",
            base.client_header_timeout,
        ),
        client_body_timeout: c.duration(
            keys.client_body_timeout,
            "client_body_timeout",
            base.client_body_timeout,
        ),
        keepalive_timeout: c.duration(
            keys.keepalive_timeout,
            "keepalive_timeout",
            base.keepalive_timeout,
        ),
        send_timeout: c.duration(keys.send_timeout, "send_timeout", base.send_timeout),
        keepalive_requests: c.number(
            keys.keepalive_requests,
            "keepalive_requests",
            base.keepalive_requests,
            1,
            u64::MAX,
        ),
        max_header_size: header_size(c, keys.max_header_size, base.max_header_size),
    }
}

/// max_header_size: at least 1k (a request line needs room), at most 1m.
fn header_size(c: &mut Checker<'_>, t: Option<&Text>, default: usize) -> usize {
    let n = c.size(t, "max_header_size", default as u64);
    if let Some(t) = t {
        if !(1024..=(1 << 20)).contains(&n) {
            c.error(
                t,
                format!(
                    "max_header_size: {:?} is out of range; expected 1k to 1m",
                    t.value
                ),
            );
            return default;
        }
    }
    n as usize
}

fn header_rules(
    c: &mut Checker<'_>,
    inherited: &HeaderRules,
    add: Option<&HeaderMapRaw>,
    set: Option<&HeaderMapRaw>,
    hide: Option<&TextList>,
    named: &HashSet<Arc<str>>,
) -> HeaderRules {
    let compile_map =
        |c: &mut Checker<'_>, map: &HeaderMapRaw, key: &str| -> Arc<[(HeaderName, Template)]> {
            let mut out = Vec::new();
            for (name, value) in &map.0 {
                let Ok(header) = HeaderName::from_bytes(name.value.as_bytes()) else {
                    c.error(
                        name,
                        format!("{key}: {:?} is not a valid header name", name.value),
                    );
                    continue;
                };
                match parse_template(&value.value, named) {
                    Ok(t) => out.push((header, t)),
                    Err(e) => c.error(value, format!("{key}.{}: {e}", name.value)),
                }
            }
            out.into()
        };
    HeaderRules {
        add_header: add.map_or_else(
            || inherited.add_header.clone(),
            |m| compile_map(c, m, "add_header"),
        ),
        proxy_set_header: set.map_or_else(
            || inherited.proxy_set_header.clone(),
            |m| compile_map(c, m, "proxy_set_header"),
        ),
        proxy_hide_header: hide.map_or_else(
            || inherited.proxy_hide_header.clone(),
            |list| {
                let mut out = Vec::new();
                for n in &list.0 {
                    match HeaderName::from_bytes(n.value.as_bytes()) {
                        Ok(h) => out.push(h),
                        Err(_) => c.error(
                            n,
                            format!(
                                "proxy_hide_header: {:?} is not a valid header name",
                                n.value
                            ),
                        ),
                    }
                }
                out.into()
            },
        ),
    }
}

/// A server's `tls:` block: load and check the certificate and key now, so
/// that a bad pair is a configuration error naming the file; names the
/// certificate does not cover are warnings.
fn compile_server_tls(
    c: &mut Checker<'_>,
    s: &raw::Server,
    names: &[(NamePattern, Option<regex::Regex>, Origin)],
) -> Option<crate::tls::ServerCert> {
    let tls = s.tls.as_ref()?;
    let (Some(cert), Some(key)) = (tls.value.certificate.as_ref(), tls.value.key.as_ref()) else {
        c.push(
            c.origin(&tls.referenced),
            "tls: needs both certificate and key (PEM files)",
        );
        return None;
    };
    let mut versions = Vec::new();
    for p in tls.value.protocols.iter().flat_map(|l| l.0.iter()) {
        match crate::tls::TlsVersion::parse(&p.value) {
            Ok(v) if !versions.contains(&v) => versions.push(v),
            Ok(_) => {}
            Err(e) => c.error(p, e),
        }
    }
    if versions.is_empty() {
        versions = vec![crate::tls::TlsVersion::V1_2, crate::tls::TlsVersion::V1_3];
    }
    let (cert_path, key_path) = (c.data_file(&cert.value), c.data_file(&key.value));
    let key = match crate::tls::load_certified_key(&cert_path, &key_path) {
        Ok(k) => Arc::new(k),
        Err(e) => {
            c.error(cert, format!("tls: {e}"));
            return None;
        }
    };
    if let Some(w) = crate::tls::expiry_warning(&key, &cert.value) {
        c.warn(c.origin_of(cert), format!("tls: {w}"));
    }
    for (pattern, _, origin) in names {
        let name = match pattern {
            NamePattern::Exact(n) => n.clone(),
            NamePattern::LeadingWildcard(n) => format!("*{n}"),
            NamePattern::Both(n) => format!(".{n}"),
            _ => continue,
        };
        if !crate::tls::covers(&key, &name) {
            c.warn(
                origin.clone(),
                format!(
                    "server name {name:?} is not covered by the certificate {}",
                    cert.value
                ),
            );
        }
    }
    Some(crate::tls::ServerCert { key, versions })
}

/// allow / deny, merged in the order written (by position), as nginx checks them.
fn access_rules(
    c: &mut Checker<'_>,
    allow: Option<&TextList>,
    deny: Option<&TextList>,
) -> Option<Arc<[AccessRule]>> {
    if allow.is_none() && deny.is_none() {
        return None;
    }
    let mut entries: Vec<(bool, &Text)> = Vec::new();
    entries.extend(allow.iter().flat_map(|l| l.0.iter()).map(|t| (true, t)));
    entries.extend(deny.iter().flat_map(|l| l.0.iter()).map(|t| (false, t)));
    entries.sort_by_key(|(_, t)| (t.referenced.line(), t.referenced.column()));
    let mut rules = Vec::new();
    for (allow, t) in entries {
        let key = if allow { "allow" } else { "deny" };
        let net = if t.value == "all" {
            None
        } else if let Ok(net) = t.value.parse::<IpNet>() {
            Some(net)
        } else if let Ok(ip) = t.value.parse::<IpAddr>() {
            Some(IpNet::from(ip))
        } else {
            c.error(
                t,
                format!(
                    "{key}: {:?} is not an address, a CIDR block (10.0.0.0/8) or all",
                    t.value
                ),
            );
            continue;
        };
        rules.push(AccessRule { allow, net });
    }
    Some(rules.into())
}

struct ServerContext<'a> {
    named: &'a HashSet<Arc<str>>,
    upstream_names: &'a [&'a str],
    http_limits: &'a Limits,
    http_headers: &'a HeaderRules,
}

type CompiledServer = (
    Arc<Server>,
    Vec<(ListenSpec, Origin)>,
    Vec<(NamePattern, Option<regex::Regex>, Origin)>,
);

fn compile_server(
    c: &mut Checker<'_>,
    raw: &Spanned<raw::Server>,
    ctx: &ServerContext<'_>,
) -> CompiledServer {
    let origin = c.origin(&raw.referenced);
    let s = &raw.value;

    let mut listens = Vec::new();
    match s.listen.as_ref() {
        Some(list) if !list.0.is_empty() => {
            for l in &list.0 {
                match parse_listen(&l.value) {
                    Ok(spec) => listens.push((spec, c.origin_of(l))),
                    Err(e) => c.error(l, format!("listen: {e}")),
                }
            }
        }
        _ => listens.push((
            parse_listen("0.0.0.0:80").expect("valid default"),
            origin.clone(),
        )),
    }

    let mut names = Vec::new();
    let mut patterns = Vec::new();
    for n in s.server_name.iter().flat_map(|l| l.0.iter()) {
        match parse_name(&n.value) {
            Ok(p) => {
                let regex = match &p {
                    NamePattern::Regex(re) => {
                        match regex::RegexBuilder::new(re).case_insensitive(true).build() {
                            Ok(r) => Some(r),
                            Err(_) => {
                                let detail =
                                    actions::compile_regex(re, true).err().unwrap_or_default();
                                c.error(n, format!("server_name: {detail}"));
                                continue;
                            }
                        }
                    }
                    _ => None,
                };
                patterns.push((p, regex, c.origin_of(n)));
                names.push(n.value.clone());
            }
            Err(e) => c.error(n, format!("server_name: {e}")),
        }
    }

    let limits = resolve_limits(
        c,
        LimitKeys {
            client_max_body_size: s.client_max_body_size.as_ref(),
            client_header_timeout: s.client_header_timeout.as_ref(),
            client_body_timeout: s.client_body_timeout.as_ref(),
            keepalive_timeout: s.keepalive_timeout.as_ref(),
            send_timeout: s.send_timeout.as_ref(),
            keepalive_requests: s.keepalive_requests.as_ref(),
            max_header_size: s.max_header_size.as_ref(),
        },
        ctx.http_limits,
    );
    let headers = header_rules(
        c,
        ctx.http_headers,
        s.add_header.as_ref(),
        s.proxy_set_header.as_ref(),
        s.proxy_hide_header.as_ref(),
        ctx.named,
    );
    let access =
        access_rules(c, s.allow.as_ref(), s.deny.as_ref()).unwrap_or_else(|| Arc::from(Vec::new()));

    let tls = compile_server_tls(c, s, &patterns);

    let mut locations: Vec<Location> = Vec::new();
    let mut keys: Vec<(LocationKind, String, Option<regex::bytes::Regex>, bool)> = Vec::new();
    let mut seen: HashMap<(bool, String), Origin> = HashMap::new();
    for raw_loc in &s.locations {
        if let Some((loc, regex)) = compile_location(c, raw_loc, ctx, &limits, &headers, &access) {
            let is_exact = loc.kind == LocationKind::Exact;
            if matches!(
                loc.kind,
                LocationKind::Exact | LocationKind::Prefix | LocationKind::PrefixNoRegex
            ) {
                if let Some(first) = seen.get(&(is_exact, loc.pattern.clone())) {
                    c.push(
                        loc.origin.clone(),
                        format!(
                            "duplicate location {:?}: first at {first}",
                            loc.display_pattern()
                        ),
                    );
                    continue;
                }
                seen.insert((is_exact, loc.pattern.clone()), loc.origin.clone());
            }
            let redirects = matches!(loc.action, Action::Proxy(_))
                && loc.pattern.ends_with('/')
                && !matches!(loc.kind, LocationKind::Regex | LocationKind::RegexCaseless);
            keys.push((loc.kind, loc.pattern.clone(), regex, redirects));
            locations.push(loc);
        }
    }
    let table = LocationTable::build(
        keys.iter()
            .map(|(kind, pattern, regex, redirects)| LocationKey {
                kind: *kind,
                pattern,
                regex: regex.clone(),
                redirects_without_slash: *redirects,
            })
            .collect(),
    )
    .unwrap_or_else(|e| {
        c.push(
            origin.clone(),
            format!("the regex locations of this server could not be combined: {e}"),
        );
        LocationTable::default()
    });

    let label: Arc<str> = Arc::from(names.first().cloned().unwrap_or_else(|| origin.to_string()));
    let server = Arc::new(Server {
        label,
        origin,
        names,
        limits,
        headers,
        access,
        locations,
        table,
        tls,
        has_tls_block: s.tls.is_some(),
        counters: Default::default(),
    });
    (server, listens, patterns)
}

fn compile_location(
    c: &mut Checker<'_>,
    raw: &Spanned<raw::Location>,
    ctx: &ServerContext<'_>,
    server_limits: &Limits,
    server_headers: &HeaderRules,
    server_access: &Arc<[AccessRule]>,
) -> Option<(Location, Option<regex::bytes::Regex>)> {
    let l = &raw.value;
    let Some(pattern_text) = l.location.as_ref() else {
        c.push(c.origin(&raw.referenced), "a location needs its pattern: location: /path (or \"= /path\", \"^~ /path\", \"~ regex\", \"~* regex\")");
        return None;
    };
    let origin = c.origin_of(pattern_text);
    let text = pattern_text.value.trim();
    let (kind, pattern) = if let Some(p) = text.strip_prefix("^~") {
        (LocationKind::PrefixNoRegex, p.trim())
    } else if let Some(p) = text.strip_prefix("~*") {
        (LocationKind::RegexCaseless, p.trim())
    } else if let Some(p) = text.strip_prefix('~') {
        (LocationKind::Regex, p.trim())
    } else if let Some(p) = text.strip_prefix('=') {
        (LocationKind::Exact, p.trim())
    } else {
        (LocationKind::Prefix, text)
    };
    let is_regex = matches!(kind, LocationKind::Regex | LocationKind::RegexCaseless);
    let regex = if is_regex {
        match actions::compile_regex(pattern, kind == LocationKind::RegexCaseless) {
            Ok(r) => Some(r),
            Err(e) => {
                c.error(pattern_text, format!("location: {e}"));
                return None;
            }
        }
    } else {
        if !pattern.starts_with('/') {
            c.error(pattern_text, format!("location: {pattern:?} must start with / (or be \"= /path\", \"^~ /path\", \"~ regex\", \"~* regex\")"));
            return None;
        }
        None
    };

    let mut rewrites = Vec::new();
    for r in l.rewrite.iter().flat_map(|l| l.0.iter()) {
        match parse_rewrite(&r.value, ctx.named) {
            Ok(rw) => rewrites.push((rw, c.origin_of(r))),
            Err(e) => c.error(r, format!("rewrite: {e}")),
        }
    }

    let action = match (l.proxy_pass.as_ref(), l.return_.as_ref()) {
        (Some(p), Some(r)) => {
            c.error(r, format!("a location has exactly one of proxy_pass or return; this one also has proxy_pass at {}", c.origin_of(p)));
            Action::None
        }
        (Some(p), None) => match compile_proxy_pass(c, p, ctx.upstream_names, is_regex) {
            Some(pp) => Action::Proxy(pp),
            None => Action::None,
        },
        (None, Some(r)) => match parse_return(&r.value, ctx.named) {
            Ok(ret) => Action::Return(ret),
            Err(e) => {
                c.error(r, format!("return: {e}"));
                Action::None
            }
        },
        (None, None) => {
            if rewrites.is_empty() {
                c.error(
                    pattern_text,
                    "location has nothing to do: give it proxy_pass, return or rewrite",
                );
            }
            Action::None
        }
    };

    let headers = header_rules(
        c,
        server_headers,
        l.add_header.as_ref(),
        l.proxy_set_header.as_ref(),
        l.proxy_hide_header.as_ref(),
        ctx.named,
    );
    let access =
        access_rules(c, l.allow.as_ref(), l.deny.as_ref()).unwrap_or_else(|| server_access.clone());
    let optional_duration = |c: &mut Checker<'_>, t: Option<&Text>, key: &str| {
        t.map(|t| c.duration(Some(t), key, Duration::ZERO))
    };
    let label: Arc<str> = Arc::from(format!("{}{}", kind.modifier(), pattern));
    let location = Location {
        label,
        origin,
        kind,
        pattern: pattern.to_string(),
        rewrites,
        action,
        client_max_body_size: c.size(
            l.client_max_body_size.as_ref(),
            "client_max_body_size",
            server_limits.client_max_body_size,
        ),
        client_body_timeout: c.duration(
            l.client_body_timeout.as_ref(),
            "client_body_timeout",
            server_limits.client_body_timeout,
        ),
        headers,
        access,

        proxy_read_timeout: optional_duration(
            c,
            l.proxy_read_timeout.as_ref(),
            "proxy_read_timeout",
        ),
        proxy_send_timeout: optional_duration(
            c,
            l.proxy_send_timeout.as_ref(),
            "proxy_send_timeout",
        ),
        counters: Default::default(),
    };
    Some((location, regex))
}

fn compile_proxy_pass(
    c: &mut Checker<'_>,
    text: &Text,
    upstream_names: &[&str],
    is_regex_location: bool,
) -> Option<ProxyPass> {
    let (https, target, uri) = match split_proxy_pass(&text.value) {
        Ok(parts) => parts,
        Err(e) => {
            c.error(text, format!("proxy_pass: {e}"));
            return None;
        }
    };
    if is_regex_location {
        if let Some(uri) = uri {
            c.error(text, format!("proxy_pass: a URI part ({uri:?}) cannot be used in a regex location (as nginx); remove it, or set the path with rewrite ... break"));
            return None;
        }
    }
    let target = if let Some(index) = upstream_names.iter().position(|n| *n == target) {
        ProxyTarget::Upstream {
            name: Arc::from(target),
            index,
        }
    } else if target
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
    {
        if let Err(e) = upstream::resolve(target) {
            c.error(text, format!("proxy_pass: {e}"));
            return None;
        }
        ProxyTarget::Address(Arc::from(target))
    } else {
        let hint = closest(target, upstream_names.iter().copied())
            .map(|k| format!(" (did you mean {k:?}?)"))
            .unwrap_or_default();
        let known = if upstream_names.is_empty() {
            "none are defined".to_string()
        } else {
            format!("known: {}", upstream_names.join(", "))
        };
        c.error(text, format!("unknown upstream {target:?} in proxy_pass{hint} ({known}); a literal address needs a port, e.g. 127.0.0.1:8080"));
        return None;
    };
    Some(ProxyPass {
        https,
        target,
        uri: uri.map(Arc::from),
        source: Arc::from(text.value.as_str()),
    })
}

/// A specific address whose port also has a wildcard listener is accepted by
/// the wildcard's socket (one socket a port, as nginx binds), so `deferred`
/// must be set where that socket is configured.
fn deferred_under_wildcard(
    by_addr: &[(SocketAddr, Vec<ListenMember<'_>>)],
    errors: &mut ConfigErrors,
) {
    let wildcard_of = |addr: &SocketAddr| {
        by_addr.iter().find(|(w, _)| {
            w.ip().is_unspecified() && w.port() == addr.port() && w.is_ipv4() == addr.is_ipv4()
        })
    };
    for (addr, members) in by_addr.iter().filter(|(a, _)| !a.ip().is_unspecified()) {
        let Some((wildcard, wild_members)) = wildcard_of(addr) else {
            continue;
        };
        if wild_members.iter().any(|(_, s, _)| s.deferred) {
            continue;
        }
        if let Some((_, _, origin)) = members.iter().find(|(_, s, _)| s.deferred) {
            errors.push(
                (*origin).clone(),
                format!(
                    "listen {addr} deferred: connections to {addr} are accepted by the socket of {wildcard} (at {}), which is not deferred; put `deferred` on that listen entry instead",
                    wild_members[0].2
                ),
            );
        }
    }
}

fn build_listeners(
    servers: &[CompiledServer],
    errors: &mut ConfigErrors,
    warnings: &mut Vec<ConfigError>,
) -> Vec<Listener> {
    // Group by address, keeping configuration order within each.
    let mut by_addr: Vec<(SocketAddr, Vec<ListenMember<'_>>)> = Vec::new();
    for (i, (_, specs, _)) in servers.iter().enumerate() {
        for (spec, origin) in specs {
            match by_addr.iter_mut().find(|(a, _)| *a == spec.addr) {
                Some((_, list)) => {
                    if !list.iter().any(|(s, _, _)| *s == i) {
                        list.push((i, spec, origin));
                    }
                }
                None => by_addr.push((spec.addr, vec![(i, spec, origin)])),
            }
        }
    }
    deferred_under_wildcard(&by_addr, errors);
    let mut listeners = Vec::new();
    for (addr, members) in by_addr {
        let tls = members.iter().any(|(_, s, _)| s.tls);
        let http2 = members.iter().any(|(_, s, _)| s.http2);
        let deferred = members.iter().any(|(_, s, _)| s.deferred);
        if let Some((_, _, origin)) = members.iter().find(|(_, s, _)| s.tls != tls) {
            errors.push((*origin).clone(), format!("listen {addr}: another server uses this address with tls and this one without; all servers on one address must agree on tls"));
        }
        let defaults: Vec<_> = members
            .iter()
            .filter(|(_, s, _)| s.default_server)
            .collect();
        if defaults.len() > 1 {
            errors.push(
                defaults[1].2.clone(),
                format!(
                    "listen {addr}: a second default_server for this address (the first is at {})",
                    defaults[0].2
                ),
            );
        }
        let default_pos = members
            .iter()
            .position(|(_, s, _)| s.default_server)
            .unwrap_or(0);
        let mut builder = HostTableBuilder::new(default_pos);
        for (pos, (server_index, _, _)) in members.iter().enumerate() {
            for (pattern, regex, origin) in &servers[*server_index].2 {
                if let Some(earlier) = builder.add(pattern, regex.clone(), pos) {
                    warnings.push(ConfigError::new(
                        origin.clone(),
                        format!("conflicting server name on {addr}: the server at {} has it already and wins", servers[members[earlier].0].0.origin),
                    ));
                }
            }
        }
        let hosts = builder.build().unwrap_or_else(|e| {
            errors.push(
                members[0].2.clone(),
                format!("listen {addr}: the regex server names could not be combined: {e}"),
            );
            HostTableBuilder::new(default_pos)
                .build()
                .expect("no regexes")
        });
        let servers_here: Vec<Arc<Server>> = members
            .iter()
            .map(|(i, _, _)| servers[*i].0.clone())
            .collect();
        let limits = servers_here[default_pos].limits.clone();
        let hosts = Arc::new(hosts);
        let tls_config = if tls {
            let certs = servers_here.iter().map(|s| s.tls.clone()).collect();
            match crate::tls::server_config(hosts.clone(), certs, default_pos) {
                Ok(c) => Some(c),
                Err(_) if servers_here[default_pos].has_tls_block => None,
                Err(e) => {
                    let origin = members[default_pos].2.clone();
                    errors.push(
                        origin,
                        format!(
                            "listen {addr} tls: {e} (the default server is at {})",
                            servers_here[default_pos].origin
                        ),
                    );
                    None
                }
            }
        } else {
            None
        };
        listeners.push(Listener {
            addr,
            tls,
            http2,
            deferred,
            servers: servers_here,
            hosts,
            limits,
            tls_config,
        });
    }
    listeners
}
