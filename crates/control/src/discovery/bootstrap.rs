//! The bootstrap a node starts from: Envoy or `legate proxy` taking
//! everything over ADS from this control plane, and sending its stats there
//! (the metrics service sink, every 5 s) for fleet monitoring. `legate ctl
//! bootstrap` prints it and `GET /v1/bootstrap` serves it (to the node agent).

/// A bootstrap for Envoy or `legate proxy` that takes everything over ADS.
pub fn bootstrap_yaml(
    node_id: &str,
    node_cluster: &str,
    host: &str,
    port: &str,
    delta: bool,
    admin_port: u16,
) -> String {
    let api_type = if delta { "DELTA_GRPC" } else { "GRPC" };
    format!(
        r#"node:
  id: {node_id}
  cluster: {node_cluster}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}
stats_flush_interval: 5s
stats_sinks:
- name: envoy.stat_sinks.metrics_service
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig
    transport_api_version: V3
    grpc_service: {{ envoy_grpc: {{ cluster_name: xds_cluster }} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {{ cluster_name: xds_cluster }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds_cluster
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds_cluster
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {host}, port_value: {port} }} }} }}
"#
    )
}

/// The bootstrap with `hds_config`: the proxy offers to check endpoints for
/// the control plane (Health Discovery Service) over the xDS cluster.
pub fn with_hds(yaml: &str) -> String {
    format!(
        "{yaml}hds_config:\n  api_type: GRPC\n  transport_api_version: V3\n  grpc_services:\n  - envoy_grpc: {{ cluster_name: xds_cluster }}\n"
    )
}

/// The bootstrap with `node.locality` from `REGION[/ZONE[/SUB_ZONE]]` (HDS
/// gives endpoints to the nearest checkers by it); `Err` names the problem.
pub fn with_locality(yaml: &str, locality: &str) -> Result<String, String> {
    let parts: Vec<&str> = locality.split('/').collect();
    if parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
        return Err(format!("locality '{locality}': REGION[/ZONE[/SUB_ZONE]], no part empty"));
    }
    let field = |i: usize| serde_json::to_string(parts.get(i).copied().unwrap_or("")).unwrap_or_default();
    let line = format!("  locality: {{ region: {}, zone: {}, sub_zone: {} }}\n", field(0), field(1), field(2));
    // After the node's `cluster` line, the last line of the node block.
    let Some(at) = yaml.find("\n  cluster: ").and_then(|i| yaml[i + 1..].find('\n').map(|j| i + j + 2)) else {
        return Err("the bootstrap has no node cluster line".into());
    };
    Ok(format!("{}{line}{}", &yaml[..at], &yaml[at..]))
}

/// The bootstrap's xDS cluster, speaking TLS (and presenting a client
/// certificate when given).
pub fn with_xds_tls(yaml: &str, ca: &str, client: Option<(String, String)>, sni: &str) -> String {
    let certs = match client {
        Some((cert, key)) => format!(
            "\n          tls_certificates: [{{ certificate_chain: {{ filename: {cert} }}, private_key: {{ filename: {key} }} }}]"
        ),
        None => String::new(),
    };
    let socket = format!(
        r#"    connect_timeout: 1s
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {sni}
        common_tls_context:
          alpn_protocols: [h2]
          validation_context: {{ trusted_ca: {{ filename: {ca} }} }}{certs}"#
    );
    yaml.replacen("    connect_timeout: 1s", &socket, 1)
}
