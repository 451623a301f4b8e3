//! The HTTP filter chain in front of the router. Filters run in order on the
//! request; one may answer it locally. The router is last, always.

use crate::matcher::{HeaderMatch, Pseudo};
use legate_api::pb::envoy::extensions::filters::http::health_check::v3::HealthCheck;
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_filter, HttpFilter as PbFilter,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const ROUTER_TYPE: &str = "envoy.extensions.filters.http.router.v3.Router";
pub const HEALTH_CHECK_TYPE: &str = "envoy.extensions.filters.http.health_check.v3.HealthCheck";

enum Filter {
    /// Answers health checks itself (non-pass-through mode): 200 while the
    /// server is healthy, 503 after `/healthcheck/fail`.
    HealthCheck { headers: Vec<HeaderMatch> },
}

/// What a filter decided for a request.
pub enum Verdict {
    Continue,
    /// Answer with this status and these headers, no body.
    Respond(u16, Vec<(&'static str, &'static str)>),
}

pub struct FilterChain {
    filters: Vec<Filter>,
    healthy: Arc<AtomicBool>,
}

impl FilterChain {
    /// `healthy` is the server's health-check state (`/healthcheck/ok|fail`).
    pub fn compile(pb: &[PbFilter], healthy: Arc<AtomicBool>) -> Result<Self, String> {
        fn type_of(f: &PbFilter) -> Option<&legate_api::pb::google::protobuf::Any> {
            match &f.config_type {
                Some(http_filter::ConfigType::TypedConfig(a)) => Some(a),
                _ => None,
            }
        }
        let Some((last, rest)) = pb.split_last() else {
            return Err("http_filters: the router is required as the last filter".into());
        };
        if type_of(last).is_none_or(|a| legate_api::any::type_name(a) != ROUTER_TYPE) {
            return Err("http_filters: the last filter must be envoy.filters.http.router".into());
        }
        let mut filters = Vec::new();
        for (i, f) in rest.iter().enumerate() {
            let Some(any) = type_of(f) else { return Err(format!("http_filters[{i}].typed_config is required")) };
            match legate_api::any::type_name(any) {
                HEALTH_CHECK_TYPE => {
                    let hc: HealthCheck = legate_api::any::unpack(any)?;
                    if hc.pass_through_mode.is_some_and(|b| b.value) {
                        return Err(format!(
                            "http_filters[{i}].typed_config.pass_through_mode: only false is supported"
                        ));
                    }
                    let headers = hc.headers.iter().map(HeaderMatch::new).collect::<Result<_, _>>()?;
                    filters.push(Filter::HealthCheck { headers });
                }
                other => return Err(format!("http_filters[{i}]: filter {other} is not supported")),
            }
        }
        Ok(Self { filters, healthy })
    }

    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// Headers the filters add to every response: while health checks fail,
    /// the health check filter marks all responses so downstream proxies stop
    /// sending at once.
    pub fn response_header(&self) -> Option<(&'static str, &'static str)> {
        let failing = !self.healthy.load(Ordering::Relaxed);
        (failing && self.filters.iter().any(|f| matches!(f, Filter::HealthCheck { .. })))
            .then_some(("x-envoy-immediate-health-check-fail", "true"))
    }

    /// Runs the request filters. Cost: nothing when the chain has only the router.
    pub fn on_request(&self, headers: &http::HeaderMap, pseudo: &Pseudo<'_>) -> Verdict {
        for f in &self.filters {
            match f {
                Filter::HealthCheck { headers: want } => {
                    if want.iter().all(|m| m.matches(headers, pseudo)) {
                        return if self.healthy.load(Ordering::Relaxed) {
                            Verdict::Respond(200, vec![])
                        } else {
                            Verdict::Respond(503, vec![("x-envoy-immediate-health-check-fail", "true")])
                        };
                    }
                }
            }
        }
        Verdict::Continue
    }
}
