//! What the cache reads of headers: `cache-control` of requests and
//! responses (RFC 9111 section 5.2, as Envoy's cache parses it), HTTP dates,
//! a stored response's age (section 4.2.3) and whether it may be served
//! without asking the origin (section 4.2, with the request's directives).

use http::HeaderMap;
use std::time::{Duration, SystemTime};

/// A request's `cache-control` directives the cache obeys.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestCc {
    /// `no-cache` (or `pragma: no-cache` without `cache-control`).
    pub no_cache: bool,
    pub no_store: bool,
    pub max_age: Option<u64>,
    pub min_fresh: Option<u64>,
    /// `max-stale`, without a value: any staleness.
    pub max_stale: Option<u64>,
}

/// A response's `cache-control` directives the cache obeys.
#[derive(Debug, Default, Clone, Copy)]
pub struct ResponseCc {
    /// `no-cache`: every use is validated first.
    pub no_cache: bool,
    /// `no-store` or `private`: never stored (a shared cache).
    pub no_store: bool,
    /// `must-revalidate` or `proxy-revalidate`: never served stale.
    pub no_stale: bool,
    /// `s-maxage`, else `max-age`.
    pub max_age: Option<u64>,
}

/// The directives of every `cache-control` line, each `name[=value]`.
fn directives(h: &HeaderMap) -> impl Iterator<Item = (String, &str)> {
    h.get_all(http::header::CACHE_CONTROL).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(|d| {
        let d = d.trim();
        match d.split_once('=') {
            Some((n, a)) => (n.trim().to_ascii_lowercase(), a.trim()),
            None => (d.to_ascii_lowercase(), ""),
        }
    })
}

/// A delta-seconds argument, quoted or not; anything else is ignored.
fn seconds(a: &str) -> Option<u64> {
    let a = a.strip_prefix('"').and_then(|a| a.strip_suffix('"')).unwrap_or(a);
    a.parse().ok()
}

impl RequestCc {
    pub fn parse(h: &HeaderMap) -> Self {
        let mut c = Self::default();
        let mut any = false;
        for (name, arg) in directives(h) {
            any = true;
            match name.as_str() {
                "no-cache" => c.no_cache = true,
                "no-store" => c.no_store = true,
                "max-age" => c.max_age = seconds(arg),
                "min-fresh" => c.min_fresh = seconds(arg),
                "max-stale" => c.max_stale = if arg.is_empty() { Some(u64::MAX) } else { seconds(arg) },
                _ => {}
            }
        }
        if !any {
            let pragma = h.get_all(http::header::PRAGMA).iter().filter_map(|v| v.to_str().ok());
            c.no_cache = pragma.flat_map(|v| v.split(',')).any(|d| d.trim().eq_ignore_ascii_case("no-cache"));
        }
        c
    }
}

impl ResponseCc {
    pub fn parse(h: &HeaderMap) -> Self {
        let mut c = Self::default();
        let mut s_maxage = None;
        for (name, arg) in directives(h) {
            match name.as_str() {
                "no-cache" => c.no_cache = true,
                "must-revalidate" | "proxy-revalidate" => c.no_stale = true,
                "no-store" | "private" => c.no_store = true,
                "s-maxage" => s_maxage = seconds(arg),
                "max-age" if c.max_age.is_none() => c.max_age = seconds(arg),
                _ => {}
            }
        }
        c.max_age = s_maxage.or(c.max_age);
        c
    }
}

/// An HTTP date header's time (IMF-fixdate, RFC 850 or asctime).
pub fn date(h: &HeaderMap, name: &http::HeaderName) -> Option<SystemTime> {
    h.get(name).and_then(|v| v.to_str().ok()).and_then(|s| httpdate::parse_http_date(s.trim()).ok())
}

/// The current age of a response stored at `stored` (RFC 9111 4.2.3, the
/// response delay taken as nil), in whole seconds.
pub fn age(h: &HeaderMap, stored: SystemTime, now: SystemTime) -> u64 {
    let date = date(h, &http::header::DATE).unwrap_or(SystemTime::UNIX_EPOCH);
    let apparent = stored.duration_since(date).unwrap_or_default();
    let age_value = h.get(http::header::AGE).and_then(|v| v.to_str().ok()).and_then(|s| s.trim().parse().ok());
    let initial = apparent.max(Duration::from_secs(age_value.unwrap_or(0)));
    (initial + now.duration_since(stored).unwrap_or_default()).as_secs()
}

/// Whether a stored response (`h`, aged `age` at `now`) must be validated
/// with the origin before it answers a request with directives `rq`.
pub fn needs_validation(h: &HeaderMap, age: u64, now: SystemTime, rq: &RequestCc) -> bool {
    let cc = ResponseCc::parse(h);
    if cc.no_cache || rq.no_cache || rq.max_age.is_some_and(|m| m < age) {
        return true;
    }
    // Seconds of freshness left: negative once stale.
    let left: i128 = match cc.max_age {
        Some(m) => i128::from(m) - i128::from(age),
        None => match date(h, &http::header::EXPIRES) {
            Some(e) => match e.duration_since(now) {
                Ok(d) => d.as_secs() as i128,
                Err(past) => -(past.duration().as_secs() as i128) - 1,
            },
            None => -1,
        },
    };
    if left < 0 {
        let allowed = rq.max_stale.is_some_and(|s| i128::from(s) > -left);
        return cc.no_stale || !allowed;
    }
    rq.min_fresh.is_some_and(|f| i128::from(f) > left)
}

/// Status codes a response may be stored with (Envoy's list: RFC 9110's
/// heuristically cacheable codes, 308 and 451).
pub fn cacheable_status(s: u16) -> bool {
    matches!(s, 200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 451 | 501)
}

/// The header names a response's `vary` lists, lowercased (`*` kept).
pub fn vary_names(h: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = h
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn s_maxage_wins_and_private_is_not_stored() {
        let c = ResponseCc::parse(&headers(&[("cache-control", "max-age=10, s-maxage=\"30\", private")]));
        assert_eq!(c.max_age, Some(30));
        assert!(c.no_store);
        let r = RequestCc::parse(&headers(&[("pragma", "no-cache")]));
        assert!(r.no_cache);
        let r = RequestCc::parse(&headers(&[("cache-control", "max-stale"), ("pragma", "no-cache")]));
        assert!(!r.no_cache && r.max_stale == Some(u64::MAX));
    }

    #[test]
    fn freshness_from_max_age_expires_and_request_directives() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let h = headers(&[("cache-control", "max-age=10")]);
        let none = RequestCc::default();
        assert!(!needs_validation(&h, 10, now, &none));
        assert!(needs_validation(&h, 11, now, &none));
        assert!(!needs_validation(&h, 11, now, &RequestCc { max_stale: Some(5), ..none }));
        assert!(needs_validation(&h, 5, now, &RequestCc { max_age: Some(4), ..none }));
        assert!(needs_validation(&h, 5, now, &RequestCc { min_fresh: Some(6), ..none }));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(60));
        let e = headers(&[("expires", &later)]);
        assert!(!needs_validation(&e, 0, now, &none));
        assert!(needs_validation(&e, 0, now + Duration::from_secs(61), &none));
        let must = headers(&[("cache-control", "max-age=1, must-revalidate")]);
        assert!(needs_validation(&must, 3, now, &RequestCc { max_stale: Some(100), ..none }));
    }

    #[test]
    fn age_counts_the_origin_age_and_the_time_stored() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let h = headers(&[("date", &httpdate::fmt_http_date(t - Duration::from_secs(3))), ("age", "10")]);
        assert_eq!(age(&h, t, t + Duration::from_secs(2)), 12);
        let h = headers(&[("date", &httpdate::fmt_http_date(t - Duration::from_secs(3)))]);
        assert_eq!(age(&h, t, t), 3);
    }
}
