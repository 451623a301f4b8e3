//! Health checks delegated to proxies (Envoy's Health Discovery Service):
//! a service of three endpoints with `health_check.hds: true`, no active
//! health check in any proxy's config; a real Envoy 1.40, or `legate proxy`,
//! with `hds_config` checks them for the control plane; one endpoint stops:
//! it leaves the EDS of both an Envoy and a `legate proxy` within seconds
//! (measured), and comes back when it is started again.

mod harness;

use harness::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// Service `web` on the three ports, checked over HDS.
fn web(ports: &[u16]) -> String {
    let eps: String = ports.iter().map(|p| format!("  - {{ address: 127.0.0.1, port: {p} }}\n")).collect();
    format!(
        "kind: Service\nmetadata: {{ name: web }}\nspec:\n  endpoints:\n{eps}  health_check: {{ path: /, interval: 0.5s, timeout: 0.4s, unhealthy_threshold: 2, healthy_threshold: 1, hds: true }}\n"
    )
}

/// The checks `/v1/abnormal` shows: (`address:port`, healthy, checked by).
fn checks(cp: &ControlPlane) -> Vec<(String, bool, String)> {
    let v = cp.get("/v1/abnormal").unwrap_or(Value::Null);
    let mut out: Vec<(String, bool, String)> = v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
            (s("endpoint"), c["healthy"] == true, s("checked_by"))
        })
        .collect();
    out.sort();
    out
}

/// Waits until both proxies hold exactly `ports` for `web`: how long it took.
fn until_both(admins: &[u16], ports: &[u16], what: &str, from: Instant) -> Duration {
    wait_for(what, Duration::from_secs(15), || {
        admins.iter().all(|a| cluster_ports(*a, "web") == ports).then(|| from.elapsed())
    })
}

fn no_active_health_checks(cp: &ControlPlane, node: &str) {
    let (ok, out) = cp.ctl(&["get", "envoy", "clusters", "--node", node, "-o", "json"]);
    assert!(ok && out.contains("\"web\""), "{out}");
    assert!(!out.contains("health_checks"), "a proxy got an active health check: {out}");
}

fn start(d: &Path) -> (ControlPlane, Vec<(Proc, u16)>) {
    let ups: Vec<(Proc, u16)> = ["one", "two", "three"].iter().map(|n| echo(n, d)).collect();
    let cp = ControlPlane::start(d);
    let mut ports: Vec<u16> = ups.iter().map(|(_, p)| *p).collect();
    ports.sort_unstable();
    cp.apply(d, &web(&ports));
    (cp, ups)
}

/// `checker` (with `hds_config`) checks for the control plane; the other
/// proxy only receives EDS. An endpoint stops, then starts again.
fn stop_and_start(checker: Bin) {
    let name = if checker == Bin::Envoy { "envoy" } else { "legate" };
    let dir = TempDir::new(&format!("hds-{name}"));
    let d = dir.path();
    let (cp, mut ups) = start(d);
    let mut all: Vec<u16> = ups.iter().map(|(_, p)| *p).collect();
    all.sort_unstable();
    let other = if checker == Bin::Envoy { Bin::Legate } else { Bin::Envoy };
    let checking = attach_with(checker, &cp, "hds-checker", &["--hds"], d);
    let receiving = attach(other, &cp, "eds-only", false, d);
    let admins = [checking.admin, receiving.admin];
    until_both(&admins, &all, "both proxies to hold web's three endpoints", Instant::now());
    no_active_health_checks(&cp, "hds-checker");
    no_active_health_checks(&cp, "eds-only");
    let reported = (0..150).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        let c = checks(&cp);
        c.len() == 3 && c.iter().all(|(_, ok, by)| *ok && by == "hds-checker")
    });
    assert!(reported, "no HDS report on the three: {:?}\n{}\n{}", checks(&cp), cp.output(), checking.proc_.output());

    // Stop the second endpoint.
    let (mut stopped, port) = ups.remove(1);
    let t0 = Instant::now();
    stopped.kill();
    let rest: Vec<u16> = all.iter().copied().filter(|p| *p != port).collect();
    let left = until_both(&admins, &rest, "the stopped endpoint to leave both proxies' EDS", t0);
    let c = checks(&cp);
    assert!(c.contains(&(format!("127.0.0.1:{port}"), false, "hds-checker".into())), "{c:?}");
    let (ok, table) = cp.ctl(&["abnormal"]);
    assert!(ok && table.contains(&format!("127.0.0.1:{port}")) && table.contains("unhealthy"), "{table}");

    // Start it again on the same port.
    let t1 = Instant::now();
    let _again = echo_at("two-again", port, &[], d);
    let back = until_both(&admins, &all, "the endpoint back in both proxies' EDS", t1);
    eprintln!(
        "HDS, {name} checking (every 500 ms, 2 failures): a stopped endpoint left the EDS of Envoy and legate proxy after {left:?}; back {back:?} after it was started again"
    );
    assert!(left < Duration::from_secs(6), "took {left:?}");
    assert!(back < Duration::from_secs(6), "took {back:?}");
}

#[test]
fn envoy_checks_and_a_stopped_endpoint_leaves_the_fleets_eds() {
    stop_and_start(Bin::Envoy);
}

#[test]
fn legate_proxy_checks_and_a_stopped_endpoint_leaves_the_fleets_eds() {
    stop_and_start(Bin::Legate);
}

/// Service `web` whose endpoints say their zone (`labels: {region, zone}`).
fn web_in_zones(endpoints: &[(u16, &str)]) -> String {
    let eps: String = endpoints
        .iter()
        .map(|(p, z)| format!("  - {{ address: 127.0.0.1, port: {p}, labels: {{ region: eu, zone: {z} }} }}\n"))
        .collect();
    format!(
        "kind: Service\nmetadata: {{ name: web }}\nspec:\n  endpoints:\n{eps}  health_check: {{ path: /, interval: 0.5s, timeout: 0.4s, unhealthy_threshold: 2, healthy_threshold: 1, hds: true }}\n"
    )
}

/// Two checkers in two zones (Envoy 1.40 in eu/a, `legate proxy` in eu/b),
/// two endpoints in each: every endpoint is checked by the checker of its
/// zone; an endpoint stopped in each zone is found by that zone's checker
/// and leaves both proxies' EDS.
#[test]
fn endpoints_are_checked_by_the_proxy_in_their_zone() {
    let dir = TempDir::new("hds-zones");
    let d = dir.path();
    let mut ups: Vec<(Proc, u16, &str)> = [("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")]
        .iter()
        .map(|(n, z)| {
            let (p, port) = echo(n, d);
            (p, port, *z)
        })
        .collect();
    let cp = ControlPlane::start(d);
    let zones: Vec<(u16, &str)> = ups.iter().map(|(_, p, z)| (*p, *z)).collect();
    cp.apply(d, &web_in_zones(&zones));
    let mut all: Vec<u16> = zones.iter().map(|(p, _)| *p).collect();
    all.sort_unstable();
    let in_a = attach_with(Bin::Envoy, &cp, "checker-a", &["--hds", "--locality", "eu/a"], d);
    let in_b = attach_with(Bin::Legate, &cp, "checker-b", &["--hds", "--locality", "eu/b"], d);
    let admins = [in_a.admin, in_b.admin];
    until_both(&admins, &all, "both proxies to hold web's four endpoints", Instant::now());
    let checker_of = |zone: &str| if zone == "a" { "checker-a" } else { "checker-b" };
    let expected: Vec<(String, bool, String)> = {
        let mut v: Vec<_> =
            zones.iter().map(|(p, z)| (format!("127.0.0.1:{p}"), true, checker_of(z).to_string())).collect();
        v.sort();
        v
    };
    let t0 = Instant::now();
    let reported = (0..150).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        checks(&cp) == expected
    });
    assert!(reported, "not each checked in its zone: {:?}, expected {expected:?}", checks(&cp));
    let v = cp.get("/v1/abnormal").expect("abnormal");
    let mut checkers: Vec<String> = v["checkers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{} {}/{}", c["node"].as_str().unwrap_or(""), c["locality"]["region"], c["locality"]["zone"]))
        .collect();
    checkers.sort();
    assert_eq!(checkers, ["checker-a \"eu\"/\"a\"", "checker-b \"eu\"/\"b\""], "{v}");
    eprintln!(
        "HDS by zone: each of 4 endpoints reported by its zone's checker {:?} after both held them",
        t0.elapsed()
    );

    // Stop one endpoint in each zone: its zone's checker finds it.
    let mut rest = all.clone();
    for zone in ["a", "b"] {
        let i = ups.iter().position(|(_, _, z)| *z == zone).expect("one in the zone");
        let (mut stopped, port, _) = ups.remove(i);
        let t = Instant::now();
        stopped.kill();
        rest.retain(|p| *p != port);
        let left = until_both(&admins, &rest, "the stopped endpoint to leave both proxies' EDS", t);
        let c = checks(&cp);
        assert!(c.contains(&(format!("127.0.0.1:{port}"), false, checker_of(zone).into())), "{c:?}");
        eprintln!(
            "HDS by zone: an endpoint stopped in zone {zone} (checked by {}) left both EDS after {left:?}",
            checker_of(zone)
        );
        assert!(left < Duration::from_secs(6), "took {left:?}");
    }
}
