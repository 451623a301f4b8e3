//! A listener that waits for its routes (RDS) on a port something else
//! holds: Envoy 1.40 binds a listener's sockets when it is added, so it
//! refuses the Listener (LDS) update, never asks for the routes, and says
//! `Error adding/updating listener(s) <name>: cannot bind '<addr>': <why>`.
//! `legate proxy` must NACK the same type with the same words. Compared
//! through what the control plane records of each proxy's NACKs.

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
