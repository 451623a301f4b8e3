//! `envoy.filters.http.local_ratelimit`: a token bucket in front of the router.

use super::{per_million, roll, Verdict};
use legate_api::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use std::sync::Arc;
use std::time::Duration;

/// A token bucket refilled lazily: `tokens_per_fill` every `fill_interval`,
/// up to `max`. One bucket per filter, shared by every worker (Envoy's
/// default), so a short mutex on the request path: ~20 ns uncontended.
struct Bucket {
    max: u64,
    per_fill: u64,
    interval: Duration,
    state: std::sync::Mutex<(u64, std::time::Instant)>,
}

impl Bucket {
    fn take(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let fills = (now.duration_since(st.1).as_nanos() / self.interval.as_nanos().max(1)) as u64;
        if fills > 0 {
            st.0 = (st.0 + fills.saturating_mul(self.per_fill)).min(self.max);
            st.1 += self.interval * fills.min(u32::MAX as u64) as u32;
        }
        if st.0 > 0 {
            st.0 -= 1;
            true
        } else {
            false
        }
    }
}

pub struct RateLimit {
    bucket: Bucket,
    enabled: u32,
    enforced: u32,
    status: u16,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    stat_enabled: Arc<crate::stats::Counter>,
    stat_ok: Arc<crate::stats::Counter>,
    stat_limited: Arc<crate::stats::Counter>,
    stat_enforced: Arc<crate::stats::Counter>,
}

impl RateLimit {
    /// `i` is the filter's index, for error paths.
    pub fn compile(l: &LocalRateLimit, store: &crate::stats::Store, i: usize) -> Result<Self, String> {
        let tb = l.token_bucket.as_ref().ok_or(format!("http_filters[{i}].typed_config.token_bucket is required"))?;
        let interval = tb
            .fill_interval
            .as_ref()
            .map_or(Duration::ZERO, |d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32));
        if interval.is_zero() {
            return Err(format!("http_filters[{i}].typed_config.token_bucket.fill_interval must be greater than 0"));
        }
        let pct = |r: &Option<legate_api::pb::envoy::config::core::v3::RuntimeFractionalPercent>| {
            r.as_ref().map_or(0, |r| per_million(r.default_value.as_ref()))
        };
        let headers = l
            .response_headers_to_add
            .iter()
            .filter_map(|h| h.header.as_ref())
            .filter_map(|h| {
                Some((
                    http::HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes()).ok()?,
                    http::HeaderValue::from_str(&h.value).ok()?,
                ))
            })
            .collect();
        let p = format!("{}.http_local_rate_limit.", l.stat_prefix);
        let max = tb.max_tokens as u64;
        Ok(RateLimit {
            bucket: Bucket {
                max,
                per_fill: tb.tokens_per_fill.map_or(1, |v| v.value as u64),
                interval,
                state: std::sync::Mutex::new((max, std::time::Instant::now())),
            },
            enabled: pct(&l.filter_enabled),
            enforced: pct(&l.filter_enforced),
            status: l.status.as_ref().map_or(429, |s| u16::try_from(s.code).unwrap_or(429)),
            headers,
            stat_enabled: store.counter(&format!("{p}enabled")),
            stat_ok: store.counter(&format!("{p}ok")),
            stat_limited: store.counter(&format!("{p}rate_limited")),
            stat_enforced: store.counter(&format!("{p}enforced")),
        })
    }

    /// Takes a token; `Some` when the request is limited and enforced.
    pub fn on_request(&self) -> Option<Verdict> {
        if !roll(self.enabled) {
            return None;
        }
        self.stat_enabled.inc();
        if self.bucket.take() {
            self.stat_ok.inc();
            return None;
        }
        self.stat_limited.inc();
        if self.enforced > 0 && roll(self.enforced) {
            self.stat_enforced.inc();
            return Some(Verdict::Limited { status: self.status, headers: self.headers.clone() });
        }
        None
    }
}
