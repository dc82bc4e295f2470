//! The per-server location table and nginx's precedence:
//! `=` exact (hash map) → longest prefix (sorted, with parent links) → `^~`
//! stops → regexes in configuration order (one `RegexSet` pass) → the prefix.

use regex::bytes::{Regex, RegexSet, RegexSetBuilder};
use std::collections::HashMap;
use std::sync::Arc;

/// How a location's pattern is matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocationKind {
    /// `= /path`
    Exact,
    /// `/path`
    Prefix,
    /// `^~ /path`: the longest prefix, and no regex is tried after it.
    PrefixNoRegex,
    /// `~ regex`
    Regex,
    /// `~* regex`
    RegexCaseless,
}

impl LocationKind {
    pub fn modifier(self) -> &'static str {
        match self {
            LocationKind::Exact => "= ",
            LocationKind::Prefix => "",
            LocationKind::PrefixNoRegex => "^~ ",
            LocationKind::Regex => "~ ",
            LocationKind::RegexCaseless => "~* ",
        }
    }
}

/// Groups captured by the regex that chose a location (or by a rewrite).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureValues {
    /// `$0`..`$9`
    pub positional: Vec<Option<Box<[u8]>>>,
    pub named: Vec<(Arc<str>, Box<[u8]>)>,
}

impl CaptureValues {
    pub fn from_match(re: &Regex, caps: &regex::bytes::Captures<'_>) -> Self {
        let positional = (0..caps.len().min(10))
            .map(|i| caps.get(i).map(|m| m.as_bytes().into()))
            .collect();
        let named = re
            .capture_names()
            .flatten()
            .filter_map(|name| {
                caps.name(name)
                    .map(|m| (Arc::from(name), m.as_bytes().into()))
            })
            .collect();
        CaptureValues { positional, named }
    }

    pub fn positional(&self, n: u8) -> Option<&[u8]> {
        self.positional.get(n as usize)?.as_deref()
    }

    pub fn named(&self, name: &str) -> Option<&[u8]> {
        self.named
            .iter()
            .rev()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| &**v)
    }
}

struct PrefixEntry {
    path: Box<[u8]>,
    location: usize,
    /// Index (in `prefixes`) of the longest other prefix that is a prefix of this one.
    parent: Option<usize>,
}

/// What the table found for a path.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    Location(usize, Option<CaptureValues>),
    /// The path is a proxying prefix location's name without its final `/`:
    /// nginx answers 301 to the path with the slash.
    AddSlash(usize),
    NotFound,
}

/// One compiled lookup structure per server.
#[derive(Default)]
pub struct LocationTable {
    exact: HashMap<Box<[u8]>, usize>,
    prefixes: Vec<PrefixEntry>,
    /// Names (without the final slash) of proxying locations that end in `/`.
    add_slash: HashMap<Box<[u8]>, usize>,
    regex_set: Option<RegexSet>,
    regexes: Vec<(Regex, usize)>,
}

/// What the table needs to know of one location.
pub struct LocationKey<'a> {
    pub kind: LocationKind,
    pub pattern: &'a str,
    /// For regex kinds, the compiled regex.
    pub regex: Option<Regex>,
    /// nginx's auto_redirect: a location ending in `/` that proxies.
    pub redirects_without_slash: bool,
}

impl LocationTable {
    /// Build the table. `keys[i]` describes location `i`; duplicates must have
    /// been rejected by the caller.
    pub fn build(keys: Vec<LocationKey<'_>>) -> Result<Self, regex::Error> {
        let mut table = LocationTable::default();
        let mut regex_sources = Vec::new();
        for (i, key) in keys.into_iter().enumerate() {
            let path: Box<[u8]> = key.pattern.as_bytes().into();
            if key.redirects_without_slash && key.pattern.len() > 1 && key.pattern.ends_with('/') {
                let without: Box<[u8]> = path[..path.len() - 1].into();
                table.add_slash.entry(without).or_insert(i);
            }
            match key.kind {
                LocationKind::Exact => {
                    table.exact.entry(path).or_insert(i);
                }
                LocationKind::Prefix | LocationKind::PrefixNoRegex => {
                    table.prefixes.push(PrefixEntry {
                        path,
                        location: i,
                        parent: None,
                    });
                }
                LocationKind::Regex | LocationKind::RegexCaseless => {
                    if let Some(re) = key.regex {
                        regex_sources.push(re.as_str().to_string());
                        table.regexes.push((re, i));
                    }
                }
            }
        }
        table.prefixes.sort_by(|a, b| a.path.cmp(&b.path));
        // Parent links: in sorted order, every prefix of an entry that is in
        // the set sits before it on the chain of open ancestors.
        let mut open: Vec<usize> = Vec::new();
        for i in 0..table.prefixes.len() {
            while let Some(&top) = open.last() {
                if table.prefixes[i]
                    .path
                    .starts_with(&table.prefixes[top].path)
                {
                    break;
                }
                open.pop();
            }
            table.prefixes[i].parent = open.last().copied();
            open.push(i);
        }
        // Prefix names that also exist as plain prefixes must not redirect.
        let prefix_names: Vec<Box<[u8]>> = table.prefixes.iter().map(|p| p.path.clone()).collect();
        for name in prefix_names.iter().chain(table.exact.keys()) {
            table.add_slash.remove(name);
        }
        if !regex_sources.is_empty() {
            // The same options as each regex (see actions::compile_regex).
            table.regex_set = Some(
                RegexSetBuilder::new(&regex_sources)
                    .unicode(false)
                    .size_limit(1 << 24)
                    .build()?,
            );
        }
        Ok(table)
    }

    /// The location for a normalised path, in nginx's order. `is_no_regex`
    /// tells whether location `i` is a `^~` one.
    pub fn find(&self, path: &[u8], is_no_regex: impl Fn(usize) -> bool) -> Found {
        if let Some(&i) = self.exact.get(path) {
            return Found::Location(i, None);
        }
        if let Some(&i) = self.add_slash.get(path) {
            return Found::AddSlash(i);
        }
        let prefix = self.longest_prefix(path);
        if let Some(i) = prefix {
            if is_no_regex(i) {
                return Found::Location(i, None);
            }
        }
        if let Some(set) = &self.regex_set {
            // The set says which regexes match; the first in configuration
            // order wins, and only that one is run again for its groups.
            if let Some(first) = set.matches(path).iter().next() {
                let (re, i) = &self.regexes[first];
                let captures = re
                    .captures(path)
                    .map(|caps| CaptureValues::from_match(re, &caps));
                return Found::Location(*i, captures);
            }
        }
        match prefix {
            Some(i) => Found::Location(i, None),
            None => Found::NotFound,
        }
    }

    /// The longest prefix location of `path`: binary search for the greatest
    /// name not above the path, then walk its ancestors until one is a prefix.
    fn longest_prefix(&self, path: &[u8]) -> Option<usize> {
        let at = self.prefixes.partition_point(|p| &*p.path <= path);
        let mut candidate = at.checked_sub(1);
        while let Some(c) = candidate {
            let entry = &self.prefixes[c];
            if path.starts_with(&entry.path) {
                return Some(entry.location);
            }
            candidate = entry.parent;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: LocationKind, pattern: &str) -> LocationKey<'_> {
        let regex = match kind {
            LocationKind::Regex => {
                Some(crate::compile::actions::compile_regex(pattern, false).unwrap())
            }
            LocationKind::RegexCaseless => {
                Some(crate::compile::actions::compile_regex(pattern, true).unwrap())
            }
            _ => None,
        };
        LocationKey {
            kind,
            pattern,
            regex,
            redirects_without_slash: false,
        }
    }

    #[test]
    fn longest_prefix_follows_parents() {
        use LocationKind::*;
        let t = LocationTable::build(vec![
            key(Prefix, "/"),
            key(Prefix, "/a"),
            key(Prefix, "/ab"),
            key(Prefix, "/abc/d"),
            key(Prefix, "/b/"),
        ])
        .unwrap();
        let find = |p: &str| t.find(p.as_bytes(), |_| false);
        assert_eq!(find("/ac"), Found::Location(1, None));
        assert_eq!(find("/abc/e"), Found::Location(2, None));
        assert_eq!(find("/abc/d/x"), Found::Location(3, None));
        assert_eq!(find("/b"), Found::Location(0, None));
        assert_eq!(find("/b/x"), Found::Location(4, None));
        assert_eq!(find("/zzz"), Found::Location(0, None));
    }

    #[test]
    fn longest_prefix_agrees_with_a_scan() {
        // Many overlapping names: the sorted search must equal a linear scan.
        let names: Vec<String> = (0..300)
            .map(|i| {
                let mut s = String::from("/");
                for d in format!("{i:o}").chars() {
                    s.push(d);
                    if d == '3' {
                        s.push('/');
                    }
                }
                s
            })
            .collect();
        let keys = names.iter().map(|n| key(LocationKind::Prefix, n)).collect();
        let t = LocationTable::build(keys).unwrap();
        for probe in 0..2000u32 {
            let path = format!("/{:o}x", probe * 7);
            let scan = names
                .iter()
                .enumerate()
                .filter(|(_, n)| path.as_bytes().starts_with(n.as_bytes()))
                .max_by_key(|(_, n)| n.len())
                .map(|(i, _)| i);
            let got = match t.find(path.as_bytes(), |_| false) {
                Found::Location(i, _) => Some(i),
                _ => None,
            };
            assert_eq!(got, scan, "path {path}");
        }
    }
}

#[cfg(test)]
mod bytes_tests {
    use super::*;

    #[test]
    fn regex_groups_hold_non_utf8_bytes() {
        let re = crate::compile::actions::compile_regex(r"^/static/(.*)\.css$", false).unwrap();
        let t = LocationTable::build(vec![LocationKey {
            kind: LocationKind::Regex,
            pattern: r"^/static/(.*)\.css$",
            regex: Some(re),
            redirects_without_slash: false,
        }])
        .unwrap();
        match t.find(b"/static/\xff.css", |_| false) {
            Found::Location(0, Some(c)) => assert_eq!(c.positional(1), Some(&b"\xff"[..])),
            other => panic!("{other:?}"),
        }
    }
}
