//! `envoy.filters.http.dynamic_forward_proxy`: before the router runs, a
//! request routed to an `envoy.clusters.dynamic_forward_proxy` cluster has
//! its host (its port, else 80, or 443 when the cluster has TLS) found in
//! the DNS cache, the request waiting while the name resolves; the cluster
//! then sends it to that host. A name that does not resolve is answered 503
//! `DNS resolution failure` (flag `DF`). Per route (`PerRouteConfig`), the
//! host may first be rewritten to a literal or to a request header's value.

use crate::http::filters::api::{
    FilterContext, FilterStatus, HttpFilter, PerRouteRegistration, Registration, RequestCtx, ResponseState, Verdict,
};
use crate::http::route::per_filter::PerRouteConfig;
use crate::upstream::cluster::ClusterMap;
use crate::upstream::dfp::{cache_for, DnsCache, Load};
use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};
use legate_api::pb::envoy::extensions::filters::http::dynamic_forward_proxy::v3::{
    filter_config, per_route_config, FilterConfig, PerRouteConfig as PbPerRoute,
};
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;

pub const TYPE: &str = "envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig";
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.dynamic_forward_proxy.v3.PerRouteConfig";

pub const REGISTRATION: Registration = Registration {
    type_url: TYPE,
    compile: DynamicForwardProxy::compile,
    per_route: Some(PerRouteRegistration { type_url: PER_ROUTE_TYPE, compile: HostRewrite::compile_per_route }),
    one_per_chain: None,
};

/// A route's host rewrite before the lookup.
enum HostRewrite {
    /// `host_rewrite_literal`.
    Literal(HeaderValue),
    /// `host_rewrite_header`: the first value of this header, when present.
    Header(HeaderName),
    None,
}

impl HostRewrite {
    fn compile_per_route(any: &Any, path: &str) -> Result<PerRouteConfig, String> {
        let c: PbPerRoute = legate_api::any::unpack(any).map_err(|e| format!("{path}: {e}"))?;
        let rewrite = match c.host_rewrite_specifier {
            Some(per_route_config::HostRewriteSpecifier::HostRewriteLiteral(l)) if !l.is_empty() => Self::Literal(
                HeaderValue::from_str(&l).map_err(|_| format!("{path}.host_rewrite_literal: not a valid host"))?,
            ),
            Some(per_route_config::HostRewriteSpecifier::HostRewriteHeader(h)) if !h.is_empty() => Self::Header(
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("{path}.host_rewrite_header: not a valid header name"))?,
            ),
            _ => Self::None,
        };
        Ok(Arc::new(rewrite))
    }
}

pub struct DynamicForwardProxy {
    cache: Arc<DnsCache>,
    clusters: Arc<ArcSwap<ClusterMap>>,
}

impl DynamicForwardProxy {
    fn compile(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
        let at = format!("http_filters[{}].typed_config", ctx.index);
        let c: FilterConfig = legate_api::any::unpack(any).map_err(|e| format!("http_filters[{}]: {e}", ctx.index))?;
        let dns = match &c.implementation_specifier {
            Some(filter_config::ImplementationSpecifier::DnsCacheConfig(d)) => d,
            Some(_) => return Err(format!("{at}.sub_cluster_config is not implemented by Legate")),
            None => return Err(format!("{at}.dns_cache_config is required")),
        };
        let cache = cache_for(dns, ctx.server.store, &format!("{at}.dns_cache_config"))?;
        Ok(Box::new(Self { cache, clusters: ctx.server.clusters.clone() }))
    }
}

fn reply(status: u16, body: &'static str, details: &'static str, flag: &'static str) -> Verdict {
    Verdict::Reply { status, body, details, flag, headers: Vec::new() }
}

impl HttpFilter for DynamicForwardProxy {
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, _state: &'r mut ResponseState) -> FilterStatus<'r> {
        // Only requests routed to a dynamic forward proxy cluster.
        let Some(name) = rq.route_cluster else { return FilterStatus::Continue };
        let default_port = match self.clusters.load().get(name).and_then(|c| c.dfp.as_ref()) {
            Some(d) => d.default_port,
            None => return FilterStatus::Continue,
        };
        let rewritten = match rq.per_route::<HostRewrite>() {
            Some(HostRewrite::Literal(v)) => Some(v.clone()),
            Some(HostRewrite::Header(h)) => rq.headers.get(h).cloned(),
            _ => None,
        };
        if let Some(v) = rewritten {
            rq.new_authority = Some(String::from_utf8_lossy(v.as_bytes()).into_owned());
            rq.headers.insert(http::header::HOST, v);
        }
        let Some(slot) = self.cache.pending_slot() else {
            let body = "Dynamic forward proxy pending request overflow";
            return FilterStatus::Done(reply(503, body, "dynamic_forward_proxy_pending_request_overflow", ""));
        };
        let authority = rq.new_authority.as_deref().unwrap_or(rq.pseudo.authority);
        if authority.is_empty() {
            return FilterStatus::Done(reply(400, "Empty host header", "empty_host_header", ""));
        }
        match self.cache.load(authority, default_port) {
            Load::Ready(_) => FilterStatus::Continue,
            Load::Overflow => FilterStatus::Done(reply(503, "DNS cache overflow", "dns_cache_overflow", "")),
            Load::Pending(resolved) => FilterStatus::Wait(Box::pin(async move {
                let host = resolved.await;
                drop(slot);
                match host {
                    Some(_) => Verdict::Continue,
                    None => reply(503, "DNS resolution failure", "dns_resolution_failure", "DF"),
                }
            })),
        }
    }
}
