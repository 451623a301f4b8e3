//! The rate limit service's answer: the overall code, the headers it adds
//! to the request and the response, the body of an over-limit reply, and
//! the `x-ratelimit-*` headers (draft 03) made from its statuses as
//! Envoy's `XRateLimitHeaderUtils` makes them.

use http::{HeaderName, HeaderValue};
use legate_api::pb::envoy::config::core::v3::HeaderValue as PbHeader;
use legate_api::pb::envoy::service::ratelimit::v3::rate_limit_response::{
    rate_limit::Unit, Code as PbCode, DescriptorStatus,
};
use legate_api::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use prost::Message as _;

pub(super) type Headers = Vec<(HeaderName, HeaderValue)>;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Code {
    Ok,
    OverLimit,
}

pub(super) struct Answer {
    pub code: Code,
    pub response_headers: Headers,
    pub request_headers: Headers,
    pub x_ratelimit: Headers,
    pub body: bytes::Bytes,
}

/// The answer from its encoded message (none when it does not decode).
/// Any code but OVER_LIMIT is OK, as in Envoy.
pub(super) fn decode(bytes: &[u8], x_ratelimit_headers: bool) -> Option<Answer> {
    let r = RateLimitResponse::decode(bytes).ok()?;
    let code = if PbCode::try_from(r.overall_code) == Ok(PbCode::OverLimit) { Code::OverLimit } else { Code::Ok };
    Some(Answer {
        code,
        response_headers: headers(&r.response_headers_to_add),
        request_headers: headers(&r.request_headers_to_add),
        x_ratelimit: if x_ratelimit_headers { x_ratelimit(&r.statuses) } else { Vec::new() },
        body: r.raw_body.into(),
    })
}

fn headers(list: &[PbHeader]) -> Headers {
    list.iter()
        .filter_map(|h| {
            let value = if h.raw_value.is_empty() { h.value.as_bytes() } else { &h.raw_value[..] };
            Some((
                HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()).ok()?,
                HeaderValue::from_bytes(value).ok()?,
            ))
        })
        .collect()
}

/// A unit's window in seconds (0: unknown).
fn window(unit: i32) -> u32 {
    match Unit::try_from(unit) {
        Ok(Unit::Second) => 1,
        Ok(Unit::Minute) => 60,
        Ok(Unit::Hour) => 3600,
        Ok(Unit::Day) => 86_400,
        Ok(Unit::Week) => 7 * 86_400,
        Ok(Unit::Month) => 30 * 86_400,
        Ok(Unit::Year) => 365 * 86_400,
        _ => 0,
    }
}

/// `x-ratelimit-limit`, `-remaining`, `-reset` from the status closest to
/// its limit (the first of equals); the limit lists every status's quota
/// policy (`<n>;w=<seconds>[;name="<name>"]`).
fn x_ratelimit(statuses: &[DescriptorStatus]) -> Headers {
    let with_limit = || statuses.iter().filter_map(|s| Some((s, s.current_limit.as_ref()?)));
    let Some((min, min_limit)) =
        with_limit().reduce(|a, b| if b.0.limit_remaining < a.0.limit_remaining { b } else { a })
    else {
        return Vec::new();
    };
    let mut limit = min_limit.requests_per_unit.to_string();
    for (_, l) in with_limit() {
        let w = window(l.unit);
        if w == 0 {
            continue;
        }
        limit.push_str(&format!(", {};w={w}", l.requests_per_unit));
        if !l.name.is_empty() {
            limit.push_str(&format!(";name=\"{}\"", l.name));
        }
    }
    let reset = min.duration_until_reset.as_ref().map_or(0, |d| d.seconds);
    let mut out = Vec::new();
    for (k, v) in [
        ("x-ratelimit-limit", limit),
        ("x-ratelimit-remaining", min.limit_remaining.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            out.push((HeaderName::from_static(k), v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_api::pb::envoy::service::ratelimit::v3::rate_limit_response::RateLimit;

    fn status(rpu: u32, unit: Unit, name: &str, remaining: u32, reset: i64) -> DescriptorStatus {
        DescriptorStatus {
            current_limit: Some(RateLimit { requests_per_unit: rpu, unit: unit as i32, name: name.into() }),
            limit_remaining: remaining,
            duration_until_reset: Some(legate_api::pb::google::protobuf::Duration { seconds: reset, nanos: 0 }),
            ..Default::default()
        }
    }

    #[test]
    fn closest_to_its_limit_gives_remaining_and_reset() {
        let h = x_ratelimit(&[
            status(10, Unit::Second, "per-ip", 5, 1),
            DescriptorStatus::default(),
            status(1000, Unit::Hour, "", 2, 3000),
            status(7, Unit::Unknown, "", 9, 1),
        ]);
        let got: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap_or(""))).collect();
        assert_eq!(
            got,
            [
                ("x-ratelimit-limit", "1000, 10;w=1;name=\"per-ip\", 1000;w=3600"),
                ("x-ratelimit-remaining", "2"),
                ("x-ratelimit-reset", "3000"),
            ]
        );
        assert!(x_ratelimit(&[DescriptorStatus::default()]).is_empty());
    }
}
