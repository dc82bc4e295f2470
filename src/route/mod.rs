//! Routing: from a request head to what should happen, with no network.
//!
//! Server by host (nginx's order), location by normalised path (nginx's
//! precedence), then the location's rewrites (`last` restarts the search, at
//! most 10 times), access rules, and its action. The same function serves
//! requests and `ginx explain`, which asks it for a trace.

pub mod fields;
pub mod host;
pub mod path;
pub mod vars;

use crate::compile::actions::{ProxyPass, RewriteFlag};
use crate::compile::locations::{CaptureValues, Found, LocationKind};
use crate::compile::{access_allows, Action, Listener, Location, Server};
use http::{Method, StatusCode, Uri, Version};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use vars::VarContext;

/// The parts of a request that routing reads.
pub struct RequestInfo<'a> {
    pub method: &'a Method,
    /// The request target as received.
    pub uri: &'a Uri,
    pub headers: fields::Fields<'a>,
    pub version: Version,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub tls: bool,
}

impl RequestInfo<'_> {
    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// Append `$request_uri`: path and arguments as the client sent them.
    /// An absolute-form target with an empty path (`http://h?x`) has the
    /// path `/`, as RFC 9112 3.2.2 says and as hyper sends it on.
    pub fn append_request_uri(&self, out: &mut Vec<u8>) {
        let target = self.uri.path_and_query().map_or("/", |p| p.as_str());
        if !target.starts_with('/') && !target.starts_with('*') {
            out.push(b'/');
        }
        out.extend_from_slice(target.as_bytes());
    }
}

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answer with this status and body (`return` with text, or no body).
    Respond { status: StatusCode, body: Vec<u8> },
    /// Answer with a redirect; the Location is already absolute.
    Redirect {
        status: StatusCode,
        location: Vec<u8>,
    },
    /// Forward to the location's proxy_pass with this path and query.
    Proxy { uri: UpstreamUri },
    /// `return 444`: close the connection without an answer, as nginx.
    Close,
    /// An answer ginx makes itself (400, 403, 404, 500), with the reason for the log.
    Error {
        status: StatusCode,
        reason: &'static str,
    },
}

/// The path and query sent upstream.
#[derive(Clone)]
pub enum UpstreamUri {
    /// The client's, exactly as sent (most requests): shared with the
    /// request's head, not copied.
    AsSent(http::uri::PathAndQuery),
    /// Made by the location's rules: a URI part, a rewrite.
    Built(Vec<u8>),
}

impl UpstreamUri {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            UpstreamUri::AsSent(p) => p.as_str().as_bytes(),
            UpstreamUri::Built(v) => v,
        }
    }

    /// As the `http` crate's type: a built one is checked here, since a
    /// rewrite may have put in it what a request target cannot hold.
    pub fn to_path_and_query(&self) -> Result<http::uri::PathAndQuery, http::uri::InvalidUri> {
        match self {
            UpstreamUri::AsSent(p) => Ok(p.clone()),
            UpstreamUri::Built(v) => http::uri::PathAndQuery::try_from(v.as_slice()),
        }
    }
}

impl PartialEq for UpstreamUri {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for UpstreamUri {}

impl std::fmt::Debug for UpstreamUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// The result of routing one request.
pub struct Routed<'c> {
    /// The server that answers (the address's default one when the host was malformed).
    pub server: &'c Arc<Server>,
    pub location: Option<&'c Location>,
    pub outcome: Outcome,
    /// What variables read at the end of routing.
    pub vars: RouteVars<'c>,
}

/// The routing state that variables read: host, current path and arguments,
/// regex groups. Each is the request's own until a rewrite changes it (or
/// the host had upper case, or the path something to decode or resolve).
#[derive(Default)]
pub struct RouteVars<'r> {
    pub host: Cow<'r, str>,
    /// `$uri`: normalised, possibly rewritten.
    pub uri: Cow<'r, [u8]>,
    pub args: Cow<'r, [u8]>,
    pub captures: CaptureValues,
    /// A rewrite changed the URI: proxy_pass sends the rewritten one.
    pub rewritten: bool,
    /// `rewrite ... break` ran: a proxy_pass URI part is ignored (as nginx).
    pub after_break: bool,
    pub request_id: OnceLock<String>,
}

impl<'c> Routed<'c> {
    pub fn proxy_pass(&self) -> Option<&'c ProxyPass> {
        match self.location.map(|l| &l.action) {
            Some(Action::Proxy(p)) => Some(p),
            _ => None,
        }
    }

    /// A variable context for expanding templates (headers, logs) for this request.
    pub fn var_context<'a>(&'a self, req: &'a RequestInfo<'a>) -> VarContext<'a> {
        VarContext {
            req,
            host: &self.vars.host,
            server: self.server,
            uri: &self.vars.uri,
            args: &self.vars.args,
            captures: &self.vars.captures,
            proxy_host: self.proxy_pass().map(ProxyPass::proxy_host),
            request_id: &self.vars.request_id,
            escape_captures: false,
        }
    }
}

/// Where `ginx explain` collects its lines. The text is only built when a
/// trace was asked for: requests pay nothing for it.
struct Trace<'a>(Option<&'a mut Vec<String>>);

impl Trace<'_> {
    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.0.as_deref_mut() {
            t.push(line());
        }
    }
}

/// nginx stops after 10 internal redirects (rewrite `last` cycles).
const MAX_REWRITE_CYCLES: usize = 10;

/// Route a request arriving on `listener`. `trace`, when given, receives one
/// line per decision, for `ginx explain`.
pub fn route<'c>(
    listener: &'c Listener,
    req: &RequestInfo<'c>,
    trace: Option<&mut Vec<String>>,
) -> Routed<'c> {
    let mut trace = Trace(trace);
    let error = |server, location, status, reason, vars| Routed {
        server,
        location,
        outcome: Outcome::Error { status, reason },
        vars,
    };
    let host = match host::request_host(req.uri, req.headers, req.version) {
        Ok(h) => h,
        Err(e) => {
            let reason = match e {
                host::HostError::Missing => "HTTP/1.1 request without Host",
                host::HostError::Duplicate => "more than one Host header",
                host::HostError::Invalid => "malformed host",
            };
            trace.note(|| format!("400: {reason}"));
            return error(
                listener.default_server(),
                None,
                StatusCode::BAD_REQUEST,
                reason,
                RouteVars::default(),
            );
        }
    };
    let found = listener.hosts.find(&host);
    let server = &listener.servers[found.server];
    trace.note(|| format!("server at {} (host {:?})", server.origin, host));
    let mut vars = RouteVars {
        host,
        captures: found.captures.unwrap_or_default(),
        args: Cow::Borrowed(req.uri.query().unwrap_or("").as_bytes()),
        ..RouteVars::default()
    };
    vars.uri = match path::normalize(req.uri.path().as_bytes()) {
        Ok(p) => p,
        Err(e) => {
            let reason = match e {
                path::PathError::AboveRoot => "path climbs above /",
                path::PathError::Malformed => "malformed path or percent-escape",
            };
            trace.note(|| format!("400: {reason}"));
            return error(server, None, StatusCode::BAD_REQUEST, reason, vars);
        }
    };

    for _cycle in 0..=MAX_REWRITE_CYCLES {
        let location = match server.table.find(&vars.uri, |i| {
            server.locations[i].kind == LocationKind::PrefixNoRegex
        }) {
            Found::Location(i, caps) => {
                if let Some(caps) = caps {
                    merge_captures(&mut vars.captures, caps);
                }
                &server.locations[i]
            }
            Found::AddSlash(i) => {
                let loc = &server.locations[i];
                trace.note(|| {
                    format!(
                        "location {:?} at {} (the path without its final slash)",
                        loc.display_pattern(),
                        loc.origin
                    )
                });
                let mut target = Vec::new();
                path::encode_path_into(&vars.uri, &mut target);
                target.push(b'/');
                if !vars.args.is_empty() {
                    target.push(b'?');
                    target.extend_from_slice(&vars.args);
                }
                trace.note(|| "301: a proxying location ending in / answers its name without the slash with a redirect".to_string());
                let location = absolute_location(req, &vars.host, &target);
                return Routed {
                    server,
                    location: Some(loc),
                    outcome: Outcome::Redirect {
                        status: StatusCode::MOVED_PERMANENTLY,
                        location,
                    },
                    vars,
                };
            }
            Found::NotFound => {
                trace.note(|| "404: no location matches".to_string());
                return error(
                    server,
                    None,
                    StatusCode::NOT_FOUND,
                    "no location matches",
                    vars,
                );
            }
        };
        trace.note(|| {
            format!(
                "location {:?} at {} for {}",
                location.display_pattern(),
                location.origin,
                String::from_utf8_lossy(&vars.uri)
            )
        });

        match run_rewrites(location, req, server, &mut vars, &mut trace) {
            RewriteResult::Stay => {}
            RewriteResult::Again => continue,
            RewriteResult::Answer(outcome) => {
                return Routed {
                    server,
                    location: Some(location),
                    outcome,
                    vars,
                };
            }
        }

        // As nginx, `return` belongs to the rewrite phase: it answers before
        // allow/deny are checked, and `rewrite ... break` stops it too.
        if let Action::Return(ret) = &location.action {
            if !vars.after_break {
                let outcome = return_outcome(req, server, &vars, ret);
                return Routed {
                    server,
                    location: Some(location),
                    outcome,
                    vars,
                };
            }
            trace.note(|| "rewrite ... break stops the location's return (as nginx)".to_string());
        }

        if !access_allows(&location.access, req.remote.ip()) {
            trace.note(|| format!("403: {} is denied by allow/deny", req.remote.ip()));
            return error(
                server,
                Some(location),
                StatusCode::FORBIDDEN,
                "denied by allow/deny",
                vars,
            );
        }

        let outcome = match &location.action {
            Action::Proxy(pass) => Outcome::Proxy {
                uri: upstream_uri(req, location, pass, &vars),
            },
            Action::Return(_) | Action::None => {
                trace.note(|| {
                    "404: nothing in the location answers (ginx serves no files)".to_string()
                });
                return error(
                    server,
                    Some(location),
                    StatusCode::NOT_FOUND,
                    "no rewrite answered and the location has no action",
                    vars,
                );
            }
        };
        return Routed {
            server,
            location: Some(location),
            outcome,
            vars,
        };
    }
    trace.note(|| format!("500: more than {MAX_REWRITE_CYCLES} rewrite cycles"));
    error(
        server,
        None,
        StatusCode::INTERNAL_SERVER_ERROR,
        "rewrite or internal redirection cycle",
        vars,
    )
}

fn return_outcome(
    req: &RequestInfo<'_>,
    server: &Server,
    vars: &RouteVars,
    ret: &crate::compile::actions::Return,
) -> Outcome {
    if ret.status.as_u16() == 444 {
        return Outcome::Close;
    }
    let text = context(req, server, vars, None).expand(&ret.text);
    if ret.is_redirect() {
        Outcome::Redirect {
            status: ret.status,
            location: absolute_location(req, &vars.host, &text),
        }
    } else {
        Outcome::Respond {
            status: ret.status,
            body: text,
        }
    }
}

fn context<'a>(
    req: &'a RequestInfo<'a>,
    server: &'a Server,
    vars: &'a RouteVars,
    proxy_host: Option<&'a str>,
) -> VarContext<'a> {
    VarContext {
        req,
        host: &vars.host,
        server,
        uri: &vars.uri,
        args: &vars.args,
        captures: &vars.captures,
        proxy_host,
        request_id: &vars.request_id,
        escape_captures: false,
    }
}

enum RewriteResult {
    /// Go on in this location.
    Stay,
    /// Search the locations again with the new URI.
    Again,
    Answer(Outcome),
}

/// Newer positional groups replace older ones; names accumulate (the newest wins).
fn merge_captures(into: &mut CaptureValues, new: CaptureValues) {
    into.positional = new.positional;
    into.named.extend(new.named);
}

fn run_rewrites(
    location: &Location,
    req: &RequestInfo<'_>,
    server: &Server,
    vars: &mut RouteVars,
    trace: &mut Trace<'_>,
) -> RewriteResult {
    let mut changed = false;
    for (rw, origin) in &location.rewrites {
        let Some(caps) = rw.regex.captures(&vars.uri) else {
            continue;
        };
        let groups = CaptureValues::from_match(&rw.regex, &caps);
        merge_captures(&mut vars.captures, groups);
        let redirect_status = match rw.flag {
            RewriteFlag::Permanent => Some(StatusCode::MOVED_PERMANENTLY),
            RewriteFlag::Redirect => Some(StatusCode::FOUND),
            _ if rw.to_url => Some(StatusCode::FOUND),
            _ => None,
        };
        let mut ctx = context(req, server, vars, None);
        // In a redirect, groups are escaped: they come from the decoded path.
        ctx.escape_captures = redirect_status.is_some();
        let path = ctx.expand(&rw.replacement);
        let new_args = rw.args.as_ref().map(|t| ctx.expand(t));
        trace.note(|| {
            let args = new_args
                .as_ref()
                .map(|a| format!("?{}", String::from_utf8_lossy(a)))
                .unwrap_or_default();
            format!(
                "rewrite {:?} at {}: {} -> {}{}",
                rw.source,
                origin,
                String::from_utf8_lossy(&vars.uri),
                String::from_utf8_lossy(&path),
                args
            )
        });
        if let Some(status) = redirect_status {
            let mut target = path;
            if let Some(a) = &new_args {
                target.push(b'?');
                target.extend_from_slice(a);
            }
            if !rw.drop_args && !vars.args.is_empty() {
                // As nginx: `&` when the replacement wrote arguments, else `?`.
                target.push(if new_args.is_some() { b'&' } else { b'?' });
                target.extend_from_slice(&vars.args);
            }
            trace.note(|| format!("{}: redirect", status.as_u16()));
            let location = absolute_location(req, &vars.host, &target);
            return RewriteResult::Answer(Outcome::Redirect { status, location });
        }
        // An internal rewrite: a new path, and new arguments (followed by the
        // old ones) when the replacement wrote some.
        vars.uri = Cow::Owned(path);
        if let Some(mut args) = new_args {
            if !rw.drop_args && !vars.args.is_empty() {
                args.push(b'&');
                args.extend_from_slice(&vars.args);
            }
            vars.args = Cow::Owned(args);
        } else if rw.drop_args {
            vars.args = Cow::Borrowed(b"");
        }
        vars.rewritten = true;
        changed = true;
        match rw.flag {
            RewriteFlag::Last => return RewriteResult::Again,
            RewriteFlag::Break => {
                vars.after_break = true;
                return RewriteResult::Stay;
            }
            _ => {}
        }
    }
    if changed && !matches!(location.action, Action::Return(_)) {
        // As nginx: a rewrite without a flag changes the URI, and when nothing
        // in the location answers (a `return` would), the locations are
        // searched again with it.
        RewriteResult::Again
    } else {
        RewriteResult::Stay
    }
}

/// The path and query sent upstream, per the spec's rules: a URI part replaces
/// the matched prefix (not after `rewrite ... break`); else a rewritten URI is
/// sent encoded with the arguments; else the client's URI exactly as sent.
fn upstream_uri(
    req: &RequestInfo<'_>,
    location: &Location,
    pass: &ProxyPass,
    vars: &RouteVars,
) -> UpstreamUri {
    let with_args = |mut out: Vec<u8>| {
        if !vars.args.is_empty() {
            out.push(b'?');
            out.extend_from_slice(&vars.args);
        }
        UpstreamUri::Built(out)
    };
    match (&pass.uri, location.kind) {
        (
            Some(replacement),
            LocationKind::Prefix | LocationKind::PrefixNoRegex | LocationKind::Exact,
        ) if !vars.after_break => {
            let mut out = replacement.as_bytes().to_vec();
            let rest = vars.uri.get(location.pattern.len()..).unwrap_or(b"");
            path::encode_path_into(rest, &mut out);
            with_args(out)
        }
        _ if vars.rewritten => {
            let mut out = Vec::new();
            path::encode_path_into(&vars.uri, &mut out);
            with_args(out)
        }
        _ => match req.uri.path_and_query() {
            Some(p) if p.as_str().starts_with(['/', '*']) => UpstreamUri::AsSent(p.clone()),
            _ => {
                let mut out = Vec::new();
                req.append_request_uri(&mut out);
                UpstreamUri::Built(out)
            }
        },
    }
}

/// Make a redirect target absolute as nginx does: `SCHEME://HOST[:PORT]/path`,
/// the port shown when it is not the scheme's default.
fn absolute_location(req: &RequestInfo<'_>, host: &str, target: &[u8]) -> Vec<u8> {
    if !target.starts_with(b"/") {
        return target.to_vec();
    }
    let mut out = Vec::with_capacity(target.len() + 32);
    out.extend_from_slice(req.scheme().as_bytes());
    out.extend_from_slice(b"://");
    // Without a host (HTTP/1.0), nginx names the local address.
    let host = if !host.is_empty() {
        host.to_string()
    } else {
        match req.local.ip() {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        }
    };
    out.extend_from_slice(host.as_bytes());
    let port = req.local.port();
    let default_port = if req.tls { 443 } else { 80 };
    if port != default_port {
        out.extend_from_slice(format!(":{port}").as_bytes());
    }
    out.extend_from_slice(target);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::fields::Fields;

    const CONFIG: &str = r#"
servers:
  - listen: ["127.0.0.1:8080"]
    locations:
      - location: /
        proxy_pass: http://127.0.0.1:1
      - location: /api/
        proxy_pass: http://127.0.0.1:1/v1/
      - location: /old/
        rewrite: ["^/old/(.*)$ /new/$1 break"]
        proxy_pass: http://127.0.0.1:1
"#;

    /// A request sent on as it came shares its target with the request (no
    /// copy); one whose location changes it is built, and both say the
    /// same bytes as nginx would send.
    #[test]
    fn the_upstream_uri_is_the_clients_own_unless_the_location_changes_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ginx.yaml");
        std::fs::write(&file, CONFIG).unwrap();
        let config = crate::compile::load_and_compile(&file).unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let listener = config.listener_for(local).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, "Example.COM".parse().unwrap());
        let upstream_uri = |target: &str| {
            let uri: Uri = target.parse().unwrap();
            let info = RequestInfo {
                method: &Method::GET,
                uri: &uri,
                headers: Fields::from(&headers),
                version: Version::HTTP_11,
                local,
                remote: "127.0.0.1:40000".parse().unwrap(),
                tls: false,
            };
            let routed = route(listener, &info, None);
            assert_eq!(routed.vars.host, "example.com", "the host lower-cased");
            match routed.outcome {
                Outcome::Proxy { uri } => uri,
                other => panic!("{target}: {other:?}"),
            }
        };
        let shared = |u: &UpstreamUri| matches!(u, UpstreamUri::AsSent(_));

        let as_sent = upstream_uri("/a%2Fb/./c?x=1&y");
        assert!(shared(&as_sent));
        assert_eq!(as_sent.as_bytes(), b"/a%2Fb/./c?x=1&y");
        let absolute = upstream_uri("http://example.com?q");
        assert!(!shared(&absolute), "an empty path is made `/`");
        assert_eq!(absolute.as_bytes(), b"/?q");
        let replaced = upstream_uri("/api/users?id=7");
        assert!(!shared(&replaced));
        assert_eq!(replaced.as_bytes(), b"/v1/users?id=7");
        let rewritten = upstream_uri("/old/page?z");
        assert!(!shared(&rewritten));
        assert_eq!(rewritten.as_bytes(), b"/new/page?z");
        assert_eq!(
            rewritten.to_path_and_query().unwrap().as_str(),
            "/new/page?z"
        );
    }
}
