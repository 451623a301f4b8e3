//! A listener that waits for its routes (RDS) on a port something else
//! holds: Envoy 1.40 binds a listener's sockets when it is added, so it
//! refuses the Listener (LDS) update, never asks for the routes, and says
//! `Error adding/updating listener(s) <name>: cannot bind '<addr>': <why>`.
//! `legate proxy` must NACK the same type with the same words. Compared
//! through what the control plane records of each proxy's NACKs.
//!
//! And listeners, clusters and an RTDS layer polled over REST xDS
//! (`api_type: REST`) from a server in the test: the requests both send,
//! the config both serve, a change picked up at the next poll, a rejected
//! cluster kept out, and the `update_*` stats.

mod harness;

use harness::xds::web_resources;
use harness::*;
use serde_json::Value;
use std::time::Duration;

/// `node`'s per-type status as `ctl proxies -o json` shows it.
fn types_of(cp: &ControlPlane, node: &str) -> Option<Value> {
    cp.proxies().into_iter().find(|p| p["node"]["id"] == node).map(|p| p["types"].clone())
}

/// The NACK error of each type `node` NACKed.
fn nacks(types: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = types
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(t, s)| s["last_nack"]["error"].as_str().map(|e| (t.clone(), e.to_string())))
        .collect();
    out.sort();
    out
}

#[test]
fn a_warming_listener_that_cannot_bind_is_refused_on_lds_as_envoy_does() {
    let dir = TempDir::new("diff-lds-bind");
    let d = dir.path();
    let (_up, up) = echo("up", d);
    let cp = ControlPlane::start(d);
    let envoy = attach(Bin::Envoy, &cp, "bind-envoy", false, d);
    let legate = attach(Bin::Legate, &cp, "bind-legate", false, d);

    // A listener with its routes over RDS (a route configuration neither
    // proxy holds yet), on a port held without SO_REUSEPORT.
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = blocker.local_addr().expect("addr").port();
    cp.apply(d, &web_resources(taken, up, &["bind-envoy", "bind-legate"], "-bind"));
    let seen = |node: &str| {
        wait_for(&format!("{node} to NACK"), Duration::from_secs(15), || {
            let t = types_of(&cp, node)?;
            let n = nacks(&t);
            (!n.is_empty() && t["Cluster"]["acked_version"] != "").then_some((n, t))
        })
    };
    let (from_envoy, envoy_types) = seen("bind-envoy");
    let (from_legate, legate_types) = seen("bind-legate");
    // Both had the time to ask for and NACK the routes, were they to.
    std::thread::sleep(Duration::from_secs(2));
    let from_envoy_later = nacks(&types_of(&cp, "bind-envoy").expect("envoy"));
    let from_legate_later = nacks(&types_of(&cp, "bind-legate").expect("legate"));
    eprintln!("Envoy 1.40 NACKs: {from_envoy:?}\nlegate proxy NACKs: {from_legate:?}");
    assert_eq!(from_envoy, from_envoy_later, "Envoy's NACKs changed");
    assert_eq!(from_legate, from_legate_later, "legate proxy's NACKs changed");
    assert_eq!(from_envoy.len(), 1, "Envoy NACKs one type: {envoy_types}");
    assert_eq!(from_envoy[0].0, "Listener", "Envoy NACKs the Listener: {envoy_types}");
    let expected = format!("Error adding/updating listener(s) ingress-bind: cannot bind '127.0.0.1:{taken}'");
    assert!(from_envoy[0].1.starts_with(&expected), "Envoy's words changed: {from_envoy:?}");
    assert_eq!(from_legate, from_envoy, "legate proxy's NACK differs from Envoy's: {legate_types}");
    assert!(legate_types["RouteConfiguration"]["last_nack"].is_null(), "{legate_types}");
    // Both still answer their admin.
    for admin in [envoy.admin, legate.admin] {
        assert_eq!(http_get(addr(admin), "/ready", "admin").map(|r| r.status).ok(), Some(200));
    }
    drop(blocker);
}

/// What a REST xDS server in the test serves and saw.
#[derive(Default)]
struct RestState {
    /// Version per path (`/v3/discovery:clusters`, ...).
    versions: std::collections::BTreeMap<String, u32>,
    /// The cluster served from version 3 on is invalid (a negative
    /// `connect_timeout`).
    bad_cluster: bool,
    /// (node, path, host, content type, version asked with), per request.
    seen: Vec<(String, String, String, String, String)>,
}

type Shared = std::sync::Arc<std::sync::Mutex<RestState>>;

/// The resources of a path for `node`, whose listener is on `port`.
fn rest_resources(path: &str, version: u32, bad: bool, port: u16, up: u16) -> (&'static str, Value) {
    use serde_json::json;
    match path {
        "/v3/discovery:clusters" => {
            let t = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
            let timeout = if bad { "-1s" } else { "1s" };
            let la = json!({"cluster_name": "dyn", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": up}}}}]}]});
            (
                t,
                json!([{"@type": t, "name": "dyn", "connect_timeout": timeout, "type": "STATIC", "load_assignment": la}]),
            )
        }
        "/v3/discovery:listeners" => {
            let t = "type.googleapis.com/envoy.config.listener.v3.Listener";
            let routes = json!([
                {"match": {"prefix": "/up"}, "route": {"cluster": "dyn"}},
                {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": format!("v{version}")}}}
            ]);
            let hcm = json!({"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "rest", "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]});
            let chain =
                json!({"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]});
            (
                t,
                json!([{"@type": t, "name": "rest", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}, "filter_chains": [chain]}]),
            )
        }
        _ => {
            let t = "type.googleapis.com/envoy.service.runtime.v3.Runtime";
            (t, json!([{"@type": t, "name": "rest-runtime", "layer": {"test.version": version}}]))
        }
    }
}

/// Answers one request: 304 when the version asked with is the current one.
fn rest_answer(
    state: &Shared,
    path: &str,
    host: &str,
    ctype: &str,
    body: &str,
    ports: &[(String, u16)],
    up: u16,
) -> String {
    let req: Value = serde_json::from_str(body).unwrap_or_default();
    let node = req["node"]["id"].as_str().unwrap_or_default().to_string();
    let asked = req["version_info"].as_str().unwrap_or_default().to_string();
    let mut s = state.lock().unwrap();
    s.seen.push((node.clone(), path.to_string(), host.to_string(), ctype.to_string(), asked.clone()));
    let version = s.versions.get(path).copied().unwrap_or(1);
    let port = ports.iter().find(|(n, _)| *n == node).map_or(0, |(_, p)| *p);
    if asked == version.to_string() {
        return "HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n".to_string();
    }
    let bad = s.bad_cluster && version >= 3;
    let (type_url, resources) = rest_resources(path, version, bad, port, up);
    let out = serde_json::json!({"version_info": version.to_string(), "type_url": type_url, "resources": resources})
        .to_string();
    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{out}", out.len())
}

/// Serves one connection's requests (HTTP/1.1, kept alive) until it closes.
fn rest_connection(mut stream: std::net::TcpStream, state: Shared, ports: Vec<(String, u16)>, up: u16) {
    use std::io::{BufRead, BufReader, Read, Write};
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or_default().to_string();
        let (mut host, mut ctype, mut len) = (String::new(), String::new(), 0usize);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((h, ""));
            match k.to_ascii_lowercase().as_str() {
                "host" => host = v.trim().to_string(),
                "content-type" => ctype = v.trim().to_string(),
                "content-length" => len = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
        let mut body = vec![0u8; len.min(1 << 20)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer = rest_answer(&state, &path, &host, &ctype, &String::from_utf8_lossy(&body), &ports, up);
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// A bootstrap polling CDS, LDS and an RTDS layer over REST from `xds`.
fn rest_bootstrap(who: &str, admin: u16, xds: u16) -> String {
    let source = "{resource_api_version: V3, api_config_source: {api_type: REST, transport_api_version: V3, refresh_delay: 0.5s, cluster_names: [xds]}}";
    format!(
        "node: {{id: {who}, cluster: rest-test}}\ndynamic_resources:\n  cds_config: {source}\n  lds_config: {source}\nlayered_runtime: {{layers: [{{name: rtds, rtds_layer: {{name: rest-runtime, rtds_config: {source}}}}}]}}\n{}",
        harness::config::bootstrap(admin, &[], &[harness::config::cluster("xds", xds, "")])
    )
}

#[test]
fn rest_xds_polls_like_envoy() {
    let dir = TempDir::new("diff-rest-xds");
    let d = dir.path();
    let (_up, up) = echo("up", d);
    let state: Shared = Default::default();
    let ports = vec![("envoy".to_string(), free_port()), ("legate".to_string(), free_port())];
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let xds = server.local_addr().expect("addr").port();
    {
        let (state, ports) = (state.clone(), ports.clone());
        std::thread::spawn(move || {
            for stream in server.incoming().flatten() {
                let (state, ports) = (state.clone(), ports.clone());
                std::thread::spawn(move || rest_connection(stream, state, ports, up));
            }
        });
    }
    let [envoy, legate] = both(d, &[], &[], |who, admin, _| rest_bootstrap(who, admin, xds));
    let sides = [(&envoy, ports[0].1), (&legate, ports[1].1)];
    let body = |port: u16, path: &str| http_get(addr(port), path, "example.com").ok().map(|r| (r.status, r.body));
    let serves = |want: &str| {
        for (side, port) in sides {
            wait_for(&format!("{} to serve {want}", side.who), Duration::from_secs(10), || {
                (body(port, "/").map(|b| b.1).as_deref() == Some(want)).then_some(())
            });
            let runtime = harness::admin::admin_json(side.admin, "/runtime");
            let version = runtime["entries"]["test.version"]["final_value"].as_str().map(str::to_string);
            assert_eq!(version.as_deref(), Some(&want[1..]), "{}: the RTDS layer", side.who);
            assert_eq!(body(port, "/up/x").map(|b| b.0), Some(200), "{}: the CDS cluster", side.who);
        }
    };
    serves("v1");
    // A change of every type, picked up at the next poll.
    state.lock().unwrap().versions =
        ["clusters", "listeners", "runtime"].map(|t| (format!("/v3/discovery:{t}"), 2)).into();
    serves("v2");
    // A cluster both must refuse: the last good one keeps serving.
    {
        let mut s = state.lock().unwrap();
        s.bad_cluster = true;
        s.versions.insert("/v3/discovery:clusters".into(), 3);
    }
    for (side, _) in sides {
        wait_for(&format!("{} to reject", side.who), Duration::from_secs(10), || {
            (side.stat("cluster_manager.cds.update_rejected") >= 1).then_some(())
        });
    }
    for (side, port) in sides {
        assert_eq!(body(port, "/up/x").map(|b| b.0), Some(200), "{}: the last good cluster", side.who);
        for stat in ["cluster_manager.cds", "listener_manager.lds", "runtime"] {
            let (success, attempt) =
                (side.stat(&format!("{stat}.update_success")), side.stat(&format!("{stat}.update_attempt")));
            assert_eq!(success, 2, "{}: {stat}.update_success", side.who);
            assert!(attempt > success, "{}: {stat}.update_attempt {attempt}, polled after each", side.who);
            let log = || std::fs::read_to_string(d.join(format!("{}.log", side.who))).unwrap_or_default();
            assert_eq!(
                side.stat(&format!("{stat}.update_failure")),
                0,
                "{}: {stat}.update_failure\n{}",
                side.who,
                log()
            );
        }
    }
    // The requests: POSTed to the type's path, named by the cluster, JSON,
    // each after the first repeating the last version accepted.
    let seen = state.lock().unwrap().seen.clone();
    let shape = |node: &str| {
        let mut s: Vec<(String, String, String, String)> =
            seen.iter().filter(|r| r.0 == node).map(|r| (r.1.clone(), r.2.clone(), r.3.clone(), r.4.clone())).collect();
        s.sort();
        s.dedup();
        s
    };
    eprintln!("Envoy asked: {:?}\nLegate asked: {:?}", shape("envoy"), shape("legate"));
    assert!(shape("envoy").contains(&(
        "/v3/discovery:clusters".into(),
        "xds".into(),
        "application/json".into(),
        "2".into()
    )));
    assert_eq!(shape("legate"), shape("envoy"), "what each asked for");
}
