//! Compiling `RateLimit` and `RateLimitPerRoute`.

use super::{RateLimitFilter, Stats};
use crate::http::filters::api::{FilterContext, HttpFilter, PerRouteRegistration, Registration};
use crate::http::route::per_filter::PerRouteConfig;
use crate::http::route::rate_limit::VhRateLimits;
use legate_api::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use legate_api::pb::envoy::config::core::v3::ApiVersion;
use legate_api::pb::envoy::extensions::filters::http::ratelimit::v3 as pb;
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;
use std::time::Duration;

const TYPE: &str = "envoy.extensions.filters.http.ratelimit.v3.RateLimit";
const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute";

pub const REGISTRATION: Registration = Registration {
    type_url: TYPE,
    compile,
    per_route: Some(PerRouteRegistration { type_url: PER_ROUTE_TYPE, compile: compile_per_route }),
    one_per_chain: None,
};

/// Envoy's default time limit on a call to the rate limit service.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(20);

/// Which requests the filter applies to (`request_type`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestType {
    Both,
    Internal,
    External,
}

fn compile(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
    let base = format!("http_filters[{}].typed_config", ctx.index);
    let c: pb::RateLimit = legate_api::any::unpack(any).map_err(|e| format!("{base}: {e}"))?;
    let service = c.rate_limit_service.as_ref().ok_or(format!("{base}.rate_limit_service is required"))?;
    if ApiVersion::try_from(service.transport_api_version) != Ok(ApiVersion::V3) {
        return Err(format!("{base}.rate_limit_service.transport_api_version: only V3 is supported"));
    }
    let grpc = service.grpc_service.as_ref().ok_or(format!("{base}.rate_limit_service.grpc_service is required"))?;
    let Some(TargetSpecifier::EnvoyGrpc(eg)) = &grpc.target_specifier else {
        return Err(format!("{base}.rate_limit_service.grpc_service: only envoy_grpc is supported"));
    };
    let request_type = match c.request_type.as_str() {
        "" | "both" => RequestType::Both,
        "internal" => RequestType::Internal,
        "external" => RequestType::External,
        other => {
            return Err(format!("{base}.request_type: {other:?} is not one of internal, external, both"));
        }
    };
    let store = ctx.server.store.clone();
    let prefix = if c.stat_prefix.is_empty() { String::new() } else { format!("{}.", c.stat_prefix) };
    // Envoy's `toRateLimitedErrorCode` and `toErrorCode`.
    let limited = c.rate_limited_status.as_ref().map_or(0, |s| s.code);
    let on_error = c.status_on_error.as_ref().map_or(0, |s| s.code);
    use pb::rate_limit::XRateLimitHeadersRfcVersion as Rfc;
    Ok(Box::new(RateLimitFilter {
        domain: c.domain.clone(),
        stage: c.stage,
        request_type,
        timeout: c.timeout.as_ref().map_or(DEFAULT_TIMEOUT, legate_api::duration::from_pb),
        service_cluster: eg.cluster_name.clone(),
        local_cluster: ctx.server.local_cluster.to_str().unwrap_or_default().to_string(),
        clusters: ctx.server.clusters.clone(),
        failure_mode_deny: c.failure_mode_deny,
        x_ratelimit_headers: Rfc::try_from(c.enable_x_ratelimit_headers) == Ok(Rfc::DraftVersion03),
        x_envoy_ratelimited: !c.disable_x_envoy_ratelimited_header,
        rate_limited_status: if (400..600).contains(&limited) { limited as u16 } else { 429 },
        status_on_error: if (100..600).contains(&on_error) { on_error as u16 } else { 500 },
        stats: Stats { stem: format!("ratelimit.{prefix}") },
        store,
    }))
}

/// `RateLimitPerRoute`, compiled.
pub(super) struct PerRoute {
    pub vh_rate_limits: VhRateLimits,
    /// `domain`; empty: the filter's.
    pub domain: String,
}

fn compile_per_route(any: &Any, path: &str) -> Result<PerRouteConfig, String> {
    let c: pb::RateLimitPerRoute = legate_api::any::unpack(any).map_err(|e| format!("{path}: {e}"))?;
    use pb::rate_limit_per_route::VhRateLimitsOptions;
    // `override_option` is read by nothing in Envoy 1.40 (its API hides it
    // as not implemented): accepted, and without effect, as there.
    let vh_rate_limits = match VhRateLimitsOptions::try_from(c.vh_rate_limits) {
        Ok(VhRateLimitsOptions::Include) => VhRateLimits::Include,
        Ok(VhRateLimitsOptions::Ignore) => VhRateLimits::Ignore,
        _ => VhRateLimits::Override,
    };
    Ok(Arc::new(PerRoute { vh_rate_limits, domain: c.domain }))
}
