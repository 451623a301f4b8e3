//! `envoy.filters.http.ratelimit`: global rate limiting. A request's
//! descriptors, from the route's and virtual host's `rate_limits` of the
//! filter's `stage`, go to the rate limit service
//! (`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`, over the
//! service cluster's pool as ext_authz's checks go); a request without
//! descriptors is not asked about. Over the limit: `rate_limited_status`
//! (429) with `x-envoy-ratelimited`; a failed call lets the request on
//! (`failure_mode_allowed`) unless `failure_mode_deny` (`status_on_error`,
//! 500). The service's headers go on the request and the response, with
//! the `x-ratelimit-*` headers of `enable_x_ratelimit_headers`.
//!
//! Stats as Envoy names them, under the routed cluster:
//! `cluster.<route cluster>.ratelimit.[<stat_prefix>.]ok`, `over_limit`,
//! `error`, `failure_mode_allowed`; an over-limit answer is also charged to
//! that cluster as a response with `rate_limited_status`.

mod answer;
mod config;

use crate::http::filters::api::{FilterStatus, HttpFilter, RequestCtx, ResponseState, Verdict};
use crate::http::filters::service;
use crate::http::route::rate_limit::{request_descriptors, Entries, VhRateLimits};
use crate::stats::Store;
use crate::upstream::cluster::ClusterMap;
use answer::{Answer, Code};
use arc_swap::ArcSwap;
use config::{PerRoute, RequestType};
use legate_api::pb::envoy::extensions::common::ratelimit::v3::{rate_limit_descriptor::Entry, RateLimitDescriptor};
use legate_api::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use std::sync::Arc;
use std::time::Duration;

pub use config::REGISTRATION;

const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// The stem of the filter's counters under a cluster.
struct Stats {
    /// `ratelimit.[<stat_prefix>.]`.
    stem: String,
}

pub struct RateLimitFilter {
    domain: String,
    stage: u32,
    request_type: RequestType,
    timeout: Duration,
    service_cluster: String,
    /// This proxy's cluster (`source_cluster` descriptors).
    local_cluster: String,
    clusters: Arc<ArcSwap<ClusterMap>>,
    failure_mode_deny: bool,
    /// `enable_x_ratelimit_headers: DRAFT_VERSION_03`.
    x_ratelimit_headers: bool,
    /// Not `disable_x_envoy_ratelimited_header`.
    x_envoy_ratelimited: bool,
    rate_limited_status: u16,
    status_on_error: u16,
    stats: Stats,
    store: Arc<Store>,
}

impl RateLimitFilter {
    fn count(&self, cluster: &str, name: &str) {
        self.store.counter(&format!("cluster.{cluster}.{}{name}", self.stats.stem)).inc();
    }

    /// Whether `request_type` lets the filter look at this request
    /// (internal: `x-envoy-internal: true`).
    fn applies(&self, rq: &RequestCtx<'_>) -> bool {
        let internal = rq.headers.get("x-envoy-internal").is_some_and(|v| v == "true");
        match self.request_type {
            RequestType::Both => true,
            RequestType::Internal => internal,
            RequestType::External => !internal,
        }
    }

    /// The request's descriptors, as the service is sent them.
    fn descriptors(&self, rq: &RequestCtx<'_>, per_route: Option<&PerRoute>) -> Vec<RateLimitDescriptor> {
        let route = rq.route[0].map_or(&[][..], |p| &p.rate_limits[..]);
        let vhost = rq.route[1].map_or(&[][..], |p| &p.rate_limits[..]);
        let vh = per_route.map_or(VhRateLimits::Override, |p| p.vh_rate_limits);
        let clusters = (self.local_cluster.as_str(), rq.route_cluster);
        let found: Vec<Entries> =
            request_descriptors(route, vhost, vh, self.stage, (rq.headers, &rq.pseudo, rq.remote, clusters));
        found
            .into_iter()
            .map(|entries| RateLimitDescriptor {
                entries: entries.into_iter().map(|(key, value)| Entry { key, value }).collect(),
                ..Default::default()
            })
            .collect()
    }

    async fn ask(&self, request: &RateLimitRequest) -> Option<Answer> {
        use prost::Message as _;
        let cluster = self.clusters.load().get(&self.service_cluster).cloned()?;
        let msg = request.encode_to_vec();
        let bytes = service::unary(&cluster, &self.service_cluster, SHOULD_RATE_LIMIT, &msg, self.timeout).await?;
        answer::decode(&bytes, self.x_ratelimit_headers)
    }

    /// What the filter does with the service's answer (none: the call
    /// failed).
    fn conclude(
        &self,
        rq: &mut RequestCtx<'_>,
        state: &mut ResponseState,
        cluster: &str,
        a: Option<Answer>,
    ) -> Verdict {
        let Some(mut a) = a else {
            self.count(cluster, "error");
            if self.failure_mode_deny {
                return Verdict::Local {
                    status: self.status_on_error,
                    headers: Vec::new(),
                    body: None,
                    details: "rate_limiter_error",
                };
            }
            self.count(cluster, "failure_mode_allowed");
            return Verdict::Continue;
        };
        if a.code == Code::OverLimit {
            self.count(cluster, "over_limit");
            service::charge_response(&self.store, cluster, self.rate_limited_status);
            if self.x_envoy_ratelimited {
                a.response_headers.retain(|(k, _)| k != "x-envoy-ratelimited");
                a.response_headers.push((
                    http::HeaderName::from_static("x-envoy-ratelimited"),
                    http::HeaderValue::from_static("true"),
                ));
            }
            a.response_headers.extend(a.x_ratelimit);
            if crate::common::runtime::snapshot().percent_enabled("ratelimit.http_filter_enforcing", 100) {
                return Verdict::Local {
                    status: self.rate_limited_status,
                    headers: a.response_headers,
                    body: (!a.body.is_empty()).then_some(a.body),
                    details: "request_rate_limited",
                };
            }
        } else {
            self.count(cluster, "ok");
            a.response_headers.extend(a.x_ratelimit);
        }
        for (k, v) in a.request_headers {
            rq.headers.append(k, v);
        }
        state.appended.extend(a.response_headers);
        Verdict::Continue
    }
}

impl HttpFilter for RateLimitFilter {
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, state: &'r mut ResponseState) -> FilterStatus<'r> {
        if !crate::common::runtime::snapshot().percent_enabled("ratelimit.http_filter_enabled", 100) {
            return FilterStatus::Continue;
        }
        // Without a route or its cluster Envoy asks nothing (the router
        // answers).
        let (Some(_), Some(cluster)) = (rq.route[0], rq.route_cluster) else { return FilterStatus::Continue };
        if !self.applies(rq) {
            return FilterStatus::Continue;
        }
        let per_route = rq.per_route::<PerRoute>();
        let descriptors = self.descriptors(rq, per_route);
        if descriptors.is_empty() {
            return FilterStatus::Continue;
        }
        let domain = per_route.map(|p| p.domain.as_str()).filter(|d| !d.is_empty()).unwrap_or(&self.domain);
        let request = RateLimitRequest { domain: domain.to_string(), descriptors, hits_addend: 0 };
        let cluster = cluster.to_string();
        FilterStatus::Wait(Box::pin(async move {
            let a = self.ask(&request).await;
            self.conclude(rq, state, &cluster, a)
        }))
    }
}
