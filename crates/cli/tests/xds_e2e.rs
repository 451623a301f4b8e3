//! xDS end to end: the control plane driving real Envoy 1.40 and `legate proxy`,
//! over state-of-the-world and delta ADS.

mod harness;

use harness::certs::openssl_ca_server_client;
use harness::load::under_load;
use harness::xds::web_resources as resources;
use harness::*;
use serde_json::Value;
use std::time::Duration;

/// `/config_dump` shows the dynamic cluster, listener and route configuration
/// with their versions, as Envoy lays them out.
fn check_config_dump(admin: u16) {
    let v = admin_json(admin, "/config_dump");
    let config = |ty: &str| -> Value {
        v["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["@type"].as_str().is_some_and(|t| t.ends_with(&format!(".{ty}"))))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let clusters = config("ClustersConfigDump");
    let web =
        clusters["dynamic_active_clusters"].as_array().into_iter().flatten().find(|c| c["cluster"]["name"] == "web");
    let web = web.unwrap_or_else(|| panic!("no dynamic cluster web in {clusters}"));
    assert!(web["version_info"].as_str().is_some_and(|s| !s.is_empty()) && web["last_updated"].is_string(), "{web}");
    let listeners = config("ListenersConfigDump");
    let l = listeners["dynamic_listeners"].as_array().into_iter().flatten().find(|l| l["name"] == "ingress");
    let l = l.unwrap_or_else(|| panic!("no dynamic listener ingress in {listeners}"));
    assert!(l["active_state"]["version_info"].is_string(), "{l}");
    let routes = config("RoutesConfigDump");
    assert!(
        routes["dynamic_route_configs"].as_array().into_iter().flatten().any(|r| r["route_config"]["name"] == "main"),
        "no dynamic route config main in {routes}"
    );
}

/// Apply, serve, move endpoints under load, NACK, delete: one client kind and mode.
fn lifecycle(client: Bin, delta: bool) {
    let dir = TempDir::new(&format!("xds-{client:?}-{delta}"));
    let (_u1, p1) = echo("one", dir.path());
    let (_u2, p2) = echo("two", dir.path());
    let cp = ControlPlane::start(dir.path());
    let listen = free_port();
    cp.apply(dir.path(), &resources(listen, p1, &[], ""));
    let node = format!("{client:?}-{}", if delta { "delta" } else { "sotw" }).to_lowercase();
    let proxy = attach(client, &cp, &node, delta, dir.path());
    let first = wait_for("traffic through the proxy", Duration::from_secs(20), || upstream_of(listen));
    assert_eq!(first, "one");
    // CSDS reports what this proxy ACKed.
    let acked = wait_for("CSDS to show the cluster ACKed", Duration::from_secs(10), || {
        csds(cp.xds, &node)
            .into_iter()
            .find(|(ty, name, status)| ty.ends_with("Cluster") && name == "web" && *status == 3)
    });
    assert_eq!(acked.1, "web");
    check_config_dump(proxy.admin);

    // Move the endpoint while requests flow: none may fail.
    let (ok, failed) = under_load(listen, Duration::from_millis(300), || {
        cp.apply(dir.path(), &resources(listen, p2, &[], ""));
        wait_for("endpoints to move", Duration::from_secs(10), || upstream_of(listen).filter(|u| u == "two"));
    });
    assert_eq!(failed, 0, "requests failed during the endpoint change ({ok} ok)");
    assert!(ok > 10);

    // Change the listener itself (its HCM) under load: new connections get the
    // new filter chain, nothing fails.
    let (ok, failed) = under_load(listen, Duration::from_millis(200), || {
        let renamed = resources(listen, p2, &[], "")
            .replace("stat_prefix: ingress", "stat_prefix: ingress\n        server_name: legate-v2");
        cp.apply(dir.path(), &renamed);
        wait_for("the new listener config", Duration::from_secs(10), || {
            http_get(addr(listen), "/", "app").ok().filter(|r| r.header("server") == Some("legate-v2"))
        });
    });
    assert_eq!(failed, 0, "requests failed during the listener change ({ok} ok)");

    // A listener on a port something else holds: valid config, rejected by the
    // proxy at bind time. The NACK shows up; the old listener keeps serving.
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = blocker.local_addr().expect("addr").port();
    let bad = resources(taken, p2, &[], "").replace("name: ingress", "name: ingress-bad");
    let bad: String = bad.split("---").filter(|d| d.contains("kind: Listener")).collect();
    cp.apply(dir.path(), &bad);
    let nack = wait_for("a NACK in ctl proxies", Duration::from_secs(15), || {
        cp.proxies()
            .into_iter()
            .find(|p| p["node"]["id"] == node.as_str())
            .and_then(|p| p["types"]["Listener"]["last_nack"]["error"].as_str().map(str::to_owned))
    });
    assert!(
        nack.contains(&taken.to_string()) || nack.to_lowercase().contains("bind") || nack.contains("address"),
        "NACK error: {nack}"
    );
    assert_eq!(upstream_of(listen).as_deref(), Some("two"), "still serving after the NACK");
    let (ok_del, out) = cp.ctl(&["delete", "listener", "ingress-bad"]);
    assert!(ok_del, "{out}");

    // Delete the cluster: the proxy drops it.
    let (ok_del, out) = cp.ctl(&["delete", "cluster", "web"]);
    assert!(ok_del, "{out}");
    wait_for("cluster removal", Duration::from_secs(10), || {
        http_get(addr(proxy.admin), "/clusters", "admin").ok().filter(|r| !r.body.contains("web::")).map(|_| ())
    });
    assert_eq!(http_get(addr(listen), "/", "app").expect("request").status, 503, "route to a removed cluster");
}

#[test]
fn envoy_sotw_lifecycle() {
    lifecycle(Bin::Envoy, false);
}

#[test]
fn envoy_delta_lifecycle() {
    lifecycle(Bin::Envoy, true);
}

#[test]
fn legate_sotw_lifecycle() {
    lifecycle(Bin::Legate, false);
}

#[test]
fn legate_delta_lifecycle() {
    lifecycle(Bin::Legate, true);
}

/// Envoy and Legate on one control plane, each selected by `metadata.nodes`;
/// then the control plane restarts and both come back to the same config.
#[test]
fn mixed_fleet_and_control_plane_restart() {
    let dir = TempDir::new("xds-mixed");
    let (_u1, p1) = echo("one", dir.path());
    let (_u2, p2) = echo("two", dir.path());
    let cp = ControlPlane::start(dir.path());
    let (le, ll) = (free_port(), free_port());
    cp.apply(dir.path(), &resources(le, p1, &["envoy-1"], "-e"));
    cp.apply(dir.path(), &resources(ll, p2, &["legate-1"], "-l"));
    let envoy = attach(Bin::Envoy, &cp, "envoy-1", false, dir.path());
    let legate = attach(Bin::Legate, &cp, "legate-1", true, dir.path());
    assert_eq!(wait_for("envoy traffic", Duration::from_secs(20), || upstream_of(le)), "one");
    assert_eq!(wait_for("legate traffic", Duration::from_secs(20), || upstream_of(ll)), "two");
    // Each got only its own listener.
    let listeners = |port| http_get(addr(port), "/listeners", "admin").expect("listeners").body;
    assert!(listeners(envoy.admin).contains("ingress-e") && !listeners(envoy.admin).contains("ingress-l"));
    assert!(listeners(legate.admin).contains("ingress-l") && !listeners(legate.admin).contains("ingress-e"));
    assert_eq!(cp.proxies().len(), 2);
    // The console is served beside the API and reads it (the browser tests
    // in console.rs check what it shows).
    let page = http_get(addr(cp.api), "/", "cp").expect("console");
    assert!(page.status == 200 && page.body.contains("Legate console") && page.body.contains("/ui/console.js"));
    let script = http_get(addr(cp.api), "/ui/console.js", "cp").expect("console script");
    assert!(script.status == 200 && script.body.contains("/v1/proxies"));

    // Kill the control plane: traffic keeps flowing on the last config.
    let (xds, api, data) = (cp.xds, cp.api, cp.data.clone());
    drop(cp);
    for _ in 0..20 {
        assert_eq!(upstream_of(le).as_deref(), Some("one"));
        assert_eq!(upstream_of(ll).as_deref(), Some("two"));
    }
    // Restart on the same store: both reconnect and hold the same config.
    let cp = ControlPlane::start_at(dir.path(), xds, api, data);
    wait_for("both proxies to reconnect", Duration::from_secs(40), || (cp.proxies().len() == 2).then_some(()));
    let stat = |port| http_get(addr(port), "/stats?filter=control_plane.connected_state", "admin").expect("stats").body;
    wait_for("legate connected_state 1", Duration::from_secs(10), || {
        stat(legate.admin).contains("connected_state: 1").then_some(())
    });
    assert_eq!(upstream_of(le).as_deref(), Some("one"));
    assert_eq!(upstream_of(ll).as_deref(), Some("two"));
}

/// Invalid resources are refused at apply, with field paths, and nothing is published.
#[test]
fn apply_refuses_invalid_resources() {
    let dir = TempDir::new("xds-invalid");
    let cp = ControlPlane::start(dir.path());
    let bad = "kind: Cluster\nmetadata: { name: c }\nspec: { name: c, connect_timeout: -1s, lb_policy: NOPE }\n";
    let f = dir.path().join("bad.yaml");
    std::fs::write(&f, bad).expect("write");
    let (ok, out) = cp.ctl(&["apply", "-f", f.to_str().expect("path")]);
    assert!(!ok);
    assert!(out.contains("Cluster/c") && out.contains("spec."), "{out}");
    let mismatch = "kind: Cluster\nmetadata: { name: a }\nspec: { name: b, connect_timeout: 1s }\n";
    std::fs::write(&f, mismatch).expect("write");
    let (ok, out) = cp.ctl(&["apply", "-f", f.to_str().expect("path")]);
    assert!(!ok && out.contains("spec.name"), "{out}");
    let (ok, out) = cp.ctl(&["get", "clusters", "-o", "json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(0), "nothing was published");

    // References: a route to a cluster, an RDS name, an EDS cluster's
    // endpoints that no resource defines are refused, with their fields.
    let route = harness::xds::route_to("main", "", "ghost");
    let listener = harness::xds::rds_listener("ingress", "", free_port(), "main");
    let cluster = harness::xds::eds_cluster("web", "");
    let apply = |yaml: &str, force: bool| {
        std::fs::write(&f, yaml).expect("write");
        let path = f.to_str().expect("path");
        cp.ctl(&if force { vec!["apply", "--force", "-f", path] } else { vec!["apply", "-f", path] })
    };
    let (ok, out) = apply(&route, false);
    assert!(
        !ok && out.contains(
            "RouteConfiguration/main: spec.virtual_hosts[0].routes[0].route.cluster: no Cluster named 'ghost'"
        ),
        "{out}"
    );
    assert!(out.contains("--force"), "the refusal says how to force it: {out}");
    let (ok, out) = apply(&[listener.as_str(), cluster.as_str()].join("---\n"), false);
    assert!(!ok && out.contains("rds.route_config_name: no RouteConfiguration named 'main'"), "{out}");
    assert!(out.contains("Cluster/web: spec.name: no ClusterLoadAssignment named 'web'"), "{out}");
    let (ok, out) = cp.ctl(&["get", "clusters", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert!(ok && v["items"].as_array().map(Vec::len) == Some(0), "nothing was published: {out}");
    // Whole, the batch is accepted; a forced dangling route stays accepted
    // while later applies do not touch it.
    let whole = [
        cluster.clone(),
        harness::xds::endpoints("web", "", 1),
        harness::xds::route_to("main", "", "web"),
        listener.clone(),
    ];
    let (ok, out) = apply(&whole.join("---\n"), false);
    assert!(ok, "{out}");
    let (ok, out) = apply(&harness::xds::route_to("spare", "", "ghost"), true);
    assert!(ok, "forced: {out}");
    let other = "kind: Cluster\nmetadata: { name: other }\nspec: { name: other, connect_timeout: 1s }\n";
    let (ok, out) = apply(other, false);
    assert!(ok, "an apply that touches no broken reference: {out}");
    // A delete is not judged; the next apply naming what it removed is.
    let (ok, out) = cp.ctl(&["delete", "cluster", "other"]);
    assert!(ok, "{out}");
    let (ok, out) = apply(&harness::xds::route_to("main", "", "other"), false);
    assert!(!ok && out.contains("no Cluster named 'other'"), "{out}");
}

/// Revisions: history, a field-level diff, a dry run that changes nothing, a
/// rollback as a new revision, and all of it kept across a kill -9.
#[test]
fn revisions_diff_rollback_and_crash_safety() {
    let dir = TempDir::new("revisions");
    let cp = ControlPlane::start(dir.path());
    cp.apply(dir.path(), &resources(10001, 20001, &[], ""));
    cp.apply(dir.path(), &resources(10001, 20002, &[], ""));
    let (ok, out) = cp.ctl(&["diff", "1", "2"]);
    assert!(ok && out.contains("~ ClusterLoadAssignment/web") && out.contains("port_value: 20001 -> 20002"), "{out}");
    let f = dir.path().join("dry.yaml");
    std::fs::write(&f, resources(10001, 20003, &[], "")).expect("write");
    let (ok, out) = cp.ctl(&["apply", "--dry-run", "-f", f.to_str().expect("path")]);
    assert!(ok && out.contains("20002 -> 20003") && !out.contains("revision 3"), "{out}");
    let (ok, out) = cp.ctl(&["delete", "cluster", "web", "-m", "remove web"]);
    assert!(ok, "{out}");
    let (ok, out) = cp.ctl(&["rollback", "1"]);
    assert!(ok && out.contains("revision 4 restores revision 1") && out.contains("+ Cluster/web"), "{out}");
    let endpoints = |cp: &ControlPlane| {
        let (ok, out) = cp.ctl(&["get", "clusterloadassignment", "web", "-o", "json"]);
        assert!(ok, "{out}");
        let v: Value = serde_json::from_str(&out).expect("json");
        v["spec"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"].as_u64()
    };
    assert_eq!(endpoints(&cp), Some(20001));
    // kill -9 and restart on the same store: every committed revision is there.
    let (xds, api, data) = (cp.xds, cp.api, cp.data.clone());
    drop(cp); // SIGKILL through the process handle
    let cp = ControlPlane::start_at(dir.path(), xds, api, data);
    let (ok, out) = cp.ctl(&["history", "-o", "json"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let revs: Vec<u64> =
        v["revisions"].as_array().into_iter().flatten().filter_map(|r| r["revision"].as_u64()).collect();
    assert_eq!(revs, vec![4, 3, 2, 1]);
    assert_eq!(endpoints(&cp), Some(20001));
    let (ok, out) = cp.ctl(&["get", "clusters"]);
    assert!(ok && out.contains("web"), "{out}");
}

/// Tokens and roles: the first token closes the API; viewers read, editors
/// change, admins manage tokens and read the audit log, which records every
/// change with its author and every denied request.
#[test]
fn tokens_roles_and_audit() {
    let dir = TempDir::new("tokens");
    let cp = ControlPlane::start(dir.path());
    let token_of = |out: &str| {
        out.lines().find(|l| l.starts_with("lgt_")).map(str::to_owned).unwrap_or_else(|| panic!("no token in {out}"))
    };
    let (ok, out) = cp.ctl(&["token", "create", "--role", "admin", "--name", "root"]);
    assert!(ok, "{out}");
    let admin = token_of(&out);
    // Closed now: no token, no access.
    let (ok, out) = cp.ctl(&["get", "clusters"]);
    assert!(!ok && out.contains("401"), "{out}");
    let with = |t: &str, args: &[&str]| {
        let mut all = vec!["--token", t];
        all.extend_from_slice(args);
        cp.ctl(&all)
    };
    let (_, out) = with(&admin, &["token", "create", "--role", "viewer", "--name", "watcher"]);
    let viewer = token_of(&out);
    let (_, out) = with(&admin, &["token", "create", "--role", "editor", "--name", "deployer"]);
    let editor = token_of(&out);
    let f = dir.path().join("r.yaml");
    std::fs::write(&f, resources(10002, 20002, &[], "")).expect("write");
    let file = f.to_str().expect("path");
    let (ok, out) = with(&viewer, &["apply", "-f", file]);
    assert!(!ok && out.contains("403"), "viewer may not apply: {out}");
    let (ok, out) = with(&viewer, &["apply", "--dry-run", "-f", file]);
    assert!(ok, "viewer may dry-run: {out}");
    let (ok, out) = with(&editor, &["apply", "-f", file, "-m", "first deploy"]);
    assert!(ok, "{out}");
    let (ok, out) = with(&viewer, &["get", "clusters"]);
    assert!(ok && out.contains("web"), "{out}");
    let (ok, out) = with(&viewer, &["rollback", "1"]);
    assert!(!ok && out.contains("403"), "viewer may not roll back: {out}");
    let (ok, out) = with(&viewer, &["history", "-o", "json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["revisions"][0]["author"], "deployer", "the revision names its author");
    let (ok, out) = with(&admin, &["audit", "-o", "json"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    assert!(
        entries.iter().any(|e| e["actor"] == "deployer" && e["action"] == "apply" && e["allowed"] == true),
        "{entries:?}"
    );
    assert!(
        entries.iter().any(|e| e["actor"] == "watcher" && e["allowed"] == false),
        "denied apply is audited: {entries:?}"
    );
    assert!(entries.iter().any(|e| e["actor"] == "watcher" && e["action"] == "rollback" && e["allowed"] == false));
    // Stored hashed: the secret is nowhere in the store file.
    let db = std::fs::read(cp.data.join("legate.db")).expect("db");
    let secret = viewer.rsplit('_').next().expect("secret");
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()), "token secret stored in clear");
    // Revoked tokens stop working.
    let (_, out) = with(&admin, &["token", "list", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).expect("json");
    let id = v["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["name"] == "watcher")
        .and_then(|t| t["id"].as_str())
        .expect("id")
        .to_string();
    let (ok, out) = with(&admin, &["token", "revoke", &id]);
    assert!(ok, "{out}");
    let (ok, out) = with(&viewer, &["get", "clusters"]);
    assert!(!ok && out.contains("401"), "{out}");
    let spec = http_get(addr(cp.api), "/v1/openapi.json", "cp").expect("openapi");
    assert!(spec.status == 200 && spec.body.contains("\"openapi\"") && spec.body.contains("/v1/rollback"));
}

/// Registry: instances registered over the API are the service's endpoints in
/// EDS; one that stops heartbeating leaves when its TTL lapses.
#[test]
fn registry_instances_feed_eds() {
    let dir = TempDir::new("registry");
    let (_u1, p1) = echo("one", dir.path());
    let (_u2, p2) = echo("two", dir.path());
    let cp = ControlPlane::start(dir.path());
    let listen = free_port();
    // The service's cluster, listener and routes, but no ClusterLoadAssignment:
    // the registry supplies it once an instance registers (until then the
    // EDS cluster has no assignment: a forced apply).
    let docs: String = resources(listen, 1, &[], "")
        .split("---")
        .filter(|d| !d.contains("kind: ClusterLoadAssignment"))
        .collect::<Vec<_>>()
        .join("---");
    cp.apply_forced(dir.path(), &docs);
    let proxy = attach(Bin::Legate, &cp, "registry-proxy", true, dir.path());
    let register = |port: u16, id: &str, ttl: u64| {
        cp.register(
            "web",
            &format!(
                r#"{{"id": "{id}", "address": "127.0.0.1", "port": {port}, "labels": {{"version": "v1"}}, "ttl_seconds": {ttl}}}"#
            ),
        )
    };
    let started = std::time::Instant::now();
    register(p1, "one", 2);
    wait_for("the registered instance to serve", Duration::from_secs(5), || upstream_of(listen).filter(|u| u == "one"));
    let first = started.elapsed();
    assert!(first < Duration::from_secs(2), "registry to EDS took {first:?}");
    register(p2, "two", 1);
    wait_for("both instances in rotation", Duration::from_secs(5), || {
        let seen: std::collections::BTreeSet<String> = (0..10).filter_map(|_| upstream_of(listen)).collect();
        (seen.len() == 2).then_some(())
    });
    // "one" heartbeats; "two" does not and expires after its 1 s TTL.
    let beats = Heartbeats::start(cp.api, "web", "one", 100);
    wait_for("the silent instance to expire", Duration::from_secs(6), || {
        (0..10).all(|_| upstream_of(listen).as_deref() == Some("one")).then_some(())
    });
    let (ok, out) = cp.ctl(&["instances", "-o", "json"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let ids: Vec<&str> = v["instances"].as_array().into_iter().flatten().filter_map(|i| i["id"].as_str()).collect();
    assert_eq!(ids, vec!["one"]);
    beats.stop();
    drop(proxy);
}

fn gateway_doc(name: &str, node: &str, port: u16) -> String {
    format!(
        r#"kind: Gateway
metadata: {{ name: {name}, nodes: {{ ids: [{node}] }} }}
spec:
  address: 127.0.0.1
  port: {port}
  routes:
  - match: {{ prefix: /v2, headers: {{ x-canary: "1" }} }}
    to: [{{ service: web, subset: v2 }}]
  - match: {{ prefix: /split }}
    to: [{{ service: web, subset: v1, weight: 100 }}, {{ service: web, subset: v2, weight: 0 }}]
  - match: {{ prefix: /old }}
    redirect: {{ path: /new, code: 302 }}
  - match: {{ prefix: /hello }}
    direct_response: {{ status: 200, body: hi }}
  - match: {{ prefix: / }}
    to: [{{ service: web, subset: v1 }}]
    response_headers: {{ x-gw: {name} }}
"#
    )
}

/// Services and Gateways instead of Envoy YAML, compiled to resources that
/// real Envoy and legate proxy both run; references are validated.
#[test]
fn services_and_gateways() {
    let dir = TempDir::new("services");
    let (_u1, p1) = echo("one", dir.path());
    let (_u2, p2) = echo("two", dir.path());
    let cp = ControlPlane::start(dir.path());
    let (ge, gl) = (free_port(), free_port());
    let service = format!(
        "kind: Service\nmetadata: {{ name: web }}\nspec:\n  endpoints:\n  - {{ address: 127.0.0.1, port: {p1}, labels: {{ version: v1 }} }}\n  - {{ address: 127.0.0.1, port: {p2}, labels: {{ version: v2 }} }}\n  subsets: {{ v1: {{ version: v1 }}, v2: {{ version: v2 }} }}\n"
    );
    cp.apply(
        dir.path(),
        &format!(
            "{service}---\n{}---\n{}",
            gateway_doc("edge-envoy", "envoy-gw", ge),
            gateway_doc("edge-legate", "legate-gw", gl)
        ),
    );
    let _envoy = attach(Bin::Envoy, &cp, "envoy-gw", false, dir.path());
    let _legate = attach(Bin::Legate, &cp, "legate-gw", true, dir.path());
    for (port, name) in [(ge, "edge-envoy"), (gl, "edge-legate")] {
        let r = wait_for("the gateway", Duration::from_secs(20), || {
            http_get(addr(port), "/x", "app").ok().filter(|r| r.status == 200)
        });
        assert_eq!((r.header("x-upstream"), r.header("x-gw")), (Some("one"), Some(name)), "default route on {name}");
        let r = http_request(addr(port), "GET", "/v2/y", "app", &[("x-canary", "1")], "").expect("canary");
        assert_eq!(r.header("x-upstream"), Some("two"), "header-matched subset on {name}");
        assert_eq!(http_get(addr(port), "/split", "app").expect("split").header("x-upstream"), Some("one"));
        let r = http_get(addr(port), "/old/z", "app").expect("redirect");
        assert_eq!((r.status, r.header("location")), (302, Some("http://app/new")), "redirect on {name}");
        let r = http_get(addr(port), "/hello", "app").expect("direct");
        assert_eq!((r.status, r.body.as_str()), (200, "hi"));
    }
    // A Route adds a virtual host to a gateway; one for an unknown gateway is refused.
    let route = "kind: Route\nmetadata: { name: api }\nspec:\n  gateway: edge-legate\n  hosts: [api.example]\n  routes:\n  - match: { prefix: / }\n    to: [{ service: web, subset: v2 }]\n";
    cp.apply(dir.path(), route);
    wait_for("the Route's virtual host", Duration::from_secs(10), || {
        http_get(addr(gl), "/x", "api.example").ok().filter(|r| r.header("x-upstream") == Some("two"))
    });
    assert_eq!(http_get(addr(gl), "/x", "other.example").expect("default vhost").header("x-upstream"), Some("one"));
    let f = dir.path().join("route.yaml");
    std::fs::write(&f, route.replace("name: api", "name: lost").replace("gateway: edge-legate", "gateway: nowhere"))
        .expect("write");
    let (ok, out) = cp.ctl(&["apply", "-f", f.to_str().expect("path")]);
    assert!(!ok && out.contains("unknown gateway 'nowhere'"), "{out}");
    // What a node receives, compiled resources included.
    let (ok, out) = cp.ctl(&["get", "envoy", "clusters", "--node", "envoy-gw", "-o", "json"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let names: Vec<&str> = v["items"].as_array().into_iter().flatten().filter_map(|i| i["name"].as_str()).collect();
    assert_eq!(names, vec!["web", "web.v1", "web.v2"]);
    let (ok, out) = cp.ctl(&["get", "envoy", "listeners", "--node", "legate-gw", "-o", "json"]);
    assert!(ok && out.contains("gateway.edge-legate") && !out.contains("gateway.edge-envoy"), "{out}");
    // References are checked: an unknown service or subset, a shared address,
    // and deleting a service still routed to are refused.
    let bad = gateway_doc("broken", "x", ge + 1)
        .replace("service: web, subset: v2 }]", "service: nope }]")
        .replace("subset: v1, weight: 100", "subset: v9, weight: 100");
    let f = dir.path().join("bad.yaml");
    std::fs::write(&f, bad).expect("write");
    let (ok, out) = cp.ctl(&["apply", "-f", f.to_str().expect("path")]);
    assert!(!ok && out.contains("unknown service 'nope'") && out.contains("has no subset 'v9'"), "{out}");
    std::fs::write(&f, gateway_doc("clash", "x", ge)).expect("write");
    let (ok, out) = cp.ctl(&["apply", "-f", f.to_str().expect("path")]);
    assert!(!ok && out.contains("used by both Gateway/clash and Gateway/edge-envoy"), "{out}");
    let (ok, out) = cp.ctl(&["delete", "service", "web"]);
    assert!(!ok && out.contains("unknown service 'web'"), "{out}");
}

/// A watched folder: saving files applies them as a revision within about a
/// second; a resource removed from the files is deleted; invalid files change
/// nothing.
#[test]
fn watched_folder_applies_changes() {
    let dir = TempDir::new("watch");
    let folder = dir.path().join("config");
    std::fs::create_dir_all(&folder).expect("folder");
    let cluster = |name: &str| {
        format!("kind: Cluster\nmetadata: {{ name: {name} }}\nspec: {{ name: {name}, connect_timeout: 1s }}\n")
    };
    std::fs::write(folder.join("a.yaml"), cluster("alpha")).expect("write");
    let watch = folder.to_str().expect("path").to_string();
    let cp =
        ControlPlane::start_with(dir.path(), free_port(), free_port(), dir.path().join("data"), &["--watch", &watch]);
    let clusters = |cp: &ControlPlane| -> Vec<String> {
        let (ok, out) = cp.ctl(&["get", "clusters", "-o", "json"]);
        assert!(ok, "{out}");
        let v: Value = serde_json::from_str(&out).expect("json");
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_owned))
            .collect()
    };
    wait_for("the folder to be applied", Duration::from_secs(5), || (clusters(&cp) == ["alpha"]).then_some(()));
    let started = std::time::Instant::now();
    std::fs::write(folder.join("a.yaml"), format!("{}---\n{}", cluster("beta"), cluster("gamma"))).expect("write");
    wait_for("the edit to be applied", Duration::from_secs(5), || (clusters(&cp) == ["beta", "gamma"]).then_some(()));
    assert!(started.elapsed() < Duration::from_secs(2), "a saved file took {:?}", started.elapsed());
    let (ok, out) = cp.ctl(&["history", "-o", "json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert!(v["revisions"][0]["author"].as_str().is_some_and(|a| a.starts_with("watch:")), "{v}");
    assert!(v["revisions"][0]["changes"].to_string().contains("delete Cluster/alpha"), "{v}");
    // An invalid file is refused; the last good state stays.
    std::fs::write(
        folder.join("b.yaml"),
        "kind: Cluster\nmetadata: { name: bad }\nspec: { name: bad, connect_timeout: -5s }\n",
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(clusters(&cp), ["beta", "gamma"]);
}

/// TLS with client certificates on both listeners: the CLI needs the CA and a
/// client certificate, and a real Envoy gets its config over mutual-TLS xDS.
#[test]
fn tls_and_client_certificates() {
    let dir = TempDir::new("tls");
    let [ca, cert, key, ccert, ckey] = openssl_ca_server_client(dir.path());
    let (xds, api) = (free_port(), free_port());
    let tls = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str(), "--client-ca", ca.as_str()];
    let mut p = spawn_control_plane("control-plane", dir.path(), xds, api, &dir.path().join("data"), &tls);
    let server = format!("https://localhost:{api}");
    let ctl = |extra: &[&str], args: &[&str]| harness::ctl(&server, &[extra, args].concat());
    let full = ["--cacert", ca.as_str(), "--cert", ccert.as_str(), "--key", ckey.as_str()];
    wait_for("the TLS API", Duration::from_secs(20), || {
        if !p.is_running() {
            panic!("control plane exited: {}", p.output());
        }
        ctl(&full, &["history"]).0.then_some(())
    });
    let (ok, out) = ctl(&[], &["history"]);
    assert!(!ok, "an unknown CA must be refused: {out}");
    let (ok, out) = ctl(&["--cacert", &ca], &["history"]);
    assert!(!ok, "no client certificate must be refused: {out}");
    let (_u, up) = echo("one", dir.path());
    let listen = free_port();
    let f = dir.path().join("r.yaml");
    std::fs::write(&f, resources(listen, up, &[], "")).expect("write");
    let (ok, out) = ctl(&full, &["apply", "-f", f.to_str().expect("path")]);
    assert!(ok, "{out}");
    // A bootstrap for mutual-TLS ADS (or TLS without a client certificate),
    // written to a file; with its admin port.
    let tls_bootstrap = |node: &str, client_cert: bool| {
        let admin = free_port();
        let mut extra = vec!["--xds-ca", ca.as_str()];
        if client_cert {
            extra.extend(["--xds-cert", ccert.as_str(), "--xds-key", ckey.as_str()]);
        }
        let boot = ctl_bootstrap(&server, node, xds, admin, &extra);
        let file = dir.path().join(format!("boot-{node}.yaml"));
        std::fs::write(&file, boot).expect("write");
        (file, admin)
    };
    // Envoy over mutual-TLS ADS.
    let (bf, admin) = tls_bootstrap("tls-envoy", true);
    let mut envoy = spawn_envoy("envoy", &bf, "warning", &[], dir.path());
    wait_ready(admin, &mut envoy);
    let up_name =
        wait_for("traffic through Envoy configured over TLS", Duration::from_secs(20), || upstream_of(listen));
    assert_eq!(up_name, "one");
    let (ok, out) = ctl(&full, &["proxies"]);
    assert!(ok && out.contains("tls-envoy"), "{out}");
    // Legate's own proxy over the same mutual-TLS ADS (Envoy stopped first:
    // both would serve the same listener).
    envoy.kill();
    let (bf, admin) = tls_bootstrap("tls-legate", true);
    let mut legate = spawn_legate("legate-proxy", &bf, &["-l", "info"], dir.path());
    wait_ready(admin, &mut legate);
    let up_name = wait_for("traffic through Legate configured over TLS", Duration::from_secs(20), || {
        assert!(legate.is_running(), "legate exited: {}", legate.output());
        upstream_of(listen)
    });
    assert_eq!(up_name, "one");
    let (ok, out) = ctl(&full, &["proxies"]);
    assert!(ok && out.contains("tls-legate"), "{out}");
    // Without a client certificate the control plane refuses Legate's stream.
    let (bf2, admin2) = tls_bootstrap("tls-anonymous", false);
    let mut anonymous = spawn_legate("legate-anonymous", &bf2, &["-l", "info"], dir.path());
    wait_ready(admin2, &mut anonymous);
    std::thread::sleep(Duration::from_millis(1500));
    let connected = |admin: u16| stat(admin, "control_plane.connected_state");
    assert_eq!(connected(admin), Some(1), "the proxy with a client certificate is connected");
    assert_eq!(connected(admin2), Some(0), "the proxy without one is refused");
    let (ok, out) = ctl(&full, &["proxies"]);
    assert!(ok && !out.contains("tls-anonymous"), "{out}");
}

/// A Service's resilience settings (health checks, outlier detection,
/// circuit breakers, retries) reach Envoy and Legate and act: a dead
/// endpoint is failed by health checks and never answers, retries carry the
/// requests that meet it first. Balanced by `least_response_time`: Legate
/// takes its own policy, Envoy skips it for least request (both serve), and
/// `ctl get envoy` says so.
#[test]
fn service_resilience_settings() {
    let dir = TempDir::new("resilience");
    let (_live, live) = echo("live", dir.path());
    let dead = free_port();
    let cp = ControlPlane::start(dir.path());
    let (ge, gl) = (free_port(), free_port());
    let service = format!(
        r#"kind: Service
metadata: {{ name: api }}
spec:
  endpoints: [{{ address: 127.0.0.1, port: {live} }}, {{ address: 127.0.0.1, port: {dead} }}]
  health_check: {{ interval: 0.2s, timeout: 0.2s, unhealthy_threshold: 1 }}
  outlier_detection: {{ consecutive_5xx: 3, max_ejection_percent: 50 }}
  circuit_breakers: {{ max_requests: 100, max_retries: 5 }}
  retries: {{ on: "connect-failure,5xx", attempts: 2 }}
  lb: least_response_time
"#
    );
    let gateway = |name: &str, node: &str, port: u16| {
        format!(
            "kind: Gateway\nmetadata: {{ name: {name}, nodes: {{ ids: [{node}] }} }}\nspec:\n  address: 127.0.0.1\n  port: {port}\n  routes:\n  - match: {{ prefix: / }}\n    to: [{{ service: api }}]\n"
        )
    };
    cp.apply(
        dir.path(),
        &format!("{service}---\n{}---\n{}", gateway("gw-e", "res-envoy", ge), gateway("gw-l", "res-legate", gl)),
    );
    let envoy = attach(Bin::Envoy, &cp, "res-envoy", false, dir.path());
    let legate = attach(Bin::Legate, &cp, "res-legate", true, dir.path());
    for (port, admin, who) in [(ge, envoy.admin, "Envoy"), (gl, legate.admin, "Legate")] {
        wait_for(&format!("{who} to fail the dead endpoint"), Duration::from_secs(20), || {
            let body = http_get(addr(admin), "/clusters", "admin").ok()?.body;
            body.contains(&format!("api::127.0.0.1:{dead}::health_flags::/failed_active_hc")).then_some(())
        });
        for i in 0..20 {
            let r = http_get(addr(port), "/x", "app").expect("request");
            assert_eq!((r.status, r.header("x-upstream")), (200, Some("live")), "{who} request {i}");
        }
        let body = http_get(addr(admin), "/clusters", "admin").expect("clusters").body;
        assert!(body.contains("api::default_priority::max_requests::100"), "{who} breakers:\n{body}");
        assert!(body.contains("api::default_priority::max_retries::5"), "{who} breakers:\n{body}");
    }
    // What the proxies were given.
    let (ok, out) = cp.ctl(&["get", "envoy", "clusters", "--node", "res-legate", "-o", "json"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let api = v["items"].as_array().into_iter().flatten().find(|c| c["name"] == "api").expect("api cluster");
    let spec = &api["resource"];
    assert_eq!(spec["outlier_detection"]["consecutive_5xx"], 3, "{spec}");
    assert!(spec["health_checks"][0]["tcp_health_check"].is_object(), "{spec}");
    let (ok, out) = cp.ctl(&["get", "envoy", "routes", "--node", "res-legate", "-o", "json"]);
    assert!(ok && out.contains("connect-failure,5xx") && out.contains("previous_hosts"), "{out}");
    let (ok, out) = cp.ctl(&["get", "envoy", "clusters", "--node", "res-envoy"]);
    let note = "# cluster api: Legate proxies balance with legate.lb.v1.LeastResponseTime; Envoy proxies skip it and use envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest";
    assert!(ok && out.contains(note), "{out}");
    for (admin, who) in [(envoy.admin, "Envoy"), (legate.admin, "Legate")] {
        let dump = http_get(addr(admin), "/config_dump?resource=dynamic_active_clusters", "admin").expect("dump").body;
        assert!(dump.contains("legate.lb.v1.LeastResponseTime"), "{who} holds the cluster as sent:\n{dump}");
    }
}

/// A `protocol: tcp` Service behind a TCP Gateway: Envoy and Legate both
/// pass the bytes through (tcp_proxy), adding nothing; references to it are
/// checked, and a subset no endpoint belongs to is refused.
#[test]
fn tcp_services_and_subset_checks() {
    let dir = TempDir::new("tcp-svc");
    let (_db, db) = echo("db", dir.path());
    let cp = ControlPlane::start(dir.path());
    let (ge, gl) = (free_port(), free_port());
    let tcp_gateway = |name: &str, node: &str, port: u16| {
        format!(
            "kind: Gateway\nmetadata: {{ name: {name}, nodes: {{ ids: [{node}] }} }}\nspec:\n  address: 127.0.0.1\n  port: {port}\n  tcp: db\n"
        )
    };
    let service = format!(
        "kind: Service\nmetadata: {{ name: db }}\nspec:\n  protocol: tcp\n  endpoints: [{{ address: 127.0.0.1, port: {db} }}]\n"
    );
    cp.apply(
        dir.path(),
        &format!(
            "{service}---\n{}---\n{}",
            tcp_gateway("tcp-e", "tcp-envoy", ge),
            tcp_gateway("tcp-l", "tcp-legate", gl)
        ),
    );
    let _envoy = attach(Bin::Envoy, &cp, "tcp-envoy", false, dir.path());
    let _legate = attach(Bin::Legate, &cp, "tcp-legate", true, dir.path());
    for (port, who) in [(ge, "Envoy"), (gl, "Legate")] {
        let r = wait_for(&format!("{who}'s TCP gateway"), Duration::from_secs(20), || {
            http_get(addr(port), "/through", "db.example").ok().filter(|r| r.status == 200)
        });
        // The echo's own answer, untouched: no HTTP proxy headers added.
        assert_eq!(r.header("x-upstream"), Some("db"), "{who}");
        assert_eq!(r.header("server"), None, "{who} passed the bytes through");
        assert_eq!(r.header("x-envoy-upstream-service-time"), None, "{who}");
        let body: Value = serde_json::from_str(&r.body).expect("echo json");
        assert_eq!(body["headers"]["x-request-id"], Value::Null, "{who}: no HTTP processing on the way");
    }
    let refuse = |yaml: &str, expect: &str| {
        let f = dir.path().join(format!("bad-{}.yaml", free_port()));
        std::fs::write(&f, yaml).expect("write");
        let (ok, out) = cp.ctl(&["apply", "-f", f.to_str().expect("path")]);
        assert!(!ok && out.contains(expect), "expected '{expect}': {out}");
    };
    // HTTP routes to a tcp service, and Routes on a tcp gateway, are refused.
    refuse(
        &format!(
            "kind: Gateway\nmetadata: {{ name: http-to-tcp }}\nspec:\n  address: 127.0.0.1\n  port: {}\n  routes:\n  - match: {{ prefix: / }}\n    to: [{{ service: db }}]\n",
            free_port()
        ),
        "is tcp: reach it through a Gateway's spec.tcp",
    );
    refuse(
        "kind: Route\nmetadata: { name: r }\nspec:\n  gateway: tcp-l\n  hosts: [x]\n  routes:\n  - match: { prefix: / }\n    direct_response: { status: 200 }\n",
        "is a tcp gateway",
    );
    // A subset no listed endpoint belongs to.
    refuse(
        &format!(
            "kind: Service\nmetadata: {{ name: web }}\nspec:\n  endpoints: [{{ address: 127.0.0.1, port: {db}, labels: {{ version: v1 }} }}]\n  subsets: {{ v2: {{ version: v2 }} }}\n"
        ),
        "no endpoint has the labels of subset 'v2'",
    );
}
