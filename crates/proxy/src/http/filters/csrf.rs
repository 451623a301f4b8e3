//! `envoy.filters.http.csrf`: a request that changes state (POST, PUT,
//! DELETE, PATCH) must come from the origin it is sent to: the host and
//! port of its `origin` (else its `referer`) must be those of its `host`,
//! or match one of `additional_origins`. Otherwise Envoy answers 403
//! `Invalid origin`, or only counts it when the policy is in shadow mode.
//! The policy is the route's or the virtual host's
//! (`typed_per_filter_config`), else the filter's own. Counters
//! `http.<prefix>.csrf.{missing_source_origin,request_invalid,request_valid}`.

use crate::common::fraction::{per_million, roll};
use crate::common::matcher::StringMatch;
use crate::http::filters::api::{
    FilterContext, FilterStatus, HttpFilter, PerRouteRegistration, Registration, RequestCtx, ResponseState, Verdict,
};
use crate::http::route::per_filter::PerRouteConfig;
use crate::stats::Counter;
use http::HeaderMap;
use legate_api::pb::envoy::extensions::filters::http::csrf::v3::CsrfPolicy;
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;

pub const TYPE: &str = "envoy.extensions.filters.http.csrf.v3.CsrfPolicy";

/// The same message configures the filter and overrides it per route.
pub const REGISTRATION: Registration = Registration {
    type_url: TYPE,
    compile: Csrf::compile,
    per_route: Some(PerRouteRegistration { type_url: TYPE, compile: Policy::compile_per_route }),
    one_per_chain: None,
};

/// A compiled `CsrfPolicy`.
pub struct Policy {
    /// `filter_enabled` in parts per million (runtime keys have no runtime
    /// to read in Legate: their defaults hold).
    enabled: u32,
    /// `shadow_enabled`, when set.
    shadow: Option<u32>,
    additional_origins: Vec<StringMatch>,
}

impl Policy {
    fn new(p: &CsrfPolicy) -> Result<Self, String> {
        let enabled = p.filter_enabled.as_ref().ok_or("filter_enabled is required")?;
        Ok(Self {
            enabled: per_million(enabled.default_value.as_ref()),
            shadow: p.shadow_enabled.as_ref().map(|s| per_million(s.default_value.as_ref())),
            additional_origins: p
                .additional_origins
                .iter()
                .enumerate()
                .map(|(i, m)| StringMatch::new(m).map_err(|e| format!("additional_origins[{i}]: {e}")))
                .collect::<Result<_, _>>()?,
        })
    }

    fn compile_per_route(any: &Any, path: &str) -> Result<PerRouteConfig, String> {
        let err = |e: String| format!("{path}: {e}");
        let c: CsrfPolicy = legate_api::any::unpack(any).map_err(err)?;
        Ok(Arc::new(Self::new(&c).map_err(err)?))
    }
}

struct Stats {
    missing_source_origin: Arc<Counter>,
    request_invalid: Arc<Counter>,
    request_valid: Arc<Counter>,
}

pub struct Csrf {
    policy: Policy,
    stats: Stats,
}

impl Csrf {
    fn compile(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
        let err = |e: String| format!("http_filters[{}].typed_config.{e}", ctx.index);
        let c: CsrfPolicy = legate_api::any::unpack(any).map_err(|e| format!("http_filters[{}]: {e}", ctx.index))?;
        let counter = |n: &str| ctx.server.store.counter(&format!("http.{}.csrf.{n}", ctx.stat_prefix));
        Ok(Box::new(Self {
            policy: Policy::new(&c).map_err(err)?,
            stats: Stats {
                missing_source_origin: counter("missing_source_origin"),
                request_invalid: counter("request_invalid"),
                request_valid: counter("request_valid"),
            },
        }))
    }
}

/// Envoy's `hostAndPort`: the host and port of an absolute URL as written
/// (neither case nor a default port changed), or the value as it is when it
/// is not one ("" for none).
fn host_and_port(value: &str) -> &str {
    let Some((scheme, rest)) = value.split_once("://") else { return value };
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
        return value;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return value;
    }
    host
}

/// Where the request comes from: its `origin`, else its `referer`. An
/// opaque `null` origin is no source at all (the referer is not read), as
/// Envoy 1.40 has it.
fn source_origin(h: &HeaderMap) -> &str {
    let value = |name| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    match value(http::header::ORIGIN) {
        "" => host_and_port(value(http::header::REFERER)),
        "null" => "",
        origin => host_and_port(origin),
    }
}

fn modifies(method: &http::Method) -> bool {
    use http::Method;
    [Method::POST, Method::PUT, Method::DELETE, Method::PATCH].contains(method)
}

impl HttpFilter for Csrf {
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, _: &'r mut ResponseState) -> FilterStatus<'r> {
        let policy = rq.per_route::<Policy>().unwrap_or(&self.policy);
        let enabled = roll(policy.enabled);
        let shadow = policy.shadow.is_some_and(roll);
        if (!enabled && !shadow) || !modifies(rq.method) {
            return FilterStatus::Continue;
        }
        let source = source_origin(rq.headers);
        let target = host_and_port(rq.pseudo.authority);
        let valid = if source.is_empty() {
            self.stats.missing_source_origin.inc();
            false
        } else if source != target && !policy.additional_origins.iter().any(|m| m.matches(source)) {
            self.stats.request_invalid.inc();
            false
        } else {
            true
        };
        if valid {
            self.stats.request_valid.inc();
            return FilterStatus::Continue;
        }
        if shadow && !enabled {
            return FilterStatus::Continue;
        }
        FilterStatus::Done(Verdict::Reply {
            status: 403,
            body: "Invalid origin",
            details: "csrf_origin_mismatch",
            flag: "",
            headers: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_of_urls() {
        assert_eq!(host_and_port("https://a.example:8443/x?y"), "a.example:8443");
        assert_eq!(host_and_port("http://u@a.example"), "a.example");
        assert_eq!(host_and_port("null"), "null");
        assert_eq!(host_and_port("ftp://a.example"), "a.example");
        assert_eq!(host_and_port("http://A.example:80"), "A.example:80");
        assert_eq!(host_and_port(""), "");
        let mut h = HeaderMap::new();
        h.insert(http::header::REFERER, http::HeaderValue::from_static("http://r.example/page"));
        assert_eq!(source_origin(&h), "r.example");
        h.insert(http::header::ORIGIN, http::HeaderValue::from_static("http://o.example"));
        assert_eq!(source_origin(&h), "o.example");
        h.insert(http::header::ORIGIN, http::HeaderValue::from_static("null"));
        assert_eq!(source_origin(&h), "");
    }
}
