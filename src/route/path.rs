//! Request paths as nginx sees them for routing: percent-decoded once, `.` and
//! `..` resolved, `//` merged. A path that climbs above `/`, a bad or NUL
//! escape, or a target that is not a path is a 400.

use percent_encoding::{AsciiSet, CONTROLS};
use std::borrow::Cow;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// `%zz`, `%0`, a decoded NUL, or a target not starting with `/`.
    Malformed,
    /// `/../x`: above the root.
    AboveRoot,
}

/// Decode `%XX` escapes. `+` is not a space in paths.
pub fn percent_decode(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let hi = raw.get(i + 1).and_then(|c| (*c as char).to_digit(16));
            let lo = raw.get(i + 2).and_then(|c| (*c as char).to_digit(16));
            match (hi, lo) {
                (Some(h), Some(l)) => {
                    let v = (h * 16 + l) as u8;
                    if v == 0 {
                        return Err(PathError::Malformed);
                    }
                    out.push(v);
                    i += 3;
                }
                _ => return Err(PathError::Malformed),
            }
        } else if b == 0 {
            return Err(PathError::Malformed);
        } else {
            out.push(b);
            i += 1;
        }
    }
    Ok(out)
}

/// Resolve `.` and `..` and merge `//` in an already decoded path.
pub fn resolve_dots(decoded: &[u8]) -> Result<Vec<u8>, PathError> {
    if decoded.first() != Some(&b'/') {
        return Err(PathError::Malformed);
    }
    let mut stack: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded[1..].split(|b| *b == b'/') {
        trailing_slash = false;
        match segment {
            b"" | b"." => trailing_slash = true,
            b".." => {
                if stack.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = true;
            }
            s => stack.push(s),
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for s in &stack {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() || trailing_slash {
        out.push(b'/');
    }
    Ok(out)
}

/// The routing path of a raw request path: decode, then resolve.
pub fn normalize(raw_path: &[u8]) -> Result<Cow<'_, [u8]>, PathError> {
    // The target itself must start with `/`: `%2Fa` decodes to a path, but
    // was not one (PathError::Malformed). Found by fuzz/ path_normalize.
    if raw_path.first() != Some(&b'/') {
        return Err(PathError::Malformed);
    }
    // The common case, a clean path, is the raw one: nothing decoded, copied.
    if !raw_path.contains(&b'%') && is_clean(raw_path) {
        return Ok(Cow::Borrowed(raw_path));
    }
    resolve_dots(&percent_decode(raw_path)?).map(Cow::Owned)
}

/// Starts with `/`, no `//`, no `.` or `..` segment, no NUL.
fn is_clean(p: &[u8]) -> bool {
    if p.first() != Some(&b'/') || p.contains(&0) {
        return false;
    }
    !p.windows(2).any(|w| w == b"//")
        && !p[1..]
            .split(|b| *b == b'/')
            .any(|s| s == b"." || s == b"..")
}

/// Bytes that must be escaped when a decoded path is sent on (to an upstream
/// or in a Location header): controls, space, non-ASCII and URI delimiters.
pub const PATH_ESCAPE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'|')
    .add(b'\\')
    .add(b'^');

/// What a regex group must not carry raw into a redirect's Location: as
/// [`PATH_ESCAPE`], but a `?` stays (it may start the URL's arguments).
pub const REDIRECT_ESCAPE: &AsciiSet = &PATH_ESCAPE.remove(b'?');

/// Append `path` percent-encoded where it must be.
pub fn encode_path_into(path: &[u8], out: &mut Vec<u8>) {
    for chunk in percent_encoding::percent_encode(path, PATH_ESCAPE) {
        out.extend_from_slice(chunk.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p.as_bytes()).map(|v| String::from_utf8(v.into_owned()).unwrap())
    }

    #[test]
    fn normalisation_cases() {
        assert_eq!(n("/"), Ok("/".into()));
        assert_eq!(n("//a"), Ok("/a".into()));
        assert_eq!(n("/a//b///c"), Ok("/a/b/c".into()));
        assert_eq!(n("/a/./b"), Ok("/a/b".into()));
        assert_eq!(n("/a/../b"), Ok("/b".into()));
        assert_eq!(n("/a/b/.."), Ok("/a/".into()));
        assert_eq!(n("/a/."), Ok("/a/".into()));
        assert_eq!(n("/a/%2e%2e/b"), Ok("/b".into()));
        assert_eq!(n("/a/%2E%2E/b"), Ok("/b".into()));
        assert_eq!(n("/a%2Fb"), Ok("/a/b".into()));
        assert_eq!(n("/a%20b"), Ok("/a b".into()));
        assert_eq!(n("/%252e"), Ok("/%2e".into()));
        assert_eq!(n("/../x"), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../../x"), Err(PathError::AboveRoot));
        assert_eq!(n("/%2e%2e/x"), Err(PathError::AboveRoot));
        assert_eq!(n("/a%zz"), Err(PathError::Malformed));
        assert_eq!(n("/a%2"), Err(PathError::Malformed));
        assert_eq!(n("/a%00b"), Err(PathError::Malformed));
        assert_eq!(n("a/b"), Err(PathError::Malformed));
        assert_eq!(n("%2Fa"), Err(PathError::Malformed));
        assert_eq!(n("/a/b/"), Ok("/a/b/".into()));
        assert_eq!(n("/.../x"), Ok("/.../x".into()));
    }

    #[test]
    fn a_clean_path_is_not_copied() {
        assert!(matches!(normalize(b"/a/b.c/"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize(b"/a//b"), Ok(Cow::Owned(_))));
        assert!(matches!(normalize(b"/a%20b"), Ok(Cow::Owned(_))));
    }

    #[test]
    fn resolving_is_idempotent() {
        for p in ["/a/./b/../c//d/", "/x/..", "//", "/a/%2e/b", "/.%2e/x"] {
            if let Ok(once) = normalize(p.as_bytes()) {
                assert_eq!(resolve_dots(&once).unwrap(), *once, "{p}");
            }
        }
    }

    #[test]
    fn encoding_keeps_safe_bytes() {
        let mut out = Vec::new();
        encode_path_into(b"/a b/%/\xc3\xa9?x", &mut out);
        assert_eq!(out, b"/a%20b/%25/%C3%A9%3Fx");
    }
}
