//! What the control plane serves and how proxies reach it, in YAML block
//! style: resource documents for `legate ctl apply` (clusters, endpoints,
//! listeners, routes, secrets; each for every node or for the nodes named)
//! and bootstraps whose ADS goes to control-plane replicas.

use super::template::{endpoint, H2_BLOCK};

/// The metadata field selecting `ids` (none: every node).
pub fn nodes(ids: &[&str]) -> String {
    if ids.is_empty() {
        String::new()
    } else {
        format!(", nodes: {{ ids: [{}] }}", ids.join(","))
    }
}

/// An HTTP connection manager as an item of a filter chain's `filters`,
/// routing with `routing` (`rds: ...`, or `route_config:` and what follows).
pub fn hcm_filter(stat: &str, routing: &str) -> String {
    format!(
        r#"    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: {stat}
        http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}]
        {routing}
"#
    )
}

/// A cluster whose endpoints come over ADS (EDS).
pub fn eds_cluster(name: &str, nodes: &str) -> String {
    format!(
        r#"kind: Cluster
metadata: {{ name: {name}{nodes} }}
spec:
  name: {name}
  connect_timeout: 1s
  type: EDS
  eds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}
"#
    )
}

/// The endpoints of cluster `name`: 127.0.0.1:`port`.
pub fn endpoints(name: &str, nodes: &str, port: u16) -> String {
    format!(
        r#"kind: ClusterLoadAssignment
metadata: {{ name: {name}{nodes} }}
spec:
  cluster_name: {name}
  endpoints:
  - lb_endpoints:
    - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"#
    )
}

/// A listener on 127.0.0.1:`port` whose routes (`route`) come over ADS (RDS).
pub fn rds_listener(name: &str, nodes: &str, port: u16, route: &str) -> String {
    format!(
        r#"kind: Listener
metadata: {{ name: {name}{nodes} }}
spec:
  name: {name}
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
  filter_chains:
  - filters:
{}"#,
        hcm_filter(
            "ingress",
            &format!("rds: {{ route_config_name: {route}, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}")
        )
    )
}

/// A route configuration sending everything to `cluster`.
pub fn route_to(name: &str, nodes: &str, cluster: &str) -> String {
    format!(
        r#"kind: RouteConfiguration
metadata: {{ name: {name}{nodes} }}
spec:
  name: {name}
  virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: {cluster} }} }}] }}]
"#
    )
}

/// One HTTP service over ADS for the nodes `node_ids` (none: all): cluster
/// `web<suffix>` (EDS) of the endpoint 127.0.0.1:`upstream`, and listener
/// `ingress<suffix>` on `listen` routed (RDS, `main<suffix>`) to it.
pub fn web_resources(listen: u16, upstream: u16, node_ids: &[&str], suffix: &str) -> String {
    let nodes = nodes(node_ids);
    let (web, main) = (format!("web{suffix}"), format!("main{suffix}"));
    [
        eds_cluster(&web, &nodes),
        endpoints(&web, &nodes, upstream),
        rds_listener(&format!("ingress{suffix}"), &nodes, listen, &main),
        route_to(&main, &nodes, &web),
    ]
    .join("---\n")
}

/// A `Secret` resource holding a certificate and its key (PEM).
pub fn tls_secret(name: &str, cert: &str, key: &str) -> String {
    format!(
        "kind: Secret\nmetadata: {{ name: {name} }}\nspec:\n  name: {name}\n  tls_certificate:\n    certificate_chain: {{ inline_string: {} }}\n    private_key: {{ inline_string: {} }}\n",
        super::config::quoted(cert),
        super::config::quoted(key)
    )
}

/// A `Secret` resource holding a trusted CA (PEM).
pub fn ca_secret(name: &str, ca: &str) -> String {
    format!(
        "kind: Secret\nmetadata: {{ name: {name} }}\nspec:\n  name: {name}\n  validation_context:\n    trusted_ca: {{ inline_string: {} }}\n",
        super::config::quoted(ca)
    )
}

/// A listener for one node on `port` terminating TLS with the ADS secret
/// `secret` and answering 200 `hello-<name>`.
pub fn ads_tls_listener(name: &str, node: &str, port: u16, secret: &str) -> String {
    format!(
        r#"kind: Listener
metadata: {{ name: {name}, nodes: {{ ids: [{node}] }} }}
spec:
  name: {name}
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
  filter_chains:
  - transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
        common_tls_context:
          tls_certificate_sds_secret_configs:
          - {{ name: {secret}, sds_config: {{ ads: {{}}, resource_api_version: V3 }} }}
    filters:
{}"#,
        hcm_filter(
            name,
            &format!(
                r#"route_config:
          virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, direct_response: {{ status: 200, body: {{ inline_string: "hello-{name}" }} }} }}] }}]"#
            )
        )
    )
}

/// For one node: a cluster `up-<who>` to `port` verifying its server with
/// the ADS secret `ca`, and a plain listener on `plain` routing to it.
pub fn ads_tls_upstream(who: &str, node: &str, port: u16, plain: u16, ca: &str) -> String {
    format!(
        r#"kind: Cluster
metadata: {{ name: up-{who}, nodes: {{ ids: [{node}] }} }}
spec:
  name: up-{who}
  connect_timeout: 1s
  type: STATIC
  load_assignment: {{ cluster_name: up-{who}, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}] }}] }}
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      sni: a.example.com
      common_tls_context:
        validation_context_sds_secret_config: {{ name: {ca}, sds_config: {{ ads: {{}}, resource_api_version: V3 }} }}
---
kind: Listener
metadata: {{ name: plain-{who}, nodes: {{ ids: [{node}] }} }}
spec:
  name: plain-{who}
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {plain} }} }}
  filter_chains:
  - filters:
{}"#,
        hcm_filter(
            "plain",
            &format!(
                r#"route_config:
          virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: up-{who} }} }}] }}]"#
            )
        )
    )
}

/// A bootstrap for node `node` (cluster `replicas-test`) with an admin on
/// `admin`, listeners and clusters over ADS through `grpc_services` (what
/// follows `grpc_services:`, its line end included), and static `clusters`
/// (block-style list items).
fn ads_bootstrap(node: &str, admin: u16, grpc_services: &str, clusters: &str) -> String {
    format!(
        r#"node: {{ id: {node}, cluster: replicas-test }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:{grpc_services}  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
{clusters}"#
    )
}

/// A static HTTP/2 cluster (an xDS server) with `extra` fields and the
/// endpoint groups `groups` (flow-style list items).
fn xds_cluster(name: &str, extra: &str, groups: &str) -> String {
    format!(
        r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
{extra}{H2_BLOCK}    load_assignment:
      cluster_name: {name}
      endpoints: [{groups}]
"#
    )
}

/// A bootstrap for `legate proxy` whose ADS lists a gRPC service per
/// control-plane replica (at 127.0.0.1 on each of `xds_ports`), in order.
pub fn legate_bootstrap_listing(node: &str, admin: u16, xds_ports: &[u16]) -> String {
    let services: String =
        (0..xds_ports.len()).map(|i| format!("    - envoy_grpc: {{ cluster_name: cp{i} }}\n")).collect();
    let clusters: String = xds_ports
        .iter()
        .enumerate()
        .map(|(i, port)| xds_cluster(&format!("cp{i}"), "", &format!("{{ lb_endpoints: [{}] }}", endpoint(port))))
        .collect();
    ads_bootstrap(node, admin, &format!("\n{services}"), &clusters)
}

/// A bootstrap for Envoy whose one xDS cluster holds every replica: the
/// `primary` at priority 0, the `standby` ones at priority 1, with a TCP
/// health check so that a dead primary leaves the set and Envoy's stream
/// moves on.
pub fn envoy_bootstrap_by_priority(node: &str, admin: u16, primary: u16, standby: &[u16]) -> String {
    let hc = "    health_checks: [{ timeout: 0.5s, interval: 0.5s, no_traffic_interval: 0.5s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {} }]\n";
    let standby: Vec<String> = standby.iter().map(endpoint).collect();
    let groups = format!(
        "{{ priority: 0, lb_endpoints: [{}] }}, {{ priority: 1, lb_endpoints: [{}] }}",
        endpoint(primary),
        standby.join(", ")
    );
    let cluster = xds_cluster("control-planes", hc, &groups);
    ads_bootstrap(node, admin, " [{ envoy_grpc: { cluster_name: control-planes } }]\n", &cluster)
}
