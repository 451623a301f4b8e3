//! Route retry policies (`retry_policy`) as Envoy defines them, and the
//! loop that sends a request again under one (Envoy's `RetryStateImpl`).

use crate::body::ProxyBody;
use crate::upstream::cluster::Cluster;
use crate::upstream::error::UpstreamError;
use crate::upstream::host::Host;
use crate::upstream::pool::Held;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use hyper::body::Incoming;
use legate_api::pb::envoy::config::route::v3::RetryPolicy as PbRetryPolicy;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The attempt an upstream request is (`include_request_attempt_count`,
/// `include_attempt_count_in_response`).
pub(in crate::http) static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
/// The time an attempt has (`expected_timeout_ms`).
pub(in crate::http) static X_ENVOY_EXPECTED_TIMEOUT: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");

/// `retry_on` conditions as bits (the route's and `x-envoy-retry-on`'s are
/// or-ed together, as Envoy merges them).
pub mod on {
    pub const FIVE_XX: u32 = 1;
    pub const GATEWAY_ERROR: u32 = 1 << 1;
    pub const CONNECT_FAILURE: u32 = 1 << 2;
    pub const RESET: u32 = 1 << 3;
    pub const RETRIABLE_4XX: u32 = 1 << 4;
    pub const RETRIABLE_STATUS_CODES: u32 = 1 << 5;
    pub const RETRIABLE_HEADERS: u32 = 1 << 6;
    pub const REFUSED_STREAM: u32 = 1 << 7;
    pub const ENVOY_RATELIMITED: u32 = 1 << 8;
    pub const GRPC_CANCELLED: u32 = 1 << 9;
    pub const GRPC_DEADLINE_EXCEEDED: u32 = 1 << 10;
    pub const GRPC_INTERNAL: u32 = 1 << 11;
    pub const GRPC_RESOURCE_EXHAUSTED: u32 = 1 << 12;
    pub const GRPC_UNAVAILABLE: u32 = 1 << 13;
    pub const GRPC_ANY: u32 =
        GRPC_CANCELLED | GRPC_DEADLINE_EXCEEDED | GRPC_INTERNAL | GRPC_RESOURCE_EXHAUSTED | GRPC_UNAVAILABLE;
}

/// One `retry_on` name's bit (HTTP and gRPC conditions share the list in
/// a route's `retry_on`; the headers keep them apart).
fn condition(name: &str, grpc: bool) -> Option<u32> {
    Some(match (name, grpc) {
        ("5xx", false) => on::FIVE_XX,
        ("gateway-error", false) => on::GATEWAY_ERROR,
        ("connect-failure", false) => on::CONNECT_FAILURE,
        ("reset", false) => on::RESET,
        ("retriable-4xx", false) => on::RETRIABLE_4XX,
        ("retriable-status-codes", false) => on::RETRIABLE_STATUS_CODES,
        ("retriable-headers", false) => on::RETRIABLE_HEADERS,
        ("refused-stream", false) => on::REFUSED_STREAM,
        ("envoy-ratelimited", false) => on::ENVOY_RATELIMITED,
        ("cancelled", true) => on::GRPC_CANCELLED,
        ("deadline-exceeded", true) => on::GRPC_DEADLINE_EXCEEDED,
        ("internal", true) => on::GRPC_INTERNAL,
        ("resource-exhausted", true) => on::GRPC_RESOURCE_EXHAUSTED,
        ("unavailable", true) => on::GRPC_UNAVAILABLE,
        _ => return None,
    })
}

/// The bits of a header's comma-separated list; unknown names are skipped,
/// as Envoy skips them in `x-envoy-retry-on`.
fn header_conditions(value: &str, grpc: bool) -> u32 {
    value.split(',').map(str::trim).filter_map(|n| condition(n, grpc)).fold(0, |a, b| a | b)
}

/// Request headers an internal caller may use to shape the router's retries
/// and timeouts; the router consumes them (they never go upstream).
pub const RETRY_REQUEST_HEADERS: &[&str] = &[
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-hedge-on-per-try-timeout",
];

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// `on::*` bits.
    on: u32,
    codes: Vec<u16>,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    base: Duration,
    max: Duration,
    /// `envoy.retry_host_predicates.previous_hosts`: retry on another host.
    pub avoid_previous_hosts: bool,
    pub host_selection_attempts: u32,
    /// `retriable-headers`: a response matching any of `retriable_headers`.
    retriable_headers: Vec<crate::common::matcher::HeaderMatch>,
}

/// Envoy's `x-envoy-expected-rq-timeout-ms` for an attempt begun `elapsed`
/// after the first: the time the route's timeout leaves (at least 1 ms), or
/// the per-try timeout when that is shorter; none when neither is set.
pub fn expected_timeout_ms(global: Option<Duration>, per_try: Option<Duration>, elapsed: Duration) -> Option<u64> {
    let global = global.map(|g| g.as_millis() as u64).filter(|g| *g > 0);
    let expected = per_try.map(|p| p.as_millis() as u64).filter(|p| *p > 0).or(global)?;
    Some(match global {
        Some(g) => {
            let elapsed = elapsed.as_millis() as u64;
            if elapsed >= g {
                1
            } else {
                expected.min(g - elapsed)
            }
        }
        None => expected,
    })
}

impl RetryPolicy {
    pub fn compile(p: &PbRetryPolicy) -> Result<Self, String> {
        let mut r = Self {
            on: 0,
            codes: p.retriable_status_codes.iter().filter_map(|c| u16::try_from(*c).ok()).collect(),
            num_retries: p.num_retries.map_or(1, |n| n.value),
            per_try_timeout: p.per_try_timeout.as_ref().map(legate_api::duration::from_pb).filter(|d| !d.is_zero()),
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
            avoid_previous_hosts: false,
            host_selection_attempts: (p.host_selection_retry_max_attempts.max(1)) as u32,
            retriable_headers: p
                .retriable_headers
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    crate::common::matcher::HeaderMatch::new(m).map_err(|e| format!("retriable_headers[{i}]: {e}"))
                })
                .collect::<Result<_, _>>()?,
        };
        for on in p.retry_on.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match condition(on, false).or_else(|| condition(on, true)) {
                Some(bit) => r.on |= bit,
                None => return Err(format!("retry_on: '{on}' is not supported")),
            }
        }
        if let Some(b) = &p.retry_back_off {
            if let Some(base) = b.base_interval.as_ref().map(legate_api::duration::from_pb) {
                r.base = base;
                r.max = base * 10;
            }
            if let Some(max) = b.max_interval.as_ref().map(legate_api::duration::from_pb) {
                r.max = max;
            }
        }
        for pred in &p.retry_host_predicate {
            match pred.name.as_str() {
                "envoy.retry_host_predicates.previous_hosts" => r.avoid_previous_hosts = true,
                other => return Err(format!("retry_host_predicate: '{other}' is not supported")),
            }
        }
        Ok(r)
    }

    /// The policy Envoy uses when a route has none but an internal request
    /// asks for retries with `x-envoy-retry-on`: one retry, 25 ms base.
    pub fn default_for_headers() -> Self {
        Self {
            on: 0,
            codes: Vec::new(),
            num_retries: 1,
            per_try_timeout: None,
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
            avoid_previous_hosts: false,
            host_selection_attempts: 1,
            retriable_headers: Vec::new(),
        }
    }

    fn has(&self, bit: u32) -> bool {
        self.on & bit != 0
    }

    /// Merges an internal request's retry headers into the route's policy as
    /// Envoy does: `x-envoy-retry-on`/`-grpc-on` add conditions,
    /// `x-envoy-max-retries` replaces `num_retries` (when any condition is
    /// set), `x-envoy-retriable-status-codes` adds codes and
    /// `x-envoy-retriable-header-names` adds name-only header matches.
    pub fn merge_request_headers(&mut self, h: &http::HeaderMap) {
        let text = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
        if let Some(v) = text("x-envoy-retry-on") {
            self.on |= header_conditions(v, false);
        }
        if let Some(v) = text("x-envoy-retry-grpc-on") {
            self.on |= header_conditions(v, true);
        }
        if self.on != 0 {
            if let Some(n) = text("x-envoy-max-retries").and_then(|v| v.trim().parse::<u32>().ok()) {
                self.num_retries = n;
            }
        }
        if let Some(v) = text("x-envoy-retriable-status-codes") {
            self.codes.extend(v.split(',').filter_map(|c| c.trim().parse::<u16>().ok()));
        }
        if let Some(v) = text("x-envoy-retriable-header-names") {
            for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let m = legate_api::pb::envoy::config::route::v3::HeaderMatcher {
                    name: name.to_ascii_lowercase(),
                    header_match_specifier: Some(
                        legate_api::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier::PresentMatch(
                            true,
                        ),
                    ),
                    ..Default::default()
                };
                if let Ok(m) = crate::common::matcher::HeaderMatch::new(&m) {
                    self.retriable_headers.push(m);
                }
            }
        }
    }

    /// Whether a response with this status is retried.
    pub fn retry_status(&self, status: u16) -> bool {
        (self.has(on::FIVE_XX) && status >= 500)
            || (self.has(on::GATEWAY_ERROR) && matches!(status, 502..=504))
            || (self.has(on::RETRIABLE_4XX) && status == 409)
            || (self.has(on::RETRIABLE_STATUS_CODES) && self.codes.contains(&status))
    }

    /// Whether a response is retried, in Envoy's order: a response an
    /// upstream Envoy rate-limited (`x-envoy-ratelimited`) only under
    /// `envoy-ratelimited`; then by status, by a header matching one of the
    /// retriable headers, or by its `grpc-status`.
    pub fn retry_response(&self, status: u16, headers: &http::HeaderMap) -> bool {
        if headers.contains_key("x-envoy-ratelimited") {
            return self.has(on::ENVOY_RATELIMITED);
        }
        self.retry_status(status)
            || (self.has(on::RETRIABLE_HEADERS) && {
                let pseudo = crate::common::matcher::Pseudo { method: "", path: "", authority: "", scheme: "" };
                self.retriable_headers.iter().any(|m| m.matches(headers, &pseudo))
            })
            || (self.on & on::GRPC_ANY != 0 && self.retry_grpc(headers))
    }

    fn retry_grpc(&self, headers: &http::HeaderMap) -> bool {
        let Some(code) = headers.get("grpc-status").and_then(|v| v.to_str().ok()?.parse::<u32>().ok()) else {
            return false;
        };
        let bit = match code {
            1 => on::GRPC_CANCELLED,
            4 => on::GRPC_DEADLINE_EXCEEDED,
            8 => on::GRPC_RESOURCE_EXHAUSTED,
            13 => on::GRPC_INTERNAL,
            14 => on::GRPC_UNAVAILABLE,
            _ => return false,
        };
        self.has(bit)
    }

    /// Whether a failure before any response is retried.
    pub fn retry_error(&self, e: &UpstreamError) -> bool {
        match e {
            UpstreamError::ConnectFailure(_) | UpstreamError::ConnectTimeout | UpstreamError::Tls(_) => {
                self.has(on::CONNECT_FAILURE | on::RESET | on::FIVE_XX | on::GATEWAY_ERROR)
            }
            // A stream the HTTP/2 upstream refused (REFUSED_STREAM) was never
            // processed: retried under refused-stream, or as any reset.
            UpstreamError::Reset(e) if crate::upstream::error::is_refused_stream(e) => {
                self.has(on::REFUSED_STREAM | on::RESET | on::FIVE_XX | on::GATEWAY_ERROR)
            }
            UpstreamError::Handshake(_) | UpstreamError::Reset(_) => {
                self.has(on::RESET | on::FIVE_XX | on::GATEWAY_ERROR)
            }
            // A per-try timeout counts as a 504.
            UpstreamError::PerTryTimeout => self.retry_status(504),
            // Envoy never retries a circuit breaker's overflow.
            UpstreamError::Overflow | UpstreamError::PoolOverflow => false,
        }
    }

    /// Envoy's jittered exponential back-off before retry `n` (1-based):
    /// uniform in [0, min(base * 2^(n-1), max)].
    pub fn backoff(&self, n: u32) -> Duration {
        let cap = self.base.saturating_mul(1u32 << (n.saturating_sub(1)).min(16)).min(self.max);
        cap.mul_f64(rand::random::<f64>())
    }
}

/// What each attempt of a retried request is told.
pub(super) struct Attempts {
    pub(super) route_timeout: Option<Duration>,
    /// Set `x-envoy-attempt-count` on every attempt.
    pub(super) count_header: bool,
    /// Set `x-envoy-expected-rq-timeout-ms` (unless the router suppresses it).
    pub(super) timeout_header: bool,
    /// Set the expected timeout in `grpc-timeout` too (`max_grpc_timeout`).
    pub(super) grpc_timeout_header: bool,
    /// The request's virtual cluster, counting retries as its cluster does.
    pub(super) charged: crate::http::route::virtual_cluster::Charged,
}

/// Sends with the route's retry policy: on a retriable response or failure,
/// waits the jittered back-off and tries again, on another host when the
/// policy avoids previous ones. Returns the last outcome, the host that gave
/// it and the number of attempts.
pub(super) async fn send_with_retries(
    cluster: Arc<Cluster>,
    first: Arc<Host>,
    parts: http::request::Parts,
    body: bytes::Bytes,
    policy: RetryPolicy,
    attempts: Attempts,
    rq_slot: &mut Held,
) -> (Result<Response<Incoming>, UpstreamError>, Arc<Host>, u32) {
    let route_timeout = attempts.route_timeout;
    let started = Instant::now();
    let mut parts = parts;
    let mut host = first;
    let mut tried: Vec<std::net::SocketAddr> = Vec::new();
    let mut attempt = 0u32;
    loop {
        let mut req = Request::new(ProxyBody::full(body.clone()));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.headers_mut() = parts.headers.clone();
        let sent = crate::upstream::pool::send(&cluster, &host, req, rq_slot);
        let result = match policy.per_try_timeout {
            Some(t) => tokio::time::timeout(t, sent).await.unwrap_or_else(|_| {
                cluster.stats.upstream_rq_per_try_timeout.inc();
                Err(UpstreamError::PerTryTimeout)
            }),
            None => sent.await,
        };
        let retriable = match &result {
            Ok(r) => policy.retry_response(r.status().as_u16(), r.headers()),
            Err(e) => policy.retry_error(e),
        };
        if !retriable || attempt >= policy.num_retries {
            if retriable {
                cluster.stats.upstream_rq_retry_limit_exceeded.inc();
                attempts.charged.each().for_each(|s| s.upstream_rq_retry_limit_exceeded.inc());
            }
            if attempt > 0 && retriable_ok(&result, &policy) {
                cluster.stats.upstream_rq_retry_success.inc();
                attempts.charged.each().for_each(|s| s.upstream_rq_retry_success.inc());
            }
            return (result, host, attempt + 1);
        }
        // A retried response is not counted in upstream_rq_<code>: Envoy
        // counts the response the downstream gets.
        // max_retries: retries in flight across the cluster.
        let Some(_retry_slot) = cluster.breakers.default.try_retry() else {
            cluster.stats.upstream_rq_retry_overflow.inc();
            attempts.charged.each().for_each(|s| s.upstream_rq_retry_overflow.inc());
            return (result, host, attempt + 1);
        };
        attempt += 1;
        cluster.stats.upstream_rq_retry.inc();
        attempts.charged.each().for_each(|s| s.upstream_rq_retry.inc());
        tried.push(host.addr);
        drop(result);
        tokio::time::sleep(policy.backoff(attempt)).await;
        if attempts.count_header {
            parts.headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempt + 1));
        }
        // The next attempt is told the time the route's timeout leaves.
        if let Some(ms) = expected_timeout_ms(route_timeout, policy.per_try_timeout, started.elapsed()) {
            if attempts.timeout_header {
                parts.headers.insert(X_ENVOY_EXPECTED_TIMEOUT.clone(), HeaderValue::from(ms));
            }
            if attempts.grpc_timeout_header {
                crate::http::route::stream_timeouts::set_grpc_timeout(&mut parts.headers, Duration::from_millis(ms));
            }
        }
        host = next_host(&cluster, &policy, &tried, host);
    }
}

/// The host for the next attempt: a new pick, avoiding earlier hosts when
/// the policy asks to (counted there when it is another); the same host
/// when none can be picked.
fn next_host(cluster: &Cluster, policy: &RetryPolicy, tried: &[std::net::SocketAddr], host: Arc<Host>) -> Arc<Host> {
    let mut next = cluster.pick();
    for _ in 1..policy.host_selection_attempts.max(if policy.avoid_previous_hosts { 3 } else { 1 }) {
        match &next {
            Some(h) if policy.avoid_previous_hosts && tried.contains(&h.addr) => next = cluster.pick(),
            _ => break,
        }
    }
    match next {
        Some(n) if !Arc::ptr_eq(&n, &host) => {
            n.rq_total.fetch_add(1, Relaxed);
            n
        }
        _ => host,
    }
}

/// A final outcome that the policy would not have retried (a success).
fn retriable_ok(result: &Result<Response<Incoming>, UpstreamError>, policy: &RetryPolicy) -> bool {
    match result {
        Ok(r) => !policy.retry_response(r.status().as_u16(), r.headers()),
        Err(_) => false,
    }
}

#[cfg(test)]
mod expected_timeout_tests {
    use super::expected_timeout_ms;
    use std::time::Duration;

    #[test]
    fn time_left_or_per_try() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(expected_timeout_ms(Some(s(15)), None, ms(0)), Some(15000));
        assert_eq!(expected_timeout_ms(Some(s(15)), None, ms(400)), Some(14600));
        assert_eq!(expected_timeout_ms(Some(s(15)), Some(ms(250)), ms(400)), Some(250));
        assert_eq!(expected_timeout_ms(Some(s(1)), Some(ms(250)), ms(900)), Some(100));
        assert_eq!(expected_timeout_ms(Some(s(1)), None, ms(1500)), Some(1));
        assert_eq!(expected_timeout_ms(None, Some(ms(250)), ms(900)), Some(250));
        assert_eq!(expected_timeout_ms(Some(s(0)), None, ms(0)), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_within_the_doubling_cap() {
        let p = RetryPolicy::compile(&PbRetryPolicy { retry_on: "5xx".into(), ..Default::default() }).unwrap();
        for n in 1..=6 {
            let cap = Duration::from_millis(25 * (1 << (n - 1))).min(Duration::from_millis(250));
            for _ in 0..200 {
                assert!(p.backoff(n) <= cap, "retry {n}");
            }
        }
        assert!(p.retry_status(503) && p.retry_status(500) && !p.retry_status(404));
    }

    #[test]
    fn conditions() {
        let p = RetryPolicy::compile(&PbRetryPolicy {
            retry_on: "gateway-error,retriable-status-codes".into(),
            retriable_status_codes: vec![418],
            ..Default::default()
        })
        .unwrap();
        assert!(p.retry_status(502) && p.retry_status(418) && !p.retry_status(500));
        assert!(RetryPolicy::compile(&PbRetryPolicy { retry_on: "bogus".into(), ..Default::default() }).is_err());
    }
}
