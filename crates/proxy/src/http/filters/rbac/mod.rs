//! `envoy.filters.http.rbac`: a request passes when the enforced rules of
//! the filter (or of the route's `RBACPerRoute`, which replaces them) allow
//! it, else it is answered 403; shadow rules are only counted. The rules
//! are evaluated by the engine in `engine`, or by the match tree of
//! `matcher` / `shadow_matcher` (`matcher`).

pub mod engine;
pub mod matcher;
pub mod subject;

use crate::http::filters::api::{
    FilterContext, FilterStatus, HttpFilter, PerRouteRegistration, Registration, RequestCtx, ResponseState, Verdict,
};
use crate::http::route::per_filter::PerRouteConfig;
use engine::{engines_of, Counted, Engine, Subject};
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;

pub const TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBAC";
/// The per-route config: a route's own rules.
pub const PER_ROUTE_TYPE: &str = "envoy.extensions.filters.http.rbac.v3.RBACPerRoute";

pub const REGISTRATION: Registration = Registration {
    type_url: TYPE,
    compile: Rbac::compile_any,
    per_route: Some(PerRouteRegistration { type_url: PER_ROUTE_TYPE, compile: RoutePolicy::compile_per_route }),
    one_per_chain: None,
};

/// The compiled filter: enforced and shadow engines with their counters.
pub struct Rbac {
    pub enforced: Option<Engine>,
    pub shadow: Option<Engine>,
    counted: Counted,
}

/// The `RBAC` message as the filter and its per-route override carry it.
pub type Config = legate_api::pb::envoy::extensions::filters::http::rbac::v3::Rbac;

/// The engines of an `RBAC` message (the filter's, or a route's override).
/// As in Envoy, a `matcher` wins over `rules` (and `shadow_matcher` over
/// `shadow_rules`), which are then ignored.
pub fn engines(c: &Config) -> Result<(Option<Engine>, Option<Engine>), String> {
    let (rules, shadow) = engines_of(
        c.rules.as_ref().filter(|_| c.matcher.is_none()),
        c.shadow_rules.as_ref().filter(|_| c.shadow_matcher.is_none()),
    )?;
    let enforced = match &c.matcher {
        Some(m) => Some(Engine::Matcher(matcher::compile(m, "matcher")?)),
        None => rules,
    };
    let shadow = match &c.shadow_matcher {
        Some(m) => Some(Engine::Matcher(matcher::compile(m, "shadow_matcher")?)),
        None => shadow,
    };
    Ok((enforced, shadow))
}

impl Rbac {
    fn compile_any(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
        let c: Config = legate_api::any::unpack(any)?;
        let r = Self::compile(&c, ctx.server.store, ctx.stat_prefix)
            .map_err(|e| format!("http_filters[{}].typed_config.{e}", ctx.index))?;
        Ok(Box::new(r))
    }

    pub fn compile(c: &Config, store: &crate::stats::Store, stat_prefix: &str) -> Result<Self, String> {
        let (enforced, shadow) = engines(c)?;
        let p = format!("http.{stat_prefix}.rbac.");
        Ok(Self { enforced, shadow, counted: Counted::new(store, &p, &p) })
    }

    /// Evaluates the shadow rules (counted only) and the enforced ones; a
    /// route's override, when given, replaces both. False: answer 403.
    pub fn check(&self, s: &Subject<'_>, route: Option<&RoutePolicy>) -> bool {
        let (enforced, shadow) = match route {
            Some(r) => (r.enforced.as_ref(), r.shadow.as_ref()),
            None => (self.enforced.as_ref(), self.shadow.as_ref()),
        };
        self.counted.shadow(shadow, s);
        self.counted.enforce(enforced, s)
    }
}

/// `RBACPerRoute`: a route's own rules, replacing the filter's.
#[derive(Debug)]
pub struct RoutePolicy {
    enforced: Option<Engine>,
    shadow: Option<Engine>,
}

impl RoutePolicy {
    pub fn new(p: &legate_api::pb::envoy::extensions::filters::http::rbac::v3::RbacPerRoute) -> Result<Self, String> {
        let (enforced, shadow) = match &p.rbac {
            Some(c) => engines(c)?,
            // An empty override turns the filter off for the route.
            None => (None, None),
        };
        Ok(Self { enforced, shadow })
    }

    /// A `typed_per_filter_config` entry; `path` names it in errors.
    fn compile_per_route(any: &Any, path: &str) -> Result<PerRouteConfig, String> {
        let err = |e: String| format!("{path}: {e}");
        let c = legate_api::any::unpack(any).map_err(err)?;
        Ok(Arc::new(Self::new(&c).map_err(err)?))
    }
}

impl HttpFilter for Rbac {
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, _: &'r mut ResponseState) -> FilterStatus<'r> {
        let subject = Subject {
            headers: rq.headers,
            pseudo: &rq.pseudo,
            http: true,
            tls: rq.tls,
            sni: rq.sni,
            direct_remote: rq.direct_remote,
            remote: rq.remote,
            peer_port: rq.peer.port(),
            local: rq.local,
        };
        if self.check(&subject, rq.per_route::<RoutePolicy>()) {
            return FilterStatus::Continue;
        }
        FilterStatus::Done(Verdict::Reply {
            status: 403,
            body: "RBAC: access denied",
            details: "rbac_access_denied_matched_policy[none]",
            flag: "",
            headers: Vec::new(),
        })
    }
}
