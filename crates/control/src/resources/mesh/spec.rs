//! The higher-level kinds as users write them (`Service`, `Gateway`,
//! `Route` specs with their defaults), read from a document's spec with the
//! path of whatever does not fit.

use crate::resources::document::Document;
use crate::resources::kind::Kind;
use crate::resources::resource::{of_kind, Resource, ResourceMap};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Problems with one document on its own: (path, reason).
pub type Problems = Vec<(String, String)>;

/// Problems with what documents refer to: (resource, path, reason).
pub type RefProblems = Vec<(String, String, String)>;

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
    /// Legate's least response time; LEAST_REQUEST on Envoy proxies.
    LeastResponseTime,
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
    /// Whether endpoints of abnormal nodes leave the service, and at most
    /// what share of its endpoints (default: on, 50 %).
    #[serde(default)]
    pub isolation: Option<crate::resources::isolate::IsolationSpec>,
    /// Set when a Release runs on the service: routes to it are split.
    #[serde(skip)]
    pub split: Option<Split>,
}

/// A service split by a running Release: its stable and candidate clusters
/// (`<service>~<version>`) and the candidate's percent of traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub stable: String,
    pub candidate: String,
    pub weight: u32,
    /// Requests the candidate takes whatever the weights: blue-green's
    /// preview header, an A/B test's headers and cookies (any one of them).
    pub preview: Vec<ToCandidate>,
    /// What keeps one client on one version while the weights split traffic.
    pub sticky: Option<Sticky>,
}

/// A request a release's candidate takes whatever the weights: one that
/// carries this header, or this cookie, with this exact value.
#[derive(Debug, Clone, PartialEq)]
pub enum ToCandidate {
    Header(String, String),
    Cookie(String, String),
}

/// Stickiness: the weighted pick hashes this header or cookie of the
/// request (the route's `hash_policy` with `weighted_clusters.use_hash_policy`),
/// so one client lands on one version while the weights hold, and stays on
/// the candidate as its weight grows (the candidate is listed last).
#[derive(Debug, Clone, PartialEq)]
pub enum Sticky {
    Header(String),
    /// A cookie; with `ttl_s`, the proxy sets it (for that many seconds,
    /// path `/`) when the request has none.
    Cookie {
        name: String,
        ttl_s: Option<u64>,
    },
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
    /// Checked once for the fleet instead of by every proxy: the control
    /// plane assigns each endpoint's check to one proxy that offers HDS
    /// (Envoy's `hds_config`), and endpoints reported down leave EDS.
    #[serde(default)]
    pub hds: bool,
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

/// Reads a document's spec as `T`; a mismatch comes back with its path.
pub fn parse<T: serde::de::DeserializeOwned>(doc: &Document) -> Result<T, Problems> {
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(doc.spec.clone(), &mut track);
    T::deserialize(de).map_err(|e| {
        let p = track.path().to_string();
        vec![(if p == "." { "spec".into() } else { format!("spec.{p}") }, e.to_string())]
    })
}

/// The resources of `kind` whose spec reads as `T`, with it (the others were
/// refused when applied; they are passed over here).
pub fn specs<T: serde::de::DeserializeOwned>(
    resources: &ResourceMap,
    kind: Kind,
) -> impl Iterator<Item = (&String, &Arc<Resource>, T)> {
    of_kind(resources, kind).filter_map(|(name, r)| parse::<T>(&r.doc).ok().map(|spec| (name, r, spec)))
}
