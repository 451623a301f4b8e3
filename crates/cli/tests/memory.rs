//! The memory an idle `legate proxy` keeps, beside Envoy 1.40 on the same
//! config (the benchmark's: one listener, one cluster).
//!
//! The API's descriptor pool (about 26 MiB of heap) is needed only to read
//! and validate config; once started, the proxy drops it and keeps less than
//! half of Envoy's anonymous memory. A config dump afterwards decodes the
//! pool again and still shows the bootstrap.

mod harness;

use harness::*;
use std::time::Duration;

const TEMPLATE: &str = r#"
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: {ADMIN} } }
static_resources:
  listeners:
  - name: bench
    address: { socket_address: { address: 127.0.0.1, port_value: {LISTEN} } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: bench
            virtual_hosts:
            - name: bench
              domains: ["*"]
              routes:
              - match: { prefix: "/" }
                route: { cluster: upstream }
  clusters:
  - name: upstream
    connect_timeout: 1s
    type: STATIC
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: {UP_up} } } }
"#;

/// A field of `/proc/PID/status`, in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn idle_proxy_keeps_less_than_half_of_envoys_heap() {
    let pair = start_pair("memory", TEMPLATE, &["up"]);
    let n = pair._procs.len();
    let (envoy_pid, legate_pid) = (pair._procs[n - 2].pid(), pair._procs[n - 1].pid());
    for port in [pair.envoy, pair.legate] {
        let r = http_get(addr(port), "/", "bench").expect("GET through the proxy");
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // The proxy drops the pool 300 ms after startup; both settle.
    std::thread::sleep(Duration::from_secs(2));
    let envoy_anon = status_kb(envoy_pid, "RssAnon");
    let legate_anon = status_kb(legate_pid, "RssAnon");
    let ratio = legate_anon as f64 / envoy_anon as f64;
    println!(
        "idle anonymous memory: Envoy {envoy_anon} kB, Legate {legate_anon} kB, Legate / Envoy {ratio:.2} (bar <= 0.50)"
    );
    assert!(ratio <= 0.5, "Legate keeps {legate_anon} kB of anonymous memory idle, Envoy {envoy_anon} kB");

    // What needs the pool decodes it again.
    let dump = admin_json(pair.legate_admin, "/config_dump");
    let bootstrap = &dump["configs"][0];
    assert_eq!(bootstrap["@type"], "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "{dump}");
    let cluster = &bootstrap["bootstrap"]["static_resources"]["clusters"][0];
    assert_eq!(cluster["name"], "upstream", "{dump}");
    assert_eq!(cluster["connect_timeout"], "1s", "{dump}");
}
