//! `envoy.filters.http.cors` with the `CorsPolicy` of a route or virtual host
//! (`typed_per_filter_config`). A preflight (OPTIONS with an allowed
//! `origin` and `access-control-request-method`) is answered by the proxy; an
//! actual request from an allowed origin gets `access-control-allow-origin`
//! (and credentials/expose headers) on its response.
//!
//! Each field is taken from the most specific policy that sets it (route,
//! then virtual host), as Envoy does. When neither level has a typed policy,
//! the deprecated `cors` fields of the route action and the virtual host
//! (`envoy.config.route.v3.CorsPolicy`) are used instead, as Envoy falls
//! back to them.

use crate::common::matcher::StringMatch;
use crate::http::filters::api::{
    FilterContext, FilterStatus, HttpFilter, PerRouteRegistration, Registration, RequestCtx, ResponseState, Verdict,
};
use crate::http::route::per_filter::PerRouteConfig;
use http::{HeaderMap, HeaderName, HeaderValue};
use legate_api::pb::envoy::config::route::v3::CorsPolicy as RouteCorsPolicy;
use legate_api::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy;
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;

pub const TYPE: &str = "envoy.extensions.filters.http.cors.v3.Cors";
/// The per-route config: a route's or virtual host's policy.
pub const POLICY_TYPE: &str = "envoy.extensions.filters.http.cors.v3.CorsPolicy";

/// A route action's or virtual host's deprecated `cors` field, compiled.
pub struct LegacyPolicy(Policy);

/// The deprecated `cors` field of a route action or virtual host as a
/// per-route config the filter falls back to.
pub fn legacy(p: &RouteCorsPolicy) -> Result<PerRouteConfig, String> {
    use legate_api::pb::envoy::config::route::v3::cors_policy::EnabledSpecifier;
    let typed = CorsPolicy {
        allow_origin_string_match: p.allow_origin_string_match.clone(),
        allow_methods: p.allow_methods.clone(),
        allow_headers: p.allow_headers.clone(),
        expose_headers: p.expose_headers.clone(),
        max_age: p.max_age.clone(),
        allow_credentials: p.allow_credentials,
        filter_enabled: p.enabled_specifier.as_ref().map(|EnabledSpecifier::FilterEnabled(f)| f.clone()),
        shadow_enabled: p.shadow_enabled.clone(),
        allow_private_network_access: p.allow_private_network_access,
        forward_not_matching_preflights: p.forward_not_matching_preflights,
    };
    Ok(Arc::new(LegacyPolicy(Policy::new(&typed)?)))
}

pub const REGISTRATION: Registration = Registration {
    type_url: TYPE,
    compile: Cors::compile,
    per_route: Some(PerRouteRegistration { type_url: POLICY_TYPE, compile: Policy::compile_per_route }),
    one_per_chain: None,
};

/// A compiled `CorsPolicy`; header values are built once here.
#[derive(Debug, Default)]
pub struct Policy {
    origins: Vec<StringMatch>,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    allow_credentials: Option<bool>,
    /// `filter_enabled`.
    enabled: Option<crate::common::runtime::RuntimeFraction>,
    /// `shadow_enabled`: evaluated and counted, not enforced.
    shadow: Option<crate::common::runtime::RuntimeFraction>,
    allow_private_network: Option<bool>,
    forward_not_matching_preflights: Option<bool>,
}

fn value(s: &str, field: &str) -> Result<Option<HeaderValue>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(s).map(Some).map_err(|_| format!("{field}: not a valid header value"))
}

impl Policy {
    pub fn new(p: &CorsPolicy) -> Result<Self, String> {
        Ok(Self {
            origins: p
                .allow_origin_string_match
                .iter()
                .map(StringMatch::new)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("allow_origin_string_match: {e}"))?,
            allow_methods: value(&p.allow_methods, "allow_methods")?,
            allow_headers: value(&p.allow_headers, "allow_headers")?,
            expose_headers: value(&p.expose_headers, "expose_headers")?,
            max_age: value(&p.max_age, "max_age")?,
            allow_credentials: p.allow_credentials.as_ref().map(|b| b.value),
            enabled: p.filter_enabled.as_ref().map(crate::common::runtime::RuntimeFraction::new),
            shadow: p.shadow_enabled.as_ref().map(crate::common::runtime::RuntimeFraction::new),
            allow_private_network: p.allow_private_network_access.as_ref().map(|b| b.value),
            forward_not_matching_preflights: p.forward_not_matching_preflights.as_ref().map(|b| b.value),
        })
    }

    /// A `typed_per_filter_config` entry; `path` names it in errors.
    fn compile_per_route(any: &Any, path: &str) -> Result<PerRouteConfig, String> {
        let err = |e: String| format!("{path}: {e}");
        let c: CorsPolicy = legate_api::any::unpack(any).map_err(err)?;
        Ok(Arc::new(Self::new(&c).map_err(err)?))
    }

    /// Whether `origin` is allowed: some matcher matches it, or one matches `*`.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.origins.iter().any(|m| m.matches(origin) || m.matches("*"))
    }
}

/// What the filter decided for one request.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// Not a CORS request, or not an allowed one: nothing to do.
    Pass,
    /// A preflight: answer 200 with these headers.
    Preflight(Vec<(HeaderName, HeaderValue)>),
    /// An actual request: add these headers to its response.
    Actual(Vec<(HeaderName, HeaderValue)>),
}

/// The field from the most specific policy that sets it.
fn first<'a, T>(ps: &[&'a Policy], f: impl Fn(&'a Policy) -> Option<T>) -> Option<T> {
    ps.iter().find_map(|p| f(p))
}

/// Envoy's CORS decision; `policies` most specific first. Cost: nothing
/// without an `origin` header; else a small Vec of header values per request.
pub fn decide(policies: &[&Policy], method: &http::Method, headers: &HeaderMap, stats: &Stats) -> Decision {
    use http::header::*;
    if policies.is_empty() {
        return Decision::Pass;
    }
    // As Envoy: `filter_enabled` (default on) and `shadow_enabled` (default
    // off) come from the most specific policy; with neither, nothing is
    // evaluated or counted; in shadow only the origin is counted.
    let enabled = policies[0].enabled.as_ref().is_none_or(|f| f.roll());
    let shadow = !enabled && policies[0].shadow.as_ref().is_some_and(|f| f.roll());
    if !enabled && !shadow {
        return Decision::Pass;
    }
    let Some(origin) = headers.get(ORIGIN).filter(|o| !o.is_empty()) else { return Decision::Pass };
    let origins = policies.iter().find(|p| !p.origins.is_empty());
    let preflight =
        method == http::Method::OPTIONS && headers.get(ACCESS_CONTROL_REQUEST_METHOD).is_some_and(|m| !m.is_empty());
    if !origins.is_some_and(|p| p.origin_allowed(origin.to_str().unwrap_or(""))) {
        stats.origin_invalid.inc();
        if shadow {
            return Decision::Pass;
        }
        // A preflight from another origin goes upstream unless told not to;
        // then Envoy answers it without the origin headers.
        let forward = first(policies, |p| p.forward_not_matching_preflights).unwrap_or(true);
        if preflight && !forward {
            let mut out = Vec::new();
            preflight_headers(policies, headers, &mut out);
            return Decision::Preflight(out);
        }
        return Decision::Pass;
    }
    stats.origin_valid.inc();
    if shadow {
        return Decision::Pass;
    }
    let credentials = first(policies, |p| p.allow_credentials).unwrap_or(false);
    let mut out = vec![(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())];
    if credentials {
        out.push((ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true")));
    }
    // Envoy sends the exposed headers on preflights too.
    if let Some(v) = first(policies, |p| p.expose_headers.clone()) {
        out.push((ACCESS_CONTROL_EXPOSE_HEADERS, v));
    }
    if !preflight {
        return Decision::Actual(out);
    }
    preflight_headers(policies, headers, &mut out);
    Decision::Preflight(out)
}

/// What a preflight answer says beyond the origin: methods, headers, max
/// age, private network access.
fn preflight_headers(policies: &[&Policy], headers: &HeaderMap, out: &mut Vec<(HeaderName, HeaderValue)>) {
    use http::header::*;
    if let Some(v) = first(policies, |p| p.allow_methods.clone()) {
        out.push((ACCESS_CONTROL_ALLOW_METHODS, v));
    }
    if let Some(v) = first(policies, |p| p.allow_headers.clone()) {
        out.push((ACCESS_CONTROL_ALLOW_HEADERS, v));
    }
    if let Some(v) = first(policies, |p| p.max_age.clone()) {
        out.push((ACCESS_CONTROL_MAX_AGE, v));
    }
    let private_network = headers.get("access-control-request-private-network").is_some_and(|v| v == "true");
    if private_network && first(policies, |p| p.allow_private_network).unwrap_or(false) {
        out.push((HeaderName::from_static("access-control-allow-private-network"), HeaderValue::from_static("true")));
    }
}

/// `http.<prefix>.cors.origin_valid` / `origin_invalid`.
pub struct Stats {
    pub origin_valid: std::sync::Arc<crate::stats::Counter>,
    pub origin_invalid: std::sync::Arc<crate::stats::Counter>,
}

impl Stats {
    pub fn new(store: &crate::stats::Store, stat_prefix: &str) -> Self {
        Self {
            origin_valid: store.counter(&format!("http.{stat_prefix}.cors.origin_valid")),
            origin_invalid: store.counter(&format!("http.{stat_prefix}.cors.origin_invalid")),
        }
    }
}

/// The filter: the policies live on routes and virtual hosts.
pub struct Cors {
    stats: Stats,
}

impl Cors {
    fn compile(_: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
        Ok(Box::new(Self { stats: Stats::new(ctx.server.store, ctx.stat_prefix) }))
    }
}

static DEFAULT_POLICY: std::sync::LazyLock<Policy> = std::sync::LazyLock::new(Policy::default);

impl HttpFilter for Cors {
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, state: &'r mut ResponseState) -> FilterStatus<'r> {
        // The route's policy, then the virtual host's; without a typed
        // policy at either level, their deprecated `cors` fields.
        let mut policies: [&Policy; 2] = [&DEFAULT_POLICY; 2];
        let mut n = 0;
        for p in rq.route.iter().flatten().filter_map(|p| p.get::<Policy>()) {
            policies[n] = p;
            n += 1;
        }
        if n == 0 {
            for p in rq.route.iter().flatten().filter_map(|p| p.get::<LegacyPolicy>()) {
                policies[n] = &p.0;
                n += 1;
            }
        }
        match decide(&policies[..n], rq.method, rq.headers, &self.stats) {
            Decision::Pass => FilterStatus::Continue,
            Decision::Actual(h) => {
                state.headers.extend(h);
                FilterStatus::Continue
            }
            Decision::Preflight(headers) => FilterStatus::Done(Verdict::Reply {
                status: 200,
                body: "",
                details: "cors_response",
                flag: "",
                headers,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_api::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};

    fn sm(p: MatchPattern) -> StringMatcher {
        StringMatcher { match_pattern: Some(p), ignore_case: false }
    }

    fn policy(origins: Vec<StringMatcher>) -> Policy {
        Policy::new(&CorsPolicy {
            allow_origin_string_match: origins,
            allow_methods: "GET, POST".into(),
            expose_headers: "x-custom".into(),
            max_age: "600".into(),
            ..Default::default()
        })
        .expect("compiles")
    }

    fn stats() -> Stats {
        Stats::new(&crate::stats::Store::default(), "t")
    }

    #[test]
    fn origin_matching() {
        let p = policy(vec![
            sm(MatchPattern::Exact("https://a.example".into())),
            sm(MatchPattern::Suffix(".b.example".into())),
        ]);
        assert!(p.origin_allowed("https://a.example"));
        assert!(p.origin_allowed("https://x.b.example"));
        assert!(!p.origin_allowed("https://c.example"));
        assert!(!p.origin_allowed("https://a.example.evil"));
        // An exact "*" allows every origin.
        let any = policy(vec![sm(MatchPattern::Exact("*".into()))]);
        assert!(any.origin_allowed("https://anything"));
        let none = policy(vec![]);
        assert!(!none.origin_allowed("https://a.example"));
    }

    #[test]
    fn preflight_and_actual() {
        let p = policy(vec![sm(MatchPattern::Exact("https://a.example".into()))]);
        let mut h = HeaderMap::new();
        assert_eq!(decide(&[&p], &http::Method::GET, &h, &stats()), Decision::Pass);
        h.insert("origin", HeaderValue::from_static("https://a.example"));
        let Decision::Actual(actual) = decide(&[&p], &http::Method::GET, &h, &stats()) else { panic!("actual") };
        assert!(actual.iter().any(|(k, v)| k == "access-control-expose-headers" && v == "x-custom"));
        // OPTIONS without access-control-request-method is an actual request.
        assert!(matches!(decide(&[&p], &http::Method::OPTIONS, &h, &stats()), Decision::Actual(_)));
        h.insert("access-control-request-method", HeaderValue::from_static("POST"));
        let Decision::Preflight(pre) = decide(&[&p], &http::Method::OPTIONS, &h, &stats()) else { panic!("preflight") };
        let names: Vec<&str> = pre.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "access-control-allow-origin",
                "access-control-expose-headers",
                "access-control-allow-methods",
                "access-control-max-age"
            ]
        );
        h.insert("origin", HeaderValue::from_static("https://evil.example"));
        assert_eq!(decide(&[&p], &http::Method::OPTIONS, &h, &stats()), Decision::Pass);
    }

    #[test]
    fn most_specific_field_wins() {
        let route = Policy::new(&CorsPolicy {
            allow_credentials: Some(legate_api::pb::google::protobuf::BoolValue { value: true }),
            ..Default::default()
        })
        .expect("compiles");
        let vhost = policy(vec![sm(MatchPattern::Prefix("https://".into()))]);
        let mut h = HeaderMap::new();
        h.insert("origin", HeaderValue::from_static("https://a.example"));
        let Decision::Actual(v) = decide(&[&route, &vhost], &http::Method::GET, &h, &stats()) else { panic!() };
        assert!(v.iter().any(|(k, v)| k == "access-control-allow-credentials" && v == "true"));
        assert!(v.iter().any(|(k, _)| k == "access-control-expose-headers"));
    }
}
