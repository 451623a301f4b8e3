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

use super::{per_million, roll, Verdict};
use crate::common::token_bucket::TokenBucket;
use legate_api::pb::envoy::config::route::v3::rate_limit::action::ActionSpecifier;
use legate_api::pb::envoy::config::route::v3::RateLimit as PbRateLimit;
use legate_api::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use std::sync::{Arc, Mutex, OnceLock};

/// One descriptor: (key, value) entries in order.
type Entries = Vec<(String, String)>;

/// A route's `rate_limits` entry, compiled: its stage and the actions
/// whose entries make one descriptor.
#[derive(Debug)]
pub struct DescriptorPolicy {
    stage: u32,
    actions: Vec<Action>,
}

#[derive(Debug)]
enum Action {
    GenericKey {
        key: String,
        value: String,
    },
    RequestHeader {
        header: http::HeaderName,
        key: String,
        skip_if_absent: bool,
    },
    RemoteAddress,
    HeaderValueMatch {
        key: String,
        value: String,
        expect_match: bool,
        headers: Vec<crate::common::matcher::HeaderMatch>,
    },
}

impl DescriptorPolicy {
    pub fn compile(r: &PbRateLimit) -> Result<Self, String> {
        let mut actions = Vec::with_capacity(r.actions.len());
        for (i, a) in r.actions.iter().enumerate() {
            let err = |m: &str| format!("actions[{i}]: {m}");
            actions.push(match &a.action_specifier {
                Some(ActionSpecifier::GenericKey(g)) => Action::GenericKey {
                    key: if g.descriptor_key.is_empty() { "generic_key".into() } else { g.descriptor_key.clone() },
                    value: g.descriptor_value.clone(),
                },
                Some(ActionSpecifier::RequestHeaders(h)) => Action::RequestHeader {
                    header: http::HeaderName::from_bytes(h.header_name.to_ascii_lowercase().as_bytes())
                        .map_err(|_| err("request_headers.header_name: invalid header name"))?,
                    key: h.descriptor_key.clone(),
                    skip_if_absent: h.skip_if_absent,
                },
                Some(ActionSpecifier::RemoteAddress(_)) => Action::RemoteAddress,
                Some(ActionSpecifier::HeaderValueMatch(h)) => Action::HeaderValueMatch {
                    key: if h.descriptor_key.is_empty() { "header_match".into() } else { h.descriptor_key.clone() },
                    value: h.descriptor_value.clone(),
                    expect_match: h.expect_match.is_none_or(|b| b.value),
                    headers: h
                        .headers
                        .iter()
                        .map(crate::common::matcher::HeaderMatch::new)
                        .collect::<Result<_, _>>()?,
                },
                _ => return Err(err(
                    "only generic_key, request_headers, remote_address and header_value_match actions are supported",
                )),
            });
        }
        Ok(Self { stage: r.stage.map_or(0, |v| v.value), actions })
    }

    /// The descriptor for a request, or none when an action has nothing to
    /// say (a missing header without `skip_if_absent`, a header match that
    /// did not come out as expected).
    fn descriptor(&self, rq: &super::RequestCtx<'_>) -> Option<Entries> {
        let mut entries = Vec::with_capacity(self.actions.len());
        for a in &self.actions {
            match a {
                Action::GenericKey { key, value } => entries.push((key.clone(), value.clone())),
                Action::RequestHeader { header, key, skip_if_absent } => {
                    match rq.headers.get(header).and_then(|v| v.to_str().ok()) {
                        Some(v) => entries.push((key.clone(), v.to_string())),
                        None if *skip_if_absent => {}
                        None => return None,
                    }
                }
                Action::RemoteAddress => entries.push(("remote_address".into(), rq.remote.to_string())),
                Action::HeaderValueMatch { key, value, expect_match, headers } => {
                    let all = headers.iter().all(|m| m.matches(rq.headers, &rq.pseudo));
                    if all != *expect_match {
                        return None;
                    }
                    entries.push((key.clone(), value.clone()));
                }
            }
        }
        (!entries.is_empty()).then_some(entries)
    }
}

/// A configured descriptor with its bucket.
struct Limited {
    entries: Entries,
    bucket: TokenBucket,
    /// Some value is empty (matches any): a bucket per value seen.
    wildcard: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum VhRateLimits {
    Override,
    Include,
    Ignore,
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
    enabled: u32,
    enforced: u32,
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
    fn request_descriptors(&self, rq: &super::RequestCtx<'_>) -> Vec<Entries> {
        if self.descriptors.is_empty() {
            return Vec::new();
        }
        let route = rq.route[0].map_or(&[][..], |p| &p.rate_limits[..]);
        let vhost = rq.route[1].map_or(&[][..], |p| &p.rate_limits[..]);
        let vhost = match self.vh_rate_limits {
            VhRateLimits::Include => vhost,
            VhRateLimits::Override if route.is_empty() => vhost,
            _ => &[][..],
        };
        route.iter().chain(vhost).filter(|p| p.stage == self.stage).filter_map(|p| p.descriptor(rq)).collect()
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
}

impl RateLimitFilter {
    /// `i` is the filter's index, for error paths.
    pub fn compile(l: &LocalRateLimit, store: &Arc<crate::stats::Store>, i: usize) -> Result<Self, String> {
        let config = RateLimit::compile(l, &format!("http_filters[{i}].typed_config"))?;
        config.stats(store);
        Ok(Self { config, store: store.clone() })
    }

    /// Takes tokens; `Some` when the request is limited and enforced.
    pub fn on_request(&self, ctx: &super::RequestCtx<'_>) -> Option<Verdict> {
        let per_route = ctx.route.iter().flatten().find_map(|p| p.local_ratelimit.as_deref());
        let cfg = per_route.unwrap_or(&self.config);
        if !roll(cfg.enabled) {
            return None;
        }
        let stats = cfg.stats(&self.store);
        stats.enabled.inc();
        let descriptors = cfg.request_descriptors(ctx);
        if cfg.allowed(&descriptors) {
            stats.ok.inc();
            return None;
        }
        stats.limited.inc();
        if cfg.enforced > 0 && roll(cfg.enforced) {
            stats.enforced.inc();
            return Some(Verdict::Limited { status: cfg.status, headers: cfg.headers.clone() });
        }
        None
    }
}
