//! A route's gRPC and stream-duration timeouts, as Envoy's router and
//! connection manager read them:
//!
//! - `max_stream_duration` (Envoy's "new timeouts"): once set, the route's
//!   `timeout` no longer applies; the stream gets one timer instead, from a
//!   request's `grpc-timeout` header (capped by `grpc_timeout_header_max`,
//!   less `grpc_timeout_header_offset`) when the route reads it, else the
//!   route's own `max_stream_duration` (0 turns it off). A gRPC request's
//!   `grpc-timeout` is rewritten to that timer, or removed without one.
//! - the deprecated `max_grpc_timeout` / `grpc_timeout_offset`: a gRPC
//!   request's route timeout comes from its `grpc-timeout` (none: infinite),
//!   less the offset, capped by the maximum (0: no cap), and the request
//!   carries the expected timeout in `grpc-timeout`.

use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use legate_api::pb::envoy::config::route::v3 as rpb;
use std::time::Duration;

pub static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// The largest value a `grpc-timeout` carries (8 digits).
const MAX_GRPC_TIMEOUT_VALUE: u64 = 99_999_999;

/// `max_stream_duration` of a route.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StreamDuration {
    /// `max_stream_duration` (`Some(ZERO)`: no limit).
    pub max: Option<Duration>,
    /// `grpc_timeout_header_max` (`Some(ZERO)`: no cap); unset, the header is not read.
    pub header_max: Option<Duration>,
    pub header_offset: Option<Duration>,
}

/// The route's timeouts beyond `timeout`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StreamTimeouts {
    /// `max_stream_duration` is set.
    pub new: Option<StreamDuration>,
    /// Deprecated `max_grpc_timeout` (`Some(ZERO)`: no cap).
    pub max_grpc: Option<Duration>,
    /// Deprecated `grpc_timeout_offset`.
    pub grpc_offset: Option<Duration>,
}

fn ms(d: Option<&legate_api::pb::google::protobuf::Duration>) -> Option<Duration> {
    d.map(|d| Duration::from_millis(legate_api::duration::from_pb(d).as_millis() as u64))
}

impl StreamTimeouts {
    // Envoy still reads the deprecated `max_grpc_timeout` and `grpc_timeout_offset`.
    #[allow(deprecated)]
    pub fn compile(ra: &rpb::RouteAction) -> Self {
        Self {
            new: ra.max_stream_duration.as_ref().map(|m| StreamDuration {
                max: ms(m.max_stream_duration.as_ref()),
                header_max: ms(m.grpc_timeout_header_max.as_ref()),
                header_offset: ms(m.grpc_timeout_header_offset.as_ref()),
            }),
            max_grpc: ms(ra.max_grpc_timeout.as_ref()),
            grpc_offset: ms(ra.grpc_timeout_offset.as_ref()),
        }
    }

    /// True when the route writes the expected timeout into a gRPC
    /// request's `grpc-timeout` (the deprecated fields' way).
    pub fn rewrites_grpc_timeout(&self, grpc: bool) -> bool {
        grpc && self.new.is_none() && self.max_grpc.is_some()
    }

    /// The route timeout before any `x-envoy-*` header: none under
    /// `max_stream_duration`; from `grpc-timeout` for a gRPC request under
    /// `max_grpc_timeout`; else the route's `timeout` (`configured`).
    pub fn route_timeout(&self, configured: Option<Duration>, headers: &HeaderMap, grpc: bool) -> Option<Duration> {
        if self.new.is_some() {
            return None;
        }
        let Some(max) = self.max_grpc.filter(|_| grpc) else { return configured };
        let mut t = grpc_timeout(headers).unwrap_or(Duration::ZERO);
        if let Some(offset) = self.grpc_offset {
            // Only when it leaves some time: 0 would mean infinite.
            if offset < t {
                t -= offset;
            }
        }
        if !max.is_zero() && (t.is_zero() || t > max) {
            t = max;
        }
        Some(t).filter(|t| !t.is_zero())
    }

    /// The stream's duration limit under `max_stream_duration` (Envoy's
    /// `refreshDurationTimeout`; the connection manager's own limit is not
    /// implemented, so a route without one sets none).
    pub fn stream_limit(&self, headers: &HeaderMap) -> Option<Duration> {
        let new = self.new?;
        let header = grpc_timeout(headers);
        let t = match (header, new.header_max) {
            (Some(t), Some(cap)) => {
                let mut t = if !cap.is_zero() && t > cap { cap } else { t };
                if let Some(offset) = new.header_offset.filter(|_| !t.is_zero()) {
                    t = t.checked_sub(offset).filter(|_| offset < t).unwrap_or(Duration::ZERO);
                }
                t
            }
            _ => new.max.unwrap_or(Duration::ZERO),
        };
        Some(t).filter(|t| !t.is_zero())
    }

    /// Under `max_stream_duration`, a gRPC request's `grpc-timeout` says the
    /// stream's limit, or goes when there is none.
    pub fn set_stream_grpc_timeout(&self, headers: &mut HeaderMap, limit: Option<Duration>, grpc: bool) {
        if self.new.is_none() || !grpc {
            return;
        }
        match limit {
            Some(t) => set_grpc_timeout(headers, t),
            None => {
                headers.remove(&GRPC_TIMEOUT);
            }
        }
    }
}

/// A gRPC request: `content-type` is `application/grpc` or
/// `application/grpc+<codec>` (not `application/grpc-web`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(ct) = headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes) else { return false };
    ct.strip_prefix(b"application/grpc").is_some_and(|rest| rest.is_empty() || rest[0] == b'+')
}

/// The request's `grpc-timeout`, in whole milliseconds (micro- and
/// nanoseconds rounded up), when it is well formed.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok().filter(|n| *n <= MAX_GRPC_TIMEOUT_VALUE)?;
    let ms = match unit {
        "H" => n * 3_600_000,
        "M" => n * 60_000,
        "S" => n * 1_000,
        "m" => n,
        "u" => n.div_ceil(1_000),
        "n" => n.div_ceil(1_000_000),
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// `grpc-timeout` set to `t` in milliseconds, or a larger unit when the
/// value would pass 8 digits (hours clipped to the largest value).
pub fn set_grpc_timeout(headers: &mut HeaderMap, t: Duration) {
    if let Ok(v) = HeaderValue::from_str(&format_grpc_timeout(t)) {
        headers.insert(GRPC_TIMEOUT.clone(), v);
    }
}

fn format_grpc_timeout(t: Duration) -> String {
    let mut time = t.as_millis() as u64;
    let mut unit = 'm';
    if time > MAX_GRPC_TIMEOUT_VALUE {
        time /= 1000;
        unit = 'S';
    }
    while time > MAX_GRPC_TIMEOUT_VALUE {
        match unit {
            'S' => (time, unit) = (time / 60, 'M'),
            'M' => (time, unit) = (time / 60, 'H'),
            _ => time = MAX_GRPC_TIMEOUT_VALUE,
        }
    }
    format!("{time}{unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn grpc_timeout_units() {
        let t = |v: &'static str| grpc_timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(t("2S"), Some(Duration::from_millis(2000)));
        assert_eq!(t("1500u"), Some(Duration::from_millis(2)));
        assert_eq!(t("1n"), Some(Duration::from_millis(1)));
        assert_eq!(t("3M"), Some(Duration::from_secs(180)));
        assert_eq!(t("123456789m"), None);
        assert_eq!(t("S"), None);
        assert_eq!(t("5x"), None);
        assert_eq!(format_grpc_timeout(Duration::from_millis(2000)), "2000m");
        assert_eq!(format_grpc_timeout(Duration::from_secs(200_000)), "200000S");
    }

    #[test]
    fn grpc_content_types() {
        assert!(is_grpc(&headers(&[("content-type", "application/grpc")])));
        assert!(is_grpc(&headers(&[("content-type", "application/grpc+proto")])));
        assert!(!is_grpc(&headers(&[("content-type", "application/grpc-web")])));
        assert!(!is_grpc(&headers(&[])));
    }

    #[test]
    fn stream_limit_from_header_capped_and_offset() {
        let s = StreamTimeouts {
            new: Some(StreamDuration {
                max: Some(Duration::from_secs(9)),
                header_max: Some(Duration::from_secs(3)),
                header_offset: Some(Duration::from_millis(500)),
            }),
            ..Default::default()
        };
        let h = headers(&[("grpc-timeout", "10S")]);
        assert_eq!(s.stream_limit(&h), Some(Duration::from_millis(2500)));
        assert_eq!(s.stream_limit(&headers(&[])), Some(Duration::from_secs(9)));
        assert_eq!(s.route_timeout(Some(Duration::from_secs(15)), &h, true), None);
    }

    #[test]
    fn deprecated_max_grpc_timeout() {
        let s = StreamTimeouts { max_grpc: Some(Duration::ZERO), ..Default::default() };
        let fifteen = Some(Duration::from_secs(15));
        assert_eq!(s.route_timeout(fifteen, &headers(&[]), true), None);
        assert_eq!(s.route_timeout(fifteen, &headers(&[("grpc-timeout", "2S")]), true), Some(Duration::from_secs(2)));
        assert_eq!(s.route_timeout(fifteen, &headers(&[("grpc-timeout", "2S")]), false), fifteen);
    }
}
