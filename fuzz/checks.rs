//! Property checks shared by the fuzz targets (`fuzz/fuzz_targets/*.rs`) and
//! the regression test (`tests/fuzz_regressions.rs`, which replays every file
//! under `fuzz/regressions/<target>/`).
//!
//! Each check takes the raw fuzz input and panics (`assert!`) when a property
//! fails; an input a check cannot use (not a request hyper would accept, a
//! configuration that would read outside its directory...) is ignored. Only
//! crates that both the fuzz crate and the main crate's tests have are used.

// Each fuzz target uses one check; the regression test uses them all.
#![allow(dead_code)]

use bytes::Bytes;
use ginx::compile::actions::compile_regex;
use ginx::compile::locations::{Found, LocationKey, LocationKind, LocationTable};
use ginx::compile::{Action, Config, Listener, Server};
use ginx::route::fields::{field_span, Fields, HeadFields};
use ginx::route::path::{self, PathError};
use ginx::route::{Outcome, RequestInfo, Routed};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri, Version};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Inputs larger than this are ignored (the loader and the regexes are
/// linear, but a fuzz iteration should stay short).
pub const MAX_INPUT: usize = 64 << 10;

/// The address the fixed configurations listen on, and the client's.
const LOCAL: &str = "127.0.0.1:8080";
const REMOTE: &str = "127.0.0.1:40000";

fn local() -> SocketAddr {
    LOCAL.parse().expect("valid address")
}

fn remote() -> SocketAddr {
    REMOTE.parse().expect("valid address")
}

/// A configuration compiled from YAML text through the real loader (files in
/// a temporary directory that is gone once it is compiled).
fn compile_yaml(yaml: &str) -> Config {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("ginx.yaml");
    std::fs::write(&file, yaml).expect("write config");
    match ginx::compile::load_and_compile(&file) {
        Ok(c) => c,
        Err(e) => panic!("the fixed fuzz configuration does not compile:\n{e}"),
    }
}

fn listener(config: &Config) -> &Listener {
    config.listener_for(local()).expect("a listener on LOCAL")
}

// ---------------------------------------------------------------------------
// 1. config_load
// ---------------------------------------------------------------------------

/// The input is the main file; after a first NUL byte (never valid YAML), the
/// rest is `conf.d/fuzz.yaml`, which the main file may include
/// (`include: conf.d/*.yaml`). Loading and compiling must not panic; every
/// error (and warning) names one of these files and a line:column inside it.
/// A configuration that compiles is then asked to route two requests.
///
/// Inputs that would make the loader reach outside the temporary directory
/// are skipped (see [`stays_inside`]): an absolute or `..` include pattern or
/// certificate path (the fuzzer would read /etc, or block on /dev/stdin), and
/// an upstream address that is a name to resolve (DNS is network traffic).
pub fn config_load(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let (main, include) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    if !stays_inside(main, include) {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let main_path = dir.path().join("ginx.yaml");
    std::fs::write(&main_path, main).expect("write main file");
    if let Some(include) = include {
        std::fs::create_dir(dir.path().join("conf.d")).expect("conf.d");
        std::fs::write(dir.path().join("conf.d/fuzz.yaml"), include).expect("write include");
    }
    match ginx::compile::load_and_compile(&main_path) {
        Ok(config) => {
            for w in &config.warnings {
                check_positioned(dir.path(), w);
            }
            route_a_few(&config);
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "an Err without any error");
            for e in errors.iter() {
                check_positioned(dir.path(), e);
            }
        }
    }
}

/// An error names a file of the configuration and a place inside it, and its
/// text starts with `FILE:LINE:COLUMN: `.
fn check_positioned(dir: &Path, e: &ginx::config::ConfigError) {
    let o = &e.origin;
    assert!(
        o.file.starts_with(dir) && o.file.is_file(),
        "error names a file that is not part of the configuration: {e}"
    );
    assert!(
        o.line >= 1 && o.column >= 1,
        "error without a position: {e}"
    );
    let text = std::fs::read(&o.file).unwrap_or_default();
    let lines = yaml_lines(&text);
    assert!(
        o.line <= lines + 1,
        "error on line {} of a file of {} lines: {e}",
        o.line,
        lines
    );
    assert!(!e.message.is_empty(), "error without a message: {e}");
    let shown = e.to_string();
    let place = format!(":{}:{}: ", o.line, o.column);
    assert!(
        shown.starts_with(&format!("{o}: ")) && shown.contains(&place),
        "error text does not start with file:line:column: {shown:?}"
    );
}

/// Lines as YAML counts them: a line break is CRLF, CR or LF (so a file
/// with old Mac line ends has many lines and no `\n`).
fn yaml_lines(text: &[u8]) -> u32 {
    let mut lines = 1;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'\r' if text.get(i + 1) == Some(&b'\n') => {
                lines += 1;
                i += 1;
            }
            b'\r' | b'\n' => lines += 1,
            _ => {}
        }
        i += 1;
    }
    lines
}

/// Route a plain request and a messy one on every address of a configuration
/// that compiled: must not panic, and a proxying answer builds its headers.
fn route_a_few(config: &Config) {
    for l in &config.listeners {
        let _ = l.default_server();
        for (target, host) in [
            ("/", "localhost"),
            ("/a/./b/../c%2Fd.png?x=1", "A.Example."),
        ] {
            let uri: Uri = target.parse().expect("valid target");
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static(host));
            let info = RequestInfo {
                method: &Method::GET,
                uri: &uri,
                headers: (&headers).into(),
                version: Version::HTTP_11,
                local: l.addr,
                remote: remote(),
                tls: l.tls,
            };
            let routed = ginx::route::route(l, &info, None);
            if let (Outcome::Proxy { .. }, Some(location)) = (&routed.outcome, routed.location) {
                let _ = ginx::forward::upstream_headers(&info, &routed, location);
            }
        }
    }
}

/// Does loading this input stay inside its directory, without DNS? The same
/// parser as the loader's decides what the loader will see.
fn stays_inside(main: &[u8], include: Option<&[u8]>) -> bool {
    use ginx::config::load::parse_yaml;
    use ginx::config::raw::{IncludedFile, MainFile};
    let name: Arc<Path> = Arc::from(Path::new("ginx.yaml"));
    // Paths the loader or the compiler would open, and addresses it would resolve.
    let mut files: Vec<String> = Vec::new();
    let mut addrs: Vec<String> = Vec::new();
    // The raw types are serde-saphyr's `Spanned` wrappers: walked by a macro
    // so that this file needs no serde-saphyr dependency to name them.
    macro_rules! walk {
        ($upstreams:expr, $servers:expr) => {
            for (_, u) in &$upstreams.0 {
                for s in &u.value.servers {
                    addrs.extend(s.value.addr.iter().map(|a| a.value.clone()));
                }
                if let Some(t) = &u.value.tls {
                    let t = &t.value;
                    for p in [&t.ca, &t.certificate, &t.key].into_iter().flatten() {
                        files.push(p.value.clone());
                    }
                }
            }
            for s in $servers.iter() {
                if let Some(t) = &s.value.tls {
                    for p in [&t.value.certificate, &t.value.key].into_iter().flatten() {
                        files.push(p.value.clone());
                    }
                }
                for l in &s.value.locations {
                    if let Some(p) = &l.value.proxy_pass {
                        if let Ok((_, target, _)) =
                            ginx::compile::actions::split_proxy_pass(&p.value)
                        {
                            addrs.push(target.to_string());
                        }
                    }
                }
            }
        };
    }
    if let Ok(text) = std::str::from_utf8(main) {
        if let Ok(m) = parse_yaml::<MainFile>(&name, text, "") {
            files.extend(
                m.include
                    .iter()
                    .flat_map(|l| l.0.iter())
                    .map(|p| p.value.clone()),
            );
            walk!(m.upstreams, m.servers);
        }
    }
    if let Some(Ok(text)) = include.map(std::str::from_utf8) {
        if let Ok(f) = parse_yaml::<IncludedFile>(&name, text, "") {
            walk!(f.upstreams, f.servers);
        }
    }
    files.iter().all(|p| local_path(p)) && !addrs.iter().any(|a| would_resolve(a))
}

/// A path the loader may open: relative, and without `..`.
fn local_path(p: &str) -> bool {
    !p.starts_with('/') && !p.contains("..")
}

/// Would `ginx::compile::upstream::resolve` ask the resolver (not a literal
/// IP:port, and shaped as host:port)?
fn would_resolve(addr: &str) -> bool {
    addr.parse::<SocketAddr>().is_err()
        && addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
}

// ---------------------------------------------------------------------------
// 2. path_normalize
// ---------------------------------------------------------------------------

/// `normalize` against an independent model of its documented rules, and the
/// invariants of its result:
/// - it starts with `/` and has no NUL, no `//`, no `.` or `..` segment;
/// - it ends with `/` exactly when the decoded path's last segment is empty,
///   `.` or `..` (or it is `/`);
/// - the round trip `normalize(encode_path_into(n)) == n` holds (normalising
///   the output again is not the identity by itself: a decoded `%25` would be
///   decoded twice; the encoded form is what goes on the wire), the encoded
///   form is a valid request path for `http`, and `resolve_dots(n) == n`.
///
/// `percent_decode` and `resolve_dots` are checked on the raw input too.
pub fn path_normalize(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let got = path::normalize(data).map(|p| p.into_owned());
    assert_eq!(
        got,
        model_normalize(data),
        "normalize({:?}) differs from the documented rules",
        String::from_utf8_lossy(data)
    );
    assert_eq!(path::percent_decode(data), model_decode(data));
    check_resolve_dots(data);

    let Ok(n) = got else { return };
    assert_clean(&n);
    let decoded = path::percent_decode(data).expect("normalize succeeded");
    let last = decoded.rsplit(|b| *b == b'/').next().unwrap_or(b"");
    let wants_slash = n == b"/" || matches!(last, b"" | b"." | b"..");
    assert_eq!(n.ends_with(b"/"), wants_slash, "trailing slash of {n:?}");

    let mut encoded = Vec::new();
    path::encode_path_into(&n, &mut encoded);
    assert!(
        encoded.iter().all(|b| b.is_ascii_graphic()),
        "encoded path has raw bytes: {encoded:?}"
    );
    assert_eq!(path::percent_decode(&encoded), Ok(n.clone()));
    assert_eq!(
        path::normalize(&encoded).map(|p| p.into_owned()),
        Ok(n.clone()),
        "normalize(encode(n)) != n for {:?}",
        String::from_utf8_lossy(&n)
    );
    assert_eq!(path::resolve_dots(&n), Ok(n.clone()));
    let pq = http::uri::PathAndQuery::try_from(encoded.as_slice())
        .unwrap_or_else(|e| panic!("encoded path {encoded:?} is not a valid path: {e}"));
    assert_eq!(pq.path().as_bytes(), &encoded[..]);
    assert_eq!(pq.query(), None);
}

/// Starts with `/`; no NUL, no `//`, no `.` or `..` segment.
fn assert_clean(n: &[u8]) {
    assert_eq!(n.first(), Some(&b'/'), "{n:?} does not start with /");
    assert!(!n.contains(&0), "{n:?} has a NUL");
    assert!(!n.windows(2).any(|w| w == b"//"), "{n:?} has //");
    assert!(
        !n[1..]
            .split(|b| *b == b'/')
            .any(|s| s == b"." || s == b".."),
        "{n:?} has a dot segment"
    );
}

fn check_resolve_dots(data: &[u8]) {
    let got = path::resolve_dots(data);
    assert_eq!(got, model_resolve(data), "resolve_dots({data:?})");
    if let Ok(r) = got {
        if !data.contains(&0) {
            assert_clean(&r);
        }
        assert_eq!(path::resolve_dots(&r), Ok(r.clone()), "not idempotent");
    }
}

/// PathError::Malformed's documentation: `%zz`, `%0`, a decoded NUL, or a
/// target not starting with `/`. Then decode once and resolve.
fn model_normalize(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let decoded = model_decode(raw)?;
    if raw.first() != Some(&b'/') {
        return Err(PathError::Malformed);
    }
    model_resolve(&decoded)
}

fn model_decode(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some((&b, tail)) = rest.split_first() {
        let byte = if b == b'%' {
            let (h, l) = match tail {
                [h, l, ..] => (hex(*h), hex(*l)),
                _ => (None, None),
            };
            let (Some(h), Some(l)) = (h, l) else {
                return Err(PathError::Malformed);
            };
            rest = &tail[2..];
            h * 16 + l
        } else {
            rest = tail;
            b
        };
        if byte == 0 {
            return Err(PathError::Malformed);
        }
        out.push(byte);
    }
    Ok(out)
}

/// Segments after the first `/`: empty and `.` vanish, `..` removes the one
/// before (none left: above the root); a final empty, `.` or `..` segment
/// leaves a trailing slash.
fn model_resolve(decoded: &[u8]) -> Result<Vec<u8>, PathError> {
    if decoded.first() != Some(&b'/') {
        return Err(PathError::Malformed);
    }
    let segments: Vec<&[u8]> = decoded[1..].split(|b| *b == b'/').collect();
    let mut kept: Vec<&[u8]> = Vec::new();
    for s in &segments {
        match *s {
            b"" | b"." => {}
            b".." => {
                if kept.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => kept.push(s),
        }
    }
    let mut out = Vec::new();
    for s in &kept {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    let last = segments.last().copied().unwrap_or(b"");
    if out.is_empty() || matches!(last, b"" | b"." | b"..") {
        out.push(b'/');
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// 3. location_match
// ---------------------------------------------------------------------------

/// Every kind of location, servers chosen by exact, wildcard and regex
/// names, rewrites (`last`, `break`, a loop, a redirect), the trailing-slash
/// redirect, allow/deny. Templates read only the normalised path, never
/// `$request_uri`, so two encodings of one path must get the same answer.
const LOCATION_CONFIG: &str = r#"
upstreams:
  app: { servers: ["127.0.0.1:9"] }
servers:
  - listen: ["127.0.0.1:8080"]
    server_name: [site.test, "*.wild.test", "~^(?<sub>[a-z0-9]+)\\.re\\.test$"]
    locations:
      - location: "= /"
        return: 200 "root"
      - location: "= /exact"
        return: 200 "exact $uri"
      - location: "= /app/x/"
        proxy_pass: http://app
      - location: /
        proxy_pass: http://app
      - location: /a
        return: 200 "a"
      - location: /a/b
        return: 200 "a/b"
      - location: /a/b/c/
        proxy_pass: http://app/abc/
      - location: /a/bc
        return: 200 "a/bc"
      - location: /ab
        return: 200 "ab"
      - location: /app/
        proxy_pass: http://app/v2/
      - location: /apple
        return: 200 "apple"
      - location: "^~ /static/"
        proxy_pass: http://app
      - location: "^~ /static/img/"
        return: 200 "static img"
      - location: "~ \\.php$"
        proxy_pass: http://app
      - location: "~* \\.(png|jpe?g|gif)$"
        return: 200 "image $1 $uri"
      - location: "~ ^/users/(?<id>[0-9]+)/?$"
        return: 200 "user $id"
      - location: "~ ^/a/(.*)/z$"
        return: 200 "a-z $1"
      - location: "~* ^/CaSe/"
        return: 200 "case"
      - location: "~ \\xff|\\x00|%"
        return: 200 "odd byte"
      - location: /old/
        rewrite: ["^/old/(.*)$ /new/$1 last"]
      - location: /new/
        return: 200 "new $uri $args"
      - location: /loop/
        rewrite: ["^/loop/(.*)$ /loop/x$1 last"]
      - location: /brk/
        rewrite: ["^/brk/(.*)$ /x/$1 break"]
        proxy_pass: http://app
      - location: /red/
        rewrite: ["^/red/(.*)$ /target/$1 permanent"]
      - location: /red2/
        rewrite: ["^/red2/(.*)$ http://elsewhere.test/$1?from=red2 redirect"]
      - location: /flag/
        rewrite: ["^/flag/(.*)$ /new/$1"]
      - location: /admin/
        deny: [all]
        proxy_pass: http://app
      - location: /gone
        return: 444
  - listen: ["127.0.0.1:8080"]
    server_name: [other.test]
    locations:
      - location: /
        return: 200 "other $host $uri"
      - location: "= /x"
        return: 302 /y
"#;

struct LocationFixture {
    config: Config,
    /// Per server of the listener (in its order), the reference model's view
    /// of its locations.
    models: Vec<Vec<ModelLocation>>,
}

/// What the reference matcher knows of one location.
struct ModelLocation {
    kind: LocationKind,
    pattern: Vec<u8>,
    matches: Option<Matcher>,
    redirects: bool,
}

type Matcher = Box<dyn Fn(&[u8]) -> bool + Send + Sync>;

fn matcher(kind: LocationKind, pattern: &str) -> Option<Matcher> {
    let caseless = match kind {
        LocationKind::Regex => false,
        LocationKind::RegexCaseless => true,
        _ => return None,
    };
    let re = compile_regex(pattern, caseless).ok()?;
    Some(Box::new(move |p| re.is_match(p)))
}

fn location_fixture() -> &'static LocationFixture {
    static FIXTURE: OnceLock<LocationFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let config = compile_yaml(LOCATION_CONFIG);
        let models = listener(&config)
            .servers
            .iter()
            .map(|s| {
                s.locations
                    .iter()
                    .map(|l| ModelLocation {
                        kind: l.kind,
                        pattern: l.pattern.as_bytes().to_vec(),
                        matches: matcher(l.kind, &l.pattern),
                        redirects: matches!(l.action, Action::Proxy(_))
                            && l.pattern.ends_with('/')
                            && !matches!(l.kind, LocationKind::Regex | LocationKind::RegexCaseless),
                    })
                    .collect()
            })
            .collect();
        LocationFixture { config, models }
    })
}

/// Two modes, by the first byte:
/// - `T`: the location table alone. The rest is lines; the last is a path,
///   the others locations (`=` exact, `^` `^~`, `~` regex, `*` caseless
///   regex, else a prefix; a `!` after that char: a proxying location, which
///   redirects without its final slash). `LocationTable::find` must agree
///   with a plain reading of nginx's order.
/// - otherwise: a request target (an `http::Uri`), then optionally `\n` and a
///   Host value, routed on a fixed configuration. Routing must not panic;
///   tracing must not change the result; the target and its normalised path
///   re-encoded (with the same query) must get the same location and the
///   same answer (upstream URIs: the same once normalised); and the table's
///   choice must agree with the reference model.
pub fn location_match(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    match data.split_first() {
        Some((b'T', rest)) => table_mode(rest),
        _ => route_mode(data),
    }
}

fn route_mode(data: &[u8]) {
    let (target, host) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"site.test"[..]),
    };
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let Ok(host) = HeaderValue::from_bytes(host) else {
        return;
    };
    let fixture = location_fixture();
    let listener = listener(&fixture.config);
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, host);
    let info = RequestInfo {
        method: &Method::GET,
        uri: &uri,
        headers: (&headers).into(),
        version: Version::HTTP_11,
        local: local(),
        remote: remote(),
        tls: false,
    };
    let plain = ginx::route::route(listener, &info, None);
    let mut trace = Vec::new();
    let traced = ginx::route::route(listener, &info, Some(&mut trace));
    assert!(!trace.is_empty(), "a trace without a line");
    assert_same_routing(&plain, &traced, "with and without a trace", false);

    // The table against the model, for the routing path and for raw bytes
    // (a rewrite can make the path anything).
    let server_index = listener
        .servers
        .iter()
        .position(|s| Arc::ptr_eq(s, plain.server))
        .expect("the server is the listener's");
    let server: &Server = plain.server;
    let model = &fixture.models[server_index];
    let no_regex = |i: usize| server.locations[i].kind == LocationKind::PrefixNoRegex;
    check_table(&server.table, model, target, no_regex);

    let Ok(normal) = path::normalize(uri.path().as_bytes()) else {
        return;
    };
    check_table(&server.table, model, &normal, no_regex);
    // (Empty: a bad Host answered 400 before the path was read.)
    if !plain.vars.rewritten && !plain.vars.uri.is_empty() {
        assert_eq!(
            plain.vars.uri, normal,
            "routing path is not normalize(path)"
        );
    }

    let mut pq = Vec::new();
    path::encode_path_into(&normal, &mut pq);
    if let Some(q) = uri.query() {
        pq.push(b'?');
        pq.extend_from_slice(q.as_bytes());
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::try_from(pq.as_slice())
            .unwrap_or_else(|e| panic!("re-encoded target {pq:?} is invalid: {e}")),
    );
    let encoded_uri = Uri::from_parts(parts).expect("same scheme and authority");
    let encoded_info = RequestInfo {
        uri: &encoded_uri,
        ..info
    };
    let encoded = ginx::route::route(listener, &encoded_info, None);
    assert_same_routing(&plain, &encoded, "raw and re-encoded target", true);
}

fn location_id(r: &Routed<'_>) -> Option<String> {
    r.location.map(|l| l.origin.to_string())
}

fn assert_same_routing(a: &Routed<'_>, b: &Routed<'_>, what: &str, upstream_normalised: bool) {
    assert!(Arc::ptr_eq(a.server, b.server), "{what}: another server");
    assert_eq!(location_id(a), location_id(b), "{what}: another location");
    assert_eq!(a.vars.uri, b.vars.uri, "{what}: another $uri");
    assert_eq!(a.vars.args, b.vars.args, "{what}: other $args");
    match (&a.outcome, &b.outcome) {
        (Outcome::Proxy { uri: x }, Outcome::Proxy { uri: y }) if upstream_normalised => {
            let split = |u: &[u8]| -> (Result<Vec<u8>, PathError>, Vec<u8>) {
                let (p, q) = match u.iter().position(|b| *b == b'?') {
                    Some(i) => (&u[..i], u[i..].to_vec()),
                    None => (u, Vec::new()),
                };
                (path::normalize(p).map(|p| p.into_owned()), q)
            };
            assert_eq!(
                split(x.as_bytes()),
                split(y.as_bytes()),
                "{what}: upstream URIs {:?} and {:?} differ once normalised",
                String::from_utf8_lossy(x.as_bytes()),
                String::from_utf8_lossy(y.as_bytes())
            );
        }
        (x, y) => assert_eq!(x, y, "{what}: another outcome"),
    }
}

/// `find` against the reference, by location index.
fn check_table(
    table: &LocationTable,
    model: &[ModelLocation],
    path: &[u8],
    no_regex: impl Fn(usize) -> bool,
) {
    let got = match table.find(path, no_regex) {
        Found::Location(i, _) => ModelFound::Location(i),
        Found::AddSlash(i) => ModelFound::AddSlash(i),
        Found::NotFound => ModelFound::NotFound,
    };
    let want = model_find(model, path);
    assert_eq!(
        got,
        want,
        "location table and nginx's order disagree for {:?}",
        String::from_utf8_lossy(path)
    );
}

#[derive(Debug, PartialEq, Eq)]
enum ModelFound {
    Location(usize),
    AddSlash(usize),
    NotFound,
}

/// nginx's order, read plainly: `=`; a proxying location's name without its
/// final slash (unless a location has exactly that name); the longest
/// prefix, final if `^~`; the first matching regex; the longest prefix.
fn model_find(model: &[ModelLocation], path: &[u8]) -> ModelFound {
    let is_prefix =
        |k: LocationKind| matches!(k, LocationKind::Prefix | LocationKind::PrefixNoRegex);
    if let Some(i) = model
        .iter()
        .position(|l| l.kind == LocationKind::Exact && l.pattern == path)
    {
        return ModelFound::Location(i);
    }
    let named_exactly = model
        .iter()
        .any(|l| (is_prefix(l.kind) || l.kind == LocationKind::Exact) && l.pattern == path);
    if !named_exactly {
        if let Some(i) = model.iter().position(|l| {
            l.redirects && l.pattern.len() > 1 && l.pattern.strip_suffix(b"/") == Some(path)
        }) {
            return ModelFound::AddSlash(i);
        }
    }
    let mut longest: Option<usize> = None;
    for (i, l) in model.iter().enumerate() {
        if is_prefix(l.kind)
            && path.starts_with(&l.pattern)
            && longest.is_none_or(|j| model[j].pattern.len() < l.pattern.len())
        {
            longest = Some(i);
        }
    }
    if let Some(i) = longest {
        if model[i].kind == LocationKind::PrefixNoRegex {
            return ModelFound::Location(i);
        }
    }
    if let Some(i) = model
        .iter()
        .position(|l| l.matches.as_ref().is_some_and(|m| m(path)))
    {
        return ModelFound::Location(i);
    }
    longest.map_or(ModelFound::NotFound, ModelFound::Location)
}

/// A location table built from the input's lines, against the model.
fn table_mode(data: &[u8]) {
    let mut lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let Some(path) = lines.pop() else { return };
    if lines.len() > 64 {
        return;
    }
    let mut model: Vec<ModelLocation> = Vec::new();
    let mut keys: Vec<LocationKey<'_>> = Vec::new();
    let mut seen: Vec<(bool, &str)> = Vec::new();
    for line in lines {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let (kind, rest) = match line.as_bytes().first() {
            Some(b'=') => (LocationKind::Exact, &line[1..]),
            Some(b'^') => (LocationKind::PrefixNoRegex, &line[1..]),
            Some(b'~') => (LocationKind::Regex, &line[1..]),
            Some(b'*') => (LocationKind::RegexCaseless, &line[1..]),
            _ => (LocationKind::Prefix, line),
        };
        let (proxies, pattern) = match rest.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, rest),
        };
        let is_regex = matches!(kind, LocationKind::Regex | LocationKind::RegexCaseless);
        // As compile_server: regexes that compile, paths that start with
        // `/`, no duplicate names.
        let regex = if is_regex {
            match compile_regex(pattern, kind == LocationKind::RegexCaseless) {
                Ok(r) => Some(r),
                Err(_) => continue,
            }
        } else {
            let name = (kind == LocationKind::Exact, pattern);
            if !pattern.starts_with('/') || seen.contains(&name) {
                continue;
            }
            seen.push(name);
            None
        };
        let redirects = proxies && pattern.ends_with('/') && !is_regex;
        model.push(ModelLocation {
            kind,
            pattern: pattern.as_bytes().to_vec(),
            matches: matcher(kind, pattern),
            redirects,
        });
        keys.push(LocationKey {
            kind,
            pattern,
            regex,
            redirects_without_slash: redirects,
        });
    }
    let Ok(table) = LocationTable::build(keys) else {
        return;
    };
    let kinds: Vec<LocationKind> = model.iter().map(|l| l.kind).collect();
    check_table(&table, &model, path, |i| {
        kinds[i] == LocationKind::PrefixNoRegex
    });
}

// ---------------------------------------------------------------------------
// 4. upstream_request
// ---------------------------------------------------------------------------

/// Proxying locations of every URI kind (the client's, a URI part, a
/// rewrite), and `proxy_set_header` with variables, a removal, and names a
/// client may also send.
const UPSTREAM_CONFIG: &str = r#"
upstreams:
  app: { servers: ["127.0.0.1:9"] }
servers:
  - listen: ["127.0.0.1:8080"]
    server_name: [site.test]
    proxy_set_header:
      X-Real-IP: "$remote_addr"
      X-Uri: "$uri"
      X-Request-Uri: "$request_uri"
      X-Arg-A: "$arg_a"
      X-Cookie-C: "$cookie_c"
      X-In: "in:$http_x_in"
      X-Host: "$host"
      X-Fwd: "$proxy_add_x_forwarded_for"
      X-Method: "$request_method"
      X-Remove: ""
    locations:
      - location: /
        proxy_pass: http://app
      - location: /v/
        proxy_pass: http://app/v2/
        proxy_set_header: { Host: "$proxy_host", X-Args: "$args", X-Uri: "$uri" }
      - location: /rw/
        rewrite: ["^/rw/(.*)$ /new/$1?r=1 break"]
        proxy_pass: http://app
      - location: "~ ^/re/(?<name>[^/]*)"
        proxy_pass: http://app
        proxy_set_header: { X-Name: "$name", X-One: "$1", Cookie: "$http_cookie" }
  - listen: ["127.0.0.1:8080"]
    server_name: [other.test]
    locations:
      - location: /
        proxy_pass: http://127.0.0.1:9/other/
"#;

/// The upstream address; an `http://` URI's authority as forward() builds it.
const UPSTREAM_AUTHORITY: &str = "127.0.0.1:9";

/// Request bodies above this size are not replayed (the check writes the
/// body it declares).
const MAX_BODY: u64 = 64 << 10;

/// The body a chunked client request carries in this check.
const CHUNKED_BODY: &[u8] = b"chunked body\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n";

struct UpstreamFixture {
    config: Config,
    runtime: tokio::runtime::Runtime,
    /// Header names that the configuration's proxy_set_header may set.
    set_names: Vec<HeaderName>,
}

fn upstream_fixture() -> &'static UpstreamFixture {
    static FIXTURE: OnceLock<UpstreamFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let config = compile_yaml(UPSTREAM_CONFIG);
        let mut set_names = Vec::new();
        for s in &listener(&config).servers {
            for l in &s.locations {
                for (name, _) in l.headers.proxy_set_header.iter() {
                    if !set_names.contains(name) {
                        set_names.push(name.clone());
                    }
                }
            }
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        UpstreamFixture {
            config,
            runtime,
            set_names,
        }
    })
}

/// How the client's request body is held (forward.rs read_request_body).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientBody {
    None,
    Length(u64),
    Chunked,
}

/// A request head as hyper's HTTP/1 server gives it to ginx, or None where
/// hyper (or ginx's serve, which answers 501 to other transfer codings)
/// refuses it. Mirrors hyper 1's `role::Server::parse`.
fn parse_like_hyper(data: &[u8]) -> Option<(http::request::Parts, ClientBody)> {
    let mut slots = [httparse::EMPTY_HEADER; 256]; // serve's MAX_HEADERS
    let mut req = httparse::Request::new(&mut slots);
    let httparse::Status::Complete(_) = req.parse(data).ok()? else {
        return None;
    };
    let method = Method::from_bytes(req.method?.as_bytes()).ok()?;
    let target = req.path?;
    if target.len() >= 65534 {
        return None; // hyper's MAX_URI_LEN: 414
    }
    let uri = Uri::try_from(target).ok()?;
    let version = if req.version? == 1 {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let mut headers = HeaderMap::new();
    let mut body = ClientBody::None;
    let mut content_length: Option<u64> = None;
    let (mut saw_cl, mut saw_te, mut te_chunked) = (false, false, false);
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        if name == header::TRANSFER_ENCODING {
            if version != Version::HTTP_11 {
                return None;
            }
            saw_te = true;
            if saw_cl && content_length.take().is_some() {
                headers.remove(header::CONTENT_LENGTH);
            }
            te_chunked = value.to_str().ok().is_some_and(|s| {
                s.rsplit(',')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
            });
            if te_chunked {
                body = ClientBody::Chunked;
            }
        } else if name == header::CONTENT_LENGTH {
            saw_cl = true;
            if saw_te {
                continue;
            }
            let n = digits(h.value)?;
            if let Some(prev) = content_length {
                if prev != n {
                    return None;
                }
                continue;
            }
            content_length = Some(n);
            body = if n == 0 {
                ClientBody::None
            } else {
                ClientBody::Length(n)
            };
        }
        headers.append(name, value);
    }
    if saw_te && !te_chunked {
        return None;
    }
    // serve::refuse_framing: one Transfer-Encoding, exactly `chunked`.
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (te.next(), te.next()) {
        (None, _) => {}
        (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => {}
        _ => return None,
    }
    let mut request = http::Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Some((request.into_parts().0, body))
}

/// hyper's Content-Length digits: no sign, no space, no overflow.
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut n = 0u64;
    for b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// A request body as forward.rs RequestBody presents it to hyper: `Full`
/// (exact size) or a stream of unknown size.
struct CheckBody {
    data: Option<Bytes>,
    known_size: bool,
}

impl hyper::body::Body for CheckBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.data.take().map(|d| Ok(hyper::body::Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.known_size && self.data.is_none()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        if self.known_size {
            hyper::body::SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
        } else {
            hyper::body::SizeHint::default()
        }
    }
}

/// The input is a raw HTTP/1.x request head (what follows it is ignored).
/// Requests hyper's server would refuse are skipped; the rest are routed on
/// a fixed configuration, and a proxied one is built as forward() builds it
/// (upstream_headers, the upgrade headers, the Host when there is none, the
/// origin-form), serialised by hyper's HTTP/1 client over an in-memory pipe,
/// and what was written is parsed again with httparse:
/// - exactly one request head, then exactly the body its framing declares,
///   which is the body sent, and nothing after;
/// - at most one Content-Length, never with Transfer-Encoding, which can
///   only be hyper's own `chunked`;
/// - the method, and the target ginx built (origin-form);
/// - exactly one Host; the headers are the ones ginx built, values intact;
/// - nothing ginx must strip: Connection (but for an upgrade), Keep-Alive,
///   Proxy-Connection, TE other than `trailers`, Trailer, Upgrade (but for an
///   upgrade), Expect, names with `_`, and the headers the client's
///   Connection names (unless ginx sets them itself).
pub fn upstream_request(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let Some((parts, client_body)) = parse_like_hyper(data) else {
        return;
    };
    let body = match client_body {
        ClientBody::None => CheckBody {
            data: None,
            known_size: true,
        },
        ClientBody::Length(n) if n <= MAX_BODY => CheckBody {
            data: Some(Bytes::from(vec![b'b'; n as usize])),
            known_size: true,
        },
        ClientBody::Length(_) => return,
        ClientBody::Chunked => CheckBody {
            data: Some(Bytes::from_static(CHUNKED_BODY)),
            known_size: false,
        },
    };
    let sent_body = body.data.clone().unwrap_or_default();
    let held_whole = body.known_size;

    let fixture = upstream_fixture();
    let listener = listener(&fixture.config);
    let info = RequestInfo {
        method: &parts.method,
        uri: &parts.uri,
        headers: (&parts.headers).into(),
        version: parts.version,
        local: local(),
        remote: remote(),
        tls: false,
    };
    let routed = ginx::route::route(listener, &info, None);
    let (Outcome::Proxy { uri: upstream_uri }, Some(location)) = (&routed.outcome, routed.location)
    else {
        return;
    };

    // forward(): the headers, the upgrade pair, the URI.
    let mut headers = ginx::forward::upstream_headers(&info, &routed, location);
    let upgrade = ginx::forward::upgrade_protocol((&parts.headers).into());
    if let Some(protocol) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    let pq = http::uri::PathAndQuery::try_from(upstream_uri.as_bytes()).unwrap_or_else(|e| {
        panic!(
            "ginx built an upstream URI {:?} that is not a valid path and query: {e}",
            String::from_utf8_lossy(upstream_uri.as_bytes())
        )
    });
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = Some(http::uri::Authority::from_static(UPSTREAM_AUTHORITY));
    uri.path_and_query = Some(pq.clone());
    let mut request = http::Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = Uri::from_parts(uri).expect("valid upstream URI");
    *request.headers_mut() = headers;

    // What hyper-util's client does on an HTTP/1 connection: Host when there
    // is none, then the origin-form (for CONNECT the authority-form, which
    // is accepted below; an HTTP/1 client of ginx's own would send the
    // origin-form, accepted too).
    request
        .headers_mut()
        .entry(header::HOST)
        .or_insert(HeaderValue::from_static(UPSTREAM_AUTHORITY));
    *request.uri_mut() = Uri::from(pq.clone());
    // What hyper writes as the request target (a `?x` path and query is
    // written `/?x`).
    let target = request.uri().to_string();
    assert!(
        target.starts_with('/'),
        "upstream request target {target:?} is not origin-form"
    );
    let built = request.headers().clone();

    let (wire, send_error) = serialize(&fixture.runtime, request);
    let what = || {
        format!(
            "request {:?}\nwritten upstream {:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&wire)
        )
    };
    if let Some(e) = send_error {
        panic!(
            "hyper's client refused the request ginx built: {e}\n{}",
            what()
        );
    }

    // One head, parsed again.
    let mut slots = [httparse::EMPTY_HEADER; 512];
    let mut head = httparse::Request::new(&mut slots);
    let head_len = match head.parse(&wire) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("no complete request head upstream ({other:?})\n{}", what()),
    };
    assert_eq!(head.method, Some(parts.method.as_str()), "{}", what());
    let connect_authority =
        parts.method == Method::CONNECT && head.path == Some(UPSTREAM_AUTHORITY);
    assert!(
        head.path == Some(target.as_str()) || connect_authority,
        "request target: {:?} sent, {target:?} built\n{}",
        head.path,
        what()
    );
    assert_eq!(head.version, Some(1), "{}", what());
    let sent: Vec<(String, &[u8])> = head
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value))
        .collect();
    let values = |name: &str| -> Vec<&[u8]> {
        sent.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .collect()
    };

    // Framing.
    let lengths = values("content-length");
    let codings = values("transfer-encoding");
    assert!(
        lengths.len() <= 1,
        "more than one Content-Length\n{}",
        what()
    );
    assert!(
        lengths.is_empty() || codings.is_empty(),
        "both Content-Length and Transfer-Encoding\n{}",
        what()
    );
    assert!(
        codings.is_empty() || codings == [b"chunked"],
        "a Transfer-Encoding other than hyper's chunked\n{}",
        what()
    );
    let rest = &wire[head_len..];
    let received: Vec<u8> = if !codings.is_empty() {
        let (body, used) = decode_chunked(rest).unwrap_or_else(|e| panic!("{e}\n{}", what()));
        assert_eq!(used, rest.len(), "bytes after the chunked body\n{}", what());
        body
    } else if let Some(l) = lengths.first() {
        let n = std::str::from_utf8(l)
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("bad Content-Length upstream\n{}", what()));
        assert_eq!(n, rest.len(), "body length and Content-Length\n{}", what());
        rest.to_vec()
    } else {
        assert!(
            rest.is_empty(),
            "bytes after a request without a body\n{}",
            what()
        );
        Vec::new()
    };
    assert_eq!(
        received,
        sent_body.to_vec(),
        "the upstream gets another body than the client sent\n{}",
        what()
    );

    // Headers: one Host; exactly what ginx built (values compared without
    // the surrounding blanks that HTTP/1 drops), plus hyper's framing.
    assert_eq!(values("host").len(), 1, "Host headers\n{}", what());
    for (name, value) in &built {
        let v = value.as_bytes().trim_ascii();
        assert!(
            values(name.as_str()).contains(&v),
            "{name}: {:?} built but not sent\n{}",
            String::from_utf8_lossy(v),
            what()
        );
    }
    for (name, value) in &sent {
        let framing = name == "content-length" || name == "transfer-encoding";
        assert!(
            framing
                || built
                    .get_all(name.as_str())
                    .iter()
                    .any(|b| b.as_bytes().trim_ascii() == *value),
            "{name} sent but not built\n{}",
            what()
        );
    }

    // Nothing that must be stripped.
    let set_by_ginx = |name: &str| {
        [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "host",
        ]
        .contains(&name)
            || fixture.set_names.iter().any(|n| n == name)
    };
    let named_by_connection: Vec<String> = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in &sent {
        let name = name.as_str();
        let allowed = match name {
            "connection" => upgrade.is_some() && *value == b"upgrade",
            "upgrade" => upgrade.as_ref().is_some_and(|p| p.as_bytes() == *value),
            "te" => *value == b"trailers",
            "keep-alive" | "proxy-connection" | "trailer" | "expect" => false,
            // Framing hyper writes itself, checked above.
            "transfer-encoding" | "content-length" => true,
            _ => !name.contains('_'),
        };
        assert!(allowed, "{name} must not go upstream\n{}", what());
        // ginx may set such a name itself, and hyper writes the framing.
        let own = set_by_ginx(name)
            || matches!(name, "content-length" | "transfer-encoding")
            || (upgrade.is_some() && matches!(name, "connection" | "upgrade"));
        if !own && named_by_connection.iter().any(|n| n == name) {
            panic!(
                "{name} is named by the client's Connection and went upstream\n{}",
                what()
            );
        }
    }
    if let Some(v) = values("te").first() {
        assert!(
            *v == b"trailers",
            "TE other than trailers upstream\n{}",
            what()
        );
    }

    // The native client (plain HTTP/1, a body held whole, no upgrade) writes
    // the head itself: the same fields, values and body as hyper's, in
    // whatever order.
    if held_whole && upgrade.is_none() {
        let write_native = |info: &RequestInfo<'_>, routed: &Routed<'_>| {
            let mut out = Vec::new();
            ginx::forward::write_upstream_request(
                &mut out,
                info,
                routed,
                location,
                pq.as_str(),
                UPSTREAM_AUTHORITY,
                &sent_body,
            );
            out
        };
        let native = write_native(&info, &routed);
        let native_what = || {
            format!(
                "{}\nwritten by the native client {:?}",
                what(),
                String::from_utf8_lossy(&native)
            )
        };
        let mut slots = [httparse::EMPTY_HEADER; 512];
        let mut head = httparse::Request::new(&mut slots);
        let len = match head.parse(&native) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "no complete native request head ({other:?})\n{}",
                native_what()
            ),
        };
        assert_eq!(
            head.method,
            Some(parts.method.as_str()),
            "{}",
            native_what()
        );
        if parts.method != Method::CONNECT {
            assert_eq!(head.path, Some(target.as_str()), "{}", native_what());
        }
        let fields = |list: &[httparse::Header<'_>]| {
            let mut v: Vec<(String, Vec<u8>)> = list
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), h.value.trim_ascii().to_vec()))
                .collect();
            v.sort();
            v
        };
        let hyper_fields = {
            let mut v: Vec<(String, Vec<u8>)> = sent
                .iter()
                .map(|(n, v)| (n.clone(), v.trim_ascii().to_vec()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(fields(head.headers), hyper_fields, "{}", native_what());
        assert_eq!(&native[len..], &sent_body[..], "{}", native_what());

        // The fields read where they stand in the head (ginx's own HTTP/1
        // side) route the same and go up the same as from a map, names in
        // the client's spelling.
        let head_fields = head_fields_of(data);
        let head_info = RequestInfo {
            headers: Fields::Head(&head_fields),
            ..info
        };
        let head_routed = ginx::route::route(listener, &head_info, None);
        assert_same_routing(&routed, &head_routed, "a map and the head's fields", false);
        let from_head = write_native(&head_info, &head_routed);
        let mut slots = [httparse::EMPTY_HEADER; 512];
        let mut again = httparse::Request::new(&mut slots);
        let again_len = match again.parse(&from_head) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("no complete request head from the head's fields ({other:?})"),
        };
        assert_eq!(
            fields(again.headers),
            hyper_fields,
            "{}\nwritten from the head's fields {:?}",
            native_what(),
            String::from_utf8_lossy(&from_head)
        );
        assert_eq!(&from_head[again_len..], &sent_body[..], "{}", native_what());
    }
}

/// A request's fields as ginx's own HTTP/1 side keeps them: where they
/// stand in its head (which `parse_like_hyper` has read).
fn head_fields_of(data: &[u8]) -> HeadFields {
    let head = Bytes::copy_from_slice(data);
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut slots);
    req.parse(&head).expect("parsed before");
    let spans: Vec<_> = req.headers.iter().map(|h| field_span(&head, h)).collect();
    HeadFields::new(head.clone(), spans)
}

/// Write `request` with hyper's HTTP/1 client into an in-memory pipe and
/// return every byte written once the client has nothing left to do (it then
/// waits for a response that never comes), with hyper's error if it failed.
fn serialize(
    runtime: &tokio::runtime::Runtime,
    request: http::Request<CheckBody>,
) -> (Vec<u8>, Option<String>) {
    runtime.block_on(async move {
        let (client_io, mut server_io) = tokio::io::duplex(1 << 20);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client_io))
                .await
                .expect("handshake over a pipe");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let send = tokio::spawn(async move { sender.send_request(request).await.map(|_| ()) });
        let mut wire = Vec::new();
        let mut buf = vec![0u8; 16 << 10];
        let mut idle = 0;
        // Everything is in memory on one thread: once a few rounds of the
        // scheduler bring no byte, the client is waiting for an answer.
        while idle < 16 {
            match try_read(&mut server_io, &mut buf).await {
                Some(0) => break,
                Some(n) => {
                    wire.extend_from_slice(&buf[..n]);
                    idle = 0;
                }
                None => {
                    idle += 1;
                    tokio::task::yield_now().await;
                }
            }
        }
        let error = if send.is_finished() {
            match send.await {
                Ok(Err(e)) => Some(format!("{e:?}")),
                _ => None,
            }
        } else {
            send.abort();
            let _ = send.await;
            None
        };
        // Awaited, so that the tasks are gone before the next input (not
        // left in the runtime's queue, which LeakSanitizer reports).
        conn.abort();
        let _ = conn.await;
        (wire, error)
    })
}

/// Read what is there now: Some(0) at the end, None when nothing is ready.
async fn try_read(io: &mut tokio::io::DuplexStream, buf: &mut [u8]) -> Option<usize> {
    use tokio::io::AsyncRead;
    std::future::poll_fn(|cx| {
        let mut rb = tokio::io::ReadBuf::new(buf);
        match std::pin::Pin::new(&mut *io).poll_read(cx, &mut rb) {
            std::task::Poll::Ready(Ok(())) => std::task::Poll::Ready(Some(rb.filled().len())),
            std::task::Poll::Ready(Err(_)) => std::task::Poll::Ready(Some(0)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        }
    })
    .await
}

/// Decode a chunked body strictly: (body, bytes used). Trailer fields are
/// allowed (and dropped).
fn decode_chunked(bytes: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let mut body = Vec::new();
    let mut pos = 0;
    let line_end = |from: usize| -> Result<usize, String> {
        bytes[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| from + i)
            .ok_or_else(|| format!("chunked body cut short at byte {from}"))
    };
    loop {
        let end = line_end(pos)?;
        let line = &bytes[pos..end];
        let size_text = line.split(|b| *b == b';').next().unwrap_or(b"");
        let size = std::str::from_utf8(size_text)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .ok_or_else(|| format!("bad chunk size line {line:?}"))?;
        pos = end + 2;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let end = line_end(pos)?;
                let empty = end == pos;
                pos = end + 2;
                if empty {
                    return Ok((body, pos));
                }
            }
        }
        if bytes.len() < pos + size + 2 || &bytes[pos + size..pos + size + 2] != b"\r\n" {
            return Err(format!("chunk of {size} bytes cut short at byte {pos}"));
        }
        body.extend_from_slice(&bytes[pos..pos + size]);
        pos += size + 2;
    }
}
