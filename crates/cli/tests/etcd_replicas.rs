//! Three control-plane replicas on one real etcd: a change applied on any
//! replica reaches a Legate proxy and a real Envoy attached to different
//! replicas within a second; killing a replica (the registry leader, and the
//! one the Legate proxy streams from) under steady traffic loses no request,
//! the proxy fails over to another listed replica, later changes still reach
//! both proxies, and another replica takes over registry expiry.

mod harness;

use harness::alerting::WebhookReceiver;
use harness::load::steady_load;
use harness::xds::{eds_cluster, endpoints, nodes, rds_listener, route_to};
use harness::xds::{envoy_bootstrap_by_priority, legate_bootstrap_listing};
use harness::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One `legate control-plane --store etcd://...`, killed by its PID on drop.
fn replica(name: &str, etcd: &Etcd, dir: &std::path::Path) -> ControlPlane {
    let data = dir.join(format!("{name}-data"));
    ControlPlane::start_named(name, dir, free_port(), free_port(), data, &["--store", &etcd.store_url()])
}

/// Registers `service/id` at 127.0.0.1:`port` with a TTL of `ttl` seconds.
fn register(cp: &ControlPlane, service: &str, id: &str, port: u16, ttl: u64) {
    cp.register(service, &format!(r#"{{"id": "{id}", "address": "127.0.0.1", "port": {port}, "ttl_seconds": {ttl}}}"#));
}

/// One cluster, its endpoints (the `upstream` echo), a route, and a listener
/// per proxy (selected by node id), so each proxy listens on its own port.
fn resources(legate_listen: u16, envoy_listen: u16, upstream: u16) -> String {
    [
        eds_cluster("web", ""),
        endpoints("web", "", upstream),
        route_to("main", "", "web"),
        rds_listener("ingress-legate", &nodes(&["legate-proxy"]), legate_listen, "main"),
        rds_listener("ingress-envoy", &nodes(&["envoy-proxy"]), envoy_listen, "main"),
    ]
    .join("---\n")
}

#[test]
fn replicas_share_config_fail_over_and_elect_a_registry_leader() {
    let dir = TempDir::new("etcd-replicas");
    let etcd = Etcd::start(dir.path());
    let (_one, one) = echo("one", dir.path());
    let (_two, two) = echo("two", dir.path());

    // r0 starts first and so leads; r1 and r2 follow.
    let mut r0 = replica("replica-0", &etcd, dir.path());
    wait_for("replica-0 to lead", Duration::from_secs(10), || r0.is_leader().then_some(()));
    let r1 = replica("replica-1", &etcd, dir.path());
    let r2 = replica("replica-2", &etcd, dir.path());
    assert!(!r1.is_leader() && !r2.is_leader(), "only one leader");

    let (legate_listen, envoy_listen) = (free_port(), free_port());
    r0.apply(dir.path(), &resources(legate_listen, envoy_listen, one));

    // The Legate proxy lists all three replicas (r0 first); Envoy's xDS
    // cluster holds them all, r0 at the first priority.
    let legate_admin = free_port();
    let boot = dir.path().join("legate-bootstrap.yaml");
    std::fs::write(&boot, legate_bootstrap_listing("legate-proxy", legate_admin, &[r0.xds, r1.xds, r2.xds]))
        .expect("bootstrap");
    let mut legate = spawn_legate("legate-proxy", &boot, &[], dir.path());
    wait_ready(legate_admin, &mut legate);
    let envoy_admin = free_port();
    let envoy_boot = envoy_bootstrap_by_priority("envoy-proxy", envoy_admin, r0.xds, &[r1.xds, r2.xds]);
    let envoy_boot_file = dir.path().join("envoy-bootstrap.yaml");
    std::fs::write(&envoy_boot_file, envoy_boot).expect("bootstrap");
    let mut envoy = spawn_envoy("envoy-proxy", &envoy_boot_file, "warning", &[], dir.path());
    wait_ready(envoy_admin, &mut envoy);
    time_until_served(legate_listen, "one", Duration::from_secs(15), Instant::now());
    time_until_served(envoy_listen, "one", Duration::from_secs(15), Instant::now());
    assert!(r0.proxy_ids().contains(&"legate-proxy".to_string()), "the Legate proxy streams from replica-0");
    assert!(r0.proxy_ids().contains(&"envoy-proxy".to_string()), "Envoy streams from replica-0");

    // A change applied on the third replica reaches both proxies.
    let started = Instant::now();
    r2.apply(dir.path(), &endpoints("web", "", two));
    let legate_took = time_until_served(legate_listen, "two", Duration::from_secs(5), started);
    let envoy_took = time_until_served(envoy_listen, "two", Duration::from_secs(5), started);
    println!(
        "apply on replica-2 -> Legate proxy (via replica-0): {legate_took:?}, Envoy (via replica-0): {envoy_took:?}"
    );
    assert!(legate_took < Duration::from_secs(1), "Legate proxy took {legate_took:?}");
    assert!(envoy_took < Duration::from_secs(1), "Envoy took {envoy_took:?}");

    // A registry instance registered on replica-1 and kept alive through
    // replica-2 is seen by every replica.
    register(&r1, "reg", "beating", 9, 2);
    wait_for("every replica to see the instance", Duration::from_secs(3), || {
        [&r0, &r1, &r2].iter().all(|r| r.instances() == ["reg/beating"]).then_some(())
    });
    let heartbeats = Heartbeats::start(r2.api, "reg", "beating", 200);

    // Steady traffic through both proxies while the leader, which is also
    // both proxies' control plane, is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let legate_load = steady_load(legate_listen, stop.clone(), 30_000, Duration::from_millis(2));
    let envoy_load = steady_load(envoy_listen, stop.clone(), 30_000, Duration::from_millis(2));
    std::thread::sleep(Duration::from_millis(500));
    let pid = r0.proc_.pid();
    let before = (legate_load.ok(), envoy_load.ok());
    r0.proc_.kill();
    let killed = Instant::now();
    assert!(!r0.proc_.is_running(), "replica-0 (pid {pid}) is gone");
    heartbeats.stop();

    // Both proxies move to another replica.
    let reconnected = wait_for("the Legate proxy to stream from another replica", Duration::from_secs(10), || {
        [&r1, &r2].iter().any(|r| r.proxy_ids().contains(&"legate-proxy".to_string())).then(|| killed.elapsed())
    });
    let envoy_reconnected = wait_for("Envoy to stream from another replica", Duration::from_secs(15), || {
        [&r1, &r2].iter().any(|r| r.proxy_ids().contains(&"envoy-proxy".to_string())).then(|| killed.elapsed())
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
    register(&r2, "reg", "silent", 9, 1);
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
    r1.apply(dir.path(), &endpoints("web", "", one));
    let legate_took = time_until_served(legate_listen, "one", Duration::from_secs(5), started);
    let envoy_took = time_until_served(envoy_listen, "one", Duration::from_secs(5), started);
    println!("after failover, apply on replica-1 -> Legate proxy: {legate_took:?}, Envoy: {envoy_took:?}");
    assert!(legate_took < Duration::from_secs(1), "Legate proxy took {legate_took:?} after failover");
    assert!(envoy_took < Duration::from_secs(1), "Envoy took {envoy_took:?} after failover");

    let during = (legate_load.ok() - before.0, envoy_load.ok() - before.1);
    stop.store(true, Ordering::Relaxed);
    let (lok, lf, legate_errors) = legate_load.join();
    let (eok, ef, envoy_errors) = envoy_load.join();
    println!(
        "traffic: Legate proxy {lok} ok / {lf} failed, Envoy {eok} ok / {ef} failed; {} and {} ok after the kill",
        during.0, during.1
    );
    assert!(during.0 > 100 && during.1 > 100, "traffic kept flowing after the kill: {during:?}");
    assert_eq!(lf, 0, "Legate proxy failures: {:?}", legate_errors.iter().take(5).collect::<Vec<_>>());
    assert_eq!(ef, 0, "Envoy failures: {:?}", envoy_errors.iter().take(5).collect::<Vec<_>>());

    // The history is shared: every replica lists the same three revisions.
    let (ok, h1) = r1.ctl(&["history"]);
    let (ok2, h2) = r2.ctl(&["history"]);
    assert!(ok && ok2 && h1 == h2 && h1.lines().count() == 4, "history:\n{h1}\n{h2}");
}

/// A Release on two replicas sharing etcd: only the leader drives it (each
/// step committed once, by the leader, whichever replica it was started
/// on), and when the leader dies mid-release the new leader goes on from
/// the step it had reached to `Promoted`.
#[test]
fn one_replica_drives_a_release_and_a_new_leader_continues_it() {
    let dir = TempDir::new("etcd-release");
    let etcd = Etcd::start(dir.path());
    let mut r0 = replica("replica-0", &etcd, dir.path());
    wait_for("replica-0 to lead", Duration::from_secs(10), || r0.is_leader().then_some(()));
    let r1 = replica("replica-1", &etcd, dir.path());
    assert!(!r1.is_leader(), "one leader");
    let mesh = "kind: Service\nmetadata: { name: checkout }\nspec:\n  endpoints:\n  - { address: 127.0.0.1, port: 18001, labels: { version: v1 } }\n  - { address: 127.0.0.1, port: 18002, labels: { version: v2 } }\n---\nkind: Gateway\nmetadata: { name: edge, nodes: { ids: [nobody] } }\nspec:\n  address: 127.0.0.1\n  port: 18080\n  routes:\n  - match: { prefix: / }\n    to: [{ service: checkout }]\n";
    r0.apply(dir.path(), mesh);
    let release = "kind: Release\nmetadata: {name: checkout-v2}\nspec:\n  service: checkout\n  stable: {version: v1}\n  candidate: {version: v2}\n  strategy:\n    canary: {steps: [20, 50, 100], hold: 2s}\n  analysis: {window: 2s, minRequests: 0}\n";
    // Started on the replica that does not lead.
    let file = dir.path().join("release.yaml");
    std::fs::write(&file, release).expect("write");
    let (ok, out) = r1.ctl(&["release", "start", "-f", &file.to_string_lossy()]);
    assert!(ok, "{out}");
    let status = |cp: &ControlPlane| -> serde_json::Value {
        let (ok, out) = cp.ctl(&["release", "status", "checkout-v2", "-o", "json"]);
        assert!(ok, "{out}");
        serde_json::from_str(&out).expect("json")
    };
    wait_for("the second step", Duration::from_secs(20), || (status(&r1)["weight"] == 50).then_some(()));
    let (log0, log1) = (r0.logged("step 2 of 3"), r1.output());
    assert!(log0.contains("step 2 of 3"), "the leader drove the steps: {log0}");
    assert!(!log1.contains("step 1 of 3") && !log1.contains("step 2 of 3"), "the other replica did not: {log1}");
    // The leader dies; replica-1 takes over and goes on from step 2.
    let killed = Instant::now();
    r0.proc_.kill();
    wait_for("replica-1 to lead", Duration::from_secs(15), || r1.is_leader().then_some(()));
    let done = wait_for("the release to be promoted", Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(200));
        let s = status(&r1);
        (s["phase"] == "Promoted").then_some(s)
    });
    eprintln!("promoted {:?} after the leader was killed: {done}", killed.elapsed());
    let log1 = r1.logged("promoted: every step passed");
    assert!(log1.contains("step 3 of 3") && log1.contains("promoted: every step passed"), "{log1}");
    // Every step committed once, by the release, across both leaders.
    let (ok, hist) = r1.ctl(&["history", "-o", "json"]);
    assert!(ok, "{hist}");
    for step in ["step 1 of 3", "step 2 of 3", "step 3 of 3", "promoted: every step passed"] {
        assert_eq!(hist.matches(step).count(), 1, "{step} committed once: {hist}");
    }
    assert_eq!(done["analyses"].as_array().map(Vec::len), Some(3), "{done}");
}

/// Detection and isolation are one decision across replicas: a `legate
/// proxy` streaming from a follower NACKs a listener only it receives (a
/// port in use); the leader, merging what every replica sees (through
/// etcd), finds it abnormal and leaves its endpoint out of the EDS a real
/// Envoy on the leader receives; both replicas show it in `/v1/abnormal`;
/// fixed, it is back.
#[test]
fn the_leader_isolates_a_node_that_streams_from_another_replica() {
    let dir = TempDir::new("etcd-fault");
    let d = dir.path();
    let etcd = Etcd::start(d);
    let ups: Vec<(Proc, u16)> = ["g1", "g2", "g3"].iter().map(|n| echo(n, d)).collect();
    let store = etcd.store_url();
    let start = |name: &str| {
        let f = ["--store", store.as_str(), "--repair-after", "off"];
        ControlPlane::start_named(name, d, free_port(), free_port(), d.join(format!("{name}-data")), &f)
    };
    let r0 = start("replica-0");
    wait_for("replica-0 to lead", Duration::from_secs(10), || r0.is_leader().then_some(()));
    let r1 = start("replica-1");
    assert!(!r1.is_leader());
    let nodes_of = ["far-node", "n2", "n3"];
    let eps: String = ups
        .iter()
        .zip(nodes_of)
        .map(|((_, p), n)| format!("  - {{ address: 127.0.0.1, port: {p}, labels: {{ node: {n} }} }}\n"))
        .collect();
    let svc = format!(
        "kind: Service\nmetadata: {{ name: gw, nodes: {{ ids: [edge] }} }}\nspec:\n  endpoints:\n{eps}  isolation: {{ enabled: true, max_percent: 34 }}\n"
    );
    r0.apply(d, &svc);
    let _far = attach(Bin::Legate, &r1, "far-node", false, d);
    let edge = attach(Bin::Envoy, &r0, "edge", false, d);
    let mut all: Vec<u16> = ups.iter().map(|(_, p)| *p).collect();
    all.sort_unstable();
    wait_for("Envoy to hold the three endpoints", Duration::from_secs(20), || {
        (cluster_ports(edge.admin, "gw") == all).then_some(())
    });
    let streams = r0.proxy_ids();
    assert!(streams.contains(&"edge".to_string()) && !streams.contains(&"far-node".to_string()), "{streams:?}");

    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = blocker.local_addr().expect("addr").port();
    let routes = "route_config: { virtual_hosts: [{ name: all, domains: [\"*\"], routes: [{ match: { prefix: \"/\" }, direct_response: { status: 200 } }] }] }";
    let listener = format!(
        "kind: Listener\nmetadata: {{ name: blocked, nodes: {{ ids: [far-node] }} }}\nspec:\n  name: blocked\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {taken} }} }}\n  filter_chains:\n  - filters:\n{}",
        harness::xds::hcm_filter("blocked", routes)
    );
    let t0 = Instant::now();
    r0.apply(d, &listener);
    let far_port = ups[0].1;
    wait_for("far-node out of the leader's EDS", Duration::from_secs(15), || {
        (!cluster_ports(edge.admin, "gw").contains(&far_port)).then_some(())
    });
    let left = t0.elapsed();
    for r in [&r0, &r1] {
        let v = wait_for("far-node in /v1/abnormal", Duration::from_secs(10), || {
            let v = r.get("/v1/abnormal")?;
            v["nodes"].as_array()?.iter().find(|n| n["node"] == "far-node").cloned()
        });
        assert_eq!(v["causes"][0]["cause"], "nack", "{v}");
        assert_eq!(v["isolated"], serde_json::json!([format!("gw 127.0.0.1:{far_port}")]), "{v}");
    }
    let t1 = Instant::now();
    let (ok, out) = r1.ctl(&["delete", "listener", "blocked"]);
    assert!(ok, "{out}");
    wait_for("far-node back in the leader's EDS", Duration::from_secs(15), || {
        (cluster_ports(edge.admin, "gw") == all).then_some(())
    });
    eprintln!(
        "across replicas: a NACK on replica-1 took far-node out of an Envoy's EDS on the leader after {left:?}; back {:?} after the fix",
        t1.elapsed()
    );
    drop(blocker);
}

/// A repair across replicas: `legate proxy` under its agent, both talking
/// to a follower, NACKs; the leader plans its restart, the follower queues
/// it for the agent (through etcd) and answers with the command's id; the
/// agent hot restarts its proxy (epoch 1), and the leader's view follows
/// the restart it asked for (the command, and when the agent carried it out).
#[test]
fn the_leader_repairs_a_node_whose_agent_reports_to_another_replica() {
    let dir = TempDir::new("etcd-repair");
    let d = dir.path();
    let etcd = Etcd::start(d);
    let store = etcd.store_url();
    let start = |name: &str| {
        let f =
            ["--store", store.as_str(), "--repair-after", "1s", "--repair-verify", "30s", "--repair-interval", "1s"];
        ControlPlane::start_named(name, d, free_port(), free_port(), d.join(format!("{name}-data")), &f)
    };
    let r0 = start("replica-0");
    wait_for("replica-0 to lead", Duration::from_secs(10), || r0.is_leader().then_some(()));
    let r1 = start("replica-1");
    let mut agent = harness::agent::Agent::start(&r1, "remote-gw", "legate", None, free_port(), d);
    let a = wait_for("the agent's proxy to run", Duration::from_secs(40), || {
        r1.proxies()
            .into_iter()
            .find(|p| p["node"]["id"] == "remote-gw")
            .map(|p| p["agent"].clone())
            .filter(|a| a["state"] == "running")
    });
    agent.proxy_pids.push(a["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).expect("pid"));
    assert!(!r0.proxy_ids().contains(&"remote-gw".to_string()), "remote-gw streams from replica-1");

    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = blocker.local_addr().expect("addr").port();
    let routes = "route_config: { virtual_hosts: [{ name: all, domains: [\"*\"], routes: [{ match: { prefix: \"/\" }, direct_response: { status: 200 } }] }] }";
    let listener = format!(
        "kind: Listener\nmetadata: {{ name: blocked, nodes: {{ ids: [remote-gw] }} }}\nspec:\n  name: blocked\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {taken} }} }}\n  filter_chains:\n  - filters:\n{}",
        harness::xds::hcm_filter("blocked", routes)
    );
    let t0 = Instant::now();
    r0.apply(d, &listener);
    let a = wait_for("the agent to restart its proxy (epoch 1)", Duration::from_secs(30), || {
        r1.proxies()
            .into_iter()
            .find(|p| p["node"]["id"] == "remote-gw")
            .map(|p| p["agent"].clone())
            .filter(|a| a["epoch"] == 1 && a["state"] == "running")
    });
    let restarted = t0.elapsed();
    agent.proxy_pids.push(a["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).expect("pid"));
    let repair = wait_for("the leader to follow the restart", Duration::from_secs(15), || {
        let v = r0.get("/v1/abnormal")?;
        let n = v["nodes"].as_array()?.iter().find(|n| n["node"] == "remote-gw")?.clone();
        (n["repair"]["state"] == "restarting" && n["repair"]["command"].is_u64() && n["repair"]["done_ms"].is_u64())
            .then(|| n["repair"].clone())
    });
    let v = r0.get("/v1/abnormal").expect("abnormal");
    assert_eq!(v["repairs"]["started"], 1, "{v}");
    eprintln!("across replicas: restarted (epoch 1) through replica-1 {restarted:?} after the apply on the leader; leader's view {repair}");
    drop(blocker);
}

/// `ctl top services` (or proxies) on `cp`, over the last hour, as JSON.
fn top(cp: &ControlPlane, what: &str) -> Vec<serde_json::Value> {
    let (ok, out) = cp.ctl(&["top", what, "--window", "1h", "-o", "json"]);
    assert!(ok, "{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// (requests, errors) of `service` in `list`.
fn figures(list: &[serde_json::Value], service: &str) -> (u64, u64) {
    list.iter()
        .find(|s| s["service"] == service)
        .map_or((0, 0), |s| (s["requests"].as_u64().expect("requests"), s["errors"].as_u64().expect("errors")))
}

/// `n` requests through `port`, every tenth answered 503 by the upstream:
/// (answered by the upstream, of which 503).
fn bounded_load(port: u16, n: u64) -> (u64, u64) {
    let (mut answered, mut errors) = (0, 0);
    for i in 0..n {
        let path = if i % 10 == 9 { "/status/503" } else { "/ok" };
        let r = http_get(addr(port), path, "app").expect("request through the proxy");
        match r.status {
            200 => answered += 1,
            503 => {
                answered += 1;
                errors += 1;
            }
            s => panic!("unexpected status {s}: {}", r.body),
        }
    }
    (answered, errors)
}

/// Fleet monitoring over two replicas: a real Envoy streams its stats to
/// replica-0, a `legate proxy` to replica-1, both sending to cluster `web`
/// under a bounded load with a known number of 503s. `ctl top services`
/// against either replica counts exactly both proxies' requests and errors
/// (each replica merges the other's raw slots); each replica's own part
/// (`scope=local`) holds only its proxy's; `/metrics` is local unless asked
/// for the fleet, so scraping every replica counts each proxy once.
#[test]
fn either_replica_answers_for_the_whole_fleet() {
    let dir = TempDir::new("etcd-monitor");
    let etcd = Etcd::start(dir.path());
    let (_up, up) = echo("one", dir.path());
    let r0 = replica("replica-0", &etcd, dir.path());
    let r1 = replica("replica-1", &etcd, dir.path());
    let (legate_listen, envoy_listen) = (free_port(), free_port());
    r0.apply(dir.path(), &resources(legate_listen, envoy_listen, up));
    let flush = |b: String| b.replacen("stats_flush_interval: 5s\n", "stats_flush_interval: 1s\n", 1);
    let (ea, la) = (free_port(), free_port());
    let server = |cp: &ControlPlane| format!("http://127.0.0.1:{}", cp.api);
    let envoy_boot = flush(ctl_bootstrap(&server(&r0), "envoy-proxy", r0.xds, ea, &[]));
    let legate_boot = flush(ctl_bootstrap(&server(&r1), "legate-proxy", r1.xds, la, &[]));
    let _envoy = start_on(Bin::Envoy, &envoy_boot, "envoy-proxy", ea, dir.path());
    let _legate = start_on(Bin::Legate, &legate_boot, "legate-proxy", la, dir.path());
    time_until_served(envoy_listen, "one", Duration::from_secs(30), Instant::now());
    time_until_served(legate_listen, "one", Duration::from_secs(30), Instant::now());
    // Both proxies reported after their routing probes, to their own replica.
    let probed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    wait_for("both proxies to report after the probes", Duration::from_secs(30), || {
        let list = top(&r0, "proxies");
        let after = |n: &str| {
            list.iter().any(|p| p["node"] == n && p["last_report_ms"].as_u64().is_some_and(|t| t > probed + 1000))
        };
        (after("envoy-proxy") && after("legate-proxy")).then_some(())
    });
    let before = [figures(&top(&r0, "services"), "web"), figures(&top(&r1, "services"), "web")];
    assert_eq!(before[0], before[1], "both replicas answer the same before the load");

    let legate_load = std::thread::spawn(move || bounded_load(legate_listen, 200));
    let envoy = bounded_load(envoy_listen, 300);
    let legate = legate_load.join().expect("legate load");
    let want = (before[0].0 + envoy.0 + legate.0, before[0].1 + envoy.1 + legate.1);
    for (name, cp) in [("replica-0", &r0), ("replica-1", &r1)] {
        let got = wait_for(&format!("{name} to count the fleet's load"), Duration::from_secs(30), || {
            let f = figures(&top(cp, "services"), "web");
            (f.0 >= want.0).then_some(f)
        });
        // One more report cycle: a count past the expected one would show.
        std::thread::sleep(Duration::from_secs(3));
        let again = figures(&top(cp, "services"), "web");
        println!("{name}: web {got:?} then {again:?}, want {want:?} (Envoy {envoy:?}, Legate {legate:?})");
        assert_eq!(again, want, "{name}: the fleet's exact requests and errors");
    }
    // Each replica's own part is its proxy's alone; the two add up.
    let local = |cp: &ControlPlane| {
        let v = cp.get("/v1/top/services?window=1h&scope=local").expect("local figures");
        figures(v.as_array().expect("list"), "web")
    };
    let (l0, l1) = (local(&r0), local(&r1));
    assert_eq!((l0.0 + l1.0, l0.1 + l1.1), want, "local parts {l0:?} + {l1:?}");
    assert!(l0.0 >= envoy.0 && l1.0 >= legate.0 && l0.0 < want.0 && l1.0 < want.0, "{l0:?} {l1:?}");
    // `/metrics`: local by default, the fleet's with scope=fleet.
    let total = |cp: &ControlPlane, path: &str| -> u64 {
        let body = http_get(addr(cp.api), path, "cp").expect("metrics").body;
        let line = body.lines().find(|l| l.starts_with("legate_service_requests_total{service=\"web\"}"));
        line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let (m0, m1) = (total(&r0, "/metrics"), total(&r1, "/metrics"));
    assert_eq!(total(&r0, "/metrics?scope=fleet"), m0 + m1, "fleet totals from replica-0");
    assert_eq!(total(&r1, "/metrics?scope=fleet"), m0 + m1, "fleet totals from replica-1");
}

/// `legate ctl` against a TLS replica's API, as the client certificate
/// holder, with `token` when given.
fn ctl_tls(d: &std::path::Path, api: u16, token: Option<&str>, args: &[&str]) -> (bool, String) {
    let (ca, cert, key) = (d.join("ca.pem"), d.join("client.pem"), d.join("client.key"));
    let mut all: Vec<&str> = vec!["--cacert", ca.to_str().expect("path")];
    all.extend(["--cert", cert.to_str().expect("path"), "--key", key.to_str().expect("path")]);
    if let Some(t) = token {
        all.extend(["--token", t]);
    }
    all.extend(args);
    ctl(&format!("https://localhost:{api}"), &all)
}

/// GET `path` on a TLS replica's API with curl: the JSON it answered.
fn get_tls(d: &std::path::Path, api: u16, token: Option<&str>, path: &str) -> Option<serde_json::Value> {
    let auth = token.map(|t| format!("authorization: Bearer {t}"));
    let args: Vec<&str> = auth.as_deref().map(|a| vec!["-H", a]).unwrap_or_default();
    let out = harness::tls::curl_tls(d, "localhost", api, path, Some("client"), &args);
    serde_json::from_slice(&out.stdout).ok()
}

/// Fleet monitoring with the APIs over mutual TLS and closed by a token:
/// a `legate proxy` streams its stats over TLS to the replica that is not
/// the leader, and serves 503s. The leader's own part holds none of them,
/// yet its `error_rate` rule fires to a webhook (the leader reads the other
/// replica's part with the store's peer secret, over TLS verified against
/// the client CA, presenting its own certificate), and `ctl top services`
/// on the leader counts the proxy's requests exactly. Then the proxy NACKs
/// a listener: the leader's `proxy_nack` rule fires from the other
/// replica's report.
#[test]
fn the_leader_alerts_on_a_proxy_streaming_to_another_tls_replica() {
    let dir = TempDir::new("etcd-tls-fleet");
    let d = dir.path();
    let etcd = Etcd::start(d);
    let [ca, cert, key, ..] = harness::certs::openssl_ca_server_client(d);
    let (_up, up) = echo("one", d);
    let tls = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str(), "--client-ca", ca.as_str()];
    let store = etcd.store_url();
    let mut replicas = Vec::new();
    for name in ["tls-0", "tls-1"] {
        let (xds, api) = (free_port(), free_port());
        let extra = [&tls[..], &["--store", &store, "--alert-interval", "200ms"]].concat();
        let mut p = spawn_control_plane(name, d, xds, api, &d.join(format!("{name}-data")), &extra);
        wait_for(&format!("{name}'s TLS API"), Duration::from_secs(20), || {
            assert!(p.is_running(), "{name} exited: {}", p.output());
            get_tls(d, api, None, "/v1/replica").filter(|v| v["replica"].is_string())
        });
        replicas.push((p, xds, api));
    }
    let leader_of = |api: u16| get_tls(d, api, None, "/v1/replica").is_some_and(|v| v["leader"] == true);
    let (leader, other) =
        wait_for("a leader", Duration::from_secs(20), || match (leader_of(replicas[0].2), leader_of(replicas[1].2)) {
            (true, false) => Some((0, 1)),
            (false, true) => Some((1, 0)),
            _ => None,
        });
    let (l_api, (o_xds, o_api)) = (replicas[leader].2, (replicas[other].1, replicas[other].2));
    // The first token closes both replicas' APIs (tokens live in the store).
    let (ok, out) = ctl_tls(d, l_api, None, &["token", "create", "--role", "admin", "--name", "root", "-o", "json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let token = v["token"].as_str().expect("token").to_string();
    let tok = Some(token.as_str());
    assert!(get_tls(d, o_api, None, "/v1/replica").is_none_or(|v| v["replica"].is_null()), "closed without a token");

    let listen = free_port();
    let rx = WebhookReceiver::start();
    let rule = format!(
        "kind: AlertRule\nmetadata: {{name: web-errors}}\nspec:\n  service: web\n  metric: error_rate\n  above: 0.05\n  window: 5s\n  for: 1s\n  min_requests: 5\n  webhooks: [{}]\n",
        rx.url("/hook")
    );
    let file = d.join("fleet.yaml");
    std::fs::write(&file, resources(listen, free_port(), up) + "---\n" + &rule).expect("write");
    let (ok, out) = ctl_tls(d, l_api, tok, &["apply", "-f", file.to_str().expect("path")]);
    assert!(ok, "{out}");
    let admin = free_port();
    let xds_tls =
        ["--xds-ca", ca.as_str(), "--xds-cert", cert.as_str(), "--xds-key", key.as_str(), "--xds-sni", "localhost"];
    let (ok, boot) = ctl_tls(
        d,
        o_api,
        tok,
        &[
            &["bootstrap", "--node-id", "legate-proxy"][..],
            &["--xds", &format!("127.0.0.1:{o_xds}"), "--admin-port", &admin.to_string()],
            &xds_tls,
        ]
        .concat(),
    );
    assert!(ok, "{boot}");
    let boot = boot.replacen("stats_flush_interval: 5s\n", "stats_flush_interval: 1s\n", 1);
    let _legate = start_on(Bin::Legate, &boot, "legate-proxy", admin, d);
    time_until_served(listen, "one", Duration::from_secs(30), Instant::now());

    let started = Instant::now();
    let (answered, errors) = (0..200).fold((0u64, 0u64), |(a, e), i| {
        let path = if i % 2 == 0 { "/status/503" } else { "/ok" };
        let r = http_get(addr(listen), path, "app").expect("request through the proxy");
        (a + 1, e + u64::from(r.status == 503))
    });
    assert_eq!((answered, errors), (200, 100));
    let fired = wait_for("the leader's webhook", Duration::from_secs(20), || {
        rx.received().into_iter().find(|p| p["status"] == "firing")
    });
    eprintln!("fired {:?} after the load started: {fired}", started.elapsed());
    let local = get_tls(d, l_api, tok, "/v1/top/services?window=1h&scope=local").expect("local figures");
    let list = local.as_array().cloned().unwrap_or_default();
    assert_eq!(figures(&list, "web"), (0, 0), "the leader's own part holds none of the proxy's requests");
    let (ok, out) = ctl_tls(d, l_api, tok, &["top", "services", "--window", "1h", "-o", "json"]);
    assert!(ok, "{out}");
    let fleet: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let (requests, errs) = figures(&fleet, "web");
    eprintln!("leader's fleet view of web: {requests} requests, {errs} errors (the load: {answered}, {errors})");
    assert!(requests >= answered, "the leader counts the other replica's proxy: {fleet:?}");
    assert_eq!(errs, errors, "every 503, exactly once: {fleet:?}");

    // A NACK by that proxy reaches the leader's `proxy_nack` rule through
    // the other replica's report: a listener on the proxy's admin port
    // cannot bind.
    let nack_rule = format!(
        "kind: AlertRule\nmetadata: {{name: nacks}}\nspec:\n  metric: proxy_nack\n  above: 0\n  for: 500ms\n  webhooks: [{}]\n",
        rx.url("/nack")
    );
    let bad = rds_listener("taken", &nodes(&["legate-proxy"]), admin, "main");
    std::fs::write(&file, nack_rule + "---\n" + &bad).expect("write");
    let (ok, out) = ctl_tls(d, l_api, tok, &["apply", "-f", file.to_str().expect("path")]);
    assert!(ok, "{out}");
    let nacked = wait_for("the leader's proxy_nack webhook", Duration::from_secs(20), || {
        rx.received().into_iter().find(|p| p["status"] == "firing" && p["groupLabels"]["alertname"] == "nacks")
    });
    eprintln!("proxy_nack fired on the leader: {}", nacked["commonAnnotations"]);
    assert!(nacked.to_string().contains("legate-proxy"), "the NACKing node is named: {nacked}");
}

/// A proxy calling the rate limit service of the replica on `xds`: one
/// listener whose requests carry `x-user` as the descriptor `user` in
/// domain `shared`.
fn rate_limited_proxy(admin: u16, listen: u16, xds: u16, echo: u16) -> String {
    use harness::config::{bootstrap, cluster, hcm_vhost, listener};
    let h2 = ", typed_extension_protocol_options: {envoy.extensions.upstreams.http.v3.HttpProtocolOptions: {\"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions, explicit_http_config: {http2_protocol_options: {}}}}";
    let filter = "{name: envoy.filters.http.ratelimit, typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit, domain: shared, enable_x_ratelimit_headers: DRAFT_VERSION_03, timeout: 2s, rate_limit_service: {grpc_service: {envoy_grpc: {cluster_name: rls}}, transport_api_version: V3}}}, ";
    let vhost = "rate_limits: [{actions: [{request_headers: {header_name: x-user, descriptor_key: user}}]}], routes: [{match: {prefix: \"/\"}, route: {cluster: echo}}]";
    let chain = format!("{{filters: [{}]}}", hcm_vhost("rl", vhost, filter, ""));
    bootstrap(admin, &[listener("rl", listen, &chain)], &[cluster("echo", echo, ""), cluster("rls", xds, h2)])
}

/// Statuses of `n` requests for `user`, alternately through each port,
/// `gap` apart.
fn alternate(ports: [u16; 2], user: &str, n: usize, gap: Duration) -> Vec<u16> {
    (0..n)
        .map(|i| {
            let r = http_request(addr(ports[i % 2]), "GET", "/", "app", &[("x-user", user)], "");
            std::thread::sleep(gap);
            r.map_or(0, |r| r.status)
        })
        .collect()
}

/// Global rate limits over two replicas: a real Envoy asks replica-0's
/// rate limit service, a `legate proxy` replica-1's; a limit of 20 a minute
/// on one user, 60 requests sent alternately through the two proxies, lets
/// about 20 through in all (each replica adds the other's counts, written
/// every 100 ms), where counting per replica let 40 through.
#[test]
fn replicas_share_global_rate_limit_counts() {
    const LIMIT: usize = 20;
    let dir = TempDir::new("etcd-ratelimit");
    let etcd = Etcd::start(dir.path());
    let (_echo, echo) = echo("rl-echo", dir.path());
    let r0 = replica("replica-0", &etcd, dir.path());
    let r1 = replica("replica-1", &etcd, dir.path());
    let limits = format!("kind: RateLimit\nmetadata: {{name: shared}}\nspec:\n  domain: shared\n  descriptors:\n  - key: user\n    rate_limit: {{unit: minute, requests_per_unit: {LIMIT}}}\n");
    r0.apply(dir.path(), &limits);

    let ports = [free_port(), free_port()];
    let (envoy_admin, legate_admin) = (free_port(), free_port());
    let envoy_boot = dir.path().join("envoy-rl.yaml");
    std::fs::write(&envoy_boot, rate_limited_proxy(envoy_admin, ports[0], r0.xds, echo)).expect("bootstrap");
    let legate_boot = dir.path().join("legate-rl.yaml");
    std::fs::write(&legate_boot, rate_limited_proxy(legate_admin, ports[1], r1.xds, echo)).expect("bootstrap");
    let mut envoy = spawn_envoy("envoy-rl", &envoy_boot, "warning", &[], dir.path());
    let mut legate = spawn_legate("legate-rl", &legate_boot, &[], dir.path());
    wait_ready(envoy_admin, &mut envoy);
    wait_ready(legate_admin, &mut legate);
    // Both replicas serve the limit (replica-1 loads the revision from etcd):
    // an answer carries its `x-ratelimit-limit`.
    for port in ports {
        wait_for("the replica to serve the limit", Duration::from_secs(10), || {
            let r = http_request(addr(port), "GET", "/", "app", &[("x-user", "warm-up")], "").ok()?;
            r.headers.iter().any(|(k, v)| k == "x-ratelimit-limit" && v.starts_with(&LIMIT.to_string())).then_some(())
        });
    }

    // 60 requests, 40 ms apart: each proxy sends one every 80 ms. A run
    // that straddles a minute (two windows) is sent again for a new user.
    let minute = || SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs() / 60;
    let statuses = (0..3)
        .find_map(|run| {
            let started = minute();
            let statuses = alternate(ports, &format!("user-{run}"), 3 * LIMIT, Duration::from_millis(40));
            (minute() == started).then_some(statuses)
        })
        .expect("a run within one minute");
    let allowed: Vec<usize> =
        (0..2).map(|p| statuses.iter().skip(p).step_by(2).filter(|s| **s == 200).count()).collect();
    let total = allowed[0] + allowed[1];
    println!(
        "limit {LIMIT}/min: {total} let through (Envoy via replica-0: {}, Legate via replica-1: {}); {statuses:?}",
        allowed[0], allowed[1]
    );
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "only 200 and 429: {statuses:?}");
    // Over-admission is bounded by the hits one replica makes before the
    // other's counts reach it: 100 ms of writes plus etcd's delay, here
    // allowed 400 ms, 5 requests of the other proxy.
    assert!((LIMIT..=LIMIT + 5).contains(&total), "{total} let through, limit {LIMIT} over both replicas");
}
