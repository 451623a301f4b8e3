//! Compiling `ExtAuthz` and `ExtAuthzPerRoute`.

use super::client::{HttpService, Kind, Service};
use super::{ExtAuthz, PerRoute, Settings, Stats};
use crate::common::matcher::StringMatch;
use crate::http::filters::api::{BodyWant, FilterContext, HttpFilter, PerRouteRegistration, Registration};
use crate::http::filters::service::GrpcTarget;
use crate::http::route::per_filter::PerRouteConfig;
use http::{HeaderName, HeaderValue};
use legate_api::pb::envoy::extensions::filters::http::ext_authz::v3 as pb;
use legate_api::pb::envoy::r#type::matcher::v3::ListStringMatcher;
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;
use std::time::Duration;

const TYPE: &str = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz";
const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute";

pub const REGISTRATION: Registration = Registration {
    type_url: TYPE,
    compile,
    per_route: Some(PerRouteRegistration { type_url: PER_ROUTE_TYPE, compile: compile_per_route }),
    one_per_chain: None,
};

/// Envoy's default check timeout for a gRPC service.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);

fn compile(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
    let base = format!("http_filters[{}].typed_config", ctx.index);
    let c: pb::ExtAuthz = legate_api::any::unpack(any).map_err(|e| format!("{base}: {e}"))?;
    let err = |field: &str, e: String| format!("{base}.{field}: {e}");
    let clusters = ctx.server.clusters.clone();
    let (service, is_http) = match &c.services {
        Some(pb::ext_authz::Services::GrpcService(g)) => {
            let target = GrpcTarget::compile(g, ctx.server.store).map_err(|e| err("grpc_service", e))?;
            let timeout = g.timeout.as_ref().map_or(DEFAULT_TIMEOUT, legate_api::duration::from_pb);
            (Service { cluster: String::new(), timeout, clusters, kind: Kind::Grpc(target) }, false)
        }
        Some(pb::ext_authz::Services::HttpService(h)) => {
            let (cluster, timeout, mut svc) = http_service(h).map_err(|e| err("http_service", e))?;
            // The deprecated `authorization_request.allowed_headers` wins;
            // else the filter's own.
            if svc.allowed.is_empty() {
                svc.allowed = c
                    .allowed_headers
                    .as_ref()
                    .map(matchers)
                    .transpose()
                    .map_err(|e| err("allowed_headers", e))?
                    .unwrap_or_default();
            }
            (Service { cluster, timeout, clusters, kind: Kind::Http(Box::new(svc)) }, true)
        }
        None => return Err(format!("{base}: one of grpc_service or http_service is required")),
    };
    let allowed = match (&c.allowed_headers, is_http) {
        (Some(l), false) => Some(matchers(l).map_err(|e| err("allowed_headers", e))?),
        _ => None,
    };
    let disallowed =
        c.disallowed_headers.as_ref().map(matchers).transpose().map_err(|e| err("disallowed_headers", e))?;
    let settings = Settings {
        allowed,
        disallowed: disallowed.unwrap_or_default(),
        pack_as_bytes: is_http || c.with_request_body.as_ref().is_some_and(|b| b.pack_as_bytes),
    };
    let store = ctx.server.store.clone();
    let stem =
        if c.stat_prefix.is_empty() { "ext_authz.".to_string() } else { format!("ext_authz.{}.", c.stat_prefix) };
    let p = format!("http.{}.{stem}", ctx.stat_prefix);
    let counter = |n: &str| store.counter(&format!("{p}{n}"));
    // Envoy creates all of them with the filter.
    for n in [
        "invalid",
        "disabled",
        "ignored_dynamic_metadata",
        "filter_state_name_collision",
        "omitted_response_headers",
        "request_header_limits_reached",
        "response_header_limits_reached",
        "shadow_denied",
        "shadow_error",
    ] {
        counter(n);
    }
    let stats = Stats {
        ok: counter("ok"),
        denied: counter("denied"),
        error: counter("error"),
        failure_mode_allowed: counter("failure_mode_allowed"),
    };
    let status_on_error = c.status_on_error.as_ref().map_or(0, |s| s.code);
    Ok(Box::new(ExtAuthz {
        service,
        settings,
        body: c.with_request_body.as_ref().map(body_want),
        failure_mode_allow: c.failure_mode_allow,
        failure_mode_allow_header_add: c.failure_mode_allow_header_add,
        // Envoy's `toErrorCode`: an unset (or unknown) code is 403.
        status_on_error: if (100..600).contains(&status_on_error) { status_on_error as u16 } else { 403 },
        charge_cluster_response_stats: c.charge_cluster_response_stats.is_none_or(|b| b.value),
        stats,
        store,
        cluster_stat_stem: stem,
    }))
}

fn body_want(b: &pb::BufferSettings) -> BodyWant {
    BodyWant { max: u64::from(b.max_request_bytes), partial: b.allow_partial_message }
}

fn matchers(l: &ListStringMatcher) -> Result<Vec<StringMatch>, String> {
    l.patterns.iter().enumerate().map(|(i, m)| StringMatch::new(m).map_err(|e| format!("patterns[{i}]: {e}"))).collect()
}

/// `http_service`: the cluster and timeout of `server_uri`, and what the
/// request and response carry.
fn http_service(h: &pb::HttpService) -> Result<(String, Duration, HttpService), String> {
    use legate_api::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
    let uri = h.server_uri.as_ref().ok_or("server_uri is required")?;
    let Some(HttpUpstreamType::Cluster(cluster)) = &uri.http_upstream_type else {
        return Err("server_uri.cluster is required".into());
    };
    let timeout = uri.timeout.as_ref().map_or(DEFAULT_TIMEOUT, legate_api::duration::from_pb);
    let list = |l: &Option<ListStringMatcher>, field: &str| -> Result<Vec<StringMatch>, String> {
        l.as_ref().map(matchers).transpose().map(Option::unwrap_or_default).map_err(|e| format!("{field}.{e}"))
    };
    let rq = h.authorization_request.clone().unwrap_or_default();
    let rs = h.authorization_response.clone().unwrap_or_default();
    let mut headers_to_add = Vec::new();
    for (i, hv) in rq.headers_to_add.iter().enumerate() {
        let (Ok(k), Ok(v)) = (HeaderName::from_bytes(hv.key.as_bytes()), HeaderValue::from_str(&hv.value)) else {
            return Err(format!("authorization_request.headers_to_add[{i}]: invalid header"));
        };
        headers_to_add.push((k, v));
    }
    let svc = HttpService {
        path_prefix: h.path_prefix.clone(),
        #[allow(deprecated)]
        allowed: list(&rq.allowed_headers, "authorization_request.allowed_headers")?,
        headers_to_add,
        upstream: list(&rs.allowed_upstream_headers, "authorization_response.allowed_upstream_headers")?,
        upstream_append: list(
            &rs.allowed_upstream_headers_to_append,
            "authorization_response.allowed_upstream_headers_to_append",
        )?,
        client: list(&rs.allowed_client_headers, "authorization_response.allowed_client_headers")?,
        client_on_success: list(
            &rs.allowed_client_headers_on_success,
            "authorization_response.allowed_client_headers_on_success",
        )?,
    };
    Ok((cluster.clone(), timeout, svc))
}

fn compile_per_route(any: &Any, path: &str) -> Result<PerRouteConfig, String> {
    let c: pb::ExtAuthzPerRoute = legate_api::any::unpack(any).map_err(|e| format!("{path}: {e}"))?;
    let per_route = match c.r#override {
        Some(pb::ext_authz_per_route::Override::Disabled(d)) => PerRoute {
            disabled: d,
            context_extensions: Default::default(),
            disable_request_body_buffering: false,
            with_request_body: None,
        },
        Some(pb::ext_authz_per_route::Override::CheckSettings(s)) => PerRoute {
            disabled: false,
            with_request_body: s.with_request_body.as_ref().map(body_want),
            context_extensions: s.context_extensions,
            disable_request_body_buffering: s.disable_request_body_buffering,
        },
        None => return Err(format!("{path}: one of disabled or check_settings is required")),
    };
    Ok(Arc::new(per_route))
}
