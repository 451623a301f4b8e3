//! What Envoy's gRPC utilities say of a request or response: whether its
//! content type is gRPC, the gRPC status an HTTP status maps to, and how a
//! `grpc-message` is percent-encoded. The connection manager (gRPC local
//! replies) and the gRPC filters share them.

use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue};

/// Envoy's `hasGrpcContentType`: `application/grpc`, alone or followed by
/// `+` or `;`.
pub fn grpc_content_type(h: &HeaderMap) -> bool {
    h.get(CONTENT_TYPE).is_some_and(|v| {
        let b = v.as_bytes();
        b.starts_with(b"application/grpc") && matches!(b.get(16), None | Some(b'+') | Some(b';'))
    })
}

/// Envoy's `httpToGrpcStatus`.
pub fn grpc_status_of(http: u16) -> u16 {
    match http {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Envoy's percent-encoding of a `grpc-message`: `%` and bytes outside
/// printable ASCII.
pub fn percent_encode(text: &[u8]) -> HeaderValue {
    let mut out = String::with_capacity(text.len());
    for &b in text {
        if !(b' '..=b'~').contains(&b) || b == b'%' {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_helpers() {
        assert_eq!(percent_encode(b"a b%\n\xff"), "a b%25%0A%FF");
        assert_eq!(grpc_status_of(503), 14);
        assert_eq!(grpc_status_of(418), 2);
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc+proto"));
        assert!(grpc_content_type(&h));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpcx"));
        assert!(!grpc_content_type(&h));
    }
}
