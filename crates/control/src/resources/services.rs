//! Higher-level kinds that compile to Envoy resources, so a mesh can be run
//! without writing Envoy YAML:
//!
//! - `Service`: how to reach a service (endpoints listed, from DNS, or from the
//!   registry), its protocol, load balancing, named subsets by label, and its
//!   resilience: active health checks, outlier detection, circuit breakers,
//!   and the retries routes to it use. Compiles to a Cluster and a
//!   ClusterLoadAssignment, plus one pair per subset (`<service>.<subset>`).
//! - `Gateway`: a listener address with hosts and routes to services or
//!   weighted subsets, redirects, rewrites, header changes and direct
//!   responses. Compiles to a Listener and a RouteConfiguration named
//!   `gateway.<name>`; a TCP gateway (`tcp: <service>`) compiles to a
//!   Listener with tcp_proxy to a `protocol: tcp` service.
//!
//! The compiled resources go through the same Envoy loader as everything else.

use crate::discovery::registry::Instance;
use crate::resources::document::{Document, Metadata, NodeSelector};
use crate::resources::kind::Kind;
use crate::resources::resource::{content_hash, Resource, ResourceMap};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Http2,
    Grpc,
    /// Plain TCP: reached through a Gateway's `tcp`, not HTTP routes.
    Tcp,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lb {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSpec {
    pub hostname: String,
    pub port: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default)]
    pub protocol: Protocol,
    /// A static list; with neither this nor `dns`, the registry's instances.
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub dns: Option<DnsSpec>,
    #[serde(default)]
    pub lb: Lb,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    /// Named subsets: endpoints whose labels include these.
    #[serde(default)]
    pub subsets: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub health_check: Option<HealthCheckSpec>,
    #[serde(default)]
    pub outlier_detection: Option<OutlierSpec>,
    #[serde(default)]
    pub circuit_breakers: Option<BreakerSpec>,
    /// Retries for routes to this service (a route's own `retries` wins).
    #[serde(default)]
    pub retries: Option<RetrySpec>,
}

/// Active health checking: HTTP when `path` is set, gRPC with `grpc`,
/// otherwise a TCP connect. Checks keep their `interval` even before the
/// service has traffic (Envoy's default would wait a minute).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub grpc: bool,
    #[serde(default = "default_hc_interval")]
    pub interval: String,
    #[serde(default = "default_hc_timeout")]
    pub timeout: String,
    #[serde(default = "two")]
    pub unhealthy_threshold: u32,
    #[serde(default = "one")]
    pub healthy_threshold: u32,
}

fn default_hc_interval() -> String {
    "5s".into()
}

fn default_hc_timeout() -> String {
    "1s".into()
}

fn two() -> u32 {
    2
}

/// Outlier detection; what is left out keeps Envoy's default.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_5xx: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_failure: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
}

/// Circuit breakers at the default priority; left out: Envoy's defaults.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// A retry policy: `on` is Envoy's `retry_on`; retries go to other hosts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    #[serde(default = "default_retry_on")]
    pub on: String,
    #[serde(default = "two")]
    pub attempts: u32,
    #[serde(default)]
    pub per_try_timeout: Option<String>,
}

fn default_retry_on() -> String {
    "5xx,connect-failure,reset".into()
}

impl RetrySpec {
    fn envoy(&self) -> Value {
        let mut p = json!({
            "retry_on": self.on,
            "num_retries": self.attempts,
            "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
            "host_selection_retry_max_attempts": 3,
        });
        if let Some(t) = &self.per_try_timeout {
            p["per_try_timeout"] = json!(t);
        }
        p
    }
}

impl ServiceSpec {
    /// The cluster fields for health checks, outlier detection and breakers.
    fn resilience(&self, cluster: &mut Value) {
        if let Some(h) = &self.health_check {
            let mut hc = json!({
                "interval": h.interval,
                "no_traffic_interval": h.interval,
                "timeout": h.timeout,
                "unhealthy_threshold": h.unhealthy_threshold,
                "healthy_threshold": h.healthy_threshold,
            });
            match (&h.path, h.grpc) {
                (Some(path), _) => hc["http_health_check"] = json!({"path": path}),
                (None, true) => hc["grpc_health_check"] = json!({}),
                (None, false) => hc["tcp_health_check"] = json!({}),
            }
            cluster["health_checks"] = json!([hc]);
        }
        if let Some(o) = &self.outlier_detection {
            cluster["outlier_detection"] = serde_json::to_value(o).unwrap_or_else(|_| json!({}));
        }
        if let Some(b) = &self.circuit_breakers {
            cluster["circuit_breakers"] =
                json!({"thresholds": [serde_json::to_value(b).unwrap_or_else(|_| json!({}))]});
        }
    }
}

fn default_connect_timeout() -> String {
    "1s".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    /// Exact header values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Exact query parameter values.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub service: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectSpec {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub https: bool,
    /// 301 (default), 302, 303, 307 or 308.
    #[serde(default)]
    pub code: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectSpec {
    pub status: u16,
    #[serde(default)]
    pub body: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    #[serde(rename = "match")]
    pub matches: MatchSpec,
    #[serde(default)]
    pub to: Vec<Target>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
    #[serde(default)]
    pub redirect: Option<RedirectSpec>,
    #[serde(default)]
    pub direct_response: Option<DirectSpec>,
    #[serde(default)]
    pub request_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    /// Retries for this route, instead of its service's.
    #[serde(default)]
    pub retries: Option<RetrySpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySpec {
    #[serde(default = "default_address")]
    pub address: String,
    pub port: u16,
    #[serde(default = "any_host")]
    pub hosts: Vec<String>,
    /// Routes for `hosts`; more virtual hosts come from `Route` resources.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// A TCP gateway: every connection goes to this (tcp) service, instead of
    /// HTTP routes.
    #[serde(default)]
    pub tcp: Option<String>,
}

/// `Route`: a virtual host (its hosts and routes) attached to a Gateway.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteKindSpec {
    pub gateway: String,
    pub hosts: Vec<String>,
    pub routes: Vec<RouteSpec>,
}

fn default_address() -> String {
    "0.0.0.0".into()
}

fn any_host() -> Vec<String> {
    vec!["*".into()]
}

type Problems = Vec<(String, String)>;

fn check_routes(routes: &[RouteSpec]) -> Problems {
    let mut p = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let actions =
            [!r.to.is_empty(), r.redirect.is_some(), r.direct_response.is_some()].iter().filter(|x| **x).count();
        if actions != 1 {
            p.push((format!("spec.routes[{i}]"), "needs exactly one of to, redirect, direct_response".into()));
        }
        let m = &r.matches;
        if [m.prefix.is_some(), m.path.is_some(), m.regex.is_some()].iter().filter(|x| **x).count() != 1 {
            p.push((format!("spec.routes[{i}].match"), "needs exactly one of prefix, path, regex".into()));
        }
    }
    p
}

fn parse<T: serde::de::DeserializeOwned>(doc: &Document) -> Result<T, Problems> {
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(doc.spec.clone(), &mut track);
    T::deserialize(de).map_err(|e| {
        let p = track.path().to_string();
        vec![(if p == "." { "spec".into() } else { format!("spec.{p}") }, e.to_string())]
    })
}

/// Checks a Service or Gateway document on its own (shape and values).
pub fn check(kind: Kind, doc: &Document) -> Result<Resource, Problems> {
    match kind {
        Kind::Service => {
            let s: ServiceSpec = parse(doc)?;
            let mut p = Vec::new();
            if s.dns.is_some() && !s.endpoints.is_empty() {
                p.push(("spec.dns".into(), "use either endpoints or dns, not both".into()));
            }
            for (i, e) in s.endpoints.iter().enumerate() {
                if e.address.parse::<std::net::IpAddr>().is_err() {
                    p.push((format!("spec.endpoints[{i}].address"), format!("'{}' is not an IP address", e.address)));
                }
            }
            if !p.is_empty() {
                return Err(p);
            }
        }
        Kind::Gateway => {
            let g: GatewaySpec = parse(doc)?;
            let mut p = check_routes(&g.routes);
            if g.tcp.is_some() && !g.routes.is_empty() {
                p.push(("spec.tcp".into(), "a gateway has either routes or tcp, not both".into()));
            }
            if g.address.parse::<std::net::IpAddr>().is_err() {
                p.push(("spec.address".into(), format!("'{}' is not an IP address", g.address)));
            }
            if !p.is_empty() {
                return Err(p);
            }
        }
        Kind::Route => {
            let r: RouteKindSpec = parse(doc)?;
            let mut p = check_routes(&r.routes);
            if r.hosts.is_empty() {
                p.push(("spec.hosts".into(), "at least one host is required".into()));
            }
            if !p.is_empty() {
                return Err(p);
            }
        }
        _ => return Err(vec![("kind".into(), "not a higher-level kind".into())]),
    }
    let version = content_hash(serde_json::to_vec(&doc.spec).unwrap_or_default().as_slice());
    Ok(Resource {
        kind,
        name: doc.metadata.name.clone(),
        nodes: doc.metadata.nodes.clone(),
        doc: doc.clone(),
        any: Default::default(),
        version,
    })
}

fn envoy_doc(kind: &str, name: &str, nodes: &NodeSelector, spec: Value) -> Document {
    Document { kind: kind.into(), metadata: Metadata { name: name.into(), nodes: nodes.clone() }, spec }
}

fn ads() -> Value {
    json!({"ads": {}, "resource_api_version": "V3"})
}

fn lb_policy(lb: Lb) -> &'static str {
    match lb {
        Lb::RoundRobin => "ROUND_ROBIN",
        Lb::LeastRequest => "LEAST_REQUEST",
        Lb::Random => "RANDOM",
    }
}

/// The Envoy documents the higher-level resources in `resources` stand for, and
/// the problems found in their references (`(resource, path, reason)`).
pub fn generate(resources: &ResourceMap, instances: &[Instance]) -> (Vec<Document>, Vec<(String, String, String)>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut services: BTreeMap<String, ServiceSpec> = BTreeMap::new();
    for ((kind, name), r) in resources {
        if *kind != Kind::Service {
            continue;
        }
        let Ok(s) = parse::<ServiceSpec>(&r.doc) else { continue };
        let endpoints: Vec<(String, u16, BTreeMap<String, String>)> = if !s.endpoints.is_empty() {
            s.endpoints.iter().map(|e| (e.address.clone(), e.port, e.labels.clone())).collect()
        } else {
            instances
                .iter()
                .filter(|i| i.service == *name)
                .map(|i| (i.address.clone(), i.port, i.labels.clone()))
                .collect()
        };
        if !s.endpoints.is_empty() {
            for (subset, labels) in &s.subsets {
                if !endpoints.iter().any(|(_, _, l)| labels.iter().all(|(k, v)| l.get(k) == Some(v))) {
                    problems.push((
                        format!("Service/{name}"),
                        format!("spec.subsets.{subset}"),
                        format!("no endpoint has the labels of subset '{subset}'"),
                    ));
                }
            }
        }
        let mut groups: Vec<(String, Option<&BTreeMap<String, String>>)> = vec![(name.clone(), None)];
        for (subset, labels) in &s.subsets {
            groups.push((format!("{name}.{subset}"), Some(labels)));
        }
        for (cluster_name, selector) in groups {
            let mut cluster = json!({
                "name": cluster_name,
                "connect_timeout": s.connect_timeout,
                "lb_policy": lb_policy(s.lb),
            });
            s.resilience(&mut cluster);
            if matches!(s.protocol, Protocol::Http2 | Protocol::Grpc) {
                cluster["typed_extension_protocol_options"] = json!({
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                });
            }
            match &s.dns {
                Some(d) => {
                    cluster["type"] = json!("STRICT_DNS");
                    cluster["load_assignment"] = json!({"cluster_name": cluster_name, "endpoints": [{"lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": d.hostname, "port_value": d.port}}}}
                    ]}]});
                }
                None => {
                    cluster["type"] = json!("EDS");
                    cluster["eds_cluster_config"] = json!({"eds_config": ads()});
                    let eps: Vec<Value> = endpoints
                        .iter()
                        .filter(|(_, _, labels)| selector.is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v))))
                        .map(|(a, p, _)| json!({"endpoint": {"address": {"socket_address": {"address": a, "port_value": p}}}}))
                        .collect();
                    out.push(envoy_doc(
                        "ClusterLoadAssignment",
                        &cluster_name,
                        &r.nodes,
                        json!({"cluster_name": cluster_name, "endpoints": [{"lb_endpoints": eps}]}),
                    ));
                }
            }
            out.push(envoy_doc("Cluster", &cluster_name, &r.nodes, cluster));
        }
        services.insert(name.clone(), s);
    }
    let mut addresses: BTreeMap<(String, u16), String> = BTreeMap::new();
    for ((kind, name), r) in resources {
        if *kind != Kind::Gateway {
            continue;
        }
        let Ok(g) = parse::<GatewaySpec>(&r.doc) else { continue };
        let label = format!("Gateway/{name}");
        if let Some(other) = addresses.insert((g.address.clone(), g.port), name.clone()) {
            problems.push((
                label.clone(),
                "spec.port".into(),
                format!("{}:{} is used by both Gateway/{other} and Gateway/{name}", g.address, g.port),
            ));
        }
        let gw = format!("gateway.{name}");
        if let Some(svc) = &g.tcp {
            match services.get(svc) {
                None => problems.push((label.clone(), "spec.tcp".into(), format!("unknown service '{svc}'"))),
                Some(spec) if spec.protocol != Protocol::Tcp => {
                    problems.push((label.clone(), "spec.tcp".into(), format!("service '{svc}' is not a tcp service")))
                }
                Some(_) => {}
            }
            out.push(envoy_doc(
                "Listener",
                &gw,
                &r.nodes,
                json!({
                    "name": gw,
                    "address": {"socket_address": {"address": g.address, "port_value": g.port}},
                    "filter_chains": [{"filters": [{
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                            "stat_prefix": gw.replace('.', "_"),
                            "cluster": svc
                        }
                    }]}]
                }),
            ));
            continue;
        }
        let mut vhosts = Vec::new();
        let mut domains: BTreeMap<String, String> = BTreeMap::new();
        let mut add_vhost = |vh_name: &str,
                             owner: &str,
                             hosts: &[String],
                             routes: Vec<Value>,
                             problems: &mut Vec<(String, String, String)>| {
            for h in hosts {
                if let Some(other) = domains.insert(h.clone(), owner.to_string()) {
                    problems.push((
                        owner.to_string(),
                        "spec.hosts".into(),
                        format!("host '{h}' is already served by {other} on Gateway/{name}"),
                    ));
                }
            }
            vhosts.push(json!({"name": vh_name, "domains": hosts, "routes": routes}));
        };
        if !g.routes.is_empty() {
            let routes = compile_routes(&label, &g.routes, &services, &mut problems);
            add_vhost(name, &label, &g.hosts, routes, &mut problems);
        }
        for ((rk, rname), rr) in resources {
            if *rk != Kind::Route {
                continue;
            }
            let Ok(spec) = parse::<RouteKindSpec>(&rr.doc) else { continue };
            if spec.gateway != *name {
                continue;
            }
            let rlabel = format!("Route/{rname}");
            let routes = compile_routes(&rlabel, &spec.routes, &services, &mut problems);
            add_vhost(rname, &rlabel, &spec.hosts, routes, &mut problems);
        }
        out.push(envoy_doc("RouteConfiguration", &gw, &r.nodes, json!({"name": gw, "virtual_hosts": vhosts})));
        out.push(envoy_doc(
            "Listener",
            &gw,
            &r.nodes,
            json!({
                "name": gw,
                "address": {"socket_address": {"address": g.address, "port_value": g.port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": gw.replace('.', "_"),
                        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                        "rds": {"route_config_name": gw, "config_source": ads()}
                    }
                }]}]
            }),
        ));
    }
    let gateways: std::collections::BTreeSet<&String> =
        resources.keys().filter(|(k, _)| *k == Kind::Gateway).map(|(_, n)| n).collect();
    let tcp_gateways: std::collections::BTreeSet<&String> = resources
        .iter()
        .filter(|((k, _), r)| *k == Kind::Gateway && parse::<GatewaySpec>(&r.doc).is_ok_and(|g| g.tcp.is_some()))
        .map(|((_, n), _)| n)
        .collect();
    for ((kind, name), r) in resources {
        if *kind != Kind::Route {
            continue;
        }
        if let Ok(spec) = parse::<RouteKindSpec>(&r.doc) {
            if !gateways.contains(&spec.gateway) {
                problems.push((
                    format!("Route/{name}"),
                    "spec.gateway".into(),
                    format!("unknown gateway '{}'", spec.gateway),
                ));
            } else if tcp_gateways.contains(&spec.gateway) {
                problems.push((
                    format!("Route/{name}"),
                    "spec.gateway".into(),
                    format!("gateway '{}' is a tcp gateway: it has no HTTP routes", spec.gateway),
                ));
            }
        }
    }
    (out, problems)
}

/// Envoy routes for a list of route specs; reference problems are collected
/// under `label` (the Gateway or Route they came from).
fn compile_routes(
    label: &str,
    routes: &[RouteSpec],
    services: &BTreeMap<String, ServiceSpec>,
    problems: &mut Vec<(String, String, String)>,
) -> Vec<Value> {
    let mut out = Vec::new();
    for (i, rt) in routes.iter().enumerate() {
        let mut m = json!({});
        if let Some(p) = &rt.matches.prefix {
            m["prefix"] = json!(p);
        } else if let Some(p) = &rt.matches.path {
            m["path"] = json!(p);
        } else if let Some(p) = &rt.matches.regex {
            m["safe_regex"] = json!({"regex": p});
        }
        if !rt.matches.headers.is_empty() {
            m["headers"] = json!(rt
                .matches
                .headers
                .iter()
                .map(|(k, v)| json!({"name": k, "string_match": {"exact": v}}))
                .collect::<Vec<_>>());
        }
        if !rt.matches.query.is_empty() {
            m["query_parameters"] = json!(rt
                .matches
                .query
                .iter()
                .map(|(k, v)| json!({"name": k, "string_match": {"exact": v}}))
                .collect::<Vec<_>>());
        }
        let mut route = json!({"match": m});
        if let Some(d) = &rt.direct_response {
            route["direct_response"] = match &d.body {
                Some(b) => json!({"status": d.status, "body": {"inline_string": b}}),
                None => json!({"status": d.status}),
            };
        } else if let Some(rd) = &rt.redirect {
            let mut r2 = json!({});
            if let Some(h) = &rd.host {
                r2["host_redirect"] = json!(h);
            }
            if let Some(p) = &rd.path {
                r2["path_redirect"] = json!(p);
            }
            if rd.https {
                r2["https_redirect"] = json!(true);
            }
            r2["response_code"] = json!(match rd.code.unwrap_or(301) {
                302 => "FOUND",
                303 => "SEE_OTHER",
                307 => "TEMPORARY_REDIRECT",
                308 => "PERMANENT_REDIRECT",
                _ => "MOVED_PERMANENTLY",
            });
            route["redirect"] = r2;
        } else {
            let mut clusters = Vec::new();
            for (t_i, t) in rt.to.iter().enumerate() {
                let path = format!("spec.routes[{i}].to[{t_i}]");
                let Some(svc) = services.get(&t.service) else {
                    problems.push((
                        label.to_string(),
                        format!("{path}.service"),
                        format!("unknown service '{}'", t.service),
                    ));
                    continue;
                };
                if svc.protocol == Protocol::Tcp {
                    problems.push((
                        label.to_string(),
                        format!("{path}.service"),
                        format!("service '{}' is tcp: reach it through a Gateway's spec.tcp", t.service),
                    ));
                    continue;
                }
                let cluster = match &t.subset {
                    Some(sub) if !svc.subsets.contains_key(sub) => {
                        problems.push((
                            label.to_string(),
                            format!("{path}.subset"),
                            format!("service '{}' has no subset '{sub}'", t.service),
                        ));
                        continue;
                    }
                    Some(sub) => format!("{}.{sub}", t.service),
                    None => t.service.clone(),
                };
                clusters.push((cluster, t.weight));
            }
            let mut action = match clusters.as_slice() {
                [(c, _)] => json!({"cluster": c}),
                many => {
                    json!({"weighted_clusters": {"clusters": many.iter().map(|(c, w)| json!({"name": c, "weight": w})).collect::<Vec<_>>()}})
                }
            };
            if let Some(t) = &rt.timeout {
                action["timeout"] = json!(t);
            }
            if let Some(p) = &rt.prefix_rewrite {
                action["prefix_rewrite"] = json!(p);
            }
            // The route's retries, or those of the one service it goes to.
            let mut targets = rt.to.iter().map(|t| t.service.as_str()).collect::<Vec<_>>();
            targets.dedup();
            let service_retries = match targets.as_slice() {
                [one] => services.get(*one).and_then(|s| s.retries.as_ref()),
                _ => None,
            };
            if let Some(r) = rt.retries.as_ref().or(service_retries) {
                action["retry_policy"] = r.envoy();
            }
            route["route"] = action;
        }
        if !rt.request_headers.is_empty() {
            route["request_headers_to_add"] = json!(rt
                .request_headers
                .iter()
                .map(|(k, v)| json!({"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}))
                .collect::<Vec<_>>());
        }
        if !rt.response_headers.is_empty() {
            route["response_headers_to_add"] = json!(rt
                .response_headers
                .iter()
                .map(|(k, v)| json!({"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}))
                .collect::<Vec<_>>());
        }
        out.push(route);
    }
    out
}
