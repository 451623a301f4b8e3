//! Compiling `ExternalProcessor` and `ExtProcPerRoute`.

use super::filter::ExtProc;
use super::{Forward, Mode, Namespaces, PerRoute, RouteCache, Shared, Stats};
use crate::common::matcher::StringMatch;
use crate::http::filters::api::{FilterContext, HttpFilter, PerRouteRegistration, Registration};
use crate::http::route::per_filter::PerRouteConfig;
use legate_api::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use legate_api::pb::envoy::extensions::filters::http::ext_proc::v3 as pb;
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;
use std::time::Duration;

const TYPE: &str = "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor";
const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute";

pub const REGISTRATION: Registration = Registration {
    type_url: TYPE,
    compile,
    per_route: Some(PerRouteRegistration { type_url: PER_ROUTE_TYPE, compile: compile_per_route }),
    one_per_chain: None,
};

/// Envoy's default `message_timeout`.
const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_millis(200);

fn compile(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
    let base = format!("http_filters[{}].typed_config", ctx.index);
    let c: pb::ExternalProcessor = legate_api::any::unpack(any).map_err(|e| format!("{base}: {e}"))?;
    let Some(g) = &c.grpc_service else {
        return Err(format!("{base}: grpc_service is required"));
    };
    let Some(TargetSpecifier::EnvoyGrpc(eg)) = &g.target_specifier else {
        return Err(format!("{base}.grpc_service: only envoy_grpc is supported"));
    };
    let message_timeout = c.message_timeout.as_ref().map_or(DEFAULT_MESSAGE_TIMEOUT, legate_api::duration::from_pb);
    let status_on_error = c.status_on_error.as_ref().map_or(0, |s| s.code);
    let route_cache = match pb::external_processor::RouteCacheAction::try_from(c.route_cache_action) {
        Ok(pb::external_processor::RouteCacheAction::Clear) => RouteCache::Clear,
        Ok(pb::external_processor::RouteCacheAction::Retain) => RouteCache::Retain,
        _ => RouteCache::Default,
    };
    let route_cache = match (c.disable_clear_route_cache, route_cache) {
        (false, r) => r,
        (true, RouteCache::Default) => RouteCache::Retain,
        (true, _) => {
            return Err(format!(
            "{base}: disable_clear_route_cache and route_cache_action can not be set to none-default at the same time"
        ))
        }
    };
    let shared = Shared {
        clusters: ctx.server.clusters.clone(),
        cluster: eg.cluster_name.clone(),
        message_timeout,
        failure_mode_allow: c.failure_mode_allow,
        allow_mode_override: c.allow_mode_override,
        allowed_overrides: c.allowed_override_modes.clone(),
        configured: c.processing_mode.unwrap_or_default(),
        disable_immediate_response: c.disable_immediate_response,
        // An unset (or unknown) code is 500.
        status_on_error: if (200..600).contains(&status_on_error) { status_on_error as u16 } else { 500 },
        route_cache,
        forward: forward(c.forward_rules.as_ref()).map_err(|e| format!("{base}.forward_rules.{e}"))?,
        rules: rules(c.mutation_rules.as_ref()).map_err(|e| format!("{base}.mutation_rules.{e}"))?,
        namespaces: Arc::new(namespaces(c.metadata_options.as_ref())),
        stats: Arc::new(stats(ctx, &c.stat_prefix)),
    };
    let mode = Mode::from_pb(&shared.configured);
    Ok(Box::new(ExtProc::new(Arc::new(shared), mode)))
}

/// `metadata_options`, as Envoy reads them: forwarding untyped and typed,
/// receiving untyped.
fn namespaces(m: Option<&pb::MetadataOptions>) -> Namespaces {
    let (forward, forward_typed) = forwarding(m).unwrap_or_default();
    Namespaces { forward, forward_typed, receive: receiving(m).unwrap_or_default() }
}

fn forwarding(m: Option<&pb::MetadataOptions>) -> Option<(Vec<String>, Vec<String>)> {
    m?.forwarding_namespaces.as_ref().map(|f| (f.untyped.clone(), f.typed.clone()))
}

fn receiving(m: Option<&pb::MetadataOptions>) -> Option<Vec<String>> {
    m?.receiving_namespaces.as_ref().map(|r| r.untyped.clone())
}

fn forward(rules: Option<&pb::HeaderForwardingRules>) -> Result<Forward, String> {
    let Some(r) = rules else { return Ok(Forward::default()) };
    let list = |l: &Option<legate_api::pb::envoy::r#type::matcher::v3::ListStringMatcher>, field: &str| {
        l.iter()
            .flat_map(|l| l.patterns.iter().enumerate())
            .map(|(i, m)| StringMatch::new(m).map_err(|e| format!("{field}.patterns[{i}]: {e}")))
            .collect::<Result<Vec<_>, String>>()
    };
    Ok(Forward {
        allowed: list(&r.allowed_headers, "allowed_headers")?,
        disallowed: list(&r.disallowed_headers, "disallowed_headers")?,
    })
}

fn rules(
    r: Option<&legate_api::pb::envoy::config::common::mutation_rules::v3::HeaderMutationRules>,
) -> Result<super::mutation::Rules, String> {
    use super::mutation::Rules;
    let Some(r) = r else { return Ok(Rules::DEFAULT) };
    let flag = |b: &Option<legate_api::pb::google::protobuf::BoolValue>| b.as_ref().is_some_and(|b| b.value);
    let regex = |m: &Option<legate_api::pb::envoy::r#type::matcher::v3::RegexMatcher>, field: &str| {
        m.as_ref().map(crate::common::matcher::compile_regex).transpose().map_err(|e| format!("{field}: {e}"))
    };
    Ok(Rules {
        allow_all_routing: flag(&r.allow_all_routing),
        allow_envoy: flag(&r.allow_envoy),
        disallow_system: flag(&r.disallow_system),
        disallow_all: flag(&r.disallow_all),
        disallow_is_error: flag(&r.disallow_is_error),
        allow: regex(&r.allow_expression, "allow_expression")?,
        disallow: regex(&r.disallow_expression, "disallow_expression")?,
    })
}

/// The counters, all made with the filter as Envoy makes them.
fn stats(ctx: &FilterContext<'_>, stat_prefix: &str) -> Stats {
    let prefix = match stat_prefix {
        "" => format!("http.{}.ext_proc.", ctx.stat_prefix),
        p => format!("http.{}.ext_proc.{p}.", ctx.stat_prefix),
    };
    let store = ctx.server.store;
    let counter = |n: &str| store.counter(&format!("{prefix}{n}"));
    for n in ["override_message_timeout_received", "clear_route_cache_upstream_ignored", "http_not_ok_resp_received"] {
        counter(n);
    }
    Stats {
        streams_started: counter("streams_started"),
        stream_msgs_sent: counter("stream_msgs_sent"),
        stream_msgs_received: counter("stream_msgs_received"),
        spurious_msgs_received: counter("spurious_msgs_received"),
        streams_closed: counter("streams_closed"),
        streams_failed: counter("streams_failed"),
        failure_mode_allowed: counter("failure_mode_allowed"),
        message_timeouts: counter("message_timeouts"),
        rejected_header_mutations: counter("rejected_header_mutations"),
        override_message_timeout_ignored: counter("override_message_timeout_ignored"),
        immediate_responses_sent: counter("immediate_responses_sent"),
        server_half_closed: counter("server_half_closed"),
        clear_route_cache_ignored: counter("clear_route_cache_ignored"),
        clear_route_cache_disabled: counter("clear_route_cache_disabled"),
    }
}

fn compile_per_route(any: &Any, path: &str) -> Result<PerRouteConfig, String> {
    let c: pb::ExtProcPerRoute = legate_api::any::unpack(any).map_err(|e| format!("{path}: {e}"))?;
    let per_route = match c.r#override {
        Some(pb::ext_proc_per_route::Override::Disabled(d)) => {
            PerRoute { disabled: d, mode: None, forward: None, receive: None }
        }
        Some(pb::ext_proc_per_route::Override::Overrides(o)) => PerRoute {
            disabled: false,
            mode: o.processing_mode.as_ref().map(Mode::from_pb),
            forward: forwarding(o.metadata_options.as_ref()),
            receive: receiving(o.metadata_options.as_ref()),
        },
        None => return Err(format!("{path}: one of disabled or overrides is required")),
    };
    Ok(Arc::new(per_route))
}
