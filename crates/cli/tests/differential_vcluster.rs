//! A virtual host's `virtual_clusters` and routes' `stat_prefix` through
//! Envoy 1.40 and `legate proxy` side by side: the same requests (answered
//! by the upstream with 200 or 503, retried, timed out, failed to connect,
//! with no host, answered directly, matching no virtual cluster) leave the
//! same `vhost.*` stats, and the same ones exist before any traffic.

mod harness;

use harness::admin::admin_page;
use harness::diff::*;
use harness::template::*;
use harness::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const VIRTUAL_HOSTS: &str = r#"            - name: shop
              domains: ["*"]
              routes:
              - { match: { prefix: "/direct" }, direct_response: { status: 204 } }
              - { match: { prefix: "/closed" }, route: { cluster: closed }, stat_prefix: refused }
              - { match: { prefix: "/empty" }, route: { cluster: empty } }
              - { match: { prefix: "/slow" }, route: { cluster: echo, timeout: 0.3s }, stat_prefix: slow }
              - match: { prefix: "/retry" }
                stat_prefix: retrying
                route: { cluster: echo, retry_policy: { retry_on: "5xx", num_retries: 2 } }
              - { match: { prefix: "/" }, route: { cluster: echo }, stat_prefix: main }
              virtual_clusters:
              - { name: ok, headers: [{ name: ":path", string_match: { prefix: "/ok" } }] }
              - { name: shadowed, headers: [{ name: ":path", string_match: { prefix: "/o" } }] }
              - { name: failing, headers: [{ name: ":path", string_match: { prefix: "/status/5" } }] }
              - { name: retried, headers: [{ name: ":path", string_match: { prefix: "/retry" } }] }
              - name: gold
                headers:
                - { name: x-tenant, string_match: { exact: gold } }
                - { name: ":method", string_match: { exact: POST } }
            - name: plain
              domains: ["plain.test"]
              routes:
              - { match: { prefix: "/" }, route: { cluster: echo }, stat_prefix: all }
"#;

/// Every `vhost.*` line of the text `/stats` page: counters with their
/// values, histograms by name only (their quantiles are timings).
fn vhost_stats(admin: u16) -> (BTreeMap<String, u64>, BTreeSet<String>) {
    let page = admin_page(admin, "/stats");
    let mut counters = BTreeMap::new();
    let mut histograms = BTreeSet::new();
    for (k, v) in page.lines().filter_map(|l| l.split_once(": ")).filter(|(k, _)| k.starts_with("vhost.")) {
        match v.trim().parse() {
            Ok(n) => {
                counters.insert(k.to_string(), n);
            }
            Err(_) => {
                histograms.insert(k.to_string());
            }
        }
    }
    (counters, histograms)
}

#[test]
fn virtual_cluster_and_route_stats_match_envoys() {
    let clusters = format!("{}{}{}", echo_cluster(), cluster("closed", &["{CLOSED}"]), cluster("empty", &[]));
    let t = bootstrap("", "", VIRTUAL_HOSTS, &clusters);
    let pair = start_pair("vcluster", &t, &["a"]);
    // Before traffic: each virtual cluster's and `other`'s counters, none
    // for the host without virtual clusters.
    let (e, l) = (vhost_stats(pair.envoy_admin), vhost_stats(pair.legate_admin));
    eprintln!("before traffic: {} vhost counters on Envoy", e.0.len());
    assert!(e.0.contains_key("vhost.shop.vcluster.other.upstream_rq_total"), "{e:?}");
    assert_same("vhost stats before traffic", &e, &l);
    let post = |path: &str| {
        let mut r = get(path).header("x-tenant", "gold");
        r.method = "POST";
        r
    };
    let requests = [
        (get("/ok"), 200),
        (get("/ok/more"), 200),
        (get("/other"), 200),
        (get("/status/503"), 503),
        (get("/status/503"), 503),
        (get("/status/404"), 404),
        (get("/retry/status/503"), 503),
        (get("/retry/x"), 200),
        (get("/slow/delay/2000"), 504),
        (get("/closed"), 503),
        (get("/empty"), 503),
        (get("/direct"), 204),
        (get("/anything"), 200),
        (get("/gold").header("x-tenant", "gold"), 200),
        (post("/gold"), 200),
        (get("/ok").host("plain.test"), 200),
    ];
    for (r, status) in &requests {
        for port in [pair.envoy, pair.legate] {
            assert_eq!(send(port, r).status, *status, "{} {}", r.method, r.path);
        }
    }
    // Legate counts a request's end when its stream ends: wait until
    // both agree (up to 5 s), then compare.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (e, l) = loop {
        let both = (vhost_stats(pair.envoy_admin), vhost_stats(pair.legate_admin));
        if both.0 == both.1 || Instant::now() > deadline {
            break both;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for (k, v) in e.0.iter().filter(|(_, v)| **v > 0) {
        eprintln!("{k}: envoy {v}, legate {:?}", l.0.get(k));
    }
    eprintln!("histograms: {:?}", e.1);
    assert_eq!(e.0.get("vhost.shop.vcluster.ok.upstream_rq_200"), Some(&2), "Envoy: {e:?}");
    assert_eq!(e.0.get("vhost.shop.vcluster.retried.upstream_rq_total"), Some(&4), "Envoy: {e:?}");
    assert!(!e.0.keys().any(|k| k.starts_with("vhost.plain.vcluster.")), "{e:?}");
    assert_eq!(e.0.get("vhost.shop.route.retrying.upstream_rq_total"), Some(&4), "Envoy: {e:?}");
    assert!(e.0.contains_key("vhost.plain.route.all.upstream_rq_200"), "Envoy: {e:?}");
    assert_same("vhost counters after traffic", &e.0, &l.0);
    assert_same("vhost histograms after traffic", &e.1, &l.1);
}
