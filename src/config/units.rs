//! Parsing of the small value languages inside the YAML: sizes, durations and
//! `listen` strings. Each parser returns a message that says what is accepted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// `512`, `16k`, `8m`, `1g` (powers of 1024), as nginx.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => return Err(format!("bad size {text:?}: expected a number of bytes with an optional k, m or g suffix, e.g. 512, 16k, 8m, 1g")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("bad size {text:?}: expected a number of bytes with an optional k, m or g suffix, e.g. 512, 16k, 8m, 1g"))?;
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// `500ms`, `30s`, `5m`, `1h`, `1d`, or a bare number of seconds, as nginx.
/// nginx also accepts sequences like `1m30s`; so does ginx.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let bad = || {
        format!("bad duration {text:?}: expected a number with an optional unit ms, s, m, h or d, e.g. 500ms, 30s, 5m, 1h")
    };
    if t.is_empty() {
        return Err(bad());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<u64>().map(Duration::from_secs).map_err(|_| bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits_end = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits_end == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits_end].parse().map_err(|_| bad())?;
        rest = &rest[digits_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// One parsed `listen` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenSpec {
    pub addr: SocketAddr,
    pub tls: bool,
    pub http2: bool,
    pub default_server: bool,
    /// nginx's `deferred`: the socket accepts a connection only once its
    /// first bytes have arrived (Linux's TCP_DEFER_ACCEPT).
    pub deferred: bool,
}

/// The flags a `listen` entry may carry after its address.
const LISTEN_FLAGS: [&str; 4] = ["tls", "http2", "default_server", "deferred"];

const LISTEN_HELP: &str =
    "expected ADDR:PORT or PORT (e.g. 127.0.0.1:8080, [::1]:8080, 8080), then any of the flags tls, http2, default_server, deferred";

/// `ADDR:PORT [flags]` or `PORT [flags]`; ADDR is an IPv4 address, `[IPv6]`,
/// `*` (all IPv4 addresses) or `localhost`. Flags: tls, http2, default_server,
/// deferred (nginx's `ssl` is accepted as a synonym of `tls`, `default` of
/// `default_server`).
pub fn parse_listen(text: &str) -> Result<ListenSpec, String> {
    let mut words = text.split_whitespace();
    let addr_text = words
        .next()
        .ok_or_else(|| format!("empty listen: {LISTEN_HELP}"))?;
    let addr = parse_listen_addr(addr_text)
        .map_err(|why| format!("bad listen address {addr_text:?}: {why}; {LISTEN_HELP}"))?;
    let mut spec = ListenSpec {
        addr,
        tls: false,
        http2: false,
        default_server: false,
        deferred: false,
    };
    for flag in words {
        match flag {
            "tls" | "ssl" => spec.tls = true,
            "http2" => spec.http2 = true,
            "default_server" | "default" => spec.default_server = true,
            "deferred" => spec.deferred = true,
            other => {
                let hint = crate::config::error::closest(other, LISTEN_FLAGS)
                    .map(|k| format!(" (did you mean {k:?}?)"))
                    .unwrap_or_default();
                return Err(format!(
                    "unknown listen flag {other:?}{hint}: known flags are {}",
                    LISTEN_FLAGS.join(", ")
                ));
            }
        }
    }
    Ok(spec)
}

fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    let port_of = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{p:?} is not a port (1-65535)")),
            Ok(n) => Ok(n),
        }
    };
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port_of(text)?,
        ));
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, port) = rest
            .split_once("]:")
            .ok_or_else(|| "an IPv6 address needs a port: [ADDR]:PORT".to_string())?;
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv6 address"))?;
        return Ok(SocketAddr::new(IpAddr::V6(ip), port_of(port)?));
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(|| "no port".to_string())?;
    let port = port_of(port)?;
    let ip = match host {
        "*" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => h
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| format!("{h:?} is not an IPv4 address, *, or localhost"))?,
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("16k"), Ok(16 * 1024));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert!(parse_size("1kb").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999999999g").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("75"), Ok(Duration::from_secs(75)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn listen_strings() {
        let l = parse_listen("8080").unwrap();
        assert_eq!(l.addr, "0.0.0.0:8080".parse().unwrap());
        let l = parse_listen("127.0.0.1:443 tls default_server http2").unwrap();
        assert!(l.tls && l.default_server && l.http2 && !l.deferred);
        assert!(parse_listen("80 deferred").unwrap().deferred);
        let l = parse_listen("[::1]:80").unwrap();
        assert_eq!(l.addr, "[::1]:80".parse().unwrap());
        assert_eq!(
            parse_listen("*:81").unwrap().addr,
            "0.0.0.0:81".parse().unwrap()
        );
        assert!(parse_listen("127.0.0.1").is_err());
        assert!(parse_listen("127.0.0.1:0").is_err());
        assert!(parse_listen("1.2.3:80").is_err());
        let e = parse_listen("80 defualt_server").unwrap_err();
        assert!(e.contains("did you mean \"default_server\""), "{e}");
        let e = parse_listen("80 defered").unwrap_err();
        assert!(e.contains("did you mean \"deferred\""), "{e}");
    }
}
