//! The request's host: from an absolute-form target or HTTP/2 `:authority`,
//! else the Host header; lower-cased, port and trailing dot removed, checked
//! as nginx checks it.

use super::fields::Fields;
use http::{Uri, Version};
use std::borrow::Cow;

#[derive(Debug, PartialEq, Eq)]
pub enum HostError {
    /// HTTP/1.1 without Host.
    Missing,
    /// More than one Host header.
    Duplicate,
    Invalid,
}

/// The host to route by; `""` when an HTTP/1.0 request names none.
pub fn request_host<'a>(
    uri: &'a Uri,
    headers: Fields<'a>,
    version: Version,
) -> Result<Cow<'a, str>, HostError> {
    let mut hosts = headers.get_all(&http::header::HOST);
    if let Some(authority) = uri.authority() {
        // HTTP/1.1 needs a Host even with an absolute-form target (RFC 9112 3.2).
        if version == Version::HTTP_11 && !headers.contains(&http::header::HOST) {
            return Err(HostError::Missing);
        }
        if authority.as_str().contains('@') || !port_is_numeric(authority) {
            return Err(HostError::Invalid);
        }
        return normalize_host(authority.as_str().as_bytes());
    }
    match (hosts.next(), hosts.next()) {
        (Some(h), None) => normalize_host(h),
        (Some(_), Some(_)) => Err(HostError::Duplicate),
        (None, _) if version == Version::HTTP_10 || version == Version::HTTP_09 => {
            Ok(Cow::Borrowed(""))
        }
        (None, _) => Err(HostError::Missing),
    }
}

/// The part after the host is empty or `:` and a port number (possibly
/// empty, as RFC 3986 allows). `Authority::port` cannot tell: it reads a
/// non-numeric port as no port at all. The authority has no `@` (refused
/// before), so its host is what `Authority::host` finds without looking
/// for one: a bracketed literal, or all up to the first `:` (that look
/// was a third of routing an HTTP/2 request, which always has one).
fn port_is_numeric(authority: &http::uri::Authority) -> bool {
    let text = authority.as_str();
    let host_len = match text.strip_prefix('[') {
        Some(rest) => rest.find(']').map_or(text.len(), |i| i + 2),
        None => text.find(':').unwrap_or(text.len()),
    };
    let after_host = &text[host_len..];
    match after_host.strip_prefix(':') {
        None => after_host.is_empty(),
        Some("") => true,
        Some(port) => port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok(),
    }
}

/// nginx's host validation: no `/`, `\\`, NUL, space, controls or `..`; `[v6]` kept
/// whole; everything from the first `:` outside brackets (the port) and one
/// trailing dot removed; lower-cased. Like nginx, a leading dot, `@` or a
/// non-numeric port are let through.
pub fn normalize_host(raw: &[u8]) -> Result<Cow<'_, str>, HostError> {
    let mut end = raw.len();
    let mut in_brackets = false;
    // One past the last dot: a dot found there is the second of two.
    let mut after_dot = usize::MAX;
    let (mut upper, mut high) = (false, false);
    // One look-up a byte (most are plain): this was 450 instructions for
    // a host of 15 bytes when each byte went through a chain of tests.
    for (i, &b) in raw.iter().enumerate() {
        match HOST_BYTES[b as usize] {
            PLAIN => {}
            UPPER => upper = true,
            HIGH => high = true,
            DOT => {
                if after_dot == i {
                    return Err(HostError::Invalid);
                }
                after_dot = i + 1;
            }
            COLON if !in_brackets => {
                end = i;
                if raw[i + 1..]
                    .iter()
                    .any(|c| matches!(c, b'/' | b'\\' | 0) || *c < 0x20 || *c == 0x7f)
                {
                    return Err(HostError::Invalid);
                }
                break;
            }
            COLON => {}
            OPEN if i == 0 => in_brackets = true,
            OPEN => {}
            CLOSE => in_brackets = false,
            _ => return Err(HostError::Invalid),
        }
    }
    if in_brackets {
        return Err(HostError::Invalid);
    }
    let mut host = &raw[..end];
    if host.last() == Some(&b'.') {
        host = &host[..host.len() - 1];
    }
    if host.is_empty() {
        return Err(HostError::Invalid);
    }
    let text = match high {
        true => std::str::from_utf8(host).map_err(|_| HostError::Invalid)?,
        // SAFETY: every byte is below 0x80 (none was HIGH): ASCII is UTF-8.
        false => unsafe { std::str::from_utf8_unchecked(host) },
    };
    // Most hosts come in lower case: then nothing is copied.
    Ok(match upper {
        true => Cow::Owned(text.to_ascii_lowercase()),
        false => Cow::Borrowed(text),
    })
}

const PLAIN: u8 = 0;
const UPPER: u8 = 1;
const HIGH: u8 = 2;
const DOT: u8 = 3;
const COLON: u8 = 4;
const OPEN: u8 = 5;
const CLOSE: u8 = 6;
const REFUSED: u8 = 7;

/// What each byte is to `normalize_host`: `/`, `\\`, controls, space and
/// DEL are refused anywhere before the port.
static HOST_BYTES: [u8; 256] = {
    let mut table = [PLAIN; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = match b as u8 {
            b'.' => DOT,
            b':' => COLON,
            b'[' => OPEN,
            b']' => CLOSE,
            b'/' | b'\\' | 0..=0x20 | 0x7f => REFUSED,
            b'A'..=b'Z' => UPPER,
            0x80..=0xff => HIGH,
            _ => PLAIN,
        };
        b += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte table gives what the rules written out one test at a time
    /// give (the former code, kept here as the model), for every string of
    /// up to 4 bytes over the bytes that matter.
    #[test]
    fn the_byte_table_keeps_the_rules() {
        fn model(raw: &[u8]) -> Result<String, HostError> {
            let mut end = raw.len();
            let mut in_brackets = false;
            let mut prev_dot: Option<usize> = None;
            for (i, &b) in raw.iter().enumerate() {
                match b {
                    b'.' => {
                        if prev_dot.is_some_and(|d| d + 1 == i) {
                            return Err(HostError::Invalid);
                        }
                        prev_dot = Some(i);
                    }
                    b':' if !in_brackets => {
                        end = i;
                        if raw[i + 1..]
                            .iter()
                            .any(|c| matches!(c, b'/' | b'\\' | 0) || *c < 0x20 || *c == 0x7f)
                        {
                            return Err(HostError::Invalid);
                        }
                        break;
                    }
                    b'[' if i == 0 => in_brackets = true,
                    b']' if in_brackets => in_brackets = false,
                    b'/' | b'\\' | b'\0' => return Err(HostError::Invalid),
                    b if b <= 0x20 || b == 0x7f => return Err(HostError::Invalid),
                    _ => {}
                }
            }
            if in_brackets {
                return Err(HostError::Invalid);
            }
            let mut host = &raw[..end];
            if host.last() == Some(&b'.') {
                host = &host[..host.len() - 1];
            }
            if host.is_empty() {
                return Err(HostError::Invalid);
            }
            let text = std::str::from_utf8(host).map_err(|_| HostError::Invalid)?;
            Ok(text.to_ascii_lowercase())
        }
        let alphabet = b"a.:[]/\\\x00 \x7fA9\xc3\x89@";
        let mut input = Vec::new();
        let mut count = 0;
        for len in 0..=4u32 {
            for n in 0..alphabet.len().pow(len) {
                input.clear();
                let mut k = n;
                for _ in 0..len {
                    input.push(alphabet[k % alphabet.len()]);
                    k /= alphabet.len();
                }
                let got = normalize_host(&input).map(Cow::into_owned);
                assert_eq!(got, model(&input), "{input:?}");
                count += 1;
            }
        }
        assert!(count > 20_000);
    }

    #[test]
    fn hosts() {
        assert_eq!(
            normalize_host(b"Example.COM:8080"),
            Ok("example.com".into())
        );
        assert_eq!(normalize_host(b"example.com."), Ok("example.com".into()));
        assert_eq!(normalize_host(b"[::1]:80"), Ok("[::1]".into()));
        assert_eq!(normalize_host(b"a..b"), Err(HostError::Invalid));
        assert_eq!(normalize_host(b"a/b"), Err(HostError::Invalid));
        assert_eq!(normalize_host(b"a\x01b"), Err(HostError::Invalid));
        assert_eq!(normalize_host(b""), Err(HostError::Invalid));
        assert_eq!(normalize_host(b"a:1/2"), Err(HostError::Invalid));
        // As nginx: these pass.
        assert_eq!(normalize_host(b".a"), Ok(".a".into()));
        assert_eq!(normalize_host(b"a b"), Err(HostError::Invalid));
        assert_eq!(normalize_host(b"a:x"), Ok("a".into()));
        assert_eq!(normalize_host(b"user@host"), Ok("user@host".into()));
    }

    #[test]
    fn a_host_already_in_lower_case_is_not_copied() {
        let borrowed = |raw: &[u8]| matches!(normalize_host(raw), Ok(Cow::Borrowed(_)));
        assert!(borrowed(b"example.com:8080"));
        assert!(borrowed(b"example.com."));
        assert!(!borrowed(b"Example.com"));
        assert_eq!(normalize_host(b"\xc3\x89A.x").unwrap(), "\u{c9}a.x");
    }

    #[test]
    fn absolute_form_ports() {
        let host = |target: &str| {
            let uri: Uri = target.parse().unwrap();
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::HOST, "a".parse().unwrap());
            request_host(&uri, (&headers).into(), Version::HTTP_11).map(|h| h.into_owned())
        };
        assert_eq!(host("http://a/p"), Ok("a".into()));
        assert_eq!(host("http://a:8080/p"), Ok("a".into()));
        assert_eq!(host("http://a:/p"), Ok("a".into()));
        assert_eq!(host("http://[::1]:80/p"), Ok("[::1]".into()));
        assert_eq!(host("http://a:xyz/p"), Err(HostError::Invalid));
        assert_eq!(host("http://a:99999/p"), Err(HostError::Invalid));
        assert_eq!(host("http://a:+80/p"), Err(HostError::Invalid));
        assert_eq!(host("http://[::1]/p"), Ok("[::1]".into()));
        assert_eq!(host("http://[::1]:x/p"), Err(HostError::Invalid));
        assert_eq!(host("http://[::1]:443/p"), Ok("[::1]".into()));
    }

    #[test]
    fn the_host_end_is_found_as_authority_host_finds_it() {
        for text in ["a", "a:1", "a:", "[::1]", "[::1]:8", "[::1]:", "x.y:80"] {
            let authority: http::uri::Authority = text.parse().unwrap();
            let after = &text[authority.host().len()..];
            let numeric = match after.strip_prefix(':') {
                None => after.is_empty(),
                Some(port) => {
                    port.bytes().all(|b| b.is_ascii_digit())
                        && (port.is_empty() || port.parse::<u16>().is_ok())
                }
            };
            assert_eq!(port_is_numeric(&authority), numeric, "{text}");
        }
    }
}
