//! `Gateway` and `Route` to Envoy: an HTTP gateway is a Listener with the
//! connection manager and a RouteConfiguration (`gateway.<name>`) whose
//! virtual hosts are the gateway's own routes and the Routes attached to it;
//! a TCP gateway is a Listener with tcp_proxy to one `protocol: tcp` service.

use crate::resources::document::Document;
use crate::resources::kind::Kind;
use crate::resources::mesh::envoy::{ads, document, listener};
use crate::resources::mesh::routes::compile_routes;
use crate::resources::mesh::spec::{specs, GatewaySpec, Protocol, RefProblems, RouteKindSpec, ServiceSpec};
use crate::resources::resource::{of_kind, ResourceMap};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Compiles every Gateway, with the Routes attached to it, into `out`.
pub fn compile_gateways(
    resources: &ResourceMap,
    services: &BTreeMap<String, ServiceSpec>,
    out: &mut Vec<Document>,
    problems: &mut RefProblems,
) {
    let mut addresses: BTreeMap<(String, u16), String> = BTreeMap::new();
    for (name, r, g) in specs::<GatewaySpec>(resources, Kind::Gateway) {
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
            check_tcp_service(&label, svc, services, problems);
            out.push(document("Listener", &gw, &r.nodes, tcp_listener(&gw, &g, svc)));
            continue;
        }
        let vhosts = virtual_hosts(name, &label, &g, resources, services, problems);
        out.push(document("RouteConfiguration", &gw, &r.nodes, json!({"name": gw, "virtual_hosts": vhosts})));
        out.push(document("Listener", &gw, &r.nodes, http_listener(&gw, &g)));
    }
}

/// A TCP gateway's service must exist and be a tcp service.
fn check_tcp_service(label: &str, svc: &str, services: &BTreeMap<String, ServiceSpec>, problems: &mut RefProblems) {
    match services.get(svc) {
        None => problems.push((label.to_string(), "spec.tcp".into(), format!("unknown service '{svc}'"))),
        Some(spec) if spec.protocol != Protocol::Tcp => {
            problems.push((label.to_string(), "spec.tcp".into(), format!("service '{svc}' is not a tcp service")))
        }
        Some(_) => {}
    }
}

fn tcp_listener(gw: &str, g: &GatewaySpec, svc: &str) -> Value {
    let proxy = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": gw.replace('.', "_"),
        "cluster": svc
    });
    listener(gw, &g.address, g.port, "envoy.filters.network.tcp_proxy", proxy)
}

fn http_listener(gw: &str, g: &GatewaySpec) -> Value {
    let hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": gw.replace('.', "_"),
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
        "rds": {"route_config_name": gw, "config_source": ads()}
    });
    listener(gw, &g.address, g.port, "envoy.filters.network.http_connection_manager", hcm)
}

/// The gateway's virtual hosts: its own routes (if any), then each Route
/// attached to it. A host served twice is reported on the later one.
fn virtual_hosts(
    name: &str,
    label: &str,
    g: &GatewaySpec,
    resources: &ResourceMap,
    services: &BTreeMap<String, ServiceSpec>,
    problems: &mut RefProblems,
) -> Vec<Value> {
    let mut hosts = VirtualHosts { gateway: name, vhosts: Vec::new(), domains: BTreeMap::new() };
    if !g.routes.is_empty() {
        let routes = compile_routes(label, &g.routes, services, problems);
        hosts.add(name, label, &g.hosts, routes, problems);
    }
    for (rname, _, spec) in specs::<RouteKindSpec>(resources, Kind::Route) {
        if spec.gateway != *name {
            continue;
        }
        let rlabel = format!("Route/{rname}");
        let routes = compile_routes(&rlabel, &spec.routes, services, problems);
        hosts.add(rname, &rlabel, &spec.hosts, routes, problems);
    }
    hosts.vhosts
}

/// The virtual hosts of one gateway, and which resource serves each host.
struct VirtualHosts<'a> {
    gateway: &'a str,
    vhosts: Vec<Value>,
    domains: BTreeMap<String, String>,
}

impl VirtualHosts<'_> {
    fn add(&mut self, vh_name: &str, owner: &str, hosts: &[String], routes: Vec<Value>, problems: &mut RefProblems) {
        for h in hosts {
            if let Some(other) = self.domains.insert(h.clone(), owner.to_string()) {
                problems.push((
                    owner.to_string(),
                    "spec.hosts".into(),
                    format!("host '{h}' is already served by {other} on Gateway/{}", self.gateway),
                ));
            }
        }
        self.vhosts.push(json!({"name": vh_name, "domains": hosts, "routes": routes}));
    }
}

/// Every Route must attach to a Gateway that exists and has HTTP routes.
pub fn check_route_gateways(resources: &ResourceMap, problems: &mut RefProblems) {
    let gateways: BTreeSet<&String> = of_kind(resources, Kind::Gateway).map(|(n, _)| n).collect();
    let tcp_gateways: BTreeSet<&String> =
        specs::<GatewaySpec>(resources, Kind::Gateway).filter(|(_, _, g)| g.tcp.is_some()).map(|(n, _, _)| n).collect();
    for (name, _, spec) in specs::<RouteKindSpec>(resources, Kind::Route) {
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
