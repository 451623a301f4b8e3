//! `envoy.filters.http.health_check` (non-pass-through mode): answers the
//! health checks it matches itself, 200 while the server is healthy and 503
//! after `/healthcheck/fail`; while failing, every response carries
//! `x-envoy-immediate-health-check-fail` so downstream proxies stop at once.

use crate::common::matcher::HeaderMatch;
use crate::http::filters::api::{
    FilterContext, FilterStatus, HttpFilter, Registration, RequestCtx, ResponseHooks, ResponseState, Verdict,
};
use legate_api::pb::envoy::extensions::filters::http::health_check::v3::HealthCheck as PbHealthCheck;
use legate_api::pb::google::protobuf::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const TYPE: &str = "envoy.extensions.filters.http.health_check.v3.HealthCheck";

pub const REGISTRATION: Registration =
    Registration { type_url: TYPE, compile: HealthCheck::compile, per_route: None, one_per_chain: None };

pub struct HealthCheck {
    /// What makes a request a health check.
    headers: Vec<HeaderMatch>,
    /// This proxy's cluster, sent back as `x-envoy-upstream-healthchecked-cluster`.
    cluster: http::HeaderValue,
    /// The server's health-check state.
    healthy: Arc<AtomicBool>,
}

impl HealthCheck {
    fn compile(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
        let hc: PbHealthCheck = legate_api::any::unpack(any)?;
        if hc.pass_through_mode.is_some_and(|b| b.value) {
            return Err(format!("http_filters[{}].typed_config.pass_through_mode: only false is supported", ctx.index));
        }
        let headers = hc.headers.iter().map(HeaderMatch::new).collect::<Result<_, _>>()?;
        Ok(Box::new(Self { headers, cluster: ctx.server.local_cluster.clone(), healthy: ctx.server.healthy.clone() }))
    }
}

impl HttpFilter for HealthCheck {
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, _: &'r mut ResponseState) -> FilterStatus<'r> {
        if !self.headers.iter().all(|m| m.matches(rq.headers, &rq.pseudo)) {
            return FilterStatus::Continue;
        }
        let named = ("x-envoy-upstream-healthchecked-cluster", self.cluster.clone());
        FilterStatus::Done(if self.healthy.load(Ordering::Relaxed) {
            Verdict::Respond(200, vec![named])
        } else {
            let fail = ("x-envoy-immediate-health-check-fail", http::HeaderValue::from_static("true"));
            Verdict::Respond(503, vec![named, fail])
        })
    }

    fn response_hooks(&self) -> ResponseHooks {
        ResponseHooks { response_header: true, ..ResponseHooks::default() }
    }

    fn response_header(&self) -> Option<(&'static str, &'static str)> {
        (!self.healthy.load(Ordering::Relaxed)).then_some(("x-envoy-immediate-health-check-fail", "true"))
    }
}
