//! Bootstrap pieces in YAML flow style, one line each, for configs built
//! per proxy (each with its own admin and listener ports): listeners and
//! their filter chains, HTTP connection managers, tcp_proxy, TLS transport
//! sockets, clusters, the bootstrap around them, and SDS files.

use std::path::Path;

/// A file in `dir`, as a config names it.
pub fn path(dir: &Path, f: &str) -> String {
    dir.join(f).display().to_string()
}

/// A YAML double-quoted string holding `text`.
pub fn quoted(text: &str) -> String {
    serde_json::to_string(text).expect("json string")
}

pub const ROUTER: &str = "{name: envoy.filters.http.router, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}";

pub const TLS_INSPECTOR: &str = "[{name: envoy.filters.listener.tls_inspector, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}]";

/// An HTTP connection manager whose one virtual host (`*`) has `vhost`
/// (its `routes: [...]` and any other fields), with `filters` before the
/// router and `extra` HCM fields.
pub fn hcm_vhost(stat: &str, vhost: &str, filters: &str, extra: &str) -> String {
    format!(
        "{{name: envoy.filters.network.http_connection_manager, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: {stat}, route_config: {{virtual_hosts: [{{name: all, domains: [\"*\"], {vhost}}}]}}, http_filters: [{filters}{ROUTER}]{extra}}}}}"
    )
}

/// An HTTP connection manager routing everything to `cluster`.
pub fn hcm(stat: &str, cluster: &str) -> String {
    hcm_with(stat, cluster, "", "")
}

/// An HTTP connection manager routing everything to `cluster`, with `extra`
/// HCM fields and `filters` before the router.
pub fn hcm_with(stat: &str, cluster: &str, extra: &str, filters: &str) -> String {
    hcm_vhost(stat, &format!("routes: [{{match: {{prefix: \"/\"}}, route: {{cluster: {cluster}}}}}]"), filters, extra)
}

/// An HTTP connection manager with path routes (`prefix`, cluster).
pub fn hcm_routes(stat: &str, routes: &[(&str, &str)]) -> String {
    let r: Vec<String> = routes
        .iter()
        .map(|(prefix, c)| format!("{{match: {{prefix: \"{prefix}\"}}, route: {{cluster: {c}}}}}"))
        .collect();
    hcm_vhost(stat, &format!("routes: [{}]", r.join(", ")), "", "")
}

/// An HTTP connection manager answering every request 200 with `body`.
pub fn hcm_answer(stat: &str, body: &str) -> String {
    hcm_vhost(
        stat,
        &format!(
            "routes: [{{match: {{prefix: \"/\"}}, direct_response: {{status: 200, body: {{inline_string: \"{body}\"}}}}}}]"
        ),
        "",
        "",
    )
}

/// tcp_proxy to `target` (`cluster: x` or `weighted_clusters: ...`), with
/// `extra` fields.
pub fn tcp_proxy(stat: &str, target: &str, extra: &str) -> String {
    format!(
        "{{name: envoy.filters.network.tcp_proxy, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: {stat}, {target}{extra}}}}}"
    )
}

/// `envoy.filters.network.rbac` with `body` (rules, shadow_rules, ...).
pub fn net_rbac(body: &str) -> String {
    format!(
        "{{name: envoy.filters.network.rbac, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC, {body}}}}}"
    )
}

/// A listener on 127.0.0.1:`port` with one filter chain.
pub fn listener(name: &str, port: u16, chain: &str) -> String {
    listener_chains(name, port, &[chain.to_string()], "")
}

/// A listener on 127.0.0.1:`port` with `chains` and `extra` listener fields.
pub fn listener_chains(name: &str, port: u16, chains: &[String], extra: &str) -> String {
    format!(
        "{{name: {name}, address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}, filter_chains: [{}]{extra}}}",
        chains.join(", ")
    )
}

/// A listener with the TLS inspector (which gives the requested server name).
pub fn inspected_listener(name: &str, port: u16, chain: &str) -> String {
    listener_chains(name, port, &[chain.to_string()], &format!(", listener_filters: {TLS_INSPECTOR}"))
}

/// A static cluster of the one endpoint 127.0.0.1:`port`, with `extra` fields.
pub fn cluster(name: &str, port: u16, extra: &str) -> String {
    format!(
        "{{name: {name}, connect_timeout: 1s, type: STATIC, load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]}}{extra}}}"
    )
}

fn admin_and_static(admin: u16) -> String {
    format!("admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}\nstatic_resources:\n")
}

fn section(s: &mut String, key: &str, items: &[String]) {
    s.push_str(&format!("  {key}:\n"));
    for i in items {
        s.push_str(&format!("  - {i}\n"));
    }
}

/// A bootstrap with an admin on `admin`, `listeners` and `clusters` (both
/// sections written, empty or not).
pub fn bootstrap(admin: u16, listeners: &[String], clusters: &[String]) -> String {
    let mut s = admin_and_static(admin);
    section(&mut s, "listeners", listeners);
    section(&mut s, "clusters", clusters);
    s
}

/// A bootstrap for node `sds-test` with `secrets`, `listeners` and
/// `clusters` (sections left out when empty).
pub fn bootstrap_with_secrets(admin: u16, secrets: &[String], listeners: &[String], clusters: &[String]) -> String {
    let mut s = format!("node: {{id: sds-test, cluster: sds-test}}\n{}", admin_and_static(admin));
    for (key, items) in [("secrets", secrets), ("listeners", listeners), ("clusters", clusters)] {
        if !items.is_empty() {
            section(&mut s, key, items);
        }
    }
    s
}

/// The files `dir/<name>.pem` and `dir/<name>.key` as a TLS certificate.
pub fn cert_files(dir: &Path, name: &str) -> String {
    format!(
        "{{certificate_chain: {{filename: \"{}\"}}, private_key: {{filename: \"{}\"}}}}",
        path(dir, &format!("{name}.pem")),
        path(dir, &format!("{name}.key"))
    )
}

/// A list of TLS certificates from `dir`, by file name.
pub fn certs_yaml(dir: &Path, names: &[&str]) -> String {
    let list: Vec<String> = names.iter().map(|n| cert_files(dir, n)).collect();
    format!("[{}]", list.join(", "))
}

/// A filter chain's transport_socket terminating TLS with the
/// `common_tls_context` fields `common` and `extra` context fields.
pub fn down_tls(common: &str, extra: &str) -> String {
    format!(
        "{{name: envoy.transport_sockets.tls, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, common_tls_context: {{{common}}}{extra}}}}}"
    )
}

/// A filter chain's transport_socket terminating TLS with the certificates
/// `certs` from `dir`, offering `alpn`, with `extra_common` context fields
/// (after the ALPN list) and `extra` fields.
pub fn terminate_tls(dir: &Path, certs: &[&str], alpn: &str, extra_common: &str, extra: &str) -> String {
    down_tls(&format!("tls_certificates: {}, alpn_protocols: [{alpn}]{extra_common}", certs_yaml(dir, certs)), extra)
}

/// A cluster's transport_socket originating TLS with `sni` (as written) and
/// the `common_tls_context` fields `common`.
pub fn up_tls(sni: &str, common: &str) -> String {
    format!(
        "{{name: envoy.transport_sockets.tls, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext, sni: {sni}, common_tls_context: {{{common}}}}}}}"
    )
}

/// A trusted CA file as a `validation_context`, with `extra` fields.
pub fn trusted_ca(dir: &Path, ca: &str, extra: &str) -> String {
    format!("validation_context: {{trusted_ca: {{filename: \"{}\"}}{extra}}}", path(dir, ca))
}

/// A validation context field matching a DNS SAN exactly.
pub fn san_matcher(exact: &str) -> String {
    format!("match_typed_subject_alt_names: [{{san_type: DNS, matcher: {{exact: \"{exact}\"}}}}]")
}

/// An SDS file: a DiscoveryResponse with one tls_certificate secret `name`
/// made of the leaf `leaf` in `dir`, inline (so one rename swaps everything).
pub fn sds_file(dir: &Path, name: &str, leaf: &str) -> String {
    let cert = std::fs::read_to_string(dir.join(format!("{leaf}.pem"))).expect("read");
    let key = std::fs::read_to_string(dir.join(format!("{leaf}.key"))).expect("read");
    format!(
        "resources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: {name}\n  tls_certificate:\n    certificate_chain: {{inline_string: {}}}\n    private_key: {{inline_string: {}}}\n",
        quoted(&cert),
        quoted(&key)
    )
}

/// Writes `text` next to `path` and moves it into place, as Envoy expects
/// SDS files to change.
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}
