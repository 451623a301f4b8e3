//! `envoy.filters.http.local_ratelimit`: token buckets in front of the router.
//!
//! A config (the filter's, or a route's or virtual host's in
//! `typed_per_filter_config`, which replaces it) has an optional default
//! bucket and `descriptors`, each with its own bucket. A request's
//! descriptors come from the route's (and virtual host's) `rate_limits`
//! actions; every configured descriptor they match takes a token, the one
//! with the slowest fill first, and the default bucket takes one when none
//! matched or `always_consume_default_token_bucket` (default true) says so.
//! A descriptor entry with an empty value matches any value and gets a
//! bucket per value seen (at most `max_dynamic_descriptors`, default 20).

use crate::common::fraction::roll;
use crate::common::runtime::RuntimeFraction;
use crate::common::token_bucket::TokenBucket;
use crate::http::filters::api::{
    FilterContext, FilterStatus, HttpFilter, PerRouteRegistration, Registration, RequestCtx, ResponseState, Verdict,
};
use crate::http::route::per_filter::PerRouteConfig;
use crate::http::route::rate_limit::{request_descriptors, Entries, VhRateLimits};
use legate_api::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use legate_api::pb::google::protobuf::Any;
use std::sync::{Arc, Mutex, OnceLock};

pub const TYPE: &str = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit";

/// The filter's config type is also its per-route type: a route's config
/// replaces the filter's.
pub const REGISTRATION: Registration = Registration {
    type_url: TYPE,
    compile: RateLimitFilter::compile_any,
    per_route: Some(PerRouteRegistration { type_url: TYPE, compile: RateLimit::compile_per_route }),
    one_per_chain: None,
};

/// A configured descriptor with its bucket.
struct Limited {
    entries: Entries,
    bucket: TokenBucket,
    /// Some value is empty (matches any): a bucket per value seen.
    wildcard: bool,
}

struct Stats {
    enabled: Arc<crate::stats::Counter>,
    ok: Arc<crate::stats::Counter>,
    limited: Arc<crate::stats::Counter>,
    enforced: Arc<crate::stats::Counter>,
}

/// One local rate limit config: the filter's, or a route's.
pub struct RateLimit {
    bucket: Option<TokenBucket>,
    descriptors: Vec<Limited>,
    /// Buckets made for wildcard descriptors, by the request's entries;
    /// the oldest goes when there are `max_dynamic` of them. Locked only
    /// for requests that match a wildcard descriptor.
    dynamic: Mutex<std::collections::VecDeque<(Entries, Arc<TokenBucket>)>>,
    max_dynamic: usize,
    always_consume_default: bool,
    stage: u32,
    vh_rate_limits: VhRateLimits,
    enabled: RuntimeFraction,
    enforced: RuntimeFraction,
    status: u16,
    headers: Vec<(http::HeaderName, http::HeaderValue)>,
    stat_prefix: String,
    /// Counters under `<stat_prefix>.http_local_rate_limit.`, made on first
    /// use (a route's config is compiled with its route table, which has no
    /// stats store).
    stats: OnceLock<Stats>,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit").field("stat_prefix", &self.stat_prefix).finish_non_exhaustive()
    }
}

impl RateLimit {
    /// `path` names the config in errors.
    pub fn compile(l: &LocalRateLimit, path: &str) -> Result<Self, String> {
        let bucket = match &l.token_bucket {
            Some(tb) => Some(TokenBucket::compile(tb, &format!("{path}.token_bucket"))?),
            None => None,
        };
        let descriptors = l
            .descriptors
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let p = format!("{path}.descriptors[{i}]");
                let tb = d.token_bucket.as_ref().ok_or(format!("{p}.token_bucket is required"))?;
                let entries: Entries = d.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
                Ok(Limited {
                    wildcard: entries.iter().any(|(_, v)| v.is_empty()),
                    entries,
                    bucket: TokenBucket::compile(tb, &format!("{p}.token_bucket"))?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let pct = |r: &Option<legate_api::pb::envoy::config::core::v3::RuntimeFractionalPercent>| {
            r.as_ref().map_or(RuntimeFraction::keyed("", 0), RuntimeFraction::new)
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
        use legate_api::pb::envoy::extensions::common::ratelimit::v3::VhRateLimitsOptions;
        Ok(RateLimit {
            bucket,
            descriptors,
            dynamic: Mutex::new(Default::default()),
            max_dynamic: l.max_dynamic_descriptors.map_or(20, |v| v.value as usize),
            always_consume_default: l.always_consume_default_token_bucket.is_none_or(|b| b.value),
            stage: l.stage,
            vh_rate_limits: match VhRateLimitsOptions::try_from(l.vh_rate_limits) {
                Ok(VhRateLimitsOptions::Include) => VhRateLimits::Include,
                Ok(VhRateLimitsOptions::Ignore) => VhRateLimits::Ignore,
                _ => VhRateLimits::Override,
            },
            enabled: pct(&l.filter_enabled),
            enforced: pct(&l.filter_enforced),
            status: l.status.as_ref().map_or(429, |s| u16::try_from(s.code).unwrap_or(429)),
            headers,
            stat_prefix: l.stat_prefix.clone(),
            stats: OnceLock::new(),
        })
    }

    /// A `typed_per_filter_config` entry; `path` names it in errors.
    fn compile_per_route(any: &Any, path: &str) -> Result<PerRouteConfig, String> {
        let c = legate_api::any::unpack(any).map_err(|e| format!("{path}: {e}"))?;
        Ok(Arc::new(Self::compile(&c, path)?))
    }

    fn stats(&self, store: &crate::stats::Store) -> &Stats {
        self.stats.get_or_init(|| {
            let p = format!("{}.http_local_rate_limit.", self.stat_prefix);
            Stats {
                enabled: store.counter(&format!("{p}enabled")),
                ok: store.counter(&format!("{p}ok")),
                limited: store.counter(&format!("{p}rate_limited")),
                enforced: store.counter(&format!("{p}enforced")),
            }
        })
    }

    /// The request's descriptors from the route's and virtual host's
    /// `rate_limits` of this config's stage (none unless descriptors are
    /// configured, so a plain bucket allocates nothing).
    fn request_descriptors(&self, rq: &RequestCtx<'_>, local_cluster: &str) -> Vec<Entries> {
        if self.descriptors.is_empty() {
            return Vec::new();
        }
        let route = rq.route[0].map_or(&[][..], |p| &p.rate_limits[..]);
        let vhost = rq.route[1].map_or(&[][..], |p| &p.rate_limits[..]);
        let clusters = (local_cluster, rq.route_cluster);
        request_descriptors(
            route,
            vhost,
            self.vh_rate_limits,
            self.stage,
            (rq.headers, &rq.pseudo, rq.remote, clusters),
        )
    }

    /// Whether the request may go on: a token from every matched
    /// descriptor's bucket (slowest fill first), then the default bucket's.
    fn allowed(&self, request: &[Entries]) -> bool {
        let mut matched: Vec<Arc<TokenBucket>> = Vec::new();
        let mut exact: Vec<&TokenBucket> = Vec::new();
        for entries in request {
            for d in &self.descriptors {
                if d.entries.len() != entries.len() {
                    continue;
                }
                let fits = d.entries.iter().zip(entries).all(|((k, v), (rk, rv))| k == rk && (v.is_empty() || v == rv));
                if !fits {
                    continue;
                }
                if d.wildcard {
                    matched.push(self.dynamic_bucket(d, entries));
                } else {
                    exact.push(&d.bucket);
                }
                break;
            }
        }
        let mut all: Vec<&TokenBucket> = exact;
        all.extend(matched.iter().map(|b| &**b));
        all.sort_by(|a, b| a.fill_rate().total_cmp(&b.fill_rate()));
        if all.iter().any(|b| !b.take()) {
            return false;
        }
        if all.is_empty() || self.always_consume_default {
            return self.bucket.as_ref().is_none_or(|b| b.take());
        }
        true
    }

    fn dynamic_bucket(&self, d: &Limited, entries: &Entries) -> Arc<TokenBucket> {
        let mut dynamic = self.dynamic.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, b)) = dynamic.iter().find(|(e, _)| e == entries) {
            return b.clone();
        }
        let b = Arc::new(d.bucket.fresh());
        if dynamic.len() >= self.max_dynamic.max(1) {
            dynamic.pop_front();
        }
        dynamic.push_back((entries.clone(), b.clone()));
        b
    }
}

/// The filter: its own config, replaced by a route's when it has one.
pub struct RateLimitFilter {
    config: RateLimit,
    store: Arc<crate::stats::Store>,
    /// This proxy's cluster, for `source_cluster` descriptor entries.
    local_cluster: String,
}

impl RateLimitFilter {
    /// `i` is the filter's index, for error paths.
    pub fn compile(
        l: &LocalRateLimit,
        store: &Arc<crate::stats::Store>,
        i: usize,
        local_cluster: &str,
    ) -> Result<Self, String> {
        let config = RateLimit::compile(l, &format!("http_filters[{i}].typed_config"))?;
        config.stats(store);
        Ok(Self { config, store: store.clone(), local_cluster: local_cluster.to_string() })
    }

    fn compile_any(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
        let l = legate_api::any::unpack(any)?;
        let local_cluster = ctx.server.local_cluster.to_str().unwrap_or_default();
        Ok(Box::new(Self::compile(&l, ctx.server.store, ctx.index, local_cluster)?))
    }

    /// Takes tokens; `Some` when the request is limited and enforced.
    fn check(&self, ctx: &RequestCtx<'_>) -> Option<Verdict> {
        let cfg = ctx.per_route::<RateLimit>().unwrap_or(&self.config);
        if !cfg.enabled.roll() {
            return None;
        }
        let stats = cfg.stats(&self.store);
        stats.enabled.inc();
        let descriptors = cfg.request_descriptors(ctx, &self.local_cluster);
        if cfg.allowed(&descriptors) {
            stats.ok.inc();
            return None;
        }
        stats.limited.inc();
        let enforced = cfg.enforced.per_million();
        if enforced > 0 && roll(enforced) {
            stats.enforced.inc();
            return Some(Verdict::Limited { status: cfg.status, headers: cfg.headers.clone() });
        }
        None
    }
}

impl HttpFilter for RateLimitFilter {
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, _: &'r mut ResponseState) -> FilterStatus<'r> {
        match self.check(rq) {
            Some(v) => FilterStatus::Done(v),
            None => FilterStatus::Continue,
        }
    }
}
