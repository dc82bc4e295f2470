//! Expanding compiled templates against one request.

use super::fields::Fields;
use super::RequestInfo;
use crate::compile::locations::CaptureValues;
use crate::compile::template::{Part, Template, Var};
use crate::compile::Server;
use std::io::Write;
use std::sync::OnceLock;

/// Everything a variable can be read from, for one request at one point of routing.
pub struct VarContext<'a> {
    pub req: &'a RequestInfo<'a>,
    pub host: &'a str,
    pub server: &'a Server,
    /// The current (normalised, possibly rewritten) path: `$uri`.
    pub uri: &'a [u8],
    /// The current arguments: `$args`.
    pub args: &'a [u8],
    pub captures: &'a CaptureValues,
    pub proxy_host: Option<&'a str>,
    pub request_id: &'a OnceLock<String>,
    /// Percent-escape regex groups (they come from the decoded path) where
    /// the result is a URL for a redirect, as nginx does.
    pub escape_captures: bool,
}

impl VarContext<'_> {
    pub fn expand(&self, template: &Template) -> Vec<u8> {
        let mut out = Vec::new();
        self.expand_into(template, &mut out);
        out
    }

    pub fn expand_into(&self, template: &Template, out: &mut Vec<u8>) {
        for part in &template.parts {
            match part {
                Part::Literal(l) => out.extend_from_slice(l),
                Part::Var(v) => self.write_var(v, out),
            }
        }
    }

    fn write_var(&self, var: &Var, out: &mut Vec<u8>) {
        let req = self.req;
        match var {
            Var::Host => {
                if self.host.is_empty() {
                    out.extend_from_slice(self.server.primary_name().as_bytes());
                } else {
                    out.extend_from_slice(self.host.as_bytes());
                }
            }
            Var::Hostname => out.extend_from_slice(hostname().as_bytes()),
            Var::RemoteAddr => {
                let _ = write!(out, "{}", req.remote.ip());
            }
            Var::RemotePort => {
                let _ = write!(out, "{}", req.remote.port());
            }
            Var::ServerAddr => {
                let _ = write!(out, "{}", req.local.ip());
            }
            Var::ServerPort => {
                let _ = write!(out, "{}", req.local.port());
            }
            Var::ServerName => out.extend_from_slice(self.server.primary_name().as_bytes()),
            Var::Scheme => out.extend_from_slice(req.scheme().as_bytes()),
            Var::RequestMethod => out.extend_from_slice(req.method.as_str().as_bytes()),
            Var::RequestUri => req.append_request_uri(out),
            Var::Uri => out.extend_from_slice(self.uri),
            Var::Args => out.extend_from_slice(self.args),
            Var::Arg(name) => {
                if let Some(v) = find_arg(self.args, name) {
                    out.extend_from_slice(v);
                }
            }
            Var::Http(name) => {
                let separator: &[u8] = if name == http::header::COOKIE {
                    b"; "
                } else {
                    b", "
                };
                for (i, v) in req.headers.get_all(name).enumerate() {
                    if i > 0 {
                        out.extend_from_slice(separator);
                    }
                    out.extend_from_slice(v);
                }
            }
            Var::Cookie(name) => {
                if let Some(v) = find_cookie(req.headers, name) {
                    out.extend_from_slice(v);
                }
            }
            Var::ProxyHost => {
                if let Some(h) = self.proxy_host {
                    out.extend_from_slice(h.as_bytes());
                }
            }
            Var::ProxyAddXForwardedFor => {
                let mut any = false;
                for v in req.headers.get_all(&X_FORWARDED_FOR) {
                    if any {
                        out.extend_from_slice(b", ");
                    }
                    out.extend_from_slice(v);
                    any = true;
                }
                if any {
                    out.extend_from_slice(b", ");
                }
                let _ = write!(out, "{}", req.remote.ip());
            }
            Var::RequestId => {
                out.extend_from_slice(self.request_id.get_or_init(new_request_id).as_bytes())
            }
            Var::Capture(n) => self.write_capture(self.captures.positional(*n), out),
            Var::Named(name) => self.write_capture(self.captures.named(name), out),
        }
    }
}

impl VarContext<'_> {
    fn write_capture(&self, value: Option<&[u8]>, out: &mut Vec<u8>) {
        let Some(v) = value else { return };
        if self.escape_captures {
            for chunk in percent_encoding::percent_encode(v, super::path::REDIRECT_ESCAPE) {
                out.extend_from_slice(chunk.as_bytes());
            }
        } else {
            out.extend_from_slice(v);
        }
    }
}

/// The value of the first argument `name` (compared case-insensitively, as nginx).
pub fn find_arg<'a>(args: &'a [u8], name: &str) -> Option<&'a [u8]> {
    args.split(|b| *b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        k.eq_ignore_ascii_case(name.as_bytes()).then_some(v)
    })
}

static X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

fn find_cookie<'a>(headers: Fields<'a>, name: &str) -> Option<&'a [u8]> {
    headers.get_all(&http::header::COOKIE).find_map(|h| {
        h.split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let i = pair.iter().position(|b| *b == b'=')?;
            (&pair[..i] == name.as_bytes()).then(|| &pair[i + 1..])
        })
    })
}

/// The machine's name, read once.
pub fn hostname() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".to_string())
    })
}

/// 32 hex digits, unique per request (not a secret).
pub fn new_request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS once per thread and differs on each
    // construction: enough for an identifier, without a dependency.
    let mut a = std::collections::hash_map::RandomState::new().build_hasher();
    a.write_u64(0x9e37_79b9_7f4a_7c15);
    let mut b = std::collections::hash_map::RandomState::new().build_hasher();
    b.write_u64(0x6a09_e667_f3bc_c908);
    format!("{:016x}{:016x}", a.finish(), b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_and_ids() {
        assert_eq!(find_arg(b"a=1&B=2&b=3", "b"), Some(&b"2"[..]));
        assert_eq!(find_arg(b"flag&x=", "flag"), Some(&b""[..]));
        assert_eq!(find_arg(b"a=1", "c"), None);
        let (x, y) = (new_request_id(), new_request_id());
        assert_eq!(x.len(), 32);
        assert_ne!(x, y);
    }

    #[test]
    fn request_uri_always_has_a_path() {
        let uri_of = |target: &str| {
            let uri: http::Uri = target.parse().unwrap();
            let headers = http::HeaderMap::new();
            let addr: std::net::SocketAddr = "127.0.0.1:80".parse().unwrap();
            let req = crate::route::RequestInfo {
                method: &http::Method::GET,
                uri: &uri,
                headers: (&headers).into(),
                version: http::Version::HTTP_11,
                local: addr,
                remote: addr,
                tls: false,
            };
            let mut out = Vec::new();
            req.append_request_uri(&mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(uri_of("/a%20b?x=1"), "/a%20b?x=1");
        assert_eq!(uri_of("http://h/p?q"), "/p?q");
        // Found by fuzz/ upstream_request: the path of `http://h?x` is `/`.
        assert_eq!(uri_of("http://h?x"), "/?x");
        assert_eq!(uri_of("http://h"), "/");
        assert_eq!(uri_of("*"), "*");
    }
}
