//! The YAML as written: serde structs that mirror the files, refuse unknown keys
//! and keep the position of every value that a later check may complain about.
//! Nothing here is interpreted; `compile` turns these into runtime types.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::fmt;
use std::marker::PhantomData;

/// A scalar kept as text with its position. Numbers and booleans arrive as
/// their text too, so `listen: 80` and `listen: "80"` mean the same.
pub type Text = Spanned<String>;

/// A mapping that keeps its entries in file order, duplicates included, so
/// that a duplicate can be reported with both places.
#[derive(Debug)]
pub struct OrderedMap<K, V>(pub Vec<(K, V)>);

impl<K, V> Default for OrderedMap<K, V> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for MapVisitor<K, V> {
            type Value = OrderedMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(OrderedMap(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(OrderedMap(entries))
            }
        }
        d.deserialize_map(MapVisitor(PhantomData))
    }
}

/// A value that may be written as one scalar or as a list of scalars:
/// `listen: 80` or `listen: [80, "[::]:80"]`.
#[derive(Debug, Default)]
pub struct TextList(pub Vec<Text>);

impl<'de> Deserialize<'de> for TextList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        enum OneOrMany {
            One(String),
            Many(Vec<Text>),
        }
        struct OneOrManyVisitor;
        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<OneOrMany, E> {
                Ok(OneOrMany::Many(Vec::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Text>()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }
        impl<'de> Deserialize<'de> for OneOrMany {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(OneOrManyVisitor)
            }
        }
        let spanned = Spanned::<OneOrMany>::deserialize(d)?;
        Ok(TextList(match spanned.value {
            OneOrMany::One(s) => vec![Spanned::new(s, spanned.referenced, spanned.defined)],
            OneOrMany::Many(items) => items,
        }))
    }
}

/// Header maps (`add_header`, `proxy_set_header`): name → value, in order.
pub type HeaderMapRaw = OrderedMap<Text, Text>;

/// The main file: global settings plus what an included file may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MainFile {
    pub worker_threads: Option<Text>,
    pub error_log: Option<Spanned<ErrorLog>>,
    pub access_log: Option<Spanned<AccessLog>>,
    pub server_tokens: Option<Spanned<bool>>,
    pub shutdown_timeout: Option<Text>,
    pub admin: Option<Spanned<Admin>>,
    pub http: Option<Spanned<Limits>>,
    pub include: Option<TextList>,
    #[serde(default)]
    pub upstreams: OrderedMap<Text, Spanned<Upstream>>,
    #[serde(default)]
    pub servers: Vec<Spanned<Server>>,
}

/// An included file: upstreams and servers only.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncludedFile {
    #[serde(default)]
    pub upstreams: OrderedMap<Text, Spanned<Upstream>>,
    #[serde(default)]
    pub servers: Vec<Spanned<Server>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorLog {
    pub level: Option<Text>,
    pub format: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    pub path: Option<Text>,
    pub format: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: Text,
}

/// The `http:` block: defaults for every server.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub client_max_body_size: Option<Text>,
    pub client_header_timeout: Option<Text>,
    pub client_body_timeout: Option<Text>,
    pub keepalive_timeout: Option<Text>,
    pub send_timeout: Option<Text>,
    pub keepalive_requests: Option<Text>,
    pub max_header_size: Option<Text>,
    pub max_connections: Option<Text>,
    pub add_header: Option<HeaderMapRaw>,
    pub proxy_set_header: Option<HeaderMapRaw>,
    pub proxy_hide_header: Option<TextList>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub balance: Option<Text>,
    pub hash_key: Option<Text>,
    #[serde(default)]
    pub servers: Vec<Spanned<UpstreamServer>>,
    pub keepalive: Option<Text>,
    pub keepalive_timeout: Option<Text>,
    pub connect_timeout: Option<Text>,
    pub read_timeout: Option<Text>,
    pub send_timeout: Option<Text>,
    pub next_upstream: Option<TextList>,
    pub next_upstream_tries: Option<Text>,
    pub protocol: Option<Text>,
    pub tls: Option<Spanned<UpstreamTls>>,
    pub health_check: Option<Spanned<HealthCheck>>,
}

/// An upstream server: `127.0.0.1:9001` or a mapping with `addr` and options.
#[derive(Debug, Default)]
pub struct UpstreamServer {
    pub addr: Option<Text>,
    pub weight: Option<Text>,
    pub max_fails: Option<Text>,
    pub fail_timeout: Option<Text>,
    pub max_conns: Option<Text>,
    pub backup: Option<Spanned<bool>>,
    pub down: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamServerMap {
    addr: Option<Text>,
    weight: Option<Text>,
    max_fails: Option<Text>,
    fail_timeout: Option<Text>,
    max_conns: Option<Text>,
    backup: Option<Spanned<bool>>,
    down: Option<Spanned<bool>>,
}

impl<'de> Deserialize<'de> for UpstreamServer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ServerVisitor;
        impl<'de> Visitor<'de> for ServerVisitor {
            type Value = UpstreamServer;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address (host:port) or a mapping with addr and options")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<UpstreamServer, E> {
                // The position is filled in by the Spanned wrapper around us.
                Ok(UpstreamServer {
                    addr: Some(Spanned::new(
                        v.to_string(),
                        serde_saphyr::Location::UNKNOWN,
                        serde_saphyr::Location::UNKNOWN,
                    )),
                    ..Default::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<UpstreamServer, A::Error> {
                let m = UpstreamServerMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(UpstreamServer {
                    addr: m.addr,
                    weight: m.weight,
                    max_fails: m.max_fails,
                    fail_timeout: m.fail_timeout,
                    max_conns: m.max_conns,
                    backup: m.backup,
                    down: m.down,
                })
            }
        }
        d.deserialize_any(ServerVisitor)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    pub verify: Option<Spanned<bool>>,
    pub ca: Option<Text>,
    pub sni: Option<Text>,
    pub certificate: Option<Text>,
    pub key: Option<Text>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: Option<Text>,
    pub interval: Option<Text>,
    pub timeout: Option<Text>,
    pub rise: Option<Text>,
    pub fall: Option<Text>,
    pub expect: Option<Text>,
}

/// A virtual host.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub listen: Option<TextList>,
    pub server_name: Option<TextList>,
    pub tls: Option<Spanned<ServerTls>>,
    pub client_max_body_size: Option<Text>,
    pub client_header_timeout: Option<Text>,
    pub client_body_timeout: Option<Text>,
    pub keepalive_timeout: Option<Text>,
    pub send_timeout: Option<Text>,
    pub keepalive_requests: Option<Text>,
    pub max_header_size: Option<Text>,
    pub add_header: Option<HeaderMapRaw>,
    pub proxy_set_header: Option<HeaderMapRaw>,
    pub proxy_hide_header: Option<TextList>,
    pub allow: Option<TextList>,
    pub deny: Option<TextList>,
    #[serde(default)]
    pub locations: Vec<Spanned<Location>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub certificate: Option<Text>,
    pub key: Option<Text>,
    pub protocols: Option<TextList>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub location: Option<Text>,
    pub proxy_pass: Option<Text>,
    #[serde(rename = "return")]
    pub return_: Option<Text>,
    pub rewrite: Option<TextList>,
    pub proxy_set_header: Option<HeaderMapRaw>,
    pub proxy_hide_header: Option<TextList>,
    pub add_header: Option<HeaderMapRaw>,
    pub proxy_read_timeout: Option<Text>,
    pub proxy_send_timeout: Option<Text>,
    pub client_max_body_size: Option<Text>,
    pub client_body_timeout: Option<Text>,
    pub allow: Option<TextList>,
    pub deny: Option<TextList>,
}
