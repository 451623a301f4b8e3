//! A proxyless gRPC client (Python grpcio's built-in xDS support) reaches a gRPC
//! upstream through Listener/RouteConfiguration/Cluster/ClusterLoadAssignment
//! served by our control plane.

mod harness;

use harness::*;
use std::process::Command;
use std::time::Duration;

const SCRIPTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/grpc");

#[test]
fn proxyless_grpc_client_reaches_upstream_through_our_xds() {
    let dir = TempDir::new("grpc-proxyless");
    let python = python_with_grpc();
    let upstream_port = free_port();
    let mut server = Proc::spawn(
        "health-server",
        Command::new(&python).arg(format!("{SCRIPTS}/health_server.py")).arg(upstream_port.to_string()),
        dir.path(),
    );
    wait_listening("the gRPC upstream", &mut server, upstream_port, Duration::from_secs(20));

    let cp = ControlPlane::start(dir.path());
    let xds = cp.xds;
    let resources = format!(
        r#"kind: Listener
metadata: {{ name: health-svc }}
spec:
  name: health-svc
  api_listener:
    api_listener:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: grpc
      http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}]
      rds: {{ route_config_name: health-route, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}
---
kind: RouteConfiguration
metadata: {{ name: health-route }}
spec:
  name: health-route
  virtual_hosts: [{{ name: health, domains: ["health-svc"], routes: [{{ match: {{ prefix: "" }}, route: {{ cluster: health-cluster }} }}] }}]
---
kind: Cluster
metadata: {{ name: health-cluster }}
spec:
  name: health-cluster
  type: EDS
  lb_policy: ROUND_ROBIN
  eds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}
---
kind: ClusterLoadAssignment
metadata: {{ name: health-cluster }}
spec:
  cluster_name: health-cluster
  endpoints:
  # gRPC uses only localities that carry a weight.
  - locality: {{ region: local }}
    load_balancing_weight: 1
    lb_endpoints:
    - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }} }} }}
"#
    );
    cp.apply(dir.path(), &resources);

    let bootstrap = dir.path().join("grpc-bootstrap.json");
    std::fs::write(
        &bootstrap,
        format!(
            r#"{{"xds_servers": [{{"server_uri": "127.0.0.1:{xds}", "channel_creds": [{{"type": "insecure"}}], "server_features": ["xds_v3"]}}],
               "node": {{"id": "grpc-client-1", "cluster": "grpc"}}}}"#
        ),
    )
    .expect("bootstrap");
    let client = Command::new(&python)
        .arg(format!("{SCRIPTS}/xds_client.py"))
        .arg("health-svc")
        .env("GRPC_XDS_BOOTSTRAP", &bootstrap)
        .output()
        .expect("run the gRPC client");
    let stdout = String::from_utf8_lossy(&client.stdout);
    assert!(
        client.status.success() && stdout.contains("status SERVING"),
        "gRPC client failed:\n{stdout}\n{}\ncontrol plane:\n{}",
        String::from_utf8_lossy(&client.stderr),
        cp.output()
    );
}
