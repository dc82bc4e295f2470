//! What a location does: `return`, `rewrite` and `proxy_pass`, parsed from
//! their nginx-like one-line syntax into runtime forms.

use super::template::{parse_template, unescape_nginx, Template, Var};
use http::StatusCode;
use regex::bytes::Regex;
use std::collections::HashSet;
use std::sync::Arc;

/// `return: CODE [TEXT|URL]` or `return: URL`.
#[derive(Clone, Debug)]
pub struct Return {
    pub status: StatusCode,
    /// For 301, 302, 303, 307 and 308: the Location; otherwise the body.
    pub text: Template,
}

impl Return {
    pub fn is_redirect(&self) -> bool {
        is_redirect_code(self.status.as_u16())
    }
}

pub fn is_redirect_code(code: u16) -> bool {
    matches!(code, 301 | 302 | 303 | 307 | 308)
}

/// Parse `return`. The text after the code is bare (the rest of the string)
/// or one double-quoted nginx string.
pub fn parse_return(text: &str, named: &HashSet<Arc<str>>) -> Result<Return, String> {
    let trimmed = text.trim_start();
    let (code_text, rest) = match trimmed.find(char::is_whitespace) {
        Some(i) => (&trimmed[..i], trimmed[i..].trim_start()),
        None => (trimmed, ""),
    };
    let Ok(code) = code_text.parse::<u16>() else {
        // nginx: `return URL` alone is a 302 when it is an absolute URL.
        if trimmed.starts_with("http://")
            || trimmed.starts_with("https://")
            || trimmed.starts_with("$scheme")
        {
            return Ok(Return {
                status: StatusCode::FOUND,
                text: parse_template(trimmed, named)?,
            });
        }
        return Err(format!(
            "bad return {text:?}: expected CODE [TEXT|URL], e.g. 200 \"ok\\n\" or 301 https://$host$request_uri"
        ));
    };
    let status = match StatusCode::from_u16(code) {
        Ok(s) if (200..=999).contains(&code) => s,
        _ => {
            return Err(format!(
                "bad return code {code}: expected a status from 200 to 999 (444 closes the connection without an answer)"
            ))
        }
    };
    let body = if rest.len() >= 2 && rest.starts_with('"') && rest.ends_with('"') {
        unescape_nginx(&rest[1..rest.len() - 1])
    } else {
        rest.to_string()
    };
    if is_redirect_code(code) && body.is_empty() {
        return Err(format!("return {code} needs a URL to redirect to, e.g. return: {code} https://$host$request_uri"));
    }
    Ok(Return {
        status,
        text: parse_template(&body, named)?,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewriteFlag {
    /// No flag: go on with the next rewrite; at the end, search locations again.
    None,
    Last,
    Break,
    Redirect,
    Permanent,
}

/// `rewrite: "REGEX REPLACEMENT [flag]"`.
#[derive(Clone, Debug)]
pub struct Rewrite {
    pub regex: Regex,
    /// The replacement up to the first `?` written in it.
    pub replacement: Template,
    /// After a written `?`: the new arguments. As nginx, only a `?` written in
    /// the replacement separates them; one inside a captured value does not.
    pub args: Option<Template>,
    pub flag: RewriteFlag,
    /// The replacement is an absolute URL: answering with a redirect.
    pub to_url: bool,
    /// The replacement ends with `?`: the original arguments are dropped.
    pub drop_args: bool,
    /// The text as written, for `ginx explain`.
    pub source: String,
}

/// Split a directive's words the way nginx does: whitespace separates, and a
/// word may be quoted with `"` or `'` (with `\` escapes inside).
pub fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else { break };
        let mut word = String::new();
        if first == '"' || first == '\'' {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        if n != first && n != '\\' {
                            word.push('\\');
                        }
                        word.push(n);
                    }
                } else if c == first {
                    closed = true;
                    break;
                } else {
                    word.push(c);
                }
            }
            if !closed {
                return Err(format!("unclosed quote {first} in {text:?}"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
    Ok(words)
}

/// Compile one rewrite. Regex errors say where in the pattern.
pub fn parse_rewrite(text: &str, named: &HashSet<Arc<str>>) -> Result<Rewrite, String> {
    let words = split_words(text)?;
    let (pattern, replacement, flag) = match words.as_slice() {
        [p, r] => (p, r, RewriteFlag::None),
        [p, r, f] => {
            let flag = match f.as_str() {
                "last" => RewriteFlag::Last,
                "break" => RewriteFlag::Break,
                "redirect" => RewriteFlag::Redirect,
                "permanent" => RewriteFlag::Permanent,
                other => {
                    return Err(format!(
                    "unknown rewrite flag {other:?}: expected last, break, redirect or permanent"
                ))
                }
            };
            (p, r, flag)
        }
        _ => {
            return Err(format!(
            "bad rewrite {text:?}: expected \"REGEX REPLACEMENT [last|break|redirect|permanent]\""
        ))
        }
    };
    let regex = compile_regex(pattern, false)?;
    let drop_args = replacement.ends_with('?');
    let replacement_text = replacement.strip_suffix('?').unwrap_or(replacement);
    // `?` cannot be part of a variable name, so the first one in the text is a written one.
    let (path_text, args_text) = match replacement_text.split_once('?') {
        Some((p, a)) => (p, Some(a)),
        None => (replacement_text, None),
    };
    let args = args_text.map(|a| parse_template(a, named)).transpose()?;
    let replacement = parse_template(path_text, named)?;
    let to_url = replacement.starts_with_literal("http://")
        || replacement.starts_with_literal("https://")
        || replacement.starts_with_var(&Var::Scheme);
    Ok(Rewrite {
        regex,
        replacement,
        args,
        flag,
        to_url,
        drop_args,
        source: text.to_string(),
    })
}

/// Compile a regex for matching paths, with a message that points into the pattern.
pub fn compile_regex(pattern: &str, caseless: bool) -> Result<Regex, String> {
    if let Err(e) = regex_syntax::ast::parse::Parser::new().parse(pattern) {
        let at = e.span().start.offset;
        return Err(format!(
            "bad regex {pattern:?}: {} at character {} of the pattern",
            e.kind(),
            pattern[..at.min(pattern.len())].chars().count() + 1
        ));
    }
    let full = if caseless {
        format!("(?i){pattern}")
    } else {
        pattern.to_string()
    };
    // As nginx's PCRE without UTF-8 mode: the path is bytes (`.` matches any
    // byte, %FF included), and `~*` folds ASCII case only.
    regex::bytes::RegexBuilder::new(&full)
        .unicode(false)
        .size_limit(1 << 22)
        .build()
        .map_err(|e| format!("bad regex {pattern:?}: {}", first_line(&e.to_string())))
}

fn first_line(s: &str) -> String {
    s.lines()
        .last()
        .unwrap_or(s)
        .trim_start_matches("error: ")
        .to_string()
}

/// The target of `proxy_pass`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyTarget {
    /// An upstream group, by index into the configuration's upstreams.
    Upstream { name: Arc<str>, index: usize },
    /// A literal `host:port`.
    Address(Arc<str>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyPass {
    pub https: bool,
    pub target: ProxyTarget,
    /// The URI part (`/v2/` in `http://api/v2/`), if any: it replaces the
    /// matched prefix.
    pub uri: Option<Arc<str>>,
    /// As written.
    pub source: Arc<str>,
}

impl ProxyPass {
    /// `$proxy_host`: the upstream name or the address as written.
    pub fn proxy_host(&self) -> &str {
        match &self.target {
            ProxyTarget::Upstream { name, .. } => name,
            ProxyTarget::Address(a) => a,
        }
    }
}

/// Split `SCHEME://TARGET[URI]`; the target is resolved by the caller.
pub fn split_proxy_pass(text: &str) -> Result<(bool, &str, Option<&str>), String> {
    let (https, rest) = if let Some(r) = text.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = text.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!(
            "bad proxy_pass {text:?}: expected http://TARGET[/URI] or https://TARGET[/URI], TARGET an upstream name or host:port"
        ));
    };
    let (target, uri) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    if target.is_empty() {
        return Err(format!(
            "bad proxy_pass {text:?}: no upstream name or host:port after the scheme"
        ));
    }
    if text.contains('$') {
        return Err(format!(
            "bad proxy_pass {text:?}: variables are not supported in proxy_pass"
        ));
    }
    Ok((https, target, uri))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> HashSet<Arc<str>> {
        HashSet::new()
    }

    #[test]
    fn return_forms() {
        let r = parse_return("200 \"ok\\n\"", &none()).unwrap();
        assert_eq!(r.text.as_literal(), Some(&b"ok\n"[..]));
        let r = parse_return("200 ok\n", &none()).unwrap();
        assert_eq!(r.text.as_literal(), Some(&b"ok\n"[..]));
        let r = parse_return("204", &none()).unwrap();
        assert!(r.text.is_empty());
        let r = parse_return("https://x.example/", &none()).unwrap();
        assert_eq!(r.status, StatusCode::FOUND);
        assert!(parse_return("301", &none()).is_err());
        assert!(parse_return("abc", &none()).is_err());
        assert!(parse_return("99 x", &none()).is_err());
    }

    #[test]
    fn rewrite_forms() {
        let r = parse_rewrite("^/old/(.*)$ /new/$1 permanent", &none()).unwrap();
        assert_eq!(r.flag, RewriteFlag::Permanent);
        assert!(!r.to_url);
        let r = parse_rewrite("'^/a b/(.*)$' https://x/$1?", &none()).unwrap();
        assert!(r.to_url && r.drop_args && r.args.is_none());
        let r = parse_rewrite("^/(.*)$ /new?id=$1&x=1", &none()).unwrap();
        assert_eq!(r.replacement.as_literal(), Some(&b"/new"[..]));
        assert!(r.args.is_some() && !r.drop_args);
        let e = parse_rewrite("^/(abc /x", &none()).unwrap_err();
        assert!(e.contains("unclosed group at character 3"), "{e}");
        assert!(parse_rewrite("^/ /x lst", &none())
            .unwrap_err()
            .contains("unknown rewrite flag"));
    }

    #[test]
    fn proxy_pass_split() {
        assert_eq!(
            split_proxy_pass("http://api/v2/"),
            Ok((false, "api", Some("/v2/")))
        );
        assert_eq!(
            split_proxy_pass("https://10.0.0.1:443"),
            Ok((true, "10.0.0.1:443", None))
        );
        assert!(split_proxy_pass("ftp://x").is_err());
    }
}
