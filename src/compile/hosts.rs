//! The per-address server table: which virtual host answers a Host, in nginx's
//! order: exact name, longest `*.suffix`, longest `prefix.*`, first regex in
//! configuration order, then the address's default server.

use super::locations::CaptureValues;
use regex::{Regex, RegexSet};
use std::collections::HashMap;

/// A server name as written, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamePattern {
    Exact(String),
    /// `*.example.com` (stored as `.example.com`).
    LeadingWildcard(String),
    /// `mail.*` (stored as `mail.`).
    TrailingWildcard(String),
    /// `.example.com`: both `example.com` and `*.example.com`.
    Both(String),
    Regex(String),
}

/// Classify one `server_name` entry; error text says what is accepted.
pub fn parse_name(name: &str) -> Result<NamePattern, String> {
    if let Some(re) = name.strip_prefix('~') {
        return Ok(NamePattern::Regex(re.to_string()));
    }
    let lower = name.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("*.") {
        if rest.is_empty() || rest.contains('*') {
            return Err(bad_wildcard(name));
        }
        return Ok(NamePattern::LeadingWildcard(format!(".{rest}")));
    }
    if let Some(rest) = lower.strip_suffix(".*") {
        if rest.is_empty() || rest.contains('*') {
            return Err(bad_wildcard(name));
        }
        return Ok(NamePattern::TrailingWildcard(format!("{rest}.")));
    }
    if lower.contains('*') {
        return Err(bad_wildcard(name));
    }
    if let Some(rest) = lower.strip_prefix('.') {
        if rest.is_empty() {
            return Err(bad_wildcard(name));
        }
        return Ok(NamePattern::Both(rest.to_string()));
    }
    Ok(NamePattern::Exact(lower))
}

fn bad_wildcard(name: &str) -> String {
    format!("invalid server name {name:?}: a wildcard is \"*.\" at the start or \".*\" at the end (e.g. *.example.com, mail.*); use ~regex for anything else")
}

/// Which server of an address answers a host.
#[derive(Debug)]
pub struct HostTable {
    exact: HashMap<String, usize>,
    leading: HashMap<String, usize>,
    trailing: HashMap<String, usize>,
    regex_set: Option<RegexSet>,
    regexes: Vec<(Regex, usize)>,
    default: usize,
}

/// A server chosen for a host, with the groups its regex name captured.
#[derive(Debug, PartialEq, Eq)]
pub struct HostMatch {
    pub server: usize,
    pub captures: Option<CaptureValues>,
}

/// The result of adding a name: `false` when an earlier server has it already.
pub struct HostTableBuilder {
    table: HostTable,
    regex_sources: Vec<String>,
}

impl HostTableBuilder {
    pub fn new(default: usize) -> Self {
        HostTableBuilder {
            table: HostTable {
                exact: HashMap::new(),
                leading: HashMap::new(),
                trailing: HashMap::new(),
                regex_set: None,
                regexes: Vec::new(),
                default,
            },
            regex_sources: Vec::new(),
        }
    }

    /// Add one name for `server`. Returns the server that already had the
    /// name on this address, if any (nginx warns, and the first one wins).
    pub fn add(
        &mut self,
        pattern: &NamePattern,
        regex: Option<Regex>,
        server: usize,
    ) -> Option<usize> {
        let t = &mut self.table;
        let insert = |map: &mut HashMap<String, usize>, key: &str| -> Option<usize> {
            match map.get(key) {
                Some(&earlier) if earlier != server => Some(earlier),
                Some(_) => None,
                None => {
                    map.insert(key.to_string(), server);
                    None
                }
            }
        };
        match pattern {
            NamePattern::Exact(n) => insert(&mut t.exact, n),
            NamePattern::LeadingWildcard(n) => insert(&mut t.leading, n),
            NamePattern::TrailingWildcard(n) => insert(&mut t.trailing, n),
            NamePattern::Both(n) => {
                let a = insert(&mut t.exact, n);
                let b = insert(&mut t.leading, &format!(".{n}"));
                a.or(b)
            }
            NamePattern::Regex(_) => {
                if let Some(re) = regex {
                    self.regex_sources.push(re.as_str().to_string());
                    t.regexes.push((re, server));
                }
                None
            }
        }
    }

    pub fn build(mut self) -> Result<HostTable, regex::Error> {
        if !self.regex_sources.is_empty() {
            self.table.regex_set = Some(RegexSet::new(&self.regex_sources)?);
        }
        Ok(self.table)
    }
}

impl HostTable {
    /// The server for a host that is already lower-case and without port.
    pub fn find(&self, host: &str) -> HostMatch {
        let found = |server| HostMatch {
            server,
            captures: None,
        };
        if let Some(&s) = self.exact.get(host) {
            return found(s);
        }
        if !self.leading.is_empty() {
            // Longest suffix first: ".b.example.com" before ".example.com".
            for (i, _) in host.match_indices('.') {
                if let Some(&s) = self.leading.get(&host[i..]) {
                    return found(s);
                }
            }
        }
        if !self.trailing.is_empty() {
            for (i, _) in host.rmatch_indices('.') {
                if let Some(&s) = self.trailing.get(&host[..=i]) {
                    return found(s);
                }
            }
        }
        if let Some(set) = &self.regex_set {
            if let Some(first) = set.matches(host).iter().next() {
                let (re, s) = &self.regexes[first];
                let captures = re.captures(host).map(|caps| {
                    let positional = (0..caps.len().min(10))
                        .map(|i| caps.get(i).map(|m| m.as_str().as_bytes().into()))
                        .collect();
                    let named = re
                        .capture_names()
                        .flatten()
                        .filter_map(|n| {
                            caps.name(n)
                                .map(|m| (n.into(), m.as_str().as_bytes().into()))
                        })
                        .collect();
                    CaptureValues { positional, named }
                });
                return HostMatch {
                    server: *s,
                    captures,
                };
            }
        }
        found(self.default)
    }

    pub fn default_server(&self) -> usize {
        self.default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(names: &[(&str, usize)]) -> HostTable {
        let mut b = HostTableBuilder::new(0);
        for (n, s) in names {
            let p = parse_name(n).unwrap();
            let re = match &p {
                NamePattern::Regex(r) => Some(Regex::new(r).unwrap()),
                _ => None,
            };
            b.add(&p, re, *s);
        }
        b.build().unwrap()
    }

    #[test]
    fn nginx_order() {
        let t = table(&[
            ("example.com", 1),
            ("*.example.com", 2),
            ("*.b.example.com", 3),
            ("mail.*", 4),
            ("~^(?<sub>[a-z]+)\\.example\\.org$", 5),
            ("~^www\\.", 6),
            (".example.net", 7),
        ]);
        assert_eq!(t.find("example.com").server, 1);
        assert_eq!(t.find("x.example.com").server, 2);
        assert_eq!(t.find("x.b.example.com").server, 3);
        // `*.x` beats `mail.*`
        assert_eq!(t.find("mail.example.com").server, 2);
        assert_eq!(t.find("mail.example.io").server, 4);
        let m = t.find("acme.example.org");
        assert_eq!(m.server, 5);
        assert_eq!(m.captures.unwrap().named("sub"), Some(&b"acme"[..]));
        // regexes in configuration order: 5 is tried before 6, but only 6 matches
        assert_eq!(t.find("www.other.io").server, 6);
        assert_eq!(t.find("example.net").server, 7);
        assert_eq!(t.find("a.example.net").server, 7);
        // `*.a.b` does not match `a.b`
        assert_eq!(t.find("b.example.com").server, 2);
        assert_eq!(t.find("unknown.io").server, 0);
    }

    #[test]
    fn bad_wildcards() {
        assert!(parse_name("www.*.com").is_err());
        assert!(parse_name("*").is_err());
        assert!(parse_name("*.").is_err());
    }
}
