//! `Service` to Envoy: a Cluster and, unless the service is found by DNS, a
//! ClusterLoadAssignment of its endpoints (listed, or the registry's
//! instances), plus one such pair per subset (`<service>.<subset>`).

use crate::discovery::health::EndpointHealth;
use crate::discovery::node::Locality;
use crate::discovery::registry::Instance;
use crate::releases;
use crate::releases::spec::candidate_weight;
use crate::releases::spec::{Release, Status};
use crate::resources::document::{Document, NodeSelector};
use crate::resources::isolate::{self, Decision};
use crate::resources::kind::Kind;
use crate::resources::mesh::envoy::{ads, document, lb_endpoint, load_assignment};
use crate::resources::mesh::spec::{specs, HealthCheckSpec, Lb, Protocol, RefProblems, ServiceSpec, Split, Sticky};
use crate::resources::resource::{of_kind, ResourceMap};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Labels by name.
type Labels = BTreeMap<String, String>;

/// One endpoint of a service: address, port and labels.
type Endpoint = (String, u16, Labels);

/// Compiles every Service in `resources` into `out`; returns their specs by
/// name, for the routes that refer to them.
pub fn compile_services(
    resources: &ResourceMap,
    instances: &[Instance],
    health: &EndpointHealth,
    out: &mut Vec<Document>,
    problems: &mut RefProblems,
) -> BTreeMap<String, ServiceSpec> {
    let mut services = BTreeMap::new();
    let mut releases = releases_by_service(resources, problems);
    for (name, r, mut s) in specs::<ServiceSpec>(resources, Kind::Service) {
        let all = endpoints(name, &s, instances);
        if !s.endpoints.is_empty() {
            check_subsets(name, &s, &all, problems);
        }
        let mut endpoints = isolate::kept(&all, &isolation(&s, &all, health));
        if s.health_check.as_ref().is_some_and(|h| h.hds) {
            endpoints.retain(|(a, p, _)| !health.down.contains(&(name.clone(), format!("{a}:{p}"))));
        }
        let subsets = s.subsets.iter().map(|(subset, labels)| (format!("{name}.{subset}"), Some(labels)));
        let mut clusters: Vec<(String, Option<&Labels>)> =
            std::iter::once((name.clone(), None)).chain(subsets).collect();
        let release = releases.remove(name);
        if let Some((release, weight)) = &release {
            if check_release(release, &s, &endpoints, problems) {
                clusters.push((release.stable_cluster(), Some(&release.stable)));
                clusters.push((release.candidate_cluster(), Some(&release.candidate)));
            }
            // Before its first step the version clusters exist but routes do
            // not use them yet: proxies warm them first (make before break).
            if let Some(weight) = weight {
                s.split = Some(Split {
                    stable: release.stable_cluster(),
                    candidate: release.candidate_cluster(),
                    weight: *weight,
                    preview: release.preview.clone(),
                    sticky: release.sticky.clone(),
                });
            }
        }
        // A sticky cookie the proxy sets itself: Envoy makes the cookie
        // only when the cluster's balancer hashes, so the version clusters
        // use RING_HASH (the first request is placed at random; the cookie
        // then keeps the client on one version).
        let cookie_clusters = match &release {
            Some((rel, _)) if matches!(rel.sticky, Some(Sticky::Cookie { ttl_s: Some(_), .. })) => {
                vec![rel.stable_cluster(), rel.candidate_cluster()]
            }
            _ => Vec::new(),
        };
        for (cluster_name, selector) in clusters {
            let mut docs = cluster_documents(&s, &cluster_name, selector, &endpoints, &r.nodes);
            if cookie_clusters.contains(&cluster_name) {
                if let Some(c) = docs.iter_mut().find(|d| d.kind == "Cluster") {
                    c.spec["lb_policy"] = json!("RING_HASH");
                    if let Some(o) = c.spec.as_object_mut() {
                        o.remove("load_balancing_policy");
                    }
                }
            }
            out.extend(docs);
        }
        services.insert(name.clone(), s);
    }
    for (service, (release, _)) in releases {
        problems.push((
            format!("Release/{}", release.name),
            "spec.service".into(),
            format!("unknown service '{service}'"),
        ));
    }
    services
}

/// Each Service's Release (at most one) with the candidate's weight now
/// (None before the release's first step).
fn releases_by_service(
    resources: &ResourceMap,
    problems: &mut RefProblems,
) -> BTreeMap<String, (Release, Option<u32>)> {
    let mut out: BTreeMap<String, (Release, Option<u32>)> = BTreeMap::new();
    for (name, r) in of_kind(resources, Kind::Release) {
        let Ok(mut release) = releases::spec::check(&r.doc) else { continue };
        let status = Status::of(&r.doc);
        let started = status.step_started_ms != 0 || status.phase.is_final();
        let weight = started.then(|| candidate_weight(&status));
        if status.phase.is_final() {
            // A finished release previews nothing.
            release.preview.clear();
            release.sticky = None;
        }
        if let Some((other, _)) = out.get(&release.service) {
            problems.push((
                format!("Release/{name}"),
                "spec.service".into(),
                format!("service '{}' already has Release/{}", release.service, other.name),
            ));
            continue;
        }
        out.insert(release.service.clone(), (release, weight));
    }
    out
}

/// A Release needs a service of listed or registered endpoints (not DNS),
/// reached by HTTP routes, and listed endpoints for both its selectors.
fn check_release(release: &Release, s: &ServiceSpec, endpoints: &[Endpoint], problems: &mut RefProblems) -> bool {
    let label = format!("Release/{}", release.name);
    let mut problem = |path: &str, reason: String| problems.push((label.clone(), path.into(), reason));
    if s.dns.is_some() {
        problem(
            "spec.service",
            format!("service '{}' is found by DNS: its endpoints carry no labels", release.service),
        );
        return false;
    }
    if s.protocol == Protocol::Tcp {
        problem("spec.service", format!("service '{}' is tcp: releases split HTTP routes", release.service));
        return false;
    }
    let mut ok = true;
    for (path, selector) in [("spec.stable", &release.stable), ("spec.candidate", &release.candidate)] {
        if !s.endpoints.is_empty() && !endpoints.iter().any(|(_, _, l)| has_labels(l, selector)) {
            problem(path, format!("no endpoint of service '{}' has the labels {selector:?}", release.service));
            ok = false;
        }
    }
    ok
}

/// What isolation does to a service's endpoints (`all`), by its policy.
fn isolation(s: &ServiceSpec, all: &[Endpoint], health: &EndpointHealth) -> Decision {
    isolate::decide(&s.isolation.unwrap_or_default(), all, health)
}

/// What isolation does to each Service's endpoints now (for the fault view).
pub fn decisions(resources: &ResourceMap, instances: &[Instance], health: &EndpointHealth) -> Vec<(String, Decision)> {
    specs::<ServiceSpec>(resources, Kind::Service)
        .filter(|(_, _, s)| s.dns.is_none())
        .map(|(name, _, s)| (name.clone(), isolation(&s, &endpoints(name, &s, instances), health)))
        .collect()
}

/// The endpoints a service lists, or else the registry's instances of it.
fn endpoints(name: &str, s: &ServiceSpec, instances: &[Instance]) -> Vec<Endpoint> {
    if !s.endpoints.is_empty() {
        s.endpoints.iter().map(|e| (e.address.clone(), e.port, e.labels.clone())).collect()
    } else {
        instances.iter().filter(|i| i.service == *name).map(|i| (i.address.clone(), i.port, i.labels.clone())).collect()
    }
}

/// A subset that no listed endpoint belongs to is a mistake (registry
/// instances come and go, so they are not held to this).
fn check_subsets(name: &str, s: &ServiceSpec, endpoints: &[Endpoint], problems: &mut RefProblems) {
    for (subset, labels) in &s.subsets {
        if !endpoints.iter().any(|(_, _, l)| has_labels(l, labels)) {
            problems.push((
                format!("Service/{name}"),
                format!("spec.subsets.{subset}"),
                format!("no endpoint has the labels of subset '{subset}'"),
            ));
        }
    }
}

fn has_labels(labels: &Labels, wanted: &Labels) -> bool {
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The ClusterLoadAssignment (EDS services) and Cluster named `cluster_name`,
/// for the endpoints `selector` picks (all when none).
fn cluster_documents(
    s: &ServiceSpec,
    cluster_name: &str,
    selector: Option<&Labels>,
    endpoints: &[Endpoint],
    nodes: &NodeSelector,
) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut cluster = cluster(s, cluster_name);
    match &s.dns {
        Some(d) => {
            cluster["type"] = json!("STRICT_DNS");
            cluster["load_assignment"] = load_assignment(cluster_name, vec![lb_endpoint(&d.hostname, d.port)]);
        }
        None => {
            cluster["type"] = json!("EDS");
            cluster["eds_cluster_config"] = json!({"eds_config": ads()});
            let eps: Vec<Value> = endpoints
                .iter()
                .filter(|(_, _, labels)| selector.is_none_or(|sel| has_labels(labels, sel)))
                .map(|(a, p, _)| lb_endpoint(a, *p))
                .collect();
            docs.push(document("ClusterLoadAssignment", cluster_name, nodes, load_assignment(cluster_name, eps)));
        }
    }
    docs.push(document("Cluster", cluster_name, nodes, cluster));
    docs
}

/// The cluster's own settings: timeout, balancing, resilience, protocol.
fn cluster(s: &ServiceSpec, cluster_name: &str) -> Value {
    let mut cluster = json!({
        "name": cluster_name,
        "connect_timeout": s.connect_timeout,
    });
    match lb_policy(s.lb) {
        Some(named) => cluster["lb_policy"] = json!(named),
        None => cluster["load_balancing_policy"] = least_response_time(),
    }
    resilience(s, &mut cluster);
    if matches!(s.protocol, Protocol::Http2 | Protocol::Grpc) {
        cluster["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}
            }
        });
    }
    cluster
}

/// The `lb_policy` of `lb`, or none for a policy only Legate has.
fn lb_policy(lb: Lb) -> Option<&'static str> {
    match lb {
        Lb::RoundRobin => Some("ROUND_ROBIN"),
        Lb::LeastRequest => Some("LEAST_REQUEST"),
        Lb::Random => Some("RANDOM"),
        Lb::LeastResponseTime => None,
    }
}

/// `lb: least_response_time`: a policy list each proxy takes the first it
/// knows of, Legate's least response time, then Envoy's least request (a
/// proxy that does not know a policy's type skips it, as Envoy does).
fn least_response_time() -> Value {
    let policy =
        |name: &str, ty: &str| json!({"typed_extension_config": {"name": name, "typed_config": {"@type": ty}}});
    json!({"policies": [
        policy("legate.lb.least_response_time", "type.googleapis.com/legate.lb.v1.LeastResponseTime"),
        policy(
            "envoy.load_balancing_policies.least_request",
            "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
        ),
    ]})
}

/// Envoy's `HealthCheck` for a service's `health_check`.
pub fn health_check(h: &HealthCheckSpec) -> Value {
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
    hc
}

/// A service checked through HDS: its health check (Envoy JSON) and every
/// endpoint (`address`, `port`, the locality its labels give), down or not.
#[derive(Debug, Clone, PartialEq)]
pub struct HdsTarget {
    pub service: String,
    pub health_check: Value,
    pub endpoints: Vec<(String, u16, Locality)>,
}

/// The services whose `health_check` has `hds: true`.
pub fn hds_targets(resources: &ResourceMap, instances: &[Instance]) -> Vec<HdsTarget> {
    specs::<ServiceSpec>(resources, Kind::Service)
        .filter(|(_, _, s)| s.dns.is_none())
        .filter_map(|(name, _, s)| {
            let h = s.health_check.as_ref().filter(|h| h.hds)?;
            Some(HdsTarget {
                service: name.clone(),
                health_check: health_check(h),
                endpoints: endpoints(name, &s, instances)
                    .into_iter()
                    .map(|(a, p, labels)| (a, p, Locality::from_labels(&labels)))
                    .collect(),
            })
        })
        .collect()
}

/// The cluster fields for health checks, outlier detection and breakers.
fn resilience(s: &ServiceSpec, cluster: &mut Value) {
    if let Some(h) = s.health_check.as_ref().filter(|h| !h.hds) {
        cluster["health_checks"] = json!([health_check(h)]);
    }
    if let Some(o) = &s.outlier_detection {
        cluster["outlier_detection"] = serde_json::to_value(o).unwrap_or_else(|_| json!({}));
    }
    if let Some(b) = &s.circuit_breakers {
        cluster["circuit_breakers"] = json!({"thresholds": [serde_json::to_value(b).unwrap_or_else(|_| json!({}))]});
    }
}
