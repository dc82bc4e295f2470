//! A request's header fields, as whichever server side read them: hyper's
//! HTTP/1 server and HTTP/2 give a header map; ginx's own HTTP/1 side
//! gives the fields where they stand in the head ([`HeadFields`]).
//!
//! A header map for a small request (four or five fields) was about 1,400
//! of a proxied request's 18,000 instructions, and two allocations: a name
//! parsed and hashed per field, each value checked again, the map dropped
//! after. Routing, variables and the native client's writer read a few
//! fields by name and walk the rest once; a scan of a short list does that
//! with none of it. A map is still built from the head for the writers
//! that need one (hyper-util's client, for HTTP/2 upstreams and TLS ones
//! the native client does not take).
//!
//! Which variant a request has also tells which server side read it:
//! `Head` is ginx's own HTTP/1 side, which writes an upstream's response
//! fields straight from its head (`forward::PassedFields`).

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, Iter, ValueIter};

/// Start and end of a field's name, then of its value, in its head.
pub type Span = (u32, u32, u32, u32);

/// Where a field's name and value lie in `head` (httparse gives slices of
/// it): start and end of each, so that the field can be cut out of the head
/// once it is frozen, without a copy. For both sides' head parsers (and the
/// fuzz checks that make `HeadFields` as ginx's HTTP/1 side does).
pub fn field_span(head: &[u8], field: &httparse::Header<'_>) -> Span {
    let base = head.as_ptr() as usize;
    let name_at = (field.name.as_ptr() as usize - base) as u32;
    let value_at = (field.value.as_ptr() as usize - base) as u32;
    (
        name_at,
        name_at + field.name.len() as u32,
        value_at,
        value_at + field.value.len() as u32,
    )
}

/// The fields of a request head, in the client's order and spelling:
/// slices of the head. Names are tokens (httparse admits no other) and
/// values hold no byte a header map refuses (checked by the parser that
/// makes them: see `serve::h1`), so [`HeadFields::to_map`] loses none.
pub struct HeadFields {
    head: Bytes,
    spans: Box<[Span]>,
}

impl HeadFields {
    /// The fields at `spans` of `head`; the caller has checked them as
    /// above. `spans` is kept (given as long as it is full, its storage is
    /// taken over with no copy).
    pub fn new(head: Bytes, spans: Vec<Span>) -> Self {
        HeadFields {
            head,
            spans: spans.into_boxed_slice(),
        }
    }

    #[inline(always)]
    fn field(&self, &(ns, ne, vs, ve): &Span) -> (&[u8], &[u8]) {
        (
            &self.head[ns as usize..ne as usize],
            &self.head[vs as usize..ve as usize],
        )
    }
}

/// A view of a request's fields, cheap to copy. Names given to look up are
/// `HeaderName`s (lower case); the head's names are compared to them
/// without regard to case, as HTTP's names are.
#[derive(Clone, Copy)]
pub enum Fields<'a> {
    Map(&'a HeaderMap),
    Head(&'a HeadFields),
}

impl<'a> From<&'a HeaderMap> for Fields<'a> {
    fn from(map: &'a HeaderMap) -> Self {
        Fields::Map(map)
    }
}

/// A field's name is `wanted` (a lower-case name), in any case.
/// (`HeaderName::as_str` is a table lookup for a standard name: callers
/// that compare many names to one take its bytes once.)
#[inline]
pub fn is_named(name: &[u8], wanted: &[u8]) -> bool {
    name.len() == wanted.len() && name.eq_ignore_ascii_case(wanted)
}

/// A value as `HeaderValue::to_str` reads it: visible ASCII (and tabs) only.
pub fn visible_str(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

impl<'a> Fields<'a> {
    /// The first value of `name`.
    #[inline]
    pub fn get(self, name: &HeaderName) -> Option<&'a [u8]> {
        self.get_all(name).next()
    }

    /// A field `name` is there. In a map, a pass over its few names: a
    /// standard name compares by its tag, and the hashed lookup that would
    /// find a name most requests lack cost more.
    #[inline]
    pub fn contains(self, name: &HeaderName) -> bool {
        match self {
            Fields::Map(map) => map.keys().any(|k| k == name),
            Fields::Head(_) => self.get(name).is_some(),
        }
    }

    /// Every value of `name`, in order.
    #[inline]
    pub fn get_all<'n>(self, name: &'n HeaderName) -> Values<'a, 'n> {
        match self {
            Fields::Map(map) => Values::Map(map.get_all(name).into_iter()),
            Fields::Head(head) => Values::Head {
                head,
                spans: head.spans.iter(),
                name: name.as_str().as_bytes(),
            },
        }
    }

    /// Every field, name and value, in order (a map's: by name, then by
    /// the order of its values).
    #[inline]
    pub fn iter(self) -> FieldIter<'a> {
        match self {
            Fields::Map(map) => FieldIter::Map(map.iter()),
            Fields::Head(head) => FieldIter::Head(head, head.spans.iter()),
        }
    }

    /// How long the request's head was, when the fields are read in place.
    pub fn head_len(self) -> Option<usize> {
        match self {
            Fields::Map(_) => None,
            Fields::Head(head) => Some(head.head.len()),
        }
    }

    /// A header map of these fields, for writers that need one.
    pub fn to_map(self) -> HeaderMap {
        match self {
            Fields::Map(map) => map.clone(),
            Fields::Head(head) => {
                let mut map = HeaderMap::with_capacity(head.spans.len());
                append_spans(&mut map, &head.head, &head.spans);
                map
            }
        }
    }
}

/// Append to `map` the fields at `spans` of `head`, values as slices of it
/// (no copy). The fields were checked when the head was read (httparse
/// admits only what a map takes); one a map would refuse all the same is
/// left out, not a panic. Shared with `forward::PassedFields`.
pub(crate) fn append_spans(map: &mut HeaderMap, head: &Bytes, spans: &[Span]) {
    for &(ns, ne, vs, ve) in spans {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize]);
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize));
        if let (Ok(name), Ok(value)) = (name, value) {
            map.append(name, value);
        }
    }
}

/// The values of one field name ([`Fields::get_all`]).
pub enum Values<'a, 'n> {
    Map(ValueIter<'a, HeaderValue>),
    Head {
        head: &'a HeadFields,
        spans: std::slice::Iter<'a, Span>,
        name: &'n [u8],
    },
}

impl<'a> Iterator for Values<'a, '_> {
    type Item = &'a [u8];

    #[inline(always)]
    fn next(&mut self) -> Option<&'a [u8]> {
        match self {
            Values::Map(values) => values.next().map(HeaderValue::as_bytes),
            Values::Head { head, spans, name } => spans.find_map(|span| {
                let (n, v) = head.field(span);
                is_named(n, name).then_some(v)
            }),
        }
    }
}

/// Every field of a request ([`Fields::iter`]): its name (as the client
/// spelled it from ginx's own HTTP/1 side, lower case from a map) and value.
pub enum FieldIter<'a> {
    Map(Iter<'a, HeaderValue>),
    Head(&'a HeadFields, std::slice::Iter<'a, Span>),
}

impl<'a> Iterator for FieldIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            FieldIter::Map(fields) => fields
                .next()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
            FieldIter::Head(head, spans) => spans.next().map(|span| head.field(span)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    /// The same request's fields as a map and from its head.
    fn both(raw: &'static [u8]) -> (HeaderMap, HeadFields) {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut slots);
        req.parse(raw).unwrap();
        let mut map = HeaderMap::new();
        let mut spans = Vec::new();
        for h in req.headers.iter() {
            map.append(
                HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(h.value).unwrap(),
            );
            spans.push(field_span(raw, h));
        }
        (map, HeadFields::new(Bytes::from_static(raw), spans))
    }

    const RAW: &[u8] = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 1.2.3.4\r\n\
        user-agent: t\r\nx-forwarded-for: 5.6.7.8\r\nCookie: a=1\r\n\r\n";

    #[test]
    fn head_and_map_read_the_same() {
        let (map, head) = both(RAW);
        let xff = HeaderName::from_static("x-forwarded-for");
        for fields in [Fields::Map(&map), Fields::Head(&head)] {
            assert_eq!(fields.get(&header::HOST), Some(&b"a.test"[..]));
            assert_eq!(
                fields.get_all(&xff).collect::<Vec<_>>(),
                [&b"1.2.3.4"[..], b"5.6.7.8"]
            );
            assert!(fields.contains(&header::COOKIE));
            assert!(!fields.contains(&header::TE));
            assert_eq!(fields.iter().count(), 5);
            assert_eq!(fields.to_map(), map);
        }
        // The head keeps the client's spelling.
        let names: Vec<&[u8]> = Fields::Head(&head).iter().map(|(n, _)| n).collect();
        assert_eq!(names[0], b"Host");
        assert!(is_named(names[1], b"x-forwarded-for"));
        assert!(!is_named(names[1], b"x-forwarded-fo"));
    }

    #[test]
    fn visible_str_is_to_str() {
        for v in [&b"plain\tvalue"[..], b"caf\xc3\xa9", b"", b"~"] {
            let as_map = HeaderValue::from_bytes(v).unwrap();
            assert_eq!(visible_str(v), as_map.to_str().ok(), "{v:?}");
        }
    }
}
