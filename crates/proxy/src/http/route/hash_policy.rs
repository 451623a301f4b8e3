//! A route's `hash_policy`: what of a request (a header, a cookie, the
//! source IP, a query parameter) it hashes for consistent-hashing clusters
//! (RING_HASH, MAGLEV), combined as Envoy combines them. The router computes
//! the hash; the cluster only sees the resulting `u64`.

use xxhash_rust::xxh64::xxh64;

/// What a `hash_policy` entry hashes.
#[derive(Debug, Clone)]
pub enum HashSource {
    Header(http::HeaderName),
    Cookie(String),
    SourceIp,
    QueryParameter(String),
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
pub fn request_hash(
    policies: &[HashPolicy],
    headers: &http::HeaderMap,
    query: Option<&str>,
    client: std::net::IpAddr,
) -> Option<u64> {
    let mut hash: Option<u64> = None;
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
            HashSource::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| xxh64(v.as_bytes(), 0)),
            HashSource::SourceIp => Some(xxh64(client.to_string().as_bytes(), 0)),
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
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_policies_combine_like_envoys() {
        let mut h = http::HeaderMap::new();
        h.insert("x-user", http::HeaderValue::from_static("alice"));
        h.insert(http::header::COOKIE, http::HeaderValue::from_static("a=1; session=s1"));
        let ip: std::net::IpAddr = [10, 0, 0, 1].into();
        let header =
            HashPolicy { source: HashSource::Header(http::HeaderName::from_static("x-user")), terminal: false };
        let cookie = HashPolicy { source: HashSource::Cookie("session".into()), terminal: false };
        let query = HashPolicy { source: HashSource::QueryParameter("id".into()), terminal: true };
        assert_eq!(request_hash(std::slice::from_ref(&header), &h, None, ip), Some(xxh64(b"alice", 0)));
        assert_eq!(request_hash(std::slice::from_ref(&cookie), &h, None, ip), Some(xxh64(b"s1", 0)));
        let both = request_hash(&[header.clone(), cookie.clone()], &h, None, ip);
        assert_eq!(both, Some(xxh64(b"alice", 0).rotate_left(1) ^ xxh64(b"s1", 0)));
        // A terminal policy that hashed stops the list.
        assert_eq!(request_hash(&[query.clone(), header.clone()], &h, Some("id=7&x=1"), ip), Some(xxh64(b"7", 0)));
        // Nothing to hash: None (the balancer then picks at random).
        assert_eq!(request_hash(&[query], &http::HeaderMap::new(), None, ip), None);
    }
}
