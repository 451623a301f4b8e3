//! Three control-plane replicas on one real etcd: a change applied on any
//! replica reaches a Legate proxy and a real Envoy attached to different
//! replicas within a second; killing a replica (the registry leader, and the
//! one the Legate proxy streams from) under steady traffic loses no request,
//! the proxy fails over to another listed replica, later changes still reach
//! both proxies, and another replica takes over registry expiry.

mod harness;

use harness::*;
use serde_json::Value;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One `legate control-plane --store etcd://...`, killed by its PID on drop.
struct Replica {
    proc_: Proc,
    xds: u16,
    api: u16,
}

impl Replica {
    fn start(name: &str, etcd: &Etcd, dir: &std::path::Path) -> Replica {
        let (xds, api) = (free_port(), free_port());
        let mut p = Proc::spawn(
            name,
            Command::new(LEGATE)
                .args(["control-plane", "--store", &etcd.store_url()])
                .args(["--xds-addr", &format!("127.0.0.1:{xds}"), "--api-addr", &format!("127.0.0.1:{api}")])
                .arg("--data-dir")
                .arg(dir.join(format!("{name}-data"))),
            dir,
        );
        wait_for(&format!("{name} API"), Duration::from_secs(20), || {
            if !p.is_running() {
                panic!("{name} exited: {}", p.output());
            }
            http_get(addr(api), "/healthz", "cp").ok().filter(|r| r.status == 200)
        });
        Replica { proc_: p, xds, api }
    }

    fn ctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(LEGATE)
            .args(["ctl", "--server", &format!("http://127.0.0.1:{}", self.api)])
            .args(args)
            .output()
            .expect("run ctl");
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    }

    fn apply(&self, dir: &std::path::Path, yaml: &str) {
        let f = dir.join(format!("apply-{}.yaml", free_port()));
        std::fs::write(&f, yaml).expect("write resources");
        let (ok, out) = self.ctl(&["apply", "-f", f.to_str().expect("path")]);
        assert!(ok, "apply on {} failed: {out}", self.proc_.name);
    }

    fn get(&self, path: &str) -> Option<Value> {
        let r = http_get(addr(self.api), path, "cp").ok().filter(|r| r.status == 200)?;
        serde_json::from_str(&r.body).ok()
    }

    fn is_leader(&self) -> bool {
        self.get("/v1/replica").is_some_and(|v| v["leader"] == true)
    }

    /// Node ids of the proxies streaming from this replica.
    fn proxies(&self) -> Vec<String> {
        self.get("/v1/proxies")
            .and_then(|v| v["proxies"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p["node"]["id"].as_str().map(String::from))
            .collect()
    }

    /// `service/id` of every registered instance this replica sees.
    fn instances(&self) -> Vec<String> {
        self.get("/v1/instances")
            .and_then(|v| v["instances"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|i| format!("{}/{}", i["service"].as_str().unwrap_or(""), i["id"].as_str().unwrap_or("")))
            .collect()
    }

    fn register(&self, service: &str, id: &str, port: u16, ttl: u64) {
        let body = format!(r#"{{"id": "{id}", "address": "127.0.0.1", "port": {port}, "ttl_seconds": {ttl}}}"#);
        let r = http_request(
            addr(self.api),
            "POST",
            &format!("/v1/services/{service}/instances"),
            "cp",
            &[("content-type", "application/json")],
            &body,
        )
        .expect("register");
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// One cluster, its endpoints (the `upstream` echo), a route, and a listener
/// per proxy (selected by node id), so each proxy listens on its own port.
fn resources(legate_listen: u16, envoy_listen: u16, upstream: u16) -> String {
    let listener = |name: &str, node: &str, port: u16| {
        format!(
            r#"kind: Listener
metadata: {{ name: {name}, nodes: {{ ids: [{node}] }} }}
spec:
  name: {name}
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
  filter_chains:
  - filters:
    - name: envoy.filters.network.http_connection_manager
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        stat_prefix: ingress
        http_filters: [{{ name: envoy.filters.http.router, typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }} }}]
        rds: {{ route_config_name: main, config_source: {{ ads: {{}}, resource_api_version: V3 }} }}
"#
        )
    };
    format!(
        r#"kind: Cluster
metadata: {{ name: web }}
spec:
  name: web
  connect_timeout: 1s
  type: EDS
  eds_cluster_config: {{ eds_config: {{ ads: {{}}, resource_api_version: V3 }} }}
---
{}
---
kind: RouteConfiguration
metadata: {{ name: main }}
spec:
  name: main
  virtual_hosts: [{{ name: all, domains: ["*"], routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: web }} }}] }}]
---
{}
---
{}
"#,
        endpoints(upstream),
        listener("ingress-legate", "legate-proxy", legate_listen),
        listener("ingress-envoy", "envoy-proxy", envoy_listen),
    )
}

fn endpoints(upstream: u16) -> String {
    format!(
        r#"kind: ClusterLoadAssignment
metadata: {{ name: web }}
spec:
  cluster_name: web
  endpoints:
  - lb_endpoints:
    - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }}
"#
    )
}

/// A bootstrap for `legate proxy` whose ADS lists every replica, in order.
fn legate_bootstrap(admin: u16, replicas: &[&Replica]) -> String {
    let services: String =
        (0..replicas.len()).map(|i| format!("    - envoy_grpc: {{ cluster_name: cp{i} }}\n")).collect();
    let clusters: String = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                r#"  - name: cp{i}
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: cp{i}
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}] }}]
"#,
                r.xds
            )
        })
        .collect();
    format!(
        r#"node: {{ id: legate-proxy, cluster: replicas-test }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
{services}  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
{clusters}"#
    )
}

/// A bootstrap for Envoy whose one xDS cluster holds every replica: the
/// primary at priority 0, the others at priority 1, with a TCP health check
/// so that a dead primary leaves the set and Envoy's stream moves on.
fn envoy_bootstrap(admin: u16, primary: &Replica, standby: &[&Replica]) -> String {
    let ep = |r: &Replica| {
        format!("{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }} }}", r.xds)
    };
    let standby: Vec<String> = standby.iter().map(|r| ep(r)).collect();
    format!(
        r#"node: {{ id: envoy-proxy, cluster: replicas-test }}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin} }} }}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services: [{{ envoy_grpc: {{ cluster_name: control-planes }} }}]
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: control-planes
    type: STATIC
    connect_timeout: 1s
    health_checks: [{{ timeout: 0.5s, interval: 0.5s, no_traffic_interval: 0.5s, unhealthy_threshold: 1, healthy_threshold: 1, tcp_health_check: {{}} }}]
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: control-planes
      endpoints: [{{ priority: 0, lb_endpoints: [{}] }}, {{ priority: 1, lb_endpoints: [{}] }}]
"#,
        ep(primary),
        standby.join(", ")
    )
}

fn upstream_of(port: u16) -> Option<String> {
    http_get(addr(port), "/", "app")
        .ok()
        .filter(|r| r.status == 200)
        .and_then(|r| r.header("x-upstream").map(str::to_owned))
}

/// Polls every 10 ms until `port` is served by `upstream`; the time it took.
fn time_until_served(port: u16, upstream: &str, limit: Duration, since: Instant) -> Duration {
    for _ in 0..2_000 {
        if upstream_of(port).as_deref() == Some(upstream) {
            return since.elapsed();
        }
        assert!(since.elapsed() < limit, "port {port} not served by {upstream} within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("port {port} not served by {upstream} after 2000 polls");
}

/// Requests one proxy in a loop (bounded in count and stopped by `stop`).
struct Load {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

fn steady_load(port: u16, stop: Arc<AtomicBool>) -> Load {
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (o, f) = (ok.clone(), failed.clone());
    let thread = std::thread::spawn(move || {
        let mut errors = Vec::new();
        // Bounded: at most 30k requests (about a minute at this pace).
        for _ in 0..30_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match http_get(addr(port), "/load", "app") {
                Ok(r) if r.status == 200 => {
                    o.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    f.fetch_add(1, Ordering::Relaxed);
                    errors.push(format!("{other:?}"));
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        errors
    });
    Load { ok, failed, thread }
}

#[test]
fn replicas_share_config_fail_over_and_elect_a_registry_leader() {
    let dir = TempDir::new("etcd-replicas");
    let etcd = Etcd::start(dir.path());
    let (_one, one) = echo("one", dir.path());
    let (_two, two) = echo("two", dir.path());

    // r0 starts first and so leads; r1 and r2 follow.
    let mut r0 = Replica::start("replica-0", &etcd, dir.path());
    wait_for("replica-0 to lead", Duration::from_secs(10), || r0.is_leader().then_some(()));
    let r1 = Replica::start("replica-1", &etcd, dir.path());
    let r2 = Replica::start("replica-2", &etcd, dir.path());
    assert!(!r1.is_leader() && !r2.is_leader(), "only one leader");

    let (legate_listen, envoy_listen) = (free_port(), free_port());
    r0.apply(dir.path(), &resources(legate_listen, envoy_listen, one));

    // The Legate proxy lists all three replicas (r0 first); Envoy's xDS
    // cluster holds them all, r0 at the first priority.
    let legate_admin = free_port();
    let boot = dir.path().join("legate-bootstrap.yaml");
    std::fs::write(&boot, legate_bootstrap(legate_admin, &[&r0, &r1, &r2])).expect("bootstrap");
    let mut legate = Proc::spawn(
        "legate-proxy",
        Command::new(LEGATE).args(["proxy", "--concurrency", "1", "-c"]).arg(&boot),
        dir.path(),
    );
    wait_ready(legate_admin, &mut legate);
    let envoy_admin = free_port();
    let envoy_boot = envoy_bootstrap(envoy_admin, &r0, &[&r1, &r2]);
    let envoy_boot_file = dir.path().join("envoy-bootstrap.yaml");
    std::fs::write(&envoy_boot_file, envoy_boot).expect("bootstrap");
    let mut envoy = spawn_envoy("envoy-proxy", &envoy_boot_file, "warning", &[], dir.path());
    wait_ready(envoy_admin, &mut envoy);
    time_until_served(legate_listen, "one", Duration::from_secs(15), Instant::now());
    time_until_served(envoy_listen, "one", Duration::from_secs(15), Instant::now());
    assert!(r0.proxies().contains(&"legate-proxy".to_string()), "the Legate proxy streams from replica-0");
    assert!(r0.proxies().contains(&"envoy-proxy".to_string()), "Envoy streams from replica-0");

    // A change applied on the third replica reaches both proxies.
    let started = Instant::now();
    r2.apply(dir.path(), &endpoints(two));
    let legate_took = time_until_served(legate_listen, "two", Duration::from_secs(5), started);
    let envoy_took = time_until_served(envoy_listen, "two", Duration::from_secs(5), started);
    println!(
        "apply on replica-2 -> Legate proxy (via replica-0): {legate_took:?}, Envoy (via replica-0): {envoy_took:?}"
    );
    assert!(legate_took < Duration::from_secs(1), "Legate proxy took {legate_took:?}");
    assert!(envoy_took < Duration::from_secs(1), "Envoy took {envoy_took:?}");

    // A registry instance registered on replica-1 and kept alive through
    // replica-2 is seen by every replica.
    r1.register("reg", "beating", 9, 2);
    wait_for("every replica to see the instance", Duration::from_secs(3), || {
        [&r0, &r1, &r2].iter().all(|r| r.instances() == ["reg/beating"]).then_some(())
    });
    let beating = Arc::new(AtomicBool::new(true));
    let (b, api) = (beating.clone(), r2.api);
    let heartbeats = std::thread::spawn(move || {
        for _ in 0..200 {
            if !b.load(Ordering::Relaxed) {
                break;
            }
            let _ = http_request(addr(api), "PUT", "/v1/services/reg/instances/beating/heartbeat", "cp", &[], "");
            std::thread::sleep(Duration::from_millis(300));
        }
    });

    // Steady traffic through both proxies while the leader, which is also
    // both proxies' control plane, is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let legate_load = steady_load(legate_listen, stop.clone());
    let envoy_load = steady_load(envoy_listen, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let pid = r0.proc_.pid();
    let before = (legate_load.ok.load(Ordering::Relaxed), envoy_load.ok.load(Ordering::Relaxed));
    r0.proc_.kill();
    let killed = Instant::now();
    assert!(!r0.proc_.is_running(), "replica-0 (pid {pid}) is gone");
    beating.store(false, Ordering::Relaxed);
    heartbeats.join().expect("heartbeats");

    // Both proxies move to another replica.
    let reconnected = wait_for("the Legate proxy to stream from another replica", Duration::from_secs(10), || {
        [&r1, &r2].iter().any(|r| r.proxies().contains(&"legate-proxy".to_string())).then(|| killed.elapsed())
    });
    let envoy_reconnected = wait_for("Envoy to stream from another replica", Duration::from_secs(15), || {
        [&r1, &r2].iter().any(|r| r.proxies().contains(&"envoy-proxy".to_string())).then(|| killed.elapsed())
    });
    println!("Envoy on another replica after {envoy_reconnected:?}");
    // Another replica leads and expires the instance whose heartbeats stopped.
    let new_leader = wait_for("a new leader", Duration::from_secs(10), || {
        [&r1, &r2].iter().position(|r| r.is_leader()).map(|i| (i + 1, killed.elapsed()))
    });
    let expired = wait_for("the silent instance to expire", Duration::from_secs(10), || {
        [&r1, &r2].iter().all(|r| r.instances().is_empty()).then(|| killed.elapsed())
    });
    println!(
        "replica-0 (pid {pid}) killed: Legate proxy on another replica after {reconnected:?}; \
         replica-{} leads after {:?}; silent instance (TTL 2 s) expired after {expired:?}",
        new_leader.0, new_leader.1
    );
    // A fresh instance that never heartbeats expires under the new leader too.
    r2.register("reg", "silent", 9, 1);
    wait_for("replica-1 to see the new instance", Duration::from_secs(3), || {
        (r1.instances() == ["reg/silent"]).then_some(())
    });
    let registered = Instant::now();
    wait_for("the new leader to expire it", Duration::from_secs(6), || {
        [&r1, &r2].iter().all(|r| r.instances().is_empty()).then_some(())
    });
    println!("instance with TTL 1 s registered after failover expired after {:?}", registered.elapsed());

    // A change applied on a surviving replica still reaches both proxies.
    let started = Instant::now();
    r1.apply(dir.path(), &endpoints(one));
    let legate_took = time_until_served(legate_listen, "one", Duration::from_secs(5), started);
    let envoy_took = time_until_served(envoy_listen, "one", Duration::from_secs(5), started);
    println!("after failover, apply on replica-1 -> Legate proxy: {legate_took:?}, Envoy: {envoy_took:?}");
    assert!(legate_took < Duration::from_secs(1), "Legate proxy took {legate_took:?} after failover");
    assert!(envoy_took < Duration::from_secs(1), "Envoy took {envoy_took:?} after failover");

    let during = (legate_load.ok.load(Ordering::Relaxed) - before.0, envoy_load.ok.load(Ordering::Relaxed) - before.1);
    stop.store(true, Ordering::Relaxed);
    let legate_errors = legate_load.thread.join().expect("load");
    let envoy_errors = envoy_load.thread.join().expect("load");
    let (lf, ef) = (legate_load.failed.load(Ordering::Relaxed), envoy_load.failed.load(Ordering::Relaxed));
    println!(
        "traffic: Legate proxy {} ok / {lf} failed, Envoy {} ok / {ef} failed; {} and {} ok after the kill",
        legate_load.ok.load(Ordering::Relaxed),
        envoy_load.ok.load(Ordering::Relaxed),
        during.0,
        during.1
    );
    assert!(during.0 > 100 && during.1 > 100, "traffic kept flowing after the kill: {during:?}");
    assert_eq!(lf, 0, "Legate proxy failures: {:?}", legate_errors.iter().take(5).collect::<Vec<_>>());
    assert_eq!(ef, 0, "Envoy failures: {:?}", envoy_errors.iter().take(5).collect::<Vec<_>>());

    // The history is shared: every replica lists the same three revisions.
    let (ok, h1) = r1.ctl(&["history"]);
    let (ok2, h2) = r2.ctl(&["history"]);
    assert!(ok && ok2 && h1 == h2 && h1.lines().count() == 4, "history:\n{h1}\n{h2}");
}
