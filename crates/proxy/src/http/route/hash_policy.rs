//! A route's `hash_policy`: what of a request (a header, a cookie, the
//! source IP, a query parameter) it hashes for consistent-hashing clusters
//! (RING_HASH, MAGLEV) and `weighted_clusters.use_hash_policy`, combined as
//! Envoy combines them. The router computes the hash; the cluster only sees
//! the resulting `u64`. A cookie policy with a `ttl` makes the cookie when
//! the request has none, as Envoy's router does: its value the hex of the
//! xxHash64 of the connection's remote and local addresses, hashed as a
//! returned cookie would be, and set on the response.

use std::net::SocketAddr;
use std::time::Duration;
use xxhash_rust::xxh64::xxh64;

/// What a `hash_policy` entry hashes.
#[derive(Debug, Clone)]
pub enum HashSource {
    Header(http::HeaderName),
    Cookie(CookieSource),
    SourceIp,
    QueryParameter(String),
}

/// A cookie hash policy: the cookie's name and, to make the cookie when
/// the request has none, its `ttl` and `path`.
#[derive(Debug, Clone)]
pub struct CookieSource {
    pub name: String,
    pub ttl: Option<Duration>,
    pub path: String,
}

/// The connection a request came on, for a generated cookie's value.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    /// The address the hash's `source_ip` uses.
    pub client: std::net::IpAddr,
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// A request's hash, and the `set-cookie` a cookie policy made for it.
pub type Hashed = (Option<u64>, Option<http::HeaderValue>);

/// The cookie `name` of the request, its surrounding double quotes removed
/// (as Envoy parses cookies).
fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim_start().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v))
        .filter(|v| !v.is_empty())
}

/// The cookie Envoy's router makes for `c` on connection `conn`: its value
/// and the `set-cookie` header (`NAME="VALUE"; Max-Age=S; Path=P; HttpOnly`).
fn new_cookie(c: &CookieSource, ttl: Duration, conn: &Conn) -> (String, Option<http::HeaderValue>) {
    let value = format!("{:016x}", xxh64(format!("{}{}", conn.remote, conn.local).as_bytes(), 0));
    let mut header = format!("{}=\"{value}\"", c.name);
    if !ttl.is_zero() {
        header.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if !c.path.is_empty() {
        header.push_str(&format!("; Path={}", c.path));
    }
    header.push_str("; HttpOnly");
    (value, http::HeaderValue::from_str(&header).ok())
}

/// One `hash_policy` entry of a route; a `terminal` one that produced a
/// hash ends the list.
#[derive(Debug, Clone)]
pub struct HashPolicy {
    pub source: HashSource,
    pub terminal: bool,
}

/// The request's hash under `policies`, as Envoy combines them: each new
/// value is XORed onto the previous hash rotated left by one; a terminal
/// policy that produced a hash ends the list. `None` when no policy applies.
///
/// `make_cookie`: whether a cookie policy with a `ttl` makes its cookie when
/// the request has none — Envoy's router does for the host pick of a
/// cluster whose balancer hashes, not for the pick among weighted clusters.
pub fn request_hash(
    policies: &[HashPolicy],
    headers: &http::HeaderMap,
    query: Option<&str>,
    conn: &Conn,
    make_cookie: bool,
) -> Hashed {
    let mut hash: Option<u64> = None;
    let mut set_cookie = None;
    for p in policies {
        let value = match &p.source {
            HashSource::Header(name) => {
                let all = headers.get_all(name);
                let mut it = all.iter();
                match (it.next(), it.next()) {
                    (None, _) => None,
                    // The common case: one value, no allocation.
                    (Some(v), None) => Some(xxh64(v.as_bytes(), 0)),
                    // Several values: sorted, each hashed with the previous as seed.
                    _ => {
                        let mut values: Vec<&[u8]> = all.iter().map(|v| v.as_bytes()).collect();
                        values.sort();
                        Some(values.iter().fold(0, |seed, v| xxh64(v, seed)))
                    }
                }
            }
            HashSource::Cookie(c) => match (cookie(headers, &c.name), c.ttl) {
                (Some(v), _) => Some(xxh64(v.as_bytes(), 0)),
                (None, Some(ttl)) if make_cookie => {
                    let (value, header) = new_cookie(c, ttl, conn);
                    set_cookie = header;
                    Some(xxh64(value.as_bytes(), 0))
                }
                (None, _) => None,
            },
            HashSource::SourceIp => Some(xxh64(conn.client.to_string().as_bytes(), 0)),
            HashSource::QueryParameter(name) => query.and_then(|q| {
                q.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == name).then(|| xxh64(v.as_bytes(), 0))
                })
            }),
        };
        if let Some(v) = value {
            hash = Some(hash.map_or(0, |h| h.rotate_left(1)) ^ v);
        }
        if p.terminal && hash.is_some() {
            break;
        }
    }
    (hash, set_cookie)
}

impl HashPolicy {
    /// One of a route's `hash_policy` entries.
    pub fn compile(p: &legate_api::pb::envoy::config::route::v3::route_action::HashPolicy) -> Result<Self, String> {
        use legate_api::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
        let source = match &p.policy_specifier {
            Some(PolicySpecifier::Header(h)) => HashSource::Header(
                http::HeaderName::from_bytes(h.header_name.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("invalid header name '{}'", h.header_name))?,
            ),
            Some(PolicySpecifier::Cookie(c)) => HashSource::Cookie(CookieSource {
                name: c.name.clone(),
                ttl: c.ttl.as_ref().map(|d| std::time::Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)),
                path: c.path.clone(),
            }),
            Some(PolicySpecifier::ConnectionProperties(c)) if c.source_ip => HashSource::SourceIp,
            Some(PolicySpecifier::QueryParameter(q)) => HashSource::QueryParameter(q.name.clone()),
            _ => {
                return Err(
                    "only header, cookie, connection_properties.source_ip and query_parameter are supported".into()
                )
            }
        };
        Ok(Self { source, terminal: p.terminal })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Conn {
        Conn {
            client: [10, 0, 0, 1].into(),
            remote: "10.0.0.1:40000".parse().expect("addr"),
            local: "10.0.0.2:8080".parse().expect("addr"),
        }
    }

    fn cookie_policy(name: &str, ttl: Option<u64>) -> HashPolicy {
        let c = CookieSource { name: name.into(), ttl: ttl.map(Duration::from_secs), path: "/".into() };
        HashPolicy { source: HashSource::Cookie(c), terminal: false }
    }

    #[test]
    fn hash_policies_combine_like_envoys() {
        let mut h = http::HeaderMap::new();
        h.insert("x-user", http::HeaderValue::from_static("alice"));
        h.insert(http::header::COOKIE, http::HeaderValue::from_static("a=1; session=\"s1\""));
        let c = &conn();
        let hash = |p: &[HashPolicy], h: &http::HeaderMap, q| request_hash(p, h, q, c, true).0;
        let header =
            HashPolicy { source: HashSource::Header(http::HeaderName::from_static("x-user")), terminal: false };
        let cookie = cookie_policy("session", None);
        let query = HashPolicy { source: HashSource::QueryParameter("id".into()), terminal: true };
        assert_eq!(hash(std::slice::from_ref(&header), &h, None), Some(xxh64(b"alice", 0)));
        assert_eq!(hash(std::slice::from_ref(&cookie), &h, None), Some(xxh64(b"s1", 0)), "quotes removed");
        let both = hash(&[header.clone(), cookie.clone()], &h, None);
        assert_eq!(both, Some(xxh64(b"alice", 0).rotate_left(1) ^ xxh64(b"s1", 0)));
        // A terminal policy that hashed stops the list.
        assert_eq!(hash(&[query.clone(), header.clone()], &h, Some("id=7&x=1")), Some(xxh64(b"7", 0)));
        // Nothing to hash: None (the balancer then picks at random).
        assert_eq!(hash(&[query], &http::HeaderMap::new(), None), None);
    }

    #[test]
    fn a_cookie_policy_with_a_ttl_makes_the_cookie_envoys_way() {
        let p = [cookie_policy("sticky", Some(3600))];
        let (hash, set) = request_hash(&p, &http::HeaderMap::new(), None, &conn(), true);
        let value = format!("{:016x}", xxh64(b"10.0.0.1:4000010.0.0.2:8080", 0));
        assert_eq!(hash, Some(xxh64(value.as_bytes(), 0)), "hashed as the cookie returned will be");
        let set = set.expect("set-cookie");
        assert_eq!(set.to_str().ok(), Some(format!("sticky=\"{value}\"; Max-Age=3600; Path=/; HttpOnly").as_str()));
        // Returned, it hashes the same and sets nothing.
        let mut h = http::HeaderMap::new();
        h.insert(http::header::COOKIE, http::HeaderValue::from_str(&format!("sticky=\"{value}\"")).expect("value"));
        assert_eq!(request_hash(&p, &h, None, &conn(), true), (hash, None));
        // Without a ttl, or where no cookie is made (the weighted pick), nothing.
        let none = http::HeaderMap::new();
        assert_eq!(request_hash(&[cookie_policy("sticky", None)], &none, None, &conn(), true), (None, None));
        assert_eq!(request_hash(&p, &none, None, &conn(), false), (None, None));
    }
}
