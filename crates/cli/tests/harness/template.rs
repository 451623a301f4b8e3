//! Bootstrap templates for a [`Pair`](super::sides::Pair), in YAML block
//! style: one listener whose HTTP connection manager routes with the given
//! virtual hosts, and clusters of endpoints. A template names its ports as
//! `{LISTEN}`, `{ADMIN}` (different for each proxy: both use SO_REUSEPORT
//! and would otherwise share traffic), `{UP_<name>}` (shared echo upstreams)
//! and `{CLOSED}`, `{CLOSED2}`... (ports nobody listens on).

/// The router, as the template's filter list has it.
const ROUTER_ONLY: &str = "          http_filters: [{ name: envoy.filters.http.router, typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router } }]\n";

/// The router as the last item of a block-style `http_filters:` list.
pub const ROUTER: &str = "          - name: envoy.filters.http.router\n            typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }\n";

/// The one route most scenarios need: everything to the `echo` cluster.
pub const ALL_TO_ECHO: &str = "              - { match: { prefix: \"/\" }, route: { cluster: echo } }\n";

/// An upstream's HTTP/2 protocol options, as a flow-style cluster field.
pub const H2_OPTIONS: &str = r#"typed_extension_protocol_options: { envoy.extensions.upstreams.http.v3.HttpProtocolOptions: { "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: { http2_protocol_options: {} } } }"#;

/// An upstream's HTTP/2 protocol options, as block-style cluster fields.
pub const H2_BLOCK: &str = "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }\n";

/// A template's admin and the start of its one listener, `main` on
/// `{LISTEN}` (the listener's other fields follow, indented by four).
pub const MAIN_LISTENER: &str = r#"admin: { address: { socket_address: { address: 127.0.0.1, port_value: {ADMIN} } } }
static_resources:
  listeners:
  - name: main
    address: { socket_address: { address: 127.0.0.1, port_value: {LISTEN} } }
"#;

/// `text` with each line indented `by` more spaces.
pub fn indented(text: &str, by: usize) -> String {
    text.lines().map(|l| format!("{}{l}\n", " ".repeat(by))).collect()
}

/// A bootstrap with one listener and HCM around `routes` (a virtual_hosts list),
/// plus `extra_hcm` fields and `clusters`.
pub fn bootstrap(extra_hcm: &str, route_config_extra: &str, virtual_hosts: &str, clusters: &str) -> String {
    format!(
        r#"{MAIN_LISTENER}    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
{extra_hcm}{ROUTER_ONLY}          route_config:
            name: local
{route_config_extra}            virtual_hosts:
{virtual_hosts}
  clusters:
{clusters}"#
    )
}

/// The commonest bootstrap: `extra_hcm` fields, everything routed to the
/// echo cluster (upstream `a`).
pub fn echo_bootstrap(extra_hcm: &str) -> String {
    bootstrap(extra_hcm, "", &one_vhost(ALL_TO_ECHO), &echo_cluster())
}

/// The bootstrap's router-only filter list replaced by `filters` (which must
/// end with the router).
pub fn with_filters(template: String, filters: &str) -> String {
    assert!(template.contains(ROUTER_ONLY), "the bootstrap template changed");
    template.replace(ROUTER_ONLY, filters)
}

/// A bootstrap whose HCM runs `filters` (YAML list items, without the router)
/// in front of the router, with `virtual_hosts` and the echo cluster.
pub fn filtered(filters: &str, virtual_hosts: &str) -> String {
    let t = bootstrap("", "", virtual_hosts, &echo_cluster());
    let t = with_filters(t, &format!("          http_filters:\n{filters}{ROUTER}"));
    assert!(!t.contains("http_filters: [{ name: envoy.filters.http.router"), "template replacement failed");
    t
}

/// An endpoint at 127.0.0.1:`port` (a number or a placeholder).
pub fn endpoint(port: impl std::fmt::Display) -> String {
    format!("{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }} }}")
}

/// Endpoints at 127.0.0.1 on each of `ports`, comma-separated.
pub fn endpoints(ports: &[impl std::fmt::Display]) -> String {
    ports.iter().map(endpoint).collect::<Vec<_>>().join(", ")
}

/// A cluster (one line) of `ports`, with `extra` fields before its load assignment.
pub fn cluster_with(name: &str, ports: &[&str], extra: &str) -> String {
    format!(
        "  - {{ name: {name}, connect_timeout: 1s, {extra}load_assignment: {{ cluster_name: {name}, endpoints: [{{ lb_endpoints: [{}] }}] }} }}\n",
        endpoints(ports)
    )
}

/// A cluster (one line) of `ports`.
pub fn cluster(name: &str, ports: &[&str]) -> String {
    cluster_with(name, ports, "")
}

/// An upstream's HTTP/1.1 protocol options with the common options `common`,
/// as flow-style cluster fields (a trailing comma and space included).
pub fn http1_options(common: &str) -> String {
    format!(
        r#"typed_extension_protocol_options: {{ envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {{ "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, common_http_protocol_options: {{ {common} }}, explicit_http_config: {{ http_protocol_options: {{}} }} }} }}, "#
    )
}

/// The virtual hosts list of one host for every domain, with `routes`.
pub fn one_vhost(routes: &str) -> String {
    format!("            - name: all\n              domains: [\"*\"]\n              routes:\n{routes}")
}

/// The `echo` cluster: the echo upstream `a`.
pub fn echo_cluster() -> String {
    cluster("echo", &["{UP_a}"])
}

/// A health-checked cluster whose priority levels hold `levels` (each a list
/// of endpoint port placeholders), with extra cluster fields.
pub fn prioritized(name: &str, levels: &[&[&str]], extra: &str) -> String {
    let hc = "    health_checks: [{ timeout: 0.5s, interval: 0.2s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {} }]\n";
    let groups: Vec<String> = levels
        .iter()
        .enumerate()
        .map(|(p, ports)| format!("{{ priority: {p}, lb_endpoints: [{}] }}", endpoints(ports)))
        .collect();
    format!(
        "  - name: {name}\n    connect_timeout: 0.5s\n{hc}{extra}    load_assignment: {{ cluster_name: {name}, endpoints: [{}] }}\n",
        groups.join(", ")
    )
}
