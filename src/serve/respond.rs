//! Responses ginx makes itself: `return` bodies, redirects and error pages,
//! plus the headers every response gets (`Server`, `add_header`). Internal
//! outcomes map to statuses here and nowhere else.

use super::body::ResponseBody;
use crate::compile::{HeaderRules, Settings};
use crate::route::vars::VarContext;
use crate::route::Outcome;
use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, LOCATION, SERVER};
use http::{Response, StatusCode};

/// nginx-style short HTML page for a status.
pub fn error_page(status: StatusCode, server_tokens: bool) -> String {
    let line = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let footer = if server_tokens {
        "<hr><center>ginx</center>\r\n"
    } else {
        ""
    };
    format!("<html>\r\n<head><title>{line}</title></head>\r\n<body>\r\n<center><h1>{line}</h1></center>\r\n{footer}</body>\r\n</html>\r\n")
}

/// A whole HTTP/1.1 response with an error page, for answers written
/// straight to the socket before hyper has a request (408, 414, 431).
pub fn error_page_bytes(status: StatusCode, server_tokens: bool) -> Vec<u8> {
    let body = error_page(status, server_tokens);
    let server = if server_tokens {
        "Server: ginx\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {} {}\r\n{server}Date: {}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
        body.len()
    )
    .into_bytes()
}

/// Bodies are not sent with these statuses.
fn status_has_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// Turn a routing outcome that ginx answers itself into a response.
pub fn outcome_response(outcome: &Outcome, settings: &Settings) -> Response<ResponseBody> {
    match outcome {
        Outcome::Respond { status, body } => {
            let mut r = Response::new(if status_has_body(*status) {
                ResponseBody::full(Bytes::from(body.clone()))
            } else {
                ResponseBody::empty()
            });
            *r.status_mut() = *status;
            if status_has_body(*status) {
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            }
            r
        }
        Outcome::Redirect { status, location } => {
            let mut r = page(*status, settings.server_tokens);
            r.headers_mut()
                .insert(LOCATION, header_value_escaped(location));
            r
        }
        Outcome::Error { status, .. } => page(*status, settings.server_tokens),
        // The handler closes instead of answering; never sent.
        Outcome::Close => page(StatusCode::BAD_REQUEST, settings.server_tokens),
        Outcome::Proxy { .. } => page(StatusCode::BAD_GATEWAY, settings.server_tokens),
    }
}

/// An HTML page response for a status.
pub fn page(status: StatusCode, server_tokens: bool) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(Bytes::from(error_page(
        status,
        server_tokens,
    ))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
    r
}

/// Headers every response gets: `Server` (unless hidden), `add_header` of
/// the location or server (on every status, unlike nginx without `always`),
/// and `Connection: close` when this was the connection's last request.
///
/// `fields_in_map` false: the writer is ginx's own HTTP/1 side, which
/// writes an upstream's fields from its head, and `Server` itself where
/// the map would have had it (most proxied responses then need no map).
pub fn finish_headers(
    response: &mut Response<ResponseBody>,
    settings: &Settings,
    rules: Option<&HeaderRules>,
    vars: Option<&VarContext<'_>>,
    close: bool,
    fields_in_map: bool,
) {
    if settings.server_tokens {
        match fields_in_map {
            true => {
                response
                    .headers_mut()
                    .insert(SERVER, HeaderValue::from_static("ginx"));
            }
            false => {
                let at = response.headers().keys_len();
                response.body_mut().leave_server_field(at);
            }
        }
    }
    let headers = response.headers_mut();
    if let (Some(rules), Some(ctx)) = (rules, vars) {
        for (name, template) in rules.add_header.iter() {
            let value = match template.as_literal() {
                Some(l) => l.to_vec(),
                None => ctx.expand(template),
            };
            if value.is_empty() {
                continue; // as nginx: an empty value adds nothing
            }
            headers.append(name.clone(), header_value_escaped(&value));
        }
    }
    if close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

/// A header value from bytes that may hold what a header cannot (controls,
/// from a client's path): such bytes are percent-escaped.
pub fn header_value_escaped(bytes: &[u8]) -> HeaderValue {
    if bytes.iter().all(|b| (0x20..0x7f).contains(b)) {
        if let Ok(v) = HeaderValue::from_bytes(bytes) {
            return v;
        }
    }
    let mut out = Vec::with_capacity(bytes.len() + 8);
    for &b in bytes {
        if !(0x21..0x7f).contains(&b) {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_header_values() {
        assert_eq!(header_value_escaped(b"/a b\r\n"), "/a%20b%0D%0A");
        assert_eq!(
            header_value_escaped(b"https://x/\xc3\xa9"),
            "https://x/%C3%A9"
        );
        assert_eq!(header_value_escaped(b"/fine"), "/fine");
    }

    #[test]
    fn raw_page_is_a_response() {
        let bytes = error_page_bytes(StatusCode::URI_TOO_LONG, true);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 414 URI Too Long\r\nServer: ginx\r\n"));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
