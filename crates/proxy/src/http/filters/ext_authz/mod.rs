//! `envoy.filters.http.ext_authz`: each request is checked with an
//! external authorization service, over gRPC
//! (`envoy.service.auth.v3.Authorization/Check`) or plain HTTP, before it
//! goes on. An allowed request goes on with the headers the service
//! changed; a denied one is answered with the service's status, body and
//! headers; a failed check is answered `status_on_error` (403) unless
//! `failure_mode_allow`. Per route (`ExtAuthzPerRoute`): disabled, or
//! `check_settings` with `context_extensions` and body buffering.
//!
//! Stats as Envoy names them: `http.<hcm>.ext_authz.[<stat_prefix>.]ok`,
//! `denied`, `error`, `failure_mode_allowed`, ... and the same under the
//! routed cluster (`cluster.<name>.ext_authz.[<stat_prefix>.]*`).

pub(crate) mod check;
pub(crate) mod client;
mod config;
pub(crate) mod decision;

use crate::http::filters::api::{BodyWant, FilterStatus, HttpFilter, RequestCtx, ResponseState, Verdict};
use crate::stats::{Counter, Store};
use check::CheckBody;
use client::Service;
use decision::Decision;
use http::HeaderValue;
use std::collections::HashMap;
use std::sync::Arc;

pub use config::REGISTRATION;

/// The filter's stats (Envoy's `ALL_EXT_AUTHZ_FILTER_STATS`).
struct Stats {
    ok: Arc<Counter>,
    denied: Arc<Counter>,
    error: Arc<Counter>,
    failure_mode_allowed: Arc<Counter>,
}

/// What the check itself reads of the config.
pub(crate) struct Settings {
    /// `allowed_headers` (gRPC service): only these headers are sent.
    allowed: Option<Vec<crate::common::matcher::StringMatch>>,
    disallowed: Vec<crate::common::matcher::StringMatch>,
    /// The body goes as `raw_body` (always for the HTTP service).
    pack_as_bytes: bool,
}

impl Settings {
    fn header_allowed(&self, name: &str) -> bool {
        self.allowed.as_ref().is_none_or(|a| a.iter().any(|m| m.matches(name)))
            && !self.disallowed.iter().any(|m| m.matches(name))
    }
}

pub struct ExtAuthz {
    service: Service,
    settings: Settings,
    /// `with_request_body`.
    body: Option<BodyWant>,
    failure_mode_allow: bool,
    failure_mode_allow_header_add: bool,
    status_on_error: u16,
    charge_cluster_response_stats: bool,
    stats: Stats,
    store: Arc<Store>,
    /// `ext_authz.[<stat_prefix>.]`, for the cluster's counters.
    cluster_stat_stem: String,
}

/// `ExtAuthzPerRoute`, compiled.
pub(super) struct PerRoute {
    disabled: bool,
    context_extensions: HashMap<String, String>,
    disable_request_body_buffering: bool,
    with_request_body: Option<BodyWant>,
}

impl ExtAuthz {
    /// The most specific per-route config (Envoy's flags), and the context
    /// extensions of every level merged, the more specific winning.
    fn per_route<'a>(rq: &'a RequestCtx<'_>) -> (Option<&'a PerRoute>, HashMap<String, String>) {
        let levels: Vec<&PerRoute> = rq.route.iter().flatten().filter_map(|p| p.get::<PerRoute>()).collect();
        let mut ext = HashMap::new();
        for level in levels.iter().rev() {
            ext.extend(level.context_extensions.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        (levels.first().copied(), ext)
    }

    fn cluster_counter(&self, rq: &RequestCtx<'_>, name: &str) {
        if let Some(c) = rq.route_cluster {
            self.store.counter(&format!("cluster.{c}.{}{name}", self.cluster_stat_stem)).inc();
        }
    }

    /// A denial charged to the routed cluster as a response with its
    /// status (Envoy's `charge_cluster_response_stats`).
    fn charge_denied(&self, rq: &RequestCtx<'_>, status: u16) {
        let Some(c) = rq.route_cluster.filter(|_| self.charge_cluster_response_stats) else { return };
        crate::http::filters::service::charge_response(&self.store, c, status);
    }

    /// What the filter does with a decision.
    fn conclude(&self, rq: &mut RequestCtx<'_>, state: &mut ResponseState, d: Decision) -> Verdict {
        match d {
            Decision::Ok(a) => {
                a.apply(rq.headers);
                let path = rq.new_path.as_deref().unwrap_or(rq.pseudo.path);
                if let Some(p) = a.new_path(path) {
                    rq.new_path = Some(p);
                }
                state.appended.extend(a.response_add.iter().cloned());
                state.headers.extend(a.response_set.iter().cloned());
                self.cluster_counter(rq, "ok");
                self.stats.ok.inc();
                Verdict::Continue
            }
            Decision::Denied { status, body, headers } => {
                self.stats.denied.inc();
                self.cluster_counter(rq, "denied");
                self.charge_denied(rq, status);
                Verdict::Denied { status, body, details: "ext_authz_denied", headers }
            }
            Decision::Error => {
                self.cluster_counter(rq, "error");
                self.stats.error.inc();
                if self.failure_mode_allow {
                    self.stats.failure_mode_allowed.inc();
                    self.cluster_counter(rq, "failure_mode_allowed");
                    if self.failure_mode_allow_header_add {
                        rq.headers.append("x-envoy-auth-failure-mode-allowed", HeaderValue::from_static("true"));
                    }
                    return Verdict::Continue;
                }
                Verdict::Denied {
                    status: self.status_on_error,
                    body: String::new(),
                    details: "ext_authz_error",
                    headers: Vec::new(),
                }
            }
        }
    }
}

impl HttpFilter for ExtAuthz {
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, state: &'r mut ResponseState) -> FilterStatus<'r> {
        // Without a route Envoy checks nothing (the router answers 404).
        if rq.route[0].is_none() {
            return FilterStatus::Continue;
        }
        let (per_route, extensions) = Self::per_route(rq);
        if per_route.is_some_and(|p| p.disabled) {
            return FilterStatus::Continue;
        }
        FilterStatus::Wait(Box::pin(async move {
            let body =
                rq.read_body.as_ref().map(|b| CheckBody { bytes: &b.bytes, partial: b.partial, received: b.received });
            let check = check::build(&self.settings, rq, extensions, body);
            let decision = self.service.check(&check).await;
            self.conclude(rq, state, decision)
        }))
    }

    fn response_hooks(&self) -> crate::http::filters::api::ResponseHooks {
        crate::http::filters::api::ResponseHooks { request_body: true, ..Default::default() }
    }

    fn request_body(&self, rq: &RequestCtx<'_>) -> Option<BodyWant> {
        let (per_route, _) = Self::per_route(rq);
        match per_route {
            Some(p) if p.disabled || p.disable_request_body_buffering => None,
            Some(PerRoute { with_request_body: Some(w), .. }) => Some(*w),
            _ => self.body,
        }
    }
}
