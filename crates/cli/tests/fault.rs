//! Abnormal nodes end to end: a gateway proxy (`legate proxy` under its
//! agent) that NACKs a listener only it cannot bind is found abnormal with
//! the NACK as evidence; being an endpoint of a service, it leaves the EDS a
//! real Envoy 1.40 receives (within the service's cap); the control plane
//! restarts it through its agent; still NACKing after the restart, it stays
//! isolated and the `repair_failed` alert fires; fixed, it comes back.

mod harness;

use harness::agent::Agent;
use harness::xds::{hcm_filter, web_resources};
use harness::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// A control plane detecting quickly: lag and down after 2 s, repairs 2 s
/// after a node turns abnormal, verified 6 s after the restart.
fn control_plane(dir: &Path) -> ControlPlane {
    control_plane_verifying(dir, "6s")
}

/// [`control_plane`] verifying repairs `verify` after the restart.
fn control_plane_verifying(dir: &Path, verify: &str) -> ControlPlane {
    let flags = [
        "--alert-interval",
        "200ms",
        "--abnormal-after",
        "2s",
        "--repair-after",
        "2s",
        "--repair-verify",
        verify,
        "--repair-interval",
        "1s",
    ];
    ControlPlane::start_with(dir, free_port(), free_port(), dir.join("cp-data"), &flags)
}

/// Service `gateways` for the node `edge`: one endpoint per (port, node).
fn gateways(endpoints: &[(u16, &str)], max_percent: u32) -> String {
    let eps: String = endpoints
        .iter()
        .map(|(port, node)| format!("  - {{ address: 127.0.0.1, port: {port}, labels: {{ node: {node} }} }}\n"))
        .collect();
    format!(
        "kind: Service\nmetadata: {{ name: gateways, nodes: {{ ids: [edge] }} }}\nspec:\n  endpoints:\n{eps}  isolation: {{ enabled: true, max_percent: {max_percent} }}\n"
    )
}

/// `node` as `GET /v1/abnormal` shows it, when abnormal.
fn abnormal(cp: &ControlPlane, node: &str) -> Option<Value> {
    let v = cp.get("/v1/abnormal")?;
    v["nodes"].as_array()?.iter().find(|n| n["node"] == node).cloned()
}

/// `name`'s state in `/v1/alerts`.
fn alert_state(cp: &ControlPlane, name: &str) -> Option<String> {
    let v = cp.get("/v1/alerts")?;
    let r = v["rules"].as_array()?.iter().find(|r| r["name"] == name)?.clone();
    r["state"].as_str().map(String::from)
}

/// `node`'s agent report as `/v1/proxies` shows it.
fn agent_of(cp: &ControlPlane, node: &str) -> Option<Value> {
    cp.proxies().into_iter().find(|p| p["node"]["id"] == node).map(|p| p["agent"].clone()).filter(|a| !a.is_null())
}

/// A listener for gw-bad only on 127.0.0.1:`port`, its routes inline (so
/// its bind is refused with its LDS update, whatever RDS does).
fn blocked_listener(port: u16, cluster: &str) -> String {
    let routes = format!(
        "route_config: {{ virtual_hosts: [{{ name: all, domains: [\"*\"], routes: [{{ match: {{ prefix: \"/\" }}, route: {{ cluster: {cluster} }} }}] }}] }}"
    );
    format!(
        "kind: Listener\nmetadata: {{ name: blocked-gw, nodes: {{ ids: [gw-bad] }} }}\nspec:\n  name: blocked-gw\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}\n  filter_chains:\n  - filters:\n{}",
        hcm_filter("blocked", &routes)
    )
}

#[test]
fn a_nacking_gateway_is_isolated_restarted_and_left_isolated_with_an_alert() {
    let dir = TempDir::new("fault-nack");
    let d = dir.path();
    let (_up, up) = echo("up", d);
    let (_gw2, gw2) = echo("gw-2", d);
    let (_gw3, gw3) = echo("gw-3", d);
    // Verified 12 s after the restart: a hot restart under load (its parent
    // draining for 4 s) can take more than 6 s to report done.
    let cp = control_plane_verifying(d, "12s");
    // gw-bad serves on gw_port (to the upstream); it is the first of three
    // endpoints of `gateways`, which only `edge` (Envoy) receives.
    let gw_port = free_port();
    cp.apply(d, &web_resources(gw_port, up, &["gw-bad"], "-gw"));
    cp.apply(d, &gateways(&[(gw_port, "gw-bad"), (gw2, "gw-2"), (gw3, "gw-3")], 34));
    let rule = "kind: AlertRule\nmetadata: { name: unrepaired }\nspec: { metric: repair_failed, above: 0, nodes: { ids: [gw-bad] } }\n";
    cp.apply(d, rule);
    let mut agent = Agent::start(&cp, "gw-bad", "legate", None, free_port(), d);
    let a = wait_for("gw-bad's proxy to run", Duration::from_secs(40), || {
        agent_of(&cp, "gw-bad").filter(|a| a["state"] == "running")
    });
    agent.proxy_pids.push(a["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).expect("pid"));
    wait_for("gw-bad to serve", Duration::from_secs(20), || {
        http_get(addr(gw_port), "/", "gw").ok().filter(|r| r.status == 200)
    });
    let edge = attach(Bin::Envoy, &cp, "edge", false, d);
    let sorted = |mut v: Vec<u16>| {
        v.sort();
        v
    };
    let (all, others) = (sorted(vec![gw_port, gw2, gw3]), sorted(vec![gw2, gw3]));
    wait_for("Envoy to hold the three gateways", Duration::from_secs(20), || {
        (cluster_ports(edge.admin, "gateways") == all).then_some(())
    });
    assert!(abnormal(&cp, "gw-bad").is_none(), "{:?}", cp.get("/v1/abnormal"));

    // A listener only gw-bad receives, on a port something else holds.
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = blocker.local_addr().expect("addr").port();
    let bad = blocked_listener(taken, "web-gw");
    let t0 = Instant::now();
    cp.apply(d, &bad);
    let node = wait_for("gw-bad abnormal", Duration::from_secs(10), || abnormal(&cp, "gw-bad"));
    let found = t0.elapsed();
    let nack =
        node["causes"].as_array().and_then(|c| c.iter().find(|c| c["cause"] == "nack")).cloned().expect("nack cause");
    let evidence = nack["evidence"].as_str().unwrap_or("");
    assert!(evidence.contains("Listener") && evidence.contains(&format!("127.0.0.1:{taken}")), "{node}");
    wait_for("gw-bad out of Envoy's EDS", Duration::from_secs(10), || {
        (cluster_ports(edge.admin, "gateways") == others).then_some(())
    });
    let left = t0.elapsed();
    let node = abnormal(&cp, "gw-bad").expect("still abnormal");
    assert_eq!(node["isolated"], serde_json::json!([format!("gateways 127.0.0.1:{gw_port}")]), "{node}");
    eprintln!("NACK: abnormal after {found:?} (evidence: {evidence}); out of Envoy's EDS after {left:?}");

    // The repair: a hot restart through the agent (epoch 1) ...
    let a = wait_for("the repair's restart", Duration::from_secs(15), || {
        agent_of(&cp, "gw-bad").filter(|a| a["epoch"] == 1 && a["state"] == "running")
    });
    let restarted = t0.elapsed();
    agent.proxy_pids.push(a["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).expect("pid"));
    // ... does not help: the new process NACKs the same listener.
    let node = wait_for("the repair to fail", Duration::from_secs(20), || {
        abnormal(&cp, "gw-bad").filter(|n| n["repair"]["state"] == "failed")
    });
    let failed = t0.elapsed();
    assert!(node["repair"]["reason"].as_str().is_some_and(|r| r.contains("after its restart")), "{node}");
    wait_for("the repair_failed alert to fire", Duration::from_secs(5), || {
        (alert_state(&cp, "unrepaired").as_deref() == Some("firing")).then_some(())
    });
    assert!(!cluster_ports(edge.admin, "gateways").contains(&gw_port), "a failed repair stays isolated");
    let (ok, table) = cp.ctl(&["abnormal"]);
    assert!(ok && table.contains("NACK") && table.contains("cannot bind") && table.contains("failed"), "{table}");
    let v = cp.get("/v1/abnormal").expect("abnormal");
    assert_eq!((v["repairs"]["started"].as_u64(), v["repairs"]["failed"].as_u64()), (Some(1), Some(1)), "{v}");
    eprintln!("repair: restarted (epoch 1) after {restarted:?}, failed after {failed:?}; alert firing");

    // Fixed: the node is normal, back in EDS, and the alert resolves.
    let t1 = Instant::now();
    let (ok, out) = cp.ctl(&["delete", "listener", "blocked-gw"]);
    assert!(ok, "{out}");
    let returned = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        cluster_ports(edge.admin, "gateways") == all
    });
    assert!(returned, "gw-bad not back in Envoy's EDS within 10 s: {:?}", cp.get("/v1/abnormal"));
    let back = t1.elapsed();
    assert!(abnormal(&cp, "gw-bad").is_none());
    wait_for("the alert to resolve", Duration::from_secs(5), || {
        (alert_state(&cp, "unrepaired").as_deref() == Some("inactive")).then_some(())
    });
    eprintln!("fixed: back in Envoy's EDS after {back:?}");
    drop(blocker);
}

/// A repair that cures: gw-bad NACKs a listener whose port is held; the
/// port is freed while it is isolated; the control plane restarts it
/// through its agent; the new process binds and ACKs: the node is normal,
/// the repair counted as repaired, back in Envoy's EDS, and neither the
/// `node_abnormal` nor the `repair_failed` alert stays firing.
#[test]
fn a_restart_through_the_agent_cures_a_nacking_gateway() {
    let dir = TempDir::new("fault-cure");
    let d = dir.path();
    let (_up, up) = echo("up", d);
    let (_gw2, gw2) = echo("gw-2", d);
    let (_gw3, gw3) = echo("gw-3", d);
    // The hot restart (its parent draining) may take several seconds on a
    // busy machine: the repair is judged 20 s after it was queued.
    let cp = control_plane_verifying(d, "20s");
    let gw_port = free_port();
    cp.apply(d, &web_resources(gw_port, up, &["gw-bad"], "-gw"));
    cp.apply(d, &gateways(&[(gw_port, "gw-bad"), (gw2, "gw-2"), (gw3, "gw-3")], 34));
    let rules = "kind: AlertRule\nmetadata: { name: gw-abnormal }\nspec: { metric: node_abnormal, above: 0, nodes: { ids: [gw-bad] } }\n---\nkind: AlertRule\nmetadata: { name: unrepaired }\nspec: { metric: repair_failed, above: 0, nodes: { ids: [gw-bad] } }\n";
    cp.apply(d, rules);
    let mut agent = Agent::start(&cp, "gw-bad", "legate", None, free_port(), d);
    let a = wait_for("gw-bad's proxy to run", Duration::from_secs(40), || {
        agent_of(&cp, "gw-bad").filter(|a| a["state"] == "running")
    });
    agent.proxy_pids.push(a["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).expect("pid"));
    let edge = attach(Bin::Envoy, &cp, "edge", false, d);
    let mut all = vec![gw_port, gw2, gw3];
    all.sort_unstable();
    wait_for("Envoy to hold the three gateways", Duration::from_secs(20), || {
        (cluster_ports(edge.admin, "gateways") == all).then_some(())
    });

    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = blocker.local_addr().expect("addr").port();
    let t0 = Instant::now();
    cp.apply(d, &blocked_listener(taken, "web-gw"));
    let node = wait_for("gw-bad abnormal", Duration::from_secs(10), || abnormal(&cp, "gw-bad"));
    assert!(node["causes"].as_array().is_some_and(|c| c.iter().any(|c| c["cause"] == "nack")), "{node}");
    // Freed before the repair (2 s after the node turned abnormal).
    drop(blocker);
    wait_for("gw-bad out of Envoy's EDS", Duration::from_secs(10), || {
        (!cluster_ports(edge.admin, "gateways").contains(&gw_port)).then_some(())
    });
    wait_for("the node_abnormal alert to fire", Duration::from_secs(5), || {
        (alert_state(&cp, "gw-abnormal").as_deref() == Some("firing")).then_some(())
    });
    let a = wait_for("the repair's restart", Duration::from_secs(25), || {
        agent_of(&cp, "gw-bad").filter(|a| a["epoch"] == 1 && a["state"] == "running")
    });
    let restarted = t0.elapsed();
    agent.proxy_pids.push(a["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).expect("pid"));
    wait_for("gw-bad normal", Duration::from_secs(15), || abnormal(&cp, "gw-bad").is_none().then_some(()));
    let normal = t0.elapsed();
    let v = cp.get("/v1/abnormal").expect("abnormal");
    assert_eq!((v["repairs"]["repaired"].as_u64(), v["repairs"]["failed"].as_u64()), (Some(1), Some(0)), "{v}");
    wait_for("gw-bad back in Envoy's EDS", Duration::from_secs(10), || {
        (cluster_ports(edge.admin, "gateways") == all).then_some(())
    });
    let back = t0.elapsed();
    wait_for("the alert to resolve", Duration::from_secs(5), || {
        (alert_state(&cp, "gw-abnormal").as_deref() == Some("inactive")).then_some(())
    });
    assert_eq!(alert_state(&cp, "unrepaired").as_deref(), Some("inactive"));
    // The restarted process serves on the once-held port.
    let served = http_get(addr(taken), "/", "gw").map(|r| r.status).ok();
    assert_eq!(served, Some(200), "the listener on the freed port");
    eprintln!(
        "cure: restarted (epoch 1) {restarted:?} after the apply, normal after {normal:?}, back in EDS after {back:?}"
    );
}

/// A hand-written ClusterLoadAssignment names each endpoint's node in its
/// metadata (`filter_metadata.legate.node`): when that node is down, its
/// endpoint leaves what a real Envoy 1.40 receives, and comes back when the
/// node is back.
#[test]
fn a_hand_written_assignment_isolates_the_endpoint_of_a_down_node() {
    let dir = TempDir::new("fault-cla");
    let d = dir.path();
    let (_a, a) = echo("a", d);
    let (_b, b) = echo("b", d);
    let cp = control_plane(d);
    let ep = |port: u16, node: &str| {
        format!(
            "    - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n      metadata: {{ filter_metadata: {{ legate: {{ node: {node} }} }} }}\n"
        )
    };
    let cla = format!(
        "kind: ClusterLoadAssignment\nmetadata: {{ name: handmade, nodes: {{ ids: [edge] }} }}\nspec:\n  cluster_name: handmade\n  endpoints:\n  - lb_endpoints:\n{}{}",
        ep(a, "node-a"),
        ep(b, "node-b")
    );
    cp.apply(d, &[harness::xds::eds_cluster("handmade", ", nodes: { ids: [edge] }"), cla].join("---\n"));
    let mut node_a = attach(Bin::Legate, &cp, "node-a", false, d);
    let edge = attach(Bin::Envoy, &cp, "edge", false, d);
    let mut both = vec![a, b];
    both.sort_unstable();
    wait_for("Envoy to hold both endpoints", Duration::from_secs(20), || {
        (cluster_ports(edge.admin, "handmade") == both).then_some(())
    });
    // The detector must have seen node-a connected (it evaluates once a
    // second) before its stream ends, or it has nothing to call down.
    wait_for("node-a's stream", Duration::from_secs(10), || {
        cp.proxy_ids().contains(&"node-a".to_string()).then_some(())
    });
    std::thread::sleep(Duration::from_millis(2500));
    let t0 = Instant::now();
    node_a.proc_.kill();
    wait_for("node-a's endpoint out of Envoy's EDS", Duration::from_secs(15), || {
        (cluster_ports(edge.admin, "handmade") == vec![b]).then_some(())
    });
    let left = t0.elapsed();
    let node = abnormal(&cp, "node-a").expect("node-a abnormal");
    assert_eq!(node["isolated"], serde_json::json!([format!("handmade 127.0.0.1:{a}")]), "{node}");
    let t1 = Instant::now();
    let _again = attach(Bin::Legate, &cp, "node-a", false, d);
    wait_for("node-a's endpoint back", Duration::from_secs(15), || {
        (cluster_ports(edge.admin, "handmade") == both).then_some(())
    });
    eprintln!("hand-written assignment: node-a down, its endpoint out of Envoy's EDS after {left:?}; back {:?} after it reconnected", t1.elapsed());
}
