//! Route tables compiled from `RouteConfiguration`, and matching.
//!
//! Matching is on the hot path. Cost per request: one hash lookup for an exact
//! domain (else a scan of the wildcard domains, longest first), then a linear
//! scan of the virtual host's routes in order, as Envoy does; path tests are
//! string compares unless the route uses a regex. Nothing allocates unless a
//! case-insensitive or query-parameter match needs to.

pub mod cluster_specifier;
pub mod hash_policy;
pub mod mirror_policy;
pub mod per_filter;
pub mod rate_limit;
pub mod rds;
pub mod stream_timeouts;
pub mod virtual_cluster;

pub use mirror_policy::{Mirror, MirrorTarget};

use crate::common::matcher::envoy_substitution as envoy_subst;
use crate::common::matcher::{compile_regex, compile_search_regex, HeaderMatch, Pseudo, StringMatch};
use crate::http::header_mutation::HeaderMutations;
use crate::http::route::per_filter::PerFilter;
use crate::http::route::rate_limit::DescriptorPolicy;
use bytes::Bytes;
use legate_api::pb::envoy::config::route::v3 as rpb;
use regex::Regex;
use std::collections::HashMap;
use std::time::Duration;

pub struct RouteTable {
    pub name: String,
    exact: HashMap<String, usize>,
    suffixes: Vec<(String, usize)>,
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
    pub vhosts: Vec<VirtualHost>,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub most_specific_wins: bool,
}

pub struct VirtualHost {
    pub name: String,
    pub routes: Vec<Route>,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub require_tls: i32,
    /// `include_request_attempt_count`: upstream requests carry
    /// `x-envoy-attempt-count`; `include_attempt_count_in_response`: so does
    /// the response.
    pub attempt_count_upstream: bool,
    pub attempt_count_response: bool,
    pub per_filter: PerFilter,
    /// `virtual_clusters`, when the virtual host defines any.
    pub virtual_clusters: Option<virtual_cluster::VirtualClusters>,
}

/// A route's or virtual host's `rate_limits` and `typed_per_filter_config`;
/// each per-route config is compiled by the filter that reads it, found in
/// the filters' registry by its type.
/// `per_filter` with a route action's or virtual host's deprecated `cors`
/// field, for the CORS filter to fall back to.
fn with_legacy_cors(mut per_filter: PerFilter, cors: Option<&rpb::CorsPolicy>) -> Result<PerFilter, String> {
    if let Some(c) = cors {
        per_filter.insert(crate::http::filters::cors::legacy(c).map_err(|e| format!("cors.{e}"))?);
    }
    Ok(per_filter)
}

fn compile_per_filter(
    configs: &HashMap<String, legate_api::pb::google::protobuf::Any>,
    rate_limits: &[rpb::RateLimit],
) -> Result<PerFilter, String> {
    let rate_limits = rate_limits
        .iter()
        .enumerate()
        .map(|(i, r)| DescriptorPolicy::compile(r).map_err(|e| format!("rate_limits[{i}].{e}")))
        .collect::<Result<_, _>>()?;
    let mut out = PerFilter::new(rate_limits);
    for (name, any) in configs {
        out.insert(crate::http::filters::registry::compile_per_route(name, any)?);
    }
    Ok(out)
}

pub struct Route {
    pub name: String,
    path: PathMatch,
    case_sensitive: bool,
    headers: Vec<HeaderMatch>,
    query: Vec<QueryMatch>,
    /// `match.grpc`: only gRPC requests (by their content type) match.
    grpc: bool,
    /// `match.runtime_fraction`: the share of requests the route matches.
    runtime_fraction: Option<crate::common::runtime::RuntimeFraction>,
    pub action: Action,
    pub request_headers: HeaderMutations,
    pub response_headers: HeaderMutations,
    pub per_filter: PerFilter,
    /// `decorator`: the span's operation name, and whether it is passed on
    /// in `x-envoy-decorator-operation`.
    pub decorator: Option<Decorator>,
    /// `stat_prefix`: `vhost.<vh>.route.<stat_prefix>.*`.
    pub stats: Option<std::sync::Arc<virtual_cluster::VirtualClusterStats>>,
}

pub struct Decorator {
    pub operation: String,
    pub propagate: bool,
}

enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Regex),
    SeparatedPrefix(String),
    /// `connect_matcher`: CONNECT requests (and only those), whatever their path.
    Connect,
}

struct QueryMatch {
    name: String,
    test: Option<StringMatch>,
    present: bool,
}

pub enum Action {
    Forward(Box<RouteAction>),
    Redirect(Box<Redirect>),
    Direct { status: u16, body: Option<Bytes> },
}

pub enum ClusterChoice {
    Name(String),
    Header(http::HeaderName),
    /// (name, weight), with the total of weights, and where the value that
    /// picks among them comes from.
    Weighted(Vec<(String, u32)>, u64, WeightedValue),
    /// `inline_cluster_specifier_plugin`: a script names it.
    Plugin(std::sync::Arc<cluster_specifier::ClusterSpecifier>),
}

/// Where a weighted pick's value comes from (Envoy's `random_value_specifier`):
/// a random number, a request header holding an unsigned number
/// (`header_name`), or the route's `hash_policy` (`use_hash_policy`); the
/// last two fall back to a random number when the request gives none.
pub enum WeightedValue {
    Random,
    Header(http::HeaderName),
    HashPolicy,
}

pub struct RouteAction {
    pub cluster: ClusterChoice,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    /// `path_rewrite`: the whole path (not the query), a substitution
    /// format rendered on the request as the router sends it.
    pub path_rewrite: Option<crate::common::format::Format>,
    pub host_rewrite: Option<HostRewrite>,
    pub auto_host_rewrite: bool,
    /// `append_x_forwarded_host`: a rewritten host keeps the request's in
    /// `x-forwarded-host`.
    pub append_x_forwarded_host: bool,
    /// `cluster_not_found_response_code`: the status when the route names
    /// a cluster that does not exist (503 unless set).
    pub cluster_not_found_status: u16,
    /// `None` disables the timeout (Envoy: `timeout: 0s`).
    pub timeout: Option<Duration>,
    /// `max_stream_duration` and the deprecated gRPC timeouts.
    pub stream_timeouts: stream_timeouts::StreamTimeouts,
    pub retry: Option<crate::http::router::retry::RetryPolicy>,
    /// `hash_policy`, for RING_HASH and MAGLEV clusters.
    pub hash_policy: Vec<hash_policy::HashPolicy>,
    /// `request_mirror_policies`: copies of the request sent to these clusters.
    pub mirrors: Vec<Mirror>,
    /// `idle_timeout`: replaces the connection manager's stream idle timeout
    /// for this route (`Some(None)`: turned off with 0s).
    pub idle_timeout: Option<Option<Duration>>,
    /// `upgrade_configs`: per-route overrides of the connection manager's
    /// upgrade settings, by lowercased upgrade type. A handful at most: a
    /// linear scan.
    pub upgrades: Vec<RouteUpgrade>,
}

/// One `RouteAction.upgrade_configs` entry.
#[derive(Debug, Clone)]
pub struct RouteUpgrade {
    /// The upgrade type, lowercased (`websocket`, `connect`).
    pub kind: String,
    pub enabled: bool,
    /// `connect_config` is set: Legate terminates the CONNECT and tunnels
    /// raw bytes to the upstream host.
    pub terminate_connect: bool,
}

/// Where a route's new upstream host comes from.
pub enum HostRewrite {
    /// `host_rewrite_literal`.
    Literal(String),
    /// `host_rewrite_header`: the named request header's value, when the
    /// request has a non-empty one.
    Header(http::HeaderName),
    /// `host_rewrite_path_regex`: the path (without its query) with the
    /// pattern's matches substituted.
    PathRegex(Regex, String),
}

pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u32>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub strip_query: bool,
    pub status: u16,
}

/// Envoy's default route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

impl RouteTable {
    /// `store` holds the virtual clusters' stats.
    pub fn compile(rc: &rpb::RouteConfiguration, store: &std::sync::Arc<crate::stats::Store>) -> Result<Self, String> {
        let mut exact = HashMap::new();
        let mut suffixes = Vec::new();
        let mut prefixes = Vec::new();
        let mut any = None;
        let mut vhosts = Vec::new();
        for (i, vh) in rc.virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                let d = d.to_ascii_lowercase();
                let dup = if d == "*" {
                    any.replace(i).is_some()
                } else if let Some(s) = d.strip_prefix('*') {
                    suffixes.push((s.to_string(), i));
                    false
                } else if let Some(p) = d.strip_suffix('*') {
                    prefixes.push((p.to_string(), i));
                    false
                } else {
                    exact.insert(d.clone(), i).is_some()
                };
                if dup {
                    return Err(format!(
                        "Only unique values for domains are permitted. Duplicate entry of domain {d} in route {}",
                        rc.name
                    ));
                }
            }
            vhosts.push(compile_vhost(vh, store).map_err(|e| format!("virtual_hosts[{i}]: {e}"))?);
        }
        // Longest wildcard first; among equals, the first declared.
        suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        Ok(Self {
            name: rc.name.clone(),
            exact,
            suffixes,
            prefixes,
            any,
            vhosts,
            request_headers: HeaderMutations::new(&rc.request_headers_to_add, &rc.request_headers_to_remove)?,
            response_headers: HeaderMutations::new(&rc.response_headers_to_add, &rc.response_headers_to_remove)?,
            most_specific_wins: rc.most_specific_header_mutations_wins,
        })
    }

    /// The virtual host for a `:authority`, as Envoy picks it: exact, then the
    /// longest `*suffix`, then the longest `prefix*`, then `*`.
    pub fn find_vhost(&self, authority: &str) -> Option<&VirtualHost> {
        let lowered;
        let host = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = authority.to_ascii_lowercase();
            lowered.as_str()
        } else {
            authority
        };
        if let Some(i) = self.exact.get(host) {
            return Some(&self.vhosts[*i]);
        }
        for (s, i) in &self.suffixes {
            // The wildcard stands for at least one character.
            if host.len() > s.len() && host.ends_with(s.as_str()) {
                return Some(&self.vhosts[*i]);
            }
        }
        for (p, i) in &self.prefixes {
            if host.len() > p.len() && host.starts_with(p.as_str()) {
                return Some(&self.vhosts[*i]);
            }
        }
        self.any.map(|i| &self.vhosts[i])
    }

    /// The first route of the matching virtual host that matches the request.
    pub fn route(
        &self,
        authority: &str,
        path_and_query: &str,
        headers: &http::HeaderMap,
        method: &str,
        scheme: &str,
    ) -> Option<(&VirtualHost, &Route)> {
        let vh = self.find_vhost(authority)?;
        let pseudo = Pseudo { method, path: path_and_query, authority, scheme };
        let r = vh.routes.iter().find(|r| r.matches(path_and_query, headers, &pseudo))?;
        Some((vh, r))
    }
}

#[allow(deprecated)] // Envoy 1.40 still honours the deprecated `cors` field, so Legate reads it.
fn compile_vhost(vh: &rpb::VirtualHost, store: &std::sync::Arc<crate::stats::Store>) -> Result<VirtualHost, String> {
    // Envoy's `buildRetryPolicy`: a route's own `retry_policy` wins whole;
    // a route without one takes the virtual host's (fields are not merged).
    let vh_retry = vh
        .retry_policy
        .as_ref()
        .map(|p| crate::http::router::retry::RetryPolicy::compile(p).map_err(|e| format!("retry_policy.{e}")))
        .transpose()?;
    let routes = vh
        .routes
        .iter()
        .enumerate()
        .map(|(i, r)| compile_route(r, &vh.name, vh_retry.as_ref(), store).map_err(|e| format!("routes[{i}]: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(VirtualHost {
        name: vh.name.clone(),
        routes,
        request_headers: HeaderMutations::new(&vh.request_headers_to_add, &vh.request_headers_to_remove)?,
        response_headers: HeaderMutations::new(&vh.response_headers_to_add, &vh.response_headers_to_remove)?,
        require_tls: vh.require_tls,
        attempt_count_upstream: vh.include_request_attempt_count,
        attempt_count_response: vh.include_attempt_count_in_response,
        per_filter: with_legacy_cors(
            compile_per_filter(&vh.typed_per_filter_config, &vh.rate_limits)?,
            vh.cors.as_ref(),
        )?,
        virtual_clusters: virtual_cluster::VirtualClusters::compile(vh, store)?,
    })
}

#[allow(deprecated)] // Envoy 1.40 still honours the deprecated `cors` field, so Legate reads it.
fn compile_route(
    r: &rpb::Route,
    vh: &str,
    vh_retry: Option<&crate::http::router::retry::RetryPolicy>,
    store: &std::sync::Arc<crate::stats::Store>,
) -> Result<Route, String> {
    use rpb::route_match::PathSpecifier;
    let m = r.r#match.as_ref().ok_or("match is required")?;
    let case_sensitive = m.case_sensitive.map(|b| b.value).unwrap_or(true);
    let fold = |s: &String| if case_sensitive { s.clone() } else { s.to_ascii_lowercase() };
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(fold(p)),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(fold(p)),
        Some(PathSpecifier::SafeRegex(re)) => PathMatch::Regex(compile_regex(re)?),
        Some(PathSpecifier::PathSeparatedPrefix(p)) => PathMatch::SeparatedPrefix(fold(p)),
        Some(PathSpecifier::ConnectMatcher(_)) => PathMatch::Connect,
        Some(_) => return Err("this path specifier is not supported".into()),
        None => return Err("path specifier is required".into()),
    };
    let headers = m.headers.iter().map(HeaderMatch::new).collect::<Result<_, _>>()?;
    let query = m
        .query_parameters
        .iter()
        .map(|q| {
            use rpb::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
            Ok(match &q.query_parameter_match_specifier {
                Some(Q::StringMatch(sm)) => {
                    QueryMatch { name: q.name.clone(), test: Some(StringMatch::new(sm)?), present: true }
                }
                Some(Q::PresentMatch(p)) => QueryMatch { name: q.name.clone(), test: None, present: *p },
                None => QueryMatch { name: q.name.clone(), test: None, present: true },
            })
        })
        .collect::<Result<_, String>>()?;
    let action = match &r.action {
        Some(rpb::route::Action::Route(ra)) => {
            let mut action = compile_route_action(ra)?;
            if action.retry.is_none() {
                action.retry = vh_retry.cloned();
            }
            Action::Forward(Box::new(action))
        }
        Some(rpb::route::Action::Redirect(rd)) => Action::Redirect(Box::new(compile_redirect(rd)?)),
        Some(rpb::route::Action::DirectResponse(dr)) => {
            let status = u16::try_from(dr.status).map_err(|_| "invalid status")?;
            let body = match &dr.body {
                Some(ds) => Some(crate::common::datasource::read(ds)?),
                None => None,
            };
            Action::Direct { status, body }
        }
        Some(_) => return Err("this route action is not supported".into()),
        None => return Err("route action is required".into()),
    };
    let decorator = r
        .decorator
        .as_ref()
        .map(|d| Decorator { operation: d.operation.clone(), propagate: d.propagate.is_none_or(|b| b.value) });
    let stats = (!r.stat_prefix.is_empty())
        .then(|| virtual_cluster::VirtualClusterStats::new(store, format!("vhost.{vh}.route.{}.", r.stat_prefix)));
    Ok(Route {
        decorator,
        stats,
        name: r.name.clone(),
        path,
        grpc: m.grpc.is_some(),
        runtime_fraction: m.runtime_fraction.as_ref().map(crate::common::runtime::RuntimeFraction::new),
        case_sensitive,
        headers,
        query,
        action,
        request_headers: HeaderMutations::new(&r.request_headers_to_add, &r.request_headers_to_remove)?,
        response_headers: HeaderMutations::new(&r.response_headers_to_add, &r.response_headers_to_remove)?,
        per_filter: with_legacy_cors(
            compile_per_filter(
                &r.typed_per_filter_config,
                match &r.action {
                    Some(rpb::route::Action::Route(ra)) => &ra.rate_limits[..],
                    _ => &[][..],
                },
            )?,
            match &r.action {
                Some(rpb::route::Action::Route(ra)) => ra.cors.as_ref(),
                _ => None,
            },
        )
        .map_err(|e| format!("route.{e}"))
        .map(|mut p| {
            p.set_metadata(r.metadata.as_ref());
            p
        })?,
    })
}

fn compile_route_action(ra: &rpb::RouteAction) -> Result<RouteAction, String> {
    use rpb::route_action::ClusterSpecifier;
    let cluster = match &ra.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => ClusterChoice::Name(c.clone()),
        Some(ClusterSpecifier::ClusterHeader(h)) => ClusterChoice::Header(
            http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("invalid header '{h}'"))?,
        ),
        Some(ClusterSpecifier::WeightedClusters(wc)) => {
            let list: Vec<(String, u32)> =
                wc.clusters.iter().map(|c| (c.name.clone(), c.weight.map(|w| w.value).unwrap_or(0))).collect();
            let total: u64 = list.iter().map(|(_, w)| *w as u64).sum();
            if total == 0 {
                return Err("weighted_clusters: the sum of weights must be greater than 0".into());
            }
            use rpb::weighted_cluster::RandomValueSpecifier;
            let from = match &wc.random_value_specifier {
                Some(RandomValueSpecifier::HeaderName(h)) => WeightedValue::Header(
                    http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                        .map_err(|_| format!("weighted_clusters.header_name: invalid header '{h}'"))?,
                ),
                Some(RandomValueSpecifier::UseHashPolicy(b)) if b.value => WeightedValue::HashPolicy,
                _ => WeightedValue::Random,
            };
            ClusterChoice::Weighted(list, total, from)
        }
        Some(ClusterSpecifier::InlineClusterSpecifierPlugin(p)) => ClusterChoice::Plugin(std::sync::Arc::new(
            cluster_specifier::ClusterSpecifier::compile(p)
                .map_err(|e| format!("inline_cluster_specifier_plugin.{e}"))?,
        )),
        Some(_) => return Err("this cluster specifier is not supported".into()),
        None => return Err("cluster specifier is required".into()),
    };
    let (host_rewrite, auto_host_rewrite) = compile_host_rewrite(ra)?;
    use rpb::route_action::ClusterNotFoundResponseCode;
    let cluster_not_found_status = match ClusterNotFoundResponseCode::try_from(ra.cluster_not_found_response_code) {
        Ok(ClusterNotFoundResponseCode::NotFound) => 404,
        Ok(ClusterNotFoundResponseCode::InternalServerError) => 500,
        _ => 503,
    };
    let regex_rewrite = match &ra.regex_rewrite {
        Some(rr) => Some((
            compile_search_regex(rr.pattern.as_ref().ok_or("regex_rewrite.pattern is required")?)?,
            envoy_subst(&rr.substitution),
        )),
        None => None,
    };
    let timeout = match &ra.timeout {
        Some(d) => Some(legate_api::duration::from_pb(d)).filter(|d| !d.is_zero()),
        None => Some(DEFAULT_ROUTE_TIMEOUT),
    };
    Ok(RouteAction {
        cluster,
        prefix_rewrite: Some(ra.prefix_rewrite.clone()).filter(|p| !p.is_empty()),
        regex_rewrite,
        path_rewrite: Some(ra.path_rewrite.as_str())
            .filter(|p| !p.is_empty())
            .map(|p| crate::common::format::Format::parse(p).map(crate::common::format::Format::for_header))
            .transpose()
            .map_err(|e| format!("path_rewrite: {e}"))?,
        host_rewrite,
        auto_host_rewrite,
        append_x_forwarded_host: ra.append_x_forwarded_host,
        cluster_not_found_status,
        timeout,
        stream_timeouts: stream_timeouts::StreamTimeouts::compile(ra),
        retry: match &ra.retry_policy {
            Some(p) => {
                Some(crate::http::router::retry::RetryPolicy::compile(p).map_err(|e| format!("retry_policy.{e}"))?)
            }
            None => None,
        },
        hash_policy: ra
            .hash_policy
            .iter()
            .enumerate()
            .map(|(i, p)| hash_policy::HashPolicy::compile(p).map_err(|e| format!("hash_policy[{i}]: {e}")))
            .collect::<Result<_, _>>()?,
        idle_timeout: ra.idle_timeout.as_ref().map(|d| Some(legate_api::duration::from_pb(d)).filter(|d| !d.is_zero())),
        upgrades: ra
            .upgrade_configs
            .iter()
            .map(|u| RouteUpgrade {
                kind: u.upgrade_type.to_ascii_lowercase(),
                enabled: u.enabled.is_none_or(|b| b.value),
                terminate_connect: u.connect_config.is_some(),
            })
            .collect(),
        mirrors: mirror_policy::compile(&ra.request_mirror_policies)?,
    })
}

/// A route's host rewrite, and whether it is `auto_host_rewrite`.
fn compile_host_rewrite(ra: &rpb::RouteAction) -> Result<(Option<HostRewrite>, bool), String> {
    use rpb::route_action::HostRewriteSpecifier;
    Ok(match &ra.host_rewrite_specifier {
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => (Some(HostRewrite::Literal(h.clone())), false),
        Some(HostRewriteSpecifier::AutoHostRewrite(b)) => (None, b.value),
        Some(HostRewriteSpecifier::HostRewriteHeader(h)) => (
            Some(HostRewrite::Header(
                http::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("host_rewrite_header: invalid header '{h}'"))?,
            )),
            false,
        ),
        Some(HostRewriteSpecifier::HostRewritePathRegex(rr)) => (
            Some(HostRewrite::PathRegex(
                compile_search_regex(rr.pattern.as_ref().ok_or("host_rewrite_path_regex.pattern is required")?)?,
                envoy_subst(&rr.substitution),
            )),
            false,
        ),
        Some(HostRewriteSpecifier::HostRewrite(_)) => return Err("host_rewrite is not supported".into()),
        None => (None, false),
    })
}

/// Envoy (RE2) writes capture groups as `\1`; the regex crate as `${1}`.
fn compile_redirect(rd: &rpb::RedirectAction) -> Result<Redirect, String> {
    use rpb::redirect_action::{PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier};
    let scheme = match &rd.scheme_rewrite_specifier {
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_string()),
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
        _ => None,
    };
    let (path, prefix_rewrite, regex_rewrite) = match &rd.path_rewrite_specifier {
        Some(PathRewriteSpecifier::PathRedirect(p)) => (Some(p.clone()), None, None),
        Some(PathRewriteSpecifier::PrefixRewrite(p)) => (None, Some(p.clone()), None),
        Some(PathRewriteSpecifier::RegexRewrite(rr)) => (
            None,
            None,
            Some((
                compile_search_regex(rr.pattern.as_ref().ok_or("regex_rewrite.pattern is required")?)?,
                envoy_subst(&rr.substitution),
            )),
        ),
        Some(_) => return Err("this redirect path rewrite is not supported".into()),
        None => (None, None, None),
    };
    let status =
        match RedirectResponseCode::try_from(rd.response_code).unwrap_or(RedirectResponseCode::MovedPermanently) {
            RedirectResponseCode::MovedPermanently => 301,
            RedirectResponseCode::Found => 302,
            RedirectResponseCode::SeeOther => 303,
            RedirectResponseCode::TemporaryRedirect => 307,
            RedirectResponseCode::PermanentRedirect => 308,
        };
    Ok(Redirect {
        scheme,
        host: Some(rd.host_redirect.clone()).filter(|h| !h.is_empty()),
        port: Some(rd.port_redirect).filter(|p| *p != 0),
        path,
        prefix_rewrite,
        regex_rewrite,
        strip_query: rd.strip_query,
        status,
    })
}

impl VirtualHost {
    /// `require_tls`: a request that did not come over TLS (by its
    /// `x-forwarded-proto`, which the connection manager has set) is
    /// redirected, always (ALL) or unless it is internal (EXTERNAL_ONLY).
    pub fn redirects_to_tls(&self, headers: &http::HeaderMap) -> bool {
        use rpb::virtual_host::TlsRequirementType as Tls;
        let secure = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
        let internal = headers.get("x-envoy-internal").is_some_and(|v| v.as_bytes() == b"true");
        match Tls::try_from(self.require_tls) {
            Ok(Tls::All) => !secure,
            Ok(Tls::ExternalOnly) => !secure && !internal,
            _ => false,
        }
    }
}

impl Route {
    fn matches(&self, path_and_query: &str, headers: &http::HeaderMap, pseudo: &Pseudo<'_>) -> bool {
        // A CONNECT request has no path: only `connect_matcher` routes match
        // it, and they match nothing else (Envoy's rule).
        let connect = pseudo.method == "CONNECT";
        if connect || matches!(self.path, PathMatch::Connect) {
            return connect
                && matches!(self.path, PathMatch::Connect)
                && self.headers.iter().all(|h| h.matches(headers, pseudo));
        }
        let (path, query) = match path_and_query.find('?') {
            Some(i) => (&path_and_query[..i], Some(&path_and_query[i + 1..])),
            None => (path_and_query, None),
        };
        let ok = match &self.path {
            // Envoy's prefix match looks at the whole `:path`, query included.
            PathMatch::Prefix(p) => starts_with(path_and_query, p, self.case_sensitive),
            PathMatch::Exact(p) => {
                if self.case_sensitive {
                    path == p
                } else {
                    path.eq_ignore_ascii_case(p)
                }
            }
            PathMatch::Regex(re) => re.is_match(path),
            PathMatch::SeparatedPrefix(p) => {
                starts_with(path, p, self.case_sensitive) && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatch::Connect => false,
        };
        ok && (!self.grpc || stream_timeouts::is_grpc(headers))
            && self.headers.iter().all(|h| h.matches(headers, pseudo))
            && self.query_matches(query)
            && self.runtime_fraction.as_ref().is_none_or(|f| f.roll())
    }

    fn query_matches(&self, query: Option<&str>) -> bool {
        self.query.iter().all(|q| {
            let value = query.and_then(|qs| {
                qs.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == q.name).then_some(v)
                })
            });
            match (&q.test, value) {
                (None, v) => v.is_some() == q.present,
                (Some(_), None) => false,
                (Some(m), Some(v)) => m.matches(v),
            }
        })
    }

    /// The upstream path for a forwarded request (prefix or regex rewrite).
    pub fn rewrite_path(&self, ra: &RouteAction, path_and_query: &str) -> Option<String> {
        if let (Some(new), PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p)) = (&ra.prefix_rewrite, &self.path) {
            return Some(format!("{new}{}", &path_and_query[p.len().min(path_and_query.len())..]));
        }
        if let Some((re, sub)) = &ra.regex_rewrite {
            let (path, query) = split_query(path_and_query);
            return Some(format!("{}{query}", re.replace_all(path, sub.as_str())));
        }
        None
    }

    /// The matched prefix, for redirects with `prefix_rewrite`.
    pub fn prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatch::Prefix(p) | PathMatch::SeparatedPrefix(p) => Some(p),
            _ => None,
        }
    }
}

pub fn split_query(pq: &str) -> (&str, &str) {
    match pq.find('?') {
        Some(i) => (&pq[..i], &pq[i..]),
        None => (pq, ""),
    }
}

fn starts_with(s: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        s.starts_with(prefix)
    } else {
        s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml: &str) -> RouteTable {
        let v = legate_api::load::parse_text(yaml).unwrap();
        let (rc, _) = legate_api::load::decode_typed::<rpb::RouteConfiguration>(v).unwrap();
        RouteTable::compile(&rc, &Default::default()).unwrap()
    }

    const TABLE: &str = r#"
name: t
virtual_hosts:
- name: exact
  domains: ["api.example.com"]
  routes:
  - match: { path: "/exact" }
    direct_response: { status: 201 }
  - match: { prefix: "/Pre", case_sensitive: false }
    direct_response: { status: 202 }
  - match: { safe_regex: { regex: "/re/[0-9]+" } }
    direct_response: { status: 203 }
  - match:
      prefix: "/h"
      headers: [{ name: x-v, string_match: { exact: "2" } }]
    direct_response: { status: 204 }
  - match:
      prefix: "/q"
      query_parameters: [{ name: debug, present_match: true }]
    direct_response: { status: 205 }
  - match: { path_separated_prefix: "/sep" }
    direct_response: { status: 206 }
- name: suffix
  domains: ["*.example.com"]
  routes: [{ match: { prefix: "/" }, direct_response: { status: 210 } }]
- name: longer-suffix
  domains: ["*.b.example.com"]
  routes: [{ match: { prefix: "/" }, direct_response: { status: 211 } }]
- name: prefix
  domains: ["internal.*"]
  routes: [{ match: { prefix: "/" }, direct_response: { status: 212 } }]
- name: any
  domains: ["*"]
  routes: [{ match: { prefix: "/" }, direct_response: { status: 213 } }]
"#;

    fn status(t: &RouteTable, host: &str, path: &str, headers: &[(&str, &str)]) -> Option<u16> {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        match &t.route(host, path, &h, "GET", "http")?.1.action {
            Action::Direct { status, .. } => Some(*status),
            _ => None,
        }
    }

    #[test]
    fn virtual_host_selection_follows_envoy_precedence() {
        let t = table(TABLE);
        assert_eq!(status(&t, "API.example.com", "/", &[]), None, "exact vhost has no / route");
        assert_eq!(status(&t, "x.example.com", "/", &[]), Some(210));
        assert_eq!(status(&t, "x.b.example.com", "/", &[]), Some(211), "longest suffix wins");
        assert_eq!(status(&t, "internal.foo", "/", &[]), Some(212));
        assert_eq!(status(&t, "other", "/", &[]), Some(213));
        assert_eq!(status(&t, "example.com", "/", &[]), Some(213), "wildcard needs one character");
    }

    #[test]
    fn path_header_and_query_matches() {
        let t = table(TABLE);
        let h = "api.example.com";
        assert_eq!(status(&t, h, "/exact", &[]), Some(201));
        assert_eq!(status(&t, h, "/exact?x=1", &[]), Some(201), "exact path ignores the query");
        assert_eq!(status(&t, h, "/exact/more", &[]), None);
        assert_eq!(status(&t, h, "/prefix", &[]), Some(202), "case-insensitive prefix");
        assert_eq!(status(&t, h, "/re/12", &[]), Some(203));
        assert_eq!(status(&t, h, "/re/12x", &[]), None, "regex must match the whole path");
        assert_eq!(status(&t, h, "/h", &[("x-v", "2")]), Some(204));
        assert_eq!(status(&t, h, "/h", &[("x-v", "3")]), None);
        assert_eq!(status(&t, h, "/q?debug=1", &[]), Some(205));
        assert_eq!(status(&t, h, "/q", &[]), None);
        assert_eq!(status(&t, h, "/sep", &[]), Some(206));
        assert_eq!(status(&t, h, "/sep/x", &[]), Some(206));
        assert_eq!(status(&t, h, "/separate", &[]), None);
    }

    #[test]
    fn connect_matches_only_connect_matcher_routes() {
        let t = table(
            r#"
name: t
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: { prefix: "/" , headers: [{ name: x-only-get, present_match: true }] }
    direct_response: { status: 201 }
  - match: { connect_matcher: {} }
    route: { cluster: c, upgrade_configs: [{ upgrade_type: CONNECT, connect_config: {} }, { upgrade_type: WebSocket, enabled: false }] }
  - match: { prefix: "" }
    direct_response: { status: 202 }
"#,
        );
        let h = http::HeaderMap::new();
        let name = |method: &str, path: &str| t.route("example.com:443", path, &h, method, "http").map(|(_, r)| r);
        // CONNECT skips the catch-all prefix routes and takes the connect_matcher one.
        let r = name("CONNECT", "").expect("a CONNECT route");
        let Action::Forward(ra) = &r.action else { panic!("forward") };
        assert_eq!(ra.upgrades.len(), 2);
        assert!(ra.upgrades[0].kind == "connect" && ra.upgrades[0].enabled && ra.upgrades[0].terminate_connect);
        assert!(ra.upgrades[1].kind == "websocket" && !ra.upgrades[1].enabled && !ra.upgrades[1].terminate_connect);
        // Other methods never match connect_matcher.
        assert!(matches!(name("GET", "/").map(|r| &r.action), Some(Action::Direct { status: 202, .. })));
    }

    #[test]
    fn regex_substitution_uses_envoy_syntax() {
        assert_eq!(envoy_subst(r"/v\1/$x"), "/v${1}/$$x");
    }
}
