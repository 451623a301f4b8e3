//! Responses made from a stored entry: a hit (with its `age`, a HEAD's
//! headers only, one byte range as 206), and a validated entry: the
//! origin's 304 merged into what is stored.

use super::store::Entry;
use crate::body::ProxyBody;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, ETAG, VARY};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

/// A hit: the stored response with its current age; `head` leaves the
/// body out; `range` (the request's) answers one satisfiable byte range
/// with 206, an unsatisfiable one with 416.
pub fn hit(e: &Entry, age: u64, head: bool, range: Option<&HeaderValue>) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::Empty);
    *r.status_mut() = StatusCode::from_u16(e.status).unwrap_or(StatusCode::OK);
    *r.headers_mut() = e.headers.clone();
    r.headers_mut().insert(http::header::AGE, HeaderValue::from(age));
    // A body that came chunked is sent whole, with its length.
    if r.headers_mut().remove(http::header::TRANSFER_ENCODING).is_some() || !r.headers().contains_key(CONTENT_LENGTH) {
        r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(e.body.len()));
    }
    let len = e.body.len() as u64;
    let mut body = e.body.clone();
    if e.status == 200 {
        match range.and_then(|v| v.to_str().ok()).map(|v| byte_range(v, len)) {
            Some(Range::Part(first, last)) => {
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                body = body.slice(first as usize..=last as usize);
                let cr = format!("bytes {first}-{last}/{len}");
                r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
                r.headers_mut()
                    .append(CONTENT_RANGE, HeaderValue::from_str(&cr).unwrap_or(HeaderValue::from_static("")));
            }
            Some(Range::Unsatisfiable) => {
                *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(0));
                let cr = HeaderValue::from_str(&format!("bytes */{len}")).unwrap_or(HeaderValue::from_static(""));
                r.headers_mut().append(CONTENT_RANGE, cr);
                body = bytes::Bytes::new();
            }
            _ => {}
        }
    }
    if !head && !body.is_empty() {
        *r.body_mut() = ProxyBody::full(body);
    }
    r
}

/// What a `range` header asks of a body of `len` bytes.
#[derive(Debug, PartialEq)]
enum Range {
    /// The whole body (no range, several, one covering it all, or one the
    /// cache does not read).
    Whole,
    /// Bytes `first..=last`.
    Part(u64, u64),
    Unsatisfiable,
}

fn byte_range(v: &str, len: u64) -> Range {
    let Some(spec) = v.trim().strip_prefix("bytes=") else { return Range::Whole };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return Range::Whole };
    let (first, last) = match (a.trim().parse::<u64>().ok(), b.trim().parse::<u64>().ok()) {
        (Some(f), Some(l)) if f <= l => (f, l.min(len.saturating_sub(1))),
        (Some(f), None) if b.trim().is_empty() => (f, len.saturating_sub(1)),
        (None, Some(n)) if a.trim().is_empty() => {
            if n == 0 {
                return Range::Unsatisfiable;
            }
            (len.saturating_sub(n), len.saturating_sub(1))
        }
        _ => return Range::Whole,
    };
    if len == 0 || first >= len {
        return Range::Unsatisfiable;
    }
    if first == 0 && last + 1 == len {
        return Range::Whole;
    }
    Range::Part(first, last)
}

/// Headers a 304 never changes in a stored response (Envoy's list): those
/// of the body and the validator itself.
fn kept(name: &http::HeaderName) -> bool {
    name == CONTENT_LENGTH || name == CONTENT_RANGE || name == ETAG || name == VARY
}

/// The stored headers updated with a 304's (RFC 9111 4.3.4): each field the
/// 304 carries replaces every stored line of its name.
pub fn merged(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut out = stored.clone();
    for name in not_modified.keys().filter(|n| !kept(n)) {
        out.remove(name);
        for v in not_modified.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_as_the_cache_reads_them() {
        assert_eq!(byte_range("bytes=0-3", 10), Range::Part(0, 3));
        assert_eq!(byte_range("bytes=4-", 10), Range::Part(4, 9));
        assert_eq!(byte_range("bytes=-2", 10), Range::Part(8, 9));
        assert_eq!(byte_range("bytes=0-20", 10), Range::Whole);
        assert_eq!(byte_range("bytes=10-", 10), Range::Unsatisfiable);
        assert_eq!(byte_range("bytes=0-1,3-4", 10), Range::Whole);
        assert_eq!(byte_range("items=0-1", 10), Range::Whole);
    }

    #[test]
    fn a_304_replaces_fields_but_not_the_validator_or_length() {
        let mut s = HeaderMap::new();
        s.insert("etag", HeaderValue::from_static("\"a\""));
        s.insert("content-length", HeaderValue::from_static("5"));
        s.append("x-v", HeaderValue::from_static("1"));
        s.append("x-v", HeaderValue::from_static("2"));
        let mut n = HeaderMap::new();
        n.insert("etag", HeaderValue::from_static("\"b\""));
        n.insert("content-length", HeaderValue::from_static("0"));
        n.insert("x-v", HeaderValue::from_static("3"));
        let m = merged(&s, &n);
        assert_eq!(m["etag"], "\"a\"");
        assert_eq!(m["content-length"], "5");
        assert_eq!(m.get_all("x-v").iter().collect::<Vec<_>>(), vec!["3"]);
    }
}
