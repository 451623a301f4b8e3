//! Route retry policies (`retry_policy`) as Envoy defines them.

use crate::upstream::UpstreamError;
use legate_api::pb::envoy::config::route::v3::RetryPolicy as PbRetryPolicy;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    five_xx: bool,
    gateway_error: bool,
    connect_failure: bool,
    reset: bool,
    retriable_4xx: bool,
    retriable_status_codes: bool,
    codes: Vec<u16>,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    base: Duration,
    max: Duration,
    /// `envoy.retry_host_predicates.previous_hosts`: retry on another host.
    pub avoid_previous_hosts: bool,
    pub host_selection_attempts: u32,
    /// `retriable-headers`: a response matching any of `retriable_headers`.
    retriable_headers_on: bool,
    retriable_headers: Vec<crate::matcher::HeaderMatch>,
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

fn dur(d: &legate_api::pb::google::protobuf::Duration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

impl RetryPolicy {
    pub fn compile(p: &PbRetryPolicy) -> Result<Self, String> {
        let mut r = Self {
            five_xx: false,
            gateway_error: false,
            connect_failure: false,
            reset: false,
            retriable_4xx: false,
            retriable_status_codes: false,
            codes: p.retriable_status_codes.iter().filter_map(|c| u16::try_from(*c).ok()).collect(),
            num_retries: p.num_retries.map_or(1, |n| n.value),
            per_try_timeout: p.per_try_timeout.as_ref().map(dur).filter(|d| !d.is_zero()),
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
            avoid_previous_hosts: false,
            host_selection_attempts: (p.host_selection_retry_max_attempts.max(1)) as u32,
            retriable_headers_on: false,
            retriable_headers: p
                .retriable_headers
                .iter()
                .enumerate()
                .map(|(i, m)| crate::matcher::HeaderMatch::new(m).map_err(|e| format!("retriable_headers[{i}]: {e}")))
                .collect::<Result<_, _>>()?,
        };
        for on in p.retry_on.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match on {
                "5xx" => r.five_xx = true,
                "gateway-error" => r.gateway_error = true,
                "connect-failure" => r.connect_failure = true,
                "reset" => r.reset = true,
                "retriable-4xx" => r.retriable_4xx = true,
                "retriable-status-codes" => r.retriable_status_codes = true,
                "retriable-headers" => r.retriable_headers_on = true,
                other => return Err(format!("retry_on: '{other}' is not supported")),
            }
        }
        if let Some(b) = &p.retry_back_off {
            if let Some(base) = b.base_interval.as_ref().map(dur) {
                r.base = base;
                r.max = base * 10;
            }
            if let Some(max) = b.max_interval.as_ref().map(dur) {
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

    /// Whether a response with this status is retried.
    pub fn retry_status(&self, status: u16) -> bool {
        (self.five_xx && status >= 500)
            || (self.gateway_error && matches!(status, 502..=504))
            || (self.retriable_4xx && status == 409)
            || (self.retriable_status_codes && self.codes.contains(&status))
    }

    /// Whether a response is retried: by its status, or (`retriable-headers`)
    /// by a header matching one of `retriable_headers`.
    pub fn retry_response(&self, status: u16, headers: &http::HeaderMap) -> bool {
        self.retry_status(status)
            || (self.retriable_headers_on && {
                let pseudo = crate::matcher::Pseudo { method: "", path: "", authority: "", scheme: "" };
                self.retriable_headers.iter().any(|m| m.matches(headers, &pseudo))
            })
    }

    /// Whether a failure before any response is retried.
    pub fn retry_error(&self, e: &UpstreamError) -> bool {
        match e {
            UpstreamError::ConnectFailure(_) | UpstreamError::ConnectTimeout | UpstreamError::Tls(_) => {
                self.connect_failure || self.five_xx || self.gateway_error
            }
            UpstreamError::Handshake(_) | UpstreamError::Reset(_) => self.reset || self.five_xx,
            // A per-try timeout counts as a 504.
            UpstreamError::PerTryTimeout => self.retry_status(504),
            // Envoy never retries a circuit breaker's overflow.
            UpstreamError::Overflow => false,
        }
    }

    /// Envoy's jittered exponential back-off before retry `n` (1-based):
    /// uniform in [0, min(base * 2^(n-1), max)].
    pub fn backoff(&self, n: u32) -> Duration {
        let cap = self.base.saturating_mul(1u32 << (n.saturating_sub(1)).min(16)).min(self.max);
        cap.mul_f64(rand::random::<f64>())
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
