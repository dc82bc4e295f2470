//! Strings with variables (`https://$host$request_uri`), parsed once when the
//! configuration is compiled into literal parts and variable references, so
//! that a request only copies bytes and looks values up.

use crate::config::error::closest;
use http::header::HeaderName;
use std::collections::HashSet;
use std::sync::Arc;

/// A variable a template can name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Var {
    Host,
    Hostname,
    RemoteAddr,
    RemotePort,
    ServerAddr,
    ServerPort,
    ServerName,
    Scheme,
    RequestMethod,
    RequestUri,
    Uri,
    Args,
    /// `$arg_NAME`: the first query argument NAME (names compared case-insensitively, as nginx).
    Arg(Box<str>),
    /// `$http_NAME`: request header NAME, `_` standing for `-`.
    Http(HeaderName),
    /// `$cookie_NAME`.
    Cookie(Box<str>),
    ProxyHost,
    ProxyAddXForwardedFor,
    RequestId,
    /// `$1`..`$9`: groups of the last regex that matched.
    Capture(u8),
    /// A named group of a server-name, location or rewrite regex.
    Named(Arc<str>),
}

/// The built-in names, for validation and suggestions.
pub const BUILTIN_VARIABLES: &[&str] = &[
    "host",
    "hostname",
    "remote_addr",
    "remote_port",
    "server_addr",
    "server_port",
    "server_name",
    "scheme",
    "request_method",
    "request_uri",
    "uri",
    "args",
    "query_string",
    "proxy_host",
    "proxy_add_x_forwarded_for",
    "request_id",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Literal(Box<[u8]>),
    Var(Var),
}

/// A compiled string with variables.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<Part>,
}

impl Template {
    /// A template with no variables.
    pub fn literal(text: &str) -> Self {
        Template {
            parts: if text.is_empty() {
                Vec::new()
            } else {
                vec![Part::Literal(text.as_bytes().into())]
            },
        }
    }

    /// The text when the template has no variables.
    pub fn as_literal(&self) -> Option<&[u8]> {
        match self.parts.as_slice() {
            [] => Some(b""),
            [Part::Literal(l)] => Some(l),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Does the text start with this literal (before any variable)?
    pub fn starts_with_literal(&self, prefix: &str) -> bool {
        matches!(self.parts.first(), Some(Part::Literal(l)) if l.starts_with(prefix.as_bytes()))
    }

    pub fn starts_with_var(&self, var: &Var) -> bool {
        matches!(self.parts.first(), Some(Part::Var(v)) if v == var)
    }
}

/// Parse `text` into a template. `named` holds every named capture group
/// defined anywhere in the configuration (nginx makes them all variables).
pub fn parse_template(text: &str, named: &HashSet<Arc<str>>) -> Result<Template, String> {
    let bytes = text.as_bytes();
    let mut parts = Vec::new();
    let mut literal = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            literal.push(bytes[i]);
            i += 1;
            continue;
        }
        // `${name}` or `$name`; `$1`..`$9` are single digits as in nginx.
        let (name, next) = if bytes.get(i + 1) == Some(&b'{') {
            let close = text[i + 2..]
                .find('}')
                .ok_or_else(|| format!("unclosed \"${{\" at character {} of {text:?}", i + 1))?;
            (&text[i + 2..i + 2 + close], i + 3 + close)
        } else if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            (&text[i + 1..i + 2], i + 2)
        } else {
            let end = bytes[i + 1..]
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                .map_or(bytes.len(), |p| i + 1 + p);
            (&text[i + 1..end], end)
        };
        if name.is_empty() {
            // A lone `$` (e.g. at the end of a regex-looking text) is literal.
            literal.push(b'$');
            i += 1;
            continue;
        }
        let var = resolve_variable(name, named)?;
        if !literal.is_empty() {
            parts.push(Part::Literal(std::mem::take(&mut literal).into()));
        }
        parts.push(Part::Var(var));
        i = next;
    }
    if !literal.is_empty() {
        parts.push(Part::Literal(literal.into()));
    }
    Ok(Template { parts })
}

fn resolve_variable(name: &str, named: &HashSet<Arc<str>>) -> Result<Var, String> {
    Ok(match name {
        "host" => Var::Host,
        "hostname" => Var::Hostname,
        "remote_addr" => Var::RemoteAddr,
        "remote_port" => Var::RemotePort,
        "server_addr" => Var::ServerAddr,
        "server_port" => Var::ServerPort,
        "server_name" => Var::ServerName,
        "scheme" => Var::Scheme,
        "request_method" => Var::RequestMethod,
        "request_uri" => Var::RequestUri,
        "uri" | "document_uri" => Var::Uri,
        "args" | "query_string" => Var::Args,
        "proxy_host" => Var::ProxyHost,
        "proxy_add_x_forwarded_for" => Var::ProxyAddXForwardedFor,
        "request_id" => Var::RequestId,
        n if n.len() == 1 && n.as_bytes()[0].is_ascii_digit() => {
            Var::Capture(n.as_bytes()[0] - b'0')
        }
        n if n.starts_with("arg_") && n.len() > 4 => Var::Arg(n[4..].to_ascii_lowercase().into()),
        n if n.starts_with("cookie_") && n.len() > 7 => Var::Cookie(n[7..].into()),
        n if n.starts_with("http_") && n.len() > 5 => {
            let header = n[5..].replace('_', "-").to_ascii_lowercase();
            Var::Http(
                HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| format!("${n} does not name a valid header"))?,
            )
        }
        n => match named.get(n) {
            Some(k) => Var::Named(k.clone()),
            None => {
                let candidates = BUILTIN_VARIABLES
                    .iter()
                    .copied()
                    .chain(named.iter().map(|k| &**k));
                let hint = closest(n, candidates)
                    .map(|k| format!(" (did you mean ${k}?)"))
                    .unwrap_or_default();
                return Err(format!(
                    "unknown variable ${n}{hint}; known: ${}, $arg_NAME, $http_NAME, $cookie_NAME, $1..$9 and named regex groups",
                    BUILTIN_VARIABLES.join(", $")
                ));
            }
        },
    })
}

/// Undo nginx's double-quoted string escapes: `\n`, `\t`, `\r`, `\"`, `\\`.
/// Other backslashes are kept, as nginx keeps them.
pub fn unescape_nginx(quoted_inner: &str) -> String {
    let mut out = String::with_capacity(quoted_inner.len());
    let mut chars = quoted_inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('"') => out.push('"'),
            Some('\'') => out.push('\''),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named() -> HashSet<Arc<str>> {
        [Arc::from("tenant")].into_iter().collect()
    }

    #[test]
    fn parses_literals_and_variables() {
        let t = parse_template("https://$host$request_uri", &named()).unwrap();
        assert_eq!(
            t.parts,
            vec![
                Part::Literal(b"https://".as_slice().into()),
                Part::Var(Var::Host),
                Part::Var(Var::RequestUri)
            ]
        );
        let t = parse_template("/t/$1/${tenant}x", &named()).unwrap();
        assert_eq!(t.parts[1], Part::Var(Var::Capture(1)));
        assert_eq!(t.parts[3], Part::Var(Var::Named(Arc::from("tenant"))));
        let t = parse_template("$http_x_user_id", &named()).unwrap();
        assert_eq!(
            t.parts[0],
            Part::Var(Var::Http(HeaderName::from_static("x-user-id")))
        );
        assert_eq!(
            parse_template("cost: 5$", &named()).unwrap().as_literal(),
            Some(&b"cost: 5$"[..])
        );
    }

    #[test]
    fn unknown_variable_is_an_error_with_a_suggestion() {
        let e = parse_template("$hots", &named()).unwrap_err();
        assert!(
            e.starts_with("unknown variable $hots (did you mean $host?)"),
            "{e}"
        );
    }

    #[test]
    fn nginx_escapes() {
        assert_eq!(unescape_nginx(r#"ok\n"#), "ok\n");
        assert_eq!(unescape_nginx(r#"a\"b\\c\d"#), "a\"b\\c\\d");
    }
}
