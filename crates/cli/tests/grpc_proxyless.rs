//! A proxyless gRPC client (Python grpcio's built-in xDS support) reaches a gRPC
//! upstream through Listener/RouteConfiguration/Cluster/ClusterLoadAssignment
//! served by our control plane.

mod harness;

use harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A Python venv with grpcio, installed into the cache on first use.
fn python_with_grpc() -> PathBuf {
    let root = std::env::var("LEGATE_CACHE").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into())).join(".cache/legate")
    });
    let venv = root.join("py-grpc");
    let python = venv.join("bin/python");
    let ready = |p: &Path| Command::new(p).args(["-c", "import grpc, grpc_health"]).status().is_ok_and(|s| s.success());
    if ready(&python) {
        return python;
    }
    std::fs::create_dir_all(&root).expect("cache dir");
    let tmp = root.join(format!("py-grpc-install-{}-{}", std::process::id(), free_port()));
    let ok = Command::new("python3").args(["-m", "venv"]).arg(&tmp).status().is_ok_and(|s| s.success())
        && Command::new(tmp.join("bin/pip"))
            .args(["install", "--quiet", "grpcio", "grpcio-health-checking"])
            .status()
            .is_ok_and(|s| s.success());
    assert!(ok, "cannot install grpcio with pip");
    // A venv is not relocatable: use it where it was made if another test won the rename.
    if std::fs::rename(&tmp, &venv).is_err() {
        return tmp.join("bin/python");
    }
    python
}

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
    wait_for("the gRPC upstream", Duration::from_secs(20), || {
        if !server.is_running() {
            panic!("gRPC upstream exited: {}", server.output());
        }
        std::net::TcpStream::connect(addr(upstream_port)).ok()
    });

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
    let f = dir.path().join("grpc.yaml");
    std::fs::write(&f, resources).expect("write");
    let (ok, out) = cp.ctl(&["apply", "-f", f.to_str().expect("path")]);
    assert!(ok, "apply: {out}");

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
