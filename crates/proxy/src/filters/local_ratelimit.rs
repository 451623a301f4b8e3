//! `envoy.filters.http.local_ratelimit`: a token bucket in front of the router.

use super::{per_million, roll, Verdict};
use legate_api::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use std::sync::Arc;

pub struct RateLimit {
    bucket: crate::token_bucket::TokenBucket,
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
        let bucket =
            crate::token_bucket::TokenBucket::compile(tb, &format!("http_filters[{i}].typed_config.token_bucket"))?;
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
        Ok(RateLimit {
            bucket,
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
