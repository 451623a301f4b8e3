//! Fleet monitoring end to end: a real Envoy 1.40 streaming its stats over
//! the metrics service (`envoy.stat_sinks.metrics_service`, flushed every
//! second) and a `legate proxy` scraped at `/stats/prometheus` (it names its
//! admin address in its node metadata) report to one control plane, under a
//! bounded, paced load with a known number of 5xx answers.
//!
//! - `legate ctl top services -o json` counts exactly the requests and
//!   errors each proxy's service saw; rps agrees with the load generator's
//!   rate within 25 %, p99 with the client's within one bucket of Envoy's
//!   default histogram (15 ms around a 20 ms upstream delay).
//! - A proxy restarted between two loads: totals stay exact, the restart is
//!   counted, no point of the rps series is negative or above twice the rate.
//! - A real Prometheus scrapes `GET /metrics` and the test reads
//!   `legate_service_requests_total` back through `/api/v1/query`.
//!
//! The control plane runs with `--metrics-retention 1s:1h,10s:1d` so that
//! windows are exact to the second, and scrapes `legate proxy` every second.

mod harness;

use harness::prometheus::Prometheus;
use harness::xds::{eds_cluster, endpoints, nodes, rds_listener, route_to};
use harness::*;
use serde_json::Value;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One test at a time: the paced loads compare rates on two shared cores.
static SERIAL: Mutex<()> = Mutex::new(());

const RETENTION: &[&str] = &["--metrics-retention", "1s:1h,10s:1d", "--scrape-interval", "1s"];
/// The upstream answers after this long, so latencies are well above noise.
const DELAY_MS: u64 = 20;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Cluster `web` for Envoy and `api` for the Legate proxy (same echo
/// upstream), each proxy listening on its own port.
fn resources(envoy_listen: u16, legate_listen: u16, upstream: u16) -> String {
    let (e, l) = (nodes(&["envoy-1"]), nodes(&["legate-1"]));
    [
        eds_cluster("web", ""),
        endpoints("web", "", upstream),
        eds_cluster("api", ""),
        endpoints("api", "", upstream),
        route_to("to-web", &e, "web"),
        route_to("to-api", &l, "api"),
        rds_listener("in-envoy", &e, envoy_listen, "to-web"),
        rds_listener("in-legate", &l, legate_listen, "to-api"),
    ]
    .join("---\n")
}

/// `ctl bootstrap` (which streams to the metrics service), flushed every second.
fn envoy_bootstrap(cp: &ControlPlane, node: &str, admin: u16) -> String {
    let boot = ctl_bootstrap(&format!("http://127.0.0.1:{}", cp.api), node, cp.xds, admin, &[]);
    assert!(boot.contains("envoy.stat_sinks.metrics_service"), "ctl bootstrap has the sink:\n{boot}");
    boot.replacen("stats_flush_interval: 5s\n", "stats_flush_interval: 1s\n", 1)
}

/// `ctl bootstrap` without its sink, with the admin address in the node
/// metadata: the control plane scrapes it (the pull fallback).
fn legate_bootstrap(cp: &ControlPlane, node: &str, admin: u16) -> String {
    let boot = ctl_bootstrap(&format!("http://127.0.0.1:{}", cp.api), node, cp.xds, admin, &[]);
    let (start, end) = (boot.find("stats_sinks:\n").expect("sink"), boot.find("dynamic_resources:").expect("ADS"));
    let boot = format!("{}{}", &boot[..start], &boot[end..]);
    boot.replacen(
        "  cluster: legate\n",
        &format!("  cluster: legate\n  metadata: {{ legate.admin_address: \"127.0.0.1:{admin}\" }}\n"),
        1,
    )
}

/// What the load generator saw.
#[derive(Debug, Default)]
struct Traffic {
    /// Answers from the upstream (200 or 503): what the cluster counts.
    answered: u64,
    errors: u64,
    latencies_ms: Vec<f64>,
    elapsed: Duration,
}

impl Traffic {
    fn rps(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64()
    }

    fn p99(&mut self) -> f64 {
        self.latencies_ms.sort_by(f64::total_cmp);
        let i = ((self.latencies_ms.len() as f64 * 0.99).ceil() as usize).saturating_sub(1);
        self.latencies_ms.get(i).copied().unwrap_or(0.0)
    }
}

/// `n` requests to `port`, `rate` per second, every tenth answered 503 by
/// the upstream, the others after DELAY_MS.
fn paced_load(port: u16, n: u64, rate: f64) -> Traffic {
    let mut t = Traffic::default();
    let start = Instant::now();
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let path = if i % 10 == 9 { "/status/503".to_string() } else { format!("/delay/{DELAY_MS}") };
        let sent = Instant::now();
        let r = http_get(addr(port), &path, "app").expect("request through the proxy");
        t.latencies_ms.push(sent.elapsed().as_secs_f64() * 1000.0);
        match r.status {
            200 => t.answered += 1,
            503 => {
                t.answered += 1;
                t.errors += 1;
            }
            s => panic!("unexpected status {s}: {}", r.body),
        }
    }
    t.elapsed = start.elapsed();
    t
}

/// Requests until the proxy routes to the upstream; how many were answered by it.
fn until_routed(port: u16) -> u64 {
    let mut answered = 0;
    wait_for("the route to the upstream", Duration::from_secs(30), || {
        let r = http_get(addr(port), "/ready-probe", "app").ok()?;
        (r.status == 200 && r.header("x-upstream").is_some()).then(|| answered += 1)
    });
    answered
}

fn top(cp: &ControlPlane, what: &str, window: &str) -> Vec<Value> {
    let (ok, out) = cp.ctl(&["top", what, "--window", window, "-o", "json"]);
    assert!(ok, "{out}");
    serde_json::from_str::<Vec<Value>>(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn find<'a>(list: &'a [Value], key: &str, name: &str) -> Option<&'a Value> {
    list.iter().find(|v| v[key] == name)
}

/// (requests, errors) of `service` over the last hour.
fn counted(cp: &ControlPlane, service: &str) -> (u64, u64) {
    let list = top(cp, "services", "1h");
    find(&list, "service", service).map_or((0, 0), |s| {
        (s["requests"].as_u64().expect("requests is an integer"), s["errors"].as_u64().expect("errors is an integer"))
    })
}

/// Waits until `node` reported after `after_ms` (its stats then include
/// everything before `after_ms`).
fn reported_after(cp: &ControlPlane, node: &str, after_ms: u64) {
    wait_for(&format!("a report from {node}"), Duration::from_secs(20), || {
        let list = top(cp, "proxies", "1h");
        find(&list, "node", node).and_then(|p| p["last_report_ms"].as_u64()).filter(|t| *t > after_ms).map(|_| ())
    });
}

/// Waits until `service` counts `expected` requests (what the proxies saw
/// reaches the control plane within a few reports); returns what it counts.
fn settle(cp: &ControlPlane, service: &str, expected: u64) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = counted(cp, service);
        if c.0 >= expected || Instant::now() > deadline {
            // Two more report cycles (every proxy reports each second): a
            // count past the expected one would show.
            std::thread::sleep(Duration::from_secs(2));
            return counted(cp, service);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

struct Fleet {
    dir: TempDir,
    cp: ControlPlane,
    _upstream: Proc,
    envoy: Attached,
    envoy_boot: String,
    legate: Attached,
    envoy_listen: u16,
    legate_listen: u16,
}

fn fleet(label: &str) -> Fleet {
    let dir = TempDir::new(label);
    let (upstream, up) = echo("echo", dir.path());
    let cp = ControlPlane::start_with(dir.path(), free_port(), free_port(), dir.path().join("cp-data"), RETENTION);
    let (envoy_listen, legate_listen) = (free_port(), free_port());
    cp.apply(dir.path(), &resources(envoy_listen, legate_listen, up));
    let (ea, la) = (free_port(), free_port());
    let envoy_boot = envoy_bootstrap(&cp, "envoy-1", ea);
    let envoy = start_on(Bin::Envoy, &envoy_boot, "envoy-1", ea, dir.path());
    let legate = start_on(Bin::Legate, &legate_bootstrap(&cp, "legate-1", la), "legate-1", la, dir.path());
    until_routed(envoy_listen);
    until_routed(legate_listen);
    // From here on every answer the proxies give is counted.
    let t = now_ms();
    reported_after(&cp, "envoy-1", t);
    reported_after(&cp, "legate-1", t);
    Fleet { dir, cp, _upstream: upstream, envoy, envoy_boot, legate, envoy_listen, legate_listen }
}

#[test]
fn top_services_counts_exactly_what_envoy_and_legate_served() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = fleet("monitoring-top");
    let before = (counted(&f.cp, "web"), counted(&f.cp, "api"));
    let legate_port = f.legate_listen;
    let legate_load = std::thread::spawn(move || paced_load(legate_port, 300, 25.0));
    // Envoy's load runs 16 s at 25/s; its rps is read over 10 s mid-way.
    let envoy_port = f.envoy_listen;
    let envoy_load = std::thread::spawn(move || paced_load(envoy_port, 400, 25.0));
    std::thread::sleep(Duration::from_secs(13));
    let mid = top(&f.cp, "services", "10s");
    let mid_rps = find(&mid, "service", "web").and_then(|s| s["rps"].as_f64()).expect("web during the load");
    let mut envoy = envoy_load.join().expect("envoy load");
    let mut legate = legate_load.join().expect("legate load");

    let web = settle(&f.cp, "web", before.0 .0 + envoy.answered);
    let api = settle(&f.cp, "api", before.1 .0 + legate.answered);
    assert_eq!(web, (before.0 .0 + envoy.answered, before.0 .1 + envoy.errors), "web (Envoy, streamed)");
    assert_eq!(api, (before.1 .0 + legate.answered, before.1 .1 + legate.errors), "api (Legate, scraped)");

    let rate = envoy.rps();
    eprintln!("web: {web:?} counted; rps {mid_rps:.1} over 10 s mid-load against the generator's {rate:.1}");
    assert!((mid_rps - rate).abs() <= 0.25 * rate, "web rps {mid_rps} against the generator's {rate}");
    let list = top(&f.cp, "services", "1m");
    for (service, traffic) in [("web", &mut envoy), ("api", &mut legate)] {
        let s = find(&list, "service", service).expect("service listed");
        let (p99, client) = (s["p99_ms"].as_f64().expect("p99"), traffic.p99());
        eprintln!("{service}: p99 {p99:.1} ms, the client's {client:.1} ms");
        assert!((p99 - client).abs() <= 15.0, "{service}: p99 {p99} ms against the client's {client} ms");
        for key in ["service", "requests", "errors", "rps", "error_rate", "p50_ms", "p99_ms"] {
            assert!(s.get(key).is_some(), "{key} in {s}");
        }
    }
    let proxies = top(&f.cp, "proxies", "1h");
    assert_eq!(find(&proxies, "node", "envoy-1").map(|p| p["source"].clone()), Some("stream".into()));
    assert_eq!(find(&proxies, "node", "legate-1").map(|p| p["source"].clone()), Some("scrape".into()));
}

#[test]
fn a_restarted_proxy_keeps_totals_exact() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut f = fleet("monitoring-restart");
    let (before, _) = counted(&f.cp, "web");
    let first = paced_load(f.envoy_listen, 200, 50.0);
    let t = now_ms();
    reported_after(&f.cp, "envoy-1", t + 1000);

    f.envoy.proc_.kill();
    let admin = f.envoy.admin;
    f.envoy = start_on(Bin::Envoy, &f.envoy_boot, "envoy-1", admin, f.dir.path());
    let probes = until_routed(f.envoy_listen);
    let second = paced_load(f.envoy_listen, 100, 50.0);
    let expected = before + first.answered + probes + second.answered;
    let (requests, errors) = settle(&f.cp, "web", expected);
    assert_eq!(requests, expected, "exact across the restart ({probes} probes)");
    assert_eq!(errors, first.errors + second.errors);

    let proxies = top(&f.cp, "proxies", "1h");
    let resets = find(&proxies, "node", "envoy-1").and_then(|p| p["resets"].as_u64());
    assert!(resets.is_some_and(|r| r >= 1), "the restart is counted: {proxies:?}");
    let series = f.cp.get("/v1/series?service=web&metric=rps&window=2m&step=1s").expect("series");
    let points = series["points"].as_array().cloned().unwrap_or_default();
    let ceiling = 2.0 * first.rps().max(second.rps());
    for p in &points {
        let v = p["v"].as_f64().unwrap_or(0.0);
        assert!((0.0..=ceiling).contains(&v), "rps point {p} (ceiling {ceiling})");
    }
    let sum: f64 = f.cp.get("/v1/series?service=web&metric=requests&window=1h&step=1m").expect("series")["points"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["v"].as_f64())
        .sum();
    assert_eq!(sum as u64, requests, "the series adds up to the total");
}

#[test]
fn prometheus_scrapes_the_fleet_series() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let f = fleet("monitoring-prometheus");
    let prom = Prometheus::start(f.dir.path(), &[f.cp.api]);
    let load = paced_load(f.envoy_listen, 100, 50.0);
    let (requests, _) = settle(&f.cp, "web", load.answered);
    assert!(requests >= load.answered);
    // The control plane's own total since it started, as Prometheus reads it.
    let text = http_get(addr(f.cp.api), "/metrics", "cp").expect("metrics").body;
    assert!(text.contains("legate_service_request_duration_ms_bucket{service=\"web\",le=\"+Inf\"}"), "{text}");
    let got = wait_for("the series in Prometheus", Duration::from_secs(30), || {
        prom.query("legate_service_requests_total{service=\"web\"}").filter(|v| *v as u64 == requests)
    });
    assert_eq!(got as u64, requests);
    let errors = prom.query("sum(legate_service_errors_total)").expect("errors series");
    assert!(errors >= load.errors as f64, "{errors}");
    let _ = &f.legate;
}

/// (success, error, issued) in `node`'s load reports for `cluster` so far,
/// summed over localities; None before its first report.
fn load_of(cp: &ControlPlane, node: &str, cluster: &str) -> Option<(u64, u64, u64)> {
    let v = cp.get("/v1/load")?;
    let c = v["clusters"].as_array()?.iter().find(|c| c["node"] == node && c["cluster"] == cluster)?.clone();
    let mut sum = (0, 0, 0);
    for l in c["localities"].as_array()? {
        let t = &l["total"];
        sum.0 += t["success"].as_u64()?;
        sum.1 += t["error"].as_u64()?;
        sum.2 += t["issued"].as_u64()?;
    }
    Some(sum)
}

/// When `node` last reported `cluster`'s load (Unix ms; 0 before any report).
fn reported_ms(cp: &ControlPlane, node: &str, cluster: &str) -> u64 {
    let v = cp.get("/v1/load").unwrap_or_default();
    let list = v["clusters"].as_array().cloned().unwrap_or_default();
    let c = list.iter().find(|c| c["node"] == node && c["cluster"] == cluster);
    c.and_then(|c| c["reported_ms"].as_u64()).unwrap_or(0)
}

/// Load reports: Envoy 1.40 and `legate proxy`, their bootstraps'
/// `cluster_manager.load_stats_config` naming the control plane, report the
/// requests each sent to its cluster; `/v1/load` shows exactly those (one
/// in five answered 503: an error in LRS terms).
#[test]
fn load_reports_from_envoy_and_legate_reach_v1_load() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("monitoring-lrs");
    let (_upstream, up) = echo("echo", dir.path());
    let cp = ControlPlane::start_with(dir.path(), free_port(), free_port(), dir.path().join("cp-data"), RETENTION);
    let (envoy_listen, legate_listen) = (free_port(), free_port());
    cp.apply(dir.path(), &resources(envoy_listen, legate_listen, up));
    let lrs = "cluster_manager:\n  load_stats_config:\n    api_type: GRPC\n    transport_api_version: V3\n    \
               grpc_services: [{ envoy_grpc: { cluster_name: xds_cluster } }]\n";
    let (ea, la) = (free_port(), free_port());
    let envoy_boot = format!("{}{lrs}", envoy_bootstrap(&cp, "envoy-1", ea));
    let legate_boot = format!("{}{lrs}", legate_bootstrap(&cp, "legate-1", la));
    let _envoy = start_on(Bin::Envoy, &envoy_boot, "envoy-1", ea, dir.path());
    let _legate = start_on(Bin::Legate, &legate_boot, "legate-1", la, dir.path());
    for (node, cluster, port) in [("envoy-1", "web", envoy_listen), ("legate-1", "api", legate_listen)] {
        until_routed(port);
        // A report made after the routing probes: from here on every request
        // is in a later one.
        let probed = now_ms();
        let before = wait_for(&format!("{node}'s load report after the probes"), Duration::from_secs(20), || {
            load_of(&cp, node, cluster).filter(|_| reported_ms(&cp, node, cluster) > probed)
        });
        for i in 0..20 {
            let path = if i % 5 == 4 { "/status/503" } else { "/ok" };
            let r = http_get(addr(port), path, "app").expect("request through the proxy");
            assert!(r.status == 200 || r.status == 503, "{}", r.status);
        }
        let after = wait_for(&format!("{node}'s 20 requests in /v1/load"), Duration::from_secs(20), || {
            load_of(&cp, node, cluster).filter(|l| l.2 >= before.2 + 20)
        });
        eprintln!("{node} {cluster}: load before {before:?}, after {after:?}");
        assert_eq!((after.0 - before.0, after.1 - before.1, after.2 - before.2), (16, 4, 20), "{node}");
    }
}

/// (requests, errors) of virtual cluster `vc` of virtual host `vh` over the last hour.
fn route_counted(cp: &ControlPlane, vh: &str, vc: &str) -> (u64, u64) {
    let list = top(cp, "routes", "1h");
    let r = list.iter().find(|r| r["virtual_host"] == vh && r["virtual_cluster"] == vc);
    r.map_or((0, 0), |r| (r["requests"].as_u64().expect("requests"), r["errors"].as_u64().expect("errors")))
}

/// (requests, errors) of the route with `stat_prefix` `route` in `ctl top routes`.
fn route_stat_counted(cp: &ControlPlane, vh: &str, route: &str) -> (u64, u64) {
    let list = top(cp, "routes", "1h");
    let r = list.iter().find(|r| r["virtual_host"] == vh && r["route"] == route && r["virtual_cluster"] == "");
    r.map_or((0, 0), |r| (r["requests"].as_u64().expect("requests"), r["errors"].as_u64().expect("errors")))
}

/// Per virtual host and virtual cluster: Envoy 1.40 with `virtual_clusters`
/// (`ok` for `/ok`, `failing` for `/status/`) counts each in
/// `vhost.shop.vcluster.<vc>.*` and streams it; `ctl top routes` shows
/// exactly the requests and 503s each virtual cluster saw, the routing
/// probes in `other` (Envoy's catch-all), the route's `stat_prefix` row
/// (`vhost.shop.route.all.*`) all of them, and the service figures are not
/// changed by them.
#[test]
fn top_routes_counts_envoys_virtual_clusters() {
    top_routes_count_virtual_clusters(Bin::Envoy, "envoy-1");
}

/// The same with `legate proxy` (the same route configuration, streaming
/// over the metrics service as `ctl bootstrap` configures it): its own
/// `vhost.shop.vcluster.<vc>.*` give the same exact figures.
#[test]
fn top_routes_counts_legates_virtual_clusters() {
    top_routes_count_virtual_clusters(Bin::Legate, "legate-1");
}

fn top_routes_count_virtual_clusters(bin: Bin, node: &str) {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("monitoring-routes");
    let (_upstream, up) = echo("echo", dir.path());
    let cp = ControlPlane::start_with(dir.path(), free_port(), free_port(), dir.path().join("cp-data"), RETENTION);
    let listen = free_port();
    let e = nodes(&[node]);
    let route = format!(
        r#"kind: RouteConfiguration
metadata: {{ name: shop{e} }}
spec:
  name: shop
  virtual_hosts:
  - name: shop
    domains: ["*"]
    routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: web }}, stat_prefix: all }}]
    virtual_clusters:
    - {{ name: ok, headers: [{{ name: ":path", string_match: {{ prefix: "/ok" }} }}] }}
    - {{ name: failing, headers: [{{ name: ":path", string_match: {{ prefix: "/status/" }} }}] }}
"#
    );
    let res = [eds_cluster("web", ""), endpoints("web", "", up), route, rds_listener("in-shop", &e, listen, "shop")];
    cp.apply(dir.path(), &res.join("---\n"));
    let admin = free_port();
    // Both stream their stats (`ctl bootstrap`'s sink, flushed every second).
    let _proxy = start_on(bin, &envoy_bootstrap(&cp, node, admin), node, admin, dir.path());
    let probes = until_routed(listen);
    reported_after(&cp, node, now_ms());
    let before = [route_counted(&cp, "shop", "ok"), route_counted(&cp, "shop", "failing")];
    let all_before = route_stat_counted(&cp, "shop", "all");
    let (ok, failing) = (40, 12);
    for (path, n, status) in [("/ok", ok, 200), ("/status/503", failing, 503)] {
        for _ in 0..n {
            assert_eq!(http_get(addr(listen), path, "app").expect("request").status, status, "{path}");
        }
    }
    let want_ok = (before[0].0 + ok, before[0].1);
    wait_for("the virtual clusters' counts", Duration::from_secs(20), || {
        (route_counted(&cp, "shop", "ok").0 >= want_ok.0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let got = (route_counted(&cp, "shop", "ok"), route_counted(&cp, "shop", "failing"));
    eprintln!(
        "{node}: shop/ok {:?}, shop/failing {:?} ({probes} probes in other: {:?})",
        got.0,
        got.1,
        route_counted(&cp, "shop", "other")
    );
    assert_eq!(got.0, want_ok, "shop/ok");
    assert_eq!(got.1, (before[1].0 + failing, before[1].1 + failing), "shop/failing: every one a 503");
    // The route's `stat_prefix` row counts both.
    let all = route_stat_counted(&cp, "shop", "all");
    eprintln!("{node}: route shop/all {all:?}");
    assert_eq!(all, (all_before.0 + ok + failing, all_before.1 + failing), "route shop/all");
    let services = top(&cp, "services", "1h");
    assert!(services.iter().all(|s| !s["service"].as_str().unwrap_or("").starts_with("vhost")), "{services:?}");
    assert!(find(&services, "service", "web").is_some(), "{services:?}");
}
