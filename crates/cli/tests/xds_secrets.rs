//! SDS over ADS end to end: `legate control-plane` serves `Secret`
//! resources to a real Envoy 1.40 and to `legate proxy` (state of the world
//! and delta). A listener naming a secret warms until the secret arrives; a
//! secret replaced with `legate ctl apply` reaches new connections while a
//! connection opened before keeps working; the REST API and `ctl get` show
//! each secret's certificate expiry.

mod harness;

use harness::certs::{server, Ca, Issued};
use harness::tls::Conn;
use harness::xds::{ads_tls_listener, ads_tls_upstream, ca_secret, tls_secret};
use harness::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// Server leaves `a1` (valid 30 days) and `a2` (90 days) for a.example.com
/// from one CA (`ca`, without a key), by name.
fn make_certs() -> BTreeMap<&'static str, Issued> {
    let ca = Ca::new("Legate ADS Test CA");
    let mut out = BTreeMap::new();
    out.insert("ca", Issued { pem: ca.pem(), key: String::new(), der: ca.der() });
    for (name, days) in [("a1", 30), ("a2", 90)] {
        out.insert(name, ca.issue(&server(&["a.example.com"]).cn("a.example.com").valid_days(days)));
    }
    out
}

/// A proxy attached to the control plane as `node`, with the ports its
/// listeners get: TLS on `port`, plain HTTP (to a TLS cluster) on `plain`.
struct Attached {
    who: &'static str,
    node: &'static str,
    admin: u16,
    port: u16,
    plain: u16,
    _proxy: harness::Attached,
}

fn attach(who: &'static str, node: &'static str, cp: &ControlPlane, delta: bool, dir: &Path) -> Attached {
    let bin = if who == "envoy" { Bin::Envoy } else { Bin::Legate };
    let proxy = harness::attach(bin, cp, node, delta, dir);
    Attached { who, node, admin: proxy.admin, port: free_port(), plain: free_port(), _proxy: proxy }
}

#[test]
fn sds_over_ads_to_envoy_and_legate() {
    let tmp = TempDir::new("xds-secrets");
    let dir = tmp.path();
    let certs = make_certs();
    let cp = ControlPlane::start(dir);
    let proxies = [
        attach("envoy", "sds-envoy", &cp, false, dir),
        attach("legate", "sds-legate", &cp, false, dir),
        attach("legate-delta", "sds-legate-delta", &cp, true, dir),
    ];

    // Listeners first, their secret later: refused unless forced; forced,
    // they warm, serving nothing.
    let mut docs: Vec<String> =
        proxies.iter().map(|p| ads_tls_listener(&format!("tls-{}", p.who), p.node, p.port, "server")).collect();
    let early = dir.join("early-listeners.yaml");
    std::fs::write(&early, docs.join("---\n")).expect("write");
    let (ok, out) = cp.ctl(&["apply", "-f", early.to_str().expect("path")]);
    assert!(!ok && out.contains("no Secret named 'server'") && out.contains("--force"), "{out}");
    cp.apply_forced(dir, &docs.join("---\n"));
    for p in &proxies {
        wait_for(&format!("{}: a listener warming", p.who), Duration::from_secs(10), || {
            (stat_text(p.admin, "listener_manager.total_listeners_warming") == Some(1)).then_some(())
        });
        assert!(Conn::try_open(p.port).is_none(), "{}: a warming listener must not serve", p.who);
    }

    // A secret whose PEM does not read is refused at apply, with its field.
    let bad = dir.join("bad-secret.yaml");
    std::fs::write(&bad, tls_secret("server", "not a certificate", &certs["a1"].key)).expect("write");
    let (ok, out) = cp.ctl(&["apply", "-f", bad.to_str().expect("path")]);
    assert!(!ok && out.contains("spec.tls_certificate.certificate_chain"), "{out}");

    // The secret arrives: every listener serves a1.
    cp.apply(dir, &tls_secret("server", &certs["a1"].pem, &certs["a1"].key));
    let mut held = Vec::new();
    for p in &proxies {
        let c = wait_for(&format!("{} to serve a1", p.who), Duration::from_secs(10), || Conn::try_open(p.port));
        assert!(c.cert == certs["a1"].der, "{}: the first certificate is not a1", p.who);
        held.push(c);
        assert_eq!(stat_text(p.admin, "listener_manager.total_listeners_warming"), Some(0), "{}", p.who);
    }
    for (p, c) in proxies.iter().zip(&mut held) {
        assert_eq!(c.get(), (200, format!("hello-tls-{}", p.who)), "{}", p.who);
    }

    // The REST API and ctl show the secret's expiry.
    let (ok, out) = cp.ctl(&["get", "secret", "server", "-o", "json"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let exp1 = v["status"]["expiration_time"].as_str().expect("expiration_time").to_string();
    // 30 days to the second: 29 whole days left, or 30 within that second.
    let days = v["status"]["certificates"][0]["days_until_expiration"].as_i64();
    assert!(matches!(days, Some(29 | 30)), "{v}");
    assert_eq!(v["status"]["certificates"][0]["subject_alt_names"][0]["dns"], "a.example.com", "{v}");

    // Rotation pushed with ctl apply: new connections get a2, held ones work.
    docs.push(tls_secret("server", &certs["a2"].pem, &certs["a2"].key));
    cp.apply(dir, &tls_secret("server", &certs["a2"].pem, &certs["a2"].key));
    for p in &proxies {
        wait_for(&format!("{} to serve a2", p.who), Duration::from_secs(10), || {
            Conn::try_open(p.port).filter(|c| c.cert == certs["a2"].der)
        });
        let mut fresh = Conn::try_open(p.port).expect("connect");
        assert_eq!(fresh.get(), (200, format!("hello-tls-{}", p.who)), "{} after the rotation", p.who);
    }
    for (p, c) in proxies.iter().zip(&mut held) {
        assert_eq!(c.get(), (200, format!("hello-tls-{}", p.who)), "{}: a connection opened before", p.who);
        assert!(c.cert == certs["a1"].der);
    }
    let (ok, out) = cp.ctl(&["get", "secret", "server", "-o", "json"]);
    assert!(ok, "{out}");
    let v: Value = serde_json::from_str(&out).expect("json");
    let exp2 = v["status"]["expiration_time"].as_str().expect("expiration_time").to_string();
    assert!(exp2 > exp1, "the new certificate expires later: {exp1} -> {exp2}");
    let days = v["status"]["certificates"][0]["days_until_expiration"].as_i64();
    assert!(matches!(days, Some(89 | 90)), "{v}");
    let (ok, table) = cp.ctl(&["get", "secret"]);
    assert!(ok && table.contains("EXPIRES") && table.contains(&exp2), "{table}");

    // /certs of each proxy shows the rotated certificate the same way.
    let views: Vec<Value> = proxies.iter().map(|p| admin_json(p.admin, "/certs")["certificates"].clone()).collect();
    for (p, v) in proxies.iter().zip(&views) {
        assert_eq!(v, &views[0], "/certs of {} vs Envoy", p.who);
    }
    let days = views[0][0]["cert_chain"][0]["days_until_expiration"].as_str();
    assert!(matches!(days, Some("89" | "90")), "{}", views[0]);
    assert_eq!(views[0][0]["cert_chain"][0]["path"], "<inline>", "{}", views[0]);

    // Each proxy took both versions of the secret, and counts them as Envoy does.
    let counts: Vec<(Option<i64>, Option<i64>)> = proxies
        .iter()
        .map(|p| (stat_text(p.admin, "sds.server.update_success"), stat_text(p.admin, "sds.server.update_rejected")))
        .collect();
    for (p, c) in proxies.iter().zip(&counts) {
        assert_eq!(c, &counts[0], "sds.server.update_success/_rejected of {} vs Envoy", p.who);
    }
    assert_eq!(counts[0], (Some(2), Some(0)), "Envoy's sds.server.* counts");

    // A cluster whose CA comes over ADS warms until it arrives (requests to
    // it meanwhile: 503, as to a cluster that does not exist), then carries
    // requests to the TLS listener, verified with that CA.
    let docs: Vec<String> = proxies.iter().map(|p| ads_tls_upstream(p.who, p.node, p.port, p.plain, "ca")).collect();
    cp.apply_forced(dir, &docs.join("---\n"));
    let mut waiting = Vec::new();
    for p in &proxies {
        wait_for(&format!("{}: a cluster warming", p.who), Duration::from_secs(10), || {
            (stat_text(p.admin, "cluster_manager.warming_clusters") == Some(1)).then_some(())
        });
        let r = wait_for(&format!("{}: the plain listener", p.who), Duration::from_secs(10), || {
            http_get(addr(p.plain), "/", "x").ok()
        });
        waiting.push(r.status);
    }
    assert_eq!(waiting, vec![503; 3], "requests to a warming cluster (Envoy, Legate, Legate delta)");
    let ca_doc = |name: &str| ca_secret(name, &certs["ca"].pem);
    cp.apply(dir, &ca_doc("ca"));
    for p in &proxies {
        let r = wait_for(&format!("{}: the TLS cluster in service", p.who), Duration::from_secs(10), || {
            http_get(addr(p.plain), "/", "x").ok().filter(|r| r.status == 200)
        });
        assert_eq!(r.body, format!("hello-tls-{}", p.who), "{}", p.who);
        assert_eq!(stat_text(p.admin, "cluster_manager.warming_clusters"), Some(0), "{}", p.who);
        assert!(stat_text(p.admin, &format!("cluster.up-{}.ssl.handshake", p.who)).unwrap_or(0) >= 1, "{}", p.who);
    }

    // The cluster changed to a CA secret not published yet: the new version
    // warms while the old one keeps serving; then the new one takes over.
    let docs: Vec<String> = proxies.iter().map(|p| ads_tls_upstream(p.who, p.node, p.port, p.plain, "ca2")).collect();
    cp.apply_forced(dir, &docs.join("---\n"));
    for p in &proxies {
        wait_for(&format!("{}: the new cluster version warming", p.who), Duration::from_secs(10), || {
            (stat_text(p.admin, "cluster_manager.warming_clusters") == Some(1)).then_some(())
        });
        let r = http_get(addr(p.plain), "/", "x").expect("plain");
        assert_eq!(r.status, 200, "{}: the old cluster serves while the new one warms", p.who);
    }
    cp.apply(dir, &ca_doc("ca2"));
    for p in &proxies {
        wait_for(&format!("{}: the new cluster version in service", p.who), Duration::from_secs(10), || {
            (stat_text(p.admin, "cluster_manager.warming_clusters") == Some(0)).then_some(())
        });
        let r = http_get(addr(p.plain), "/", "x").expect("plain");
        assert_eq!((r.status, r.body.as_str()), (200, format!("hello-tls-{}", p.who).as_str()), "{}", p.who);
    }

    // A secret that never comes, with a 1 s initial_fetch_timeout: the
    // listener stops warming after it and refuses TLS connections.
    let ports: Vec<u16> = proxies.iter().map(|_| free_port()).collect();
    let docs: Vec<String> = proxies
        .iter()
        .zip(&ports)
        .map(|(p, port)| {
            ads_tls_listener(&format!("never-{}", p.who), p.node, *port, "never")
                .replace("resource_api_version: V3 }", "resource_api_version: V3, initial_fetch_timeout: 1s }")
        })
        .collect();
    assert!(docs[0].contains("initial_fetch_timeout: 1s"), "{}", docs[0]);
    cp.apply_forced(dir, &docs.join("---\n"));
    for (p, port) in proxies.iter().zip(&ports) {
        wait_for(&format!("{}: the listener done warming without its secret", p.who), Duration::from_secs(10), || {
            (stat_text(p.admin, "listener_manager.total_listeners_active") == Some(3)
                && stat_text(p.admin, "listener_manager.total_listeners_warming") == Some(0))
            .then_some(())
        });
        wait_for(&format!("{}: the listener bound", p.who), Duration::from_secs(5), || {
            TcpStream::connect(("127.0.0.1", *port)).ok()
        });
        assert!(Conn::try_open(*port).is_none(), "{}: no certificate, no handshake", p.who);
    }
}
