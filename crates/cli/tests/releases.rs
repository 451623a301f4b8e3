//! Releases end to end: a `Service` of two `legate echo` upstreams labelled
//! v1 and v2 behind a Gateway served by a real Envoy 1.40 over ADS (its
//! metrics-service sink streaming to the control plane every second), under
//! steady load, while a `Release` (started with `legate ctl release`) moves
//! traffic between them and the control plane analyses each step on the
//! figures Envoy reports for each version's cluster. Each weight change is
//! a revision the proxy swaps in whole, so no request may fail on the way.

mod harness;

use harness::load::UpstreamLoad;
use harness::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

type Counts = BTreeMap<(String, u16), usize>;

/// The Service `checkout` (v1 on `p1`, v2 on `p2`) and a Gateway for `node` on `port`.
fn mesh(p1: u16, p2: u16, node: &str, port: u16) -> String {
    format!(
        "kind: Service\nmetadata: {{ name: checkout }}\nspec:\n  endpoints:\n  - {{ address: 127.0.0.1, port: {p1}, labels: {{ version: v1 }} }}\n  - {{ address: 127.0.0.1, port: {p2}, labels: {{ version: v2 }} }}\n---\nkind: Gateway\nmetadata: {{ name: edge, nodes: {{ ids: [{node}] }} }}\nspec:\n  address: 127.0.0.1\n  port: {port}\n  routes:\n  - match: {{ prefix: / }}\n    to: [{{ service: checkout }}]\n"
    )
}

/// The Release exactly as users write it.
const RELEASE: &str = "kind: Release
metadata: {name: checkout-v2}
spec:
  service: checkout
  stable: {version: v1}
  candidate: {version: v2}
  strategy:
    canary: {steps: [20, 50, 100], hold: 5s}
  analysis: {window: 5s, minRequests: 20, maxErrorRate: 0.05, maxP99Ms: 500}
";

/// Envoy on `ctl bootstrap` (ADS and the metrics-service sink to the control
/// plane), its stats flushed every second.
fn envoy(cp: &ControlPlane, node: &str, dir: &Path) -> Proc {
    let admin = free_port();
    let boot = ctl_bootstrap(&format!("http://127.0.0.1:{}", cp.api), node, cp.xds, admin, &[]);
    assert!(boot.contains("stats_flush_interval: 5s"), "{boot}");
    let file = dir.join(format!("bootstrap-{node}.yaml"));
    std::fs::write(&file, boot.replace("stats_flush_interval: 5s", "stats_flush_interval: 1s")).expect("bootstrap");
    let mut p = spawn_envoy(node, &file, "warning", &[], dir);
    wait_ready(admin, &mut p);
    p
}

/// `ctl release status NAME -o json`.
fn status(cp: &ControlPlane, name: &str) -> Value {
    let (ok, out) = cp.ctl(&["release", "status", name, "-o", "json"]);
    assert!(ok, "{out}");
    serde_json::from_str(&out).expect("status json")
}

fn start_release(cp: &ControlPlane, dir: &Path, yaml: &str) {
    let file = dir.join("release.yaml");
    std::fs::write(&file, yaml).expect("write release");
    let (ok, out) = cp.ctl(&["release", "start", "-f", &file.to_string_lossy()]);
    assert!(ok, "{out}");
}

/// Requests per upstream added between two snapshots.
fn added(before: &Counts, after: &Counts, upstream: &str) -> usize {
    let sum = |c: &Counts| c.iter().filter(|((u, _), _)| u == upstream).map(|(_, n)| n).sum::<usize>();
    sum(after) - sum(before)
}

fn failed(c: &Counts) -> usize {
    c.iter().filter(|((_, s), _)| *s != 200).map(|(_, n)| n).sum()
}

#[test]
fn a_good_candidate_is_promoted_through_every_step_without_a_failed_request() {
    let dir = TempDir::new("release-good");
    let (_v1, p1) = echo("v1", dir.path());
    let (_v2, p2) = echo("v2", dir.path());
    let cp = ControlPlane::start(dir.path());
    let port = free_port();
    cp.apply(dir.path(), &mesh(p1, p2, "rel-envoy", port));
    let _envoy = envoy(&cp, "rel-envoy", dir.path());
    wait_for("the gateway", Duration::from_secs(20), || upstream_of(port));
    let stop = Arc::new(AtomicBool::new(false));
    let load = UpstreamLoad::start(port, stop.clone(), 200_000, Duration::from_millis(2));
    std::thread::sleep(Duration::from_secs(1));
    let before = load.snapshot();
    start_release(&cp, dir.path(), RELEASE);
    let mut seen_steps = Vec::new();
    let done = wait_for("the release to be promoted", Duration::from_secs(90), || {
        let s = status(&cp, "checkout-v2");
        let w = s["weight"].as_u64().unwrap_or(0);
        if seen_steps.last() != Some(&w) {
            seen_steps.push(w);
        }
        std::thread::sleep(Duration::from_millis(200));
        (s["phase"] == "Promoted").then_some(s)
    });
    let at_promotion = load.snapshot();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let after = load.join();
    eprintln!("weights seen {seen_steps:?}; requests {after:?}");
    assert_eq!(failed(&after), 0, "no request failed: {after:?}");
    assert!(seen_steps.contains(&20) && seen_steps.contains(&50), "every step: {seen_steps:?}");
    let analyses = done["analyses"].as_array().cloned().unwrap_or_default();
    assert_eq!(analyses.len(), 3, "{done}");
    assert!(analyses.iter().all(|a| a["result"] == "passed"), "{done}");
    for (a, weight) in analyses.iter().zip([20, 50, 100]) {
        assert_eq!(a["weight"], weight, "{a}");
        assert!(a["requests"].as_u64().is_some_and(|n| n >= 20), "decided on enough requests: {a}");
        assert_eq!(a["errors"], 0, "{a}");
        assert!(a["p99Ms"].as_f64().is_some_and(|p| p < 500.0), "{a}");
    }
    eprintln!("analyses: {}", serde_json::to_string(&analyses).unwrap_or_default());
    assert!(added(&before, &at_promotion, "v2") > 0 && added(&before, &at_promotion, "v1") > 0);
    assert_eq!(added(&at_promotion, &after, "v1"), 0, "promoted: v1 gets nothing: {after:?}");
    // Every step is a revision by the release.
    let (ok, out) = cp.ctl(&["history", "-o", "json"]);
    assert!(ok && out.matches("release/checkout-v2").count() >= 4, "{out}");
}

#[test]
fn a_5xx_candidate_is_rolled_back_at_the_first_analysis() {
    let dir = TempDir::new("release-bad");
    let (_v1, p1) = echo("v1", dir.path());
    let (_v2, p2) = echo_with("v2", dir.path(), &["--status", "503"]);
    let cp = ControlPlane::start(dir.path());
    let port = free_port();
    cp.apply(dir.path(), &mesh(p1, p2, "bad-envoy", port));
    let _envoy = envoy(&cp, "bad-envoy", dir.path());
    wait_for("the gateway", Duration::from_secs(20), || upstream_of(port));
    let stop = Arc::new(AtomicBool::new(false));
    let load = UpstreamLoad::start(port, stop.clone(), 200_000, Duration::from_millis(2));
    start_release(&cp, dir.path(), RELEASE);
    let done = wait_for("the release to be rolled back", Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(100));
        let s = status(&cp, "checkout-v2");
        (s["phase"] == "RolledBack").then_some(s)
    });
    let at_rollback = load.snapshot();
    eprintln!("rolled back: {done}");
    assert_eq!((done["weight"].as_u64(), done["step"].as_u64()), (Some(0), Some(1)), "at the first analysis");
    let a = &done["analyses"][0];
    assert_eq!(a["result"], "failed", "{a}");
    assert!(a["errorRate"].as_f64().is_some_and(|r| r > 0.9) && a["requests"].as_u64() >= Some(20), "{a}");
    assert!(done["message"].as_str().is_some_and(|m| m.contains("error rate")), "{done}");
    std::thread::sleep(Duration::from_secs(1));
    let settled = load.snapshot();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let after = load.join();
    let to_candidate: usize = after.iter().filter(|((u, _), _)| u == "v2").map(|(_, n)| n).sum();
    let total: usize = after.values().sum();
    eprintln!(
        "requests {after:?}; {to_candidate} of {total} reached the candidate ({} after the rollback was recorded)",
        added(&at_rollback, &after, "v2")
    );
    assert_eq!(added(&settled, &after, "v2"), 0, "rolled back: v2 gets nothing");
    assert_eq!(after.get(&("-".to_string(), 0)), None, "every request was answered");
    assert_eq!(failed(&after), to_candidate, "only the candidate's answers failed");
    let (ok, out) = cp.ctl(&["release", "resume", "checkout-v2"]);
    assert!(!ok && out.contains("already RolledBack"), "{out}");
}

/// Without proxies: a bad Release is refused with its fields' paths, and an
/// operator pauses, resumes and promotes one with `legate ctl release`.
#[test]
fn releases_are_checked_and_operated_from_ctl() {
    let dir = TempDir::new("release-ctl");
    let cp = ControlPlane::start(dir.path());
    cp.apply(dir.path(), &mesh(18001, 18002, "nobody", free_port()));
    let file = dir.path().join("bad.yaml");
    let bad = RELEASE
        .replace("service: checkout", "service: payments")
        .replace("[20, 50, 100]", "[50, 20, 90]")
        .replace("candidate: {version: v2}", "candidate: {version: v3}");
    std::fs::write(&file, &bad).expect("write");
    let (ok, out) = cp.ctl(&["release", "start", "-f", &file.to_string_lossy()]);
    assert!(!ok && out.contains("spec.strategy.canary.steps[1]") && out.contains("the last step must be 100"), "{out}");
    std::fs::write(&file, RELEASE.replace("candidate: {version: v2}", "candidate: {version: v3}")).expect("write");
    let (ok, out) = cp.ctl(&["release", "start", "-f", &file.to_string_lossy()]);
    assert!(!ok && out.contains("spec.candidate"), "no endpoint is v3: {out}");
    std::fs::write(&file, RELEASE.replace("service: checkout", "service: payments")).expect("write");
    let (ok, out) = cp.ctl(&["release", "start", "-f", &file.to_string_lossy()]);
    assert!(!ok && out.contains("spec.service") && out.contains("unknown service 'payments'"), "{out}");
    let bg = RELEASE.replace("canary: {steps: [20, 50, 100], hold: 5s}", "abTest: {}");
    std::fs::write(&file, bg).expect("write");
    let (ok, out) = cp.ctl(&["release", "start", "-f", &file.to_string_lossy()]);
    assert!(!ok && out.contains("spec.strategy.abTest") && out.contains("needs headers or cookies"), "{out}");
    start_release(&cp, dir.path(), RELEASE);
    let s = wait_for("the first step", Duration::from_secs(10), || {
        let s = status(&cp, "checkout-v2");
        (s["weight"] == 20).then_some(s)
    });
    assert_eq!((s["phase"].as_str(), s["step"].as_u64()), (Some("Progressing"), Some(1)));
    for (action, phase, weight) in
        [("pause", "Paused", 20), ("resume", "Progressing", 20), ("promote", "Promoted", 100)]
    {
        let (ok, out) = cp.ctl(&["release", action, "checkout-v2", "-o", "json"]);
        assert!(ok, "{action}: {out}");
        let v: Value = serde_json::from_str(&out).expect("json");
        assert_eq!((v["phase"].as_str(), v["weight"].as_u64()), (Some(phase), Some(weight)), "{action}");
    }
    let (ok, out) = cp.ctl(&["get", "envoy", "routes", "--node", "nobody", "-o", "json"]);
    assert!(ok && out.contains("checkout~v2") && !out.contains("\"checkout~v1\""), "promoted: {out}");
    let (ok, out) = cp.ctl(&["release", "list"]);
    assert!(ok && out.contains("checkout-v2") && out.contains("Promoted"), "{out}");
}

/// Blue-green with real figures: requests with the preview header reach the
/// candidate while everyone else stays on stable; after the preview's
/// analysis all traffic switches at once, and after the switch's, the
/// release is promoted — with no failed request.
#[test]
fn blue_green_previews_by_header_then_switches_without_a_failed_request() {
    let dir = TempDir::new("release-bg");
    let (_v1, p1) = echo("v1", dir.path());
    let (_v2, p2) = echo("v2", dir.path());
    let cp = ControlPlane::start(dir.path());
    let port = free_port();
    cp.apply(dir.path(), &mesh(p1, p2, "bg-envoy", port));
    let _envoy = envoy(&cp, "bg-envoy", dir.path());
    wait_for("the gateway", Duration::from_secs(20), || upstream_of(port));
    let stop = Arc::new(AtomicBool::new(false));
    let load = UpstreamLoad::start(port, stop.clone(), 200_000, Duration::from_millis(2));
    let previewed: Arc<std::sync::Mutex<Counts>> = Arc::default();
    let (p, s) = (previewed.clone(), stop.clone());
    let preview = std::thread::spawn(move || {
        for _ in 0..5_000 {
            if s.load(Ordering::Relaxed) {
                break;
            }
            let h = [("x-release-preview", "candidate")];
            let key = match http_request(addr(port), "GET", "/preview", "app", &h, "") {
                Ok(r) => (r.header("x-upstream").unwrap_or("-").to_string(), r.status),
                Err(_) => ("-".to_string(), 0),
            };
            *p.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default() += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let bg = RELEASE.replace("canary: {steps: [20, 50, 100], hold: 5s}", "blueGreen: {hold: 4s}");
    start_release(&cp, dir.path(), &bg);
    wait_for("the preview", Duration::from_secs(20), || (status(&cp, "checkout-v2")["started"] == true).then_some(()));
    std::thread::sleep(Duration::from_secs(1));
    let (a, pa) = (load.snapshot(), previewed.lock().map(|c| c.clone()).unwrap_or_default());
    std::thread::sleep(Duration::from_secs(1));
    let (b, pb) = (load.snapshot(), previewed.lock().map(|c| c.clone()).unwrap_or_default());
    assert_eq!(status(&cp, "checkout-v2")["weight"], 0, "still previewing");
    assert_eq!(added(&a, &b, "v2"), 0, "without the header: stable only");
    assert!(added(&pa, &pb, "v2") > 0 && added(&pa, &pb, "v1") == 0, "with it: the candidate ({pb:?})");
    let done = wait_for("the release to be promoted", Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(200));
        let s = status(&cp, "checkout-v2");
        (s["phase"] == "Promoted").then_some(s)
    });
    stop.store(true, Ordering::Relaxed);
    let after = load.join();
    let _ = preview.join();
    let previewed = previewed.lock().map(|c| c.clone()).unwrap_or_default();
    eprintln!("blue-green: {done}\nrequests {after:?}; preview requests {previewed:?}");
    let analyses = done["analyses"].as_array().cloned().unwrap_or_default();
    assert_eq!(analyses.iter().map(|a| a["weight"].as_u64()).collect::<Vec<_>>(), [Some(0), Some(100)], "{done}");
    assert!(analyses.iter().all(|a| a["result"] == "passed" && a["requests"].as_u64() >= Some(20)), "{done}");
    assert_eq!(failed(&after) + failed(&previewed), 0, "no request failed");
}

/// A control plane stopped mid-release and started again on its data
/// continues from the step it was at (the status is in the store).
#[test]
fn a_release_continues_from_its_step_after_a_restart() {
    let dir = TempDir::new("release-restart");
    let (xds, api, data) = (free_port(), free_port(), dir.path().join("cp-data"));
    let mut cp = ControlPlane::start_at(dir.path(), xds, api, data.clone());
    cp.apply(dir.path(), &mesh(18001, 18002, "nobody", free_port()));
    let quick = RELEASE.replace("hold: 5s", "hold: 2s").replace("minRequests: 20", "minRequests: 0");
    start_release(&cp, dir.path(), &quick);
    wait_for("the second step", Duration::from_secs(20), || (status(&cp, "checkout-v2")["weight"] == 50).then_some(()));
    cp.proc_.kill();
    drop(cp);
    let cp = ControlPlane::start_at(dir.path(), xds, api, data);
    let s = status(&cp, "checkout-v2");
    assert!(s["weight"].as_u64() >= Some(50) && s["analyses"].as_array().map(Vec::len) >= Some(1), "{s}");
    let done = wait_for("the release to be promoted", Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(200));
        let s = status(&cp, "checkout-v2");
        (s["phase"] == "Promoted").then_some(s)
    });
    assert_eq!(done["analyses"].as_array().map(Vec::len), Some(3), "{done}");
}

/// `legate proxy` on `ctl bootstrap`, its stats streamed every second.
fn legate(cp: &ControlPlane, node: &str, dir: &Path) -> Attached {
    let admin = free_port();
    let boot = ctl_bootstrap(&format!("http://127.0.0.1:{}", cp.api), node, cp.xds, admin, &[]);
    start_on(Bin::Legate, &boot.replace("stats_flush_interval: 5s", "stats_flush_interval: 1s"), node, admin, dir)
}

/// A slow candidate (every answer 700 ms late) behind Envoy 1.40 and
/// `legate proxy` is rolled back at its first analysis on its p99, and the
/// rollback reaches both proxies within one second of the decision: from
/// the analysis' time to each proxy's ACK of the rollback's routes.
#[test]
fn a_slow_candidate_is_rolled_back_and_every_proxy_has_the_rollback_within_a_second() {
    let dir = TempDir::new("release-slow");
    let (_v1, p1) = echo("v1", dir.path());
    let (_v2, p2) = echo_with("v2", dir.path(), &["--delay-ms", "700"]);
    let cp = ControlPlane::start(dir.path());
    let (pe, pl) = (free_port(), free_port());
    let legate_gateway = format!(
        "---\nkind: Gateway\nmetadata: {{ name: edge-legate, nodes: {{ ids: [slow-legate] }} }}\nspec:\n  address: 127.0.0.1\n  port: {pl}\n  routes:\n  - match: {{ prefix: / }}\n    to: [{{ service: checkout }}]\n"
    );
    cp.apply(dir.path(), &(mesh(p1, p2, "slow-envoy", pe) + &legate_gateway));
    let _envoy = envoy(&cp, "slow-envoy", dir.path());
    let _legate = legate(&cp, "slow-legate", dir.path());
    for port in [pe, pl] {
        wait_for("the gateways", Duration::from_secs(20), || upstream_of(port));
    }
    // Several clients per proxy, so slow answers do not starve the analysis of requests.
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<UpstreamLoad> = [pe, pe, pe, pl, pl, pl]
        .iter()
        .map(|p| UpstreamLoad::start(*p, stop.clone(), 100_000, Duration::from_millis(2)))
        .collect();
    start_release(&cp, dir.path(), &RELEASE.replace("minRequests: 20", "minRequests: 10"));
    let done = wait_for("the release to be rolled back", Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_millis(100));
        let s = status(&cp, "checkout-v2");
        (s["phase"] == "RolledBack").then_some(s)
    });
    let history = cp.get("/v1/revisions").expect("revisions");
    let rollback = history["revisions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| {
            r["author"] == "release/checkout-v2" && r["message"].as_str().is_some_and(|m| m.starts_with("rolled back"))
        })
        .and_then(|r| r["revision"].as_u64())
        .expect("the rollback's revision");
    let decided = done["analyses"][0]["atMs"].as_u64().expect("decision time");
    let acks = wait_for("both proxies to ACK the rollback", Duration::from_secs(10), || {
        let routes: Vec<(String, u64, u64)> = cp
            .proxies()
            .iter()
            .map(|p| {
                let t = &p["types"]["RouteConfiguration"];
                let id = p["node"]["id"].as_str().unwrap_or("").to_string();
                (id, t["acked_revision"].as_u64().unwrap_or(0), t["acked_at_ms"].as_u64().unwrap_or(0))
            })
            .collect();
        (routes.len() == 2 && routes.iter().all(|(_, rev, _)| *rev >= rollback)).then_some(routes)
    });
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let mut total = Counts::new();
    for l in loads {
        for (k, n) in l.join() {
            *total.entry(k).or_default() += n;
        }
    }
    let to_candidate: usize = total.iter().filter(|((u, _), _)| u == "v2").map(|(_, n)| n).sum();
    let a = &done["analyses"][0];
    eprintln!("rolled back: {done}");
    eprintln!(
        "slow candidate: {to_candidate} of {} requests reached it; analysed on {} candidate requests, p99 {} ms",
        total.values().sum::<usize>(),
        a["requests"],
        a["p99Ms"]
    );
    for (node, _, at) in &acks {
        eprintln!(
            "rollback (revision {rollback}) ACKed by {node} {} ms after the decision",
            at.saturating_sub(decided)
        );
    }
    assert_eq!(done["step"].as_u64(), Some(1), "at the first analysis: {done}");
    assert!(a["result"] == "failed" && a["reason"].as_str().is_some_and(|r| r.contains("p99")), "{a}");
    assert!(a["p99Ms"].as_f64().is_some_and(|p| p > 500.0), "{a}");
    assert_eq!(failed(&total), 0, "slow, not failing: {total:?}");
    for (node, _, at) in &acks {
        assert!(
            *at >= decided && at - decided <= 1000,
            "{node} ACKed the rollback {} ms after the decision",
            at.saturating_sub(decided)
        );
    }
}

/// The Gateway of `node` on `port` to the Service `checkout` (a second proxy's).
fn gateway(name: &str, node: &str, port: u16) -> String {
    format!(
        "---\nkind: Gateway\nmetadata: {{ name: {name}, nodes: {{ ids: [{node}] }} }}\nspec:\n  address: 127.0.0.1\n  port: {port}\n  routes:\n  - match: {{ prefix: / }}\n    to: [{{ service: checkout }}]\n"
    )
}

/// Which upstream answered `n` requests with `headers` on `port`.
fn answers(port: u16, headers: &[(&str, &str)], n: usize) -> Counts {
    let mut c = Counts::new();
    for _ in 0..n {
        let key = match http_request(addr(port), "GET", "/ab", "app", headers, "") {
            Ok(r) => (r.header("x-upstream").unwrap_or("-").to_string(), r.status),
            Err(_) => ("-".to_string(), 0),
        };
        *c.entry(key).or_default() += 1;
    }
    c
}

/// An A/B test behind Envoy 1.40 and `legate proxy`: requests with the
/// header or the cookie reach the candidate, every other request stays on
/// stable; after the analysis (on the candidate's A/B traffic) it is
/// promoted and everyone gets the candidate — no request failed.
#[test]
fn an_ab_test_sends_header_and_cookie_requests_to_the_candidate_then_promotes() {
    let dir = TempDir::new("release-ab");
    let (_v1, p1) = echo("v1", dir.path());
    let (_v2, p2) = echo("v2", dir.path());
    let cp = ControlPlane::start(dir.path());
    let (pe, pl) = (free_port(), free_port());
    cp.apply(dir.path(), &(mesh(p1, p2, "ab-envoy", pe) + &gateway("edge-legate", "ab-legate", pl)));
    let _envoy = envoy(&cp, "ab-envoy", dir.path());
    let _legate = legate(&cp, "ab-legate", dir.path());
    for port in [pe, pl] {
        wait_for("the gateways", Duration::from_secs(20), || upstream_of(port));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let plain: Vec<UpstreamLoad> =
        [pe, pl].iter().map(|p| UpstreamLoad::start(*p, stop.clone(), 100_000, Duration::from_millis(3))).collect();
    let ab = RELEASE.replace(
        "canary: {steps: [20, 50, 100], hold: 5s}",
        "abTest: {headers: {x-beta: 'on'}, cookies: {group: beta}, hold: 5s}",
    );
    start_release(&cp, dir.path(), &ab);
    wait_for("the A/B test", Duration::from_secs(20), || (status(&cp, "checkout-v2")["started"] == true).then_some(()));
    std::thread::sleep(Duration::from_millis(500));
    let before: Vec<Counts> = plain.iter().map(UpstreamLoad::snapshot).collect();
    let cookie = [("cookie", "theme=dark; group=beta")];
    let not_quite = [("cookie", "group=betamax; x-beta=on")];
    let mut by_proxy = Vec::new();
    // A/B traffic, enough for the analysis: through both proxies.
    for _ in 0..4 {
        for port in [pe, pl] {
            let header = answers(port, &[("x-beta", "on")], 10);
            let cookie = answers(port, &cookie, 10);
            let other = answers(port, &not_quite, 5);
            by_proxy.push((port, header, cookie, other));
        }
    }
    let after: Vec<Counts> = plain.iter().map(UpstreamLoad::snapshot).collect();
    eprintln!("A/B answers (port, header, cookie, neither): {by_proxy:?}");
    for (port, header, cookie, other) in &by_proxy {
        assert_eq!(header.get(&("v2".to_string(), 200)), Some(&10), "{port}: the header goes to the candidate");
        assert_eq!(cookie.get(&("v2".to_string(), 200)), Some(&10), "{port}: the cookie goes to the candidate");
        assert_eq!(other.get(&("v1".to_string(), 200)), Some(&5), "{port}: a near miss stays on stable");
    }
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(added(b, a, "v2"), 0, "without the header or cookie: stable only");
        assert!(added(b, a, "v1") > 0);
    }
    let done = wait_for("the A/B test to be promoted", Duration::from_secs(60), || {
        answers(pe, &[("x-beta", "on")], 5);
        answers(pl, &cookie, 5);
        let s = status(&cp, "checkout-v2");
        (s["phase"].as_str().is_some_and(|p| p != "Progressing")).then_some(s)
    });
    assert_eq!(done["phase"], "Promoted", "{done}");
    std::thread::sleep(Duration::from_secs(1));
    let promoted: Vec<Counts> = plain.iter().map(UpstreamLoad::snapshot).collect();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let last: Vec<Counts> = plain.into_iter().map(UpstreamLoad::join).collect();
    eprintln!("A/B test: {done}");
    let a = &done["analyses"][0];
    assert!(a["result"] == "passed" && a["requests"].as_u64() >= Some(20) && a["weight"] == 0, "{a}");
    for (p, l) in promoted.iter().zip(&last) {
        assert!(added(p, l, "v2") > 0 && added(p, l, "v1") == 0, "promoted: everyone on the candidate: {l:?}");
        assert_eq!(failed(l), 0, "no request failed: {l:?}");
    }
}

/// A sticky canary (`stickiness: {header: x-user}`) behind Envoy 1.40 and
/// `legate proxy` at 50 %: every user's requests land on one version, the
/// same one through both proxies (the route's hash policy drives the
/// weighted pick, `use_hash_policy`), and users are spread over both.
#[test]
fn a_sticky_canary_keeps_each_user_on_one_version_through_envoy_and_legate() {
    let dir = TempDir::new("release-sticky");
    let (_v1, p1) = echo("v1", dir.path());
    let (_v2, p2) = echo("v2", dir.path());
    let cp = ControlPlane::start(dir.path());
    let (pe, pl) = (free_port(), free_port());
    cp.apply(dir.path(), &(mesh(p1, p2, "st-envoy", pe) + &gateway("edge-legate", "st-legate", pl)));
    let _envoy = envoy(&cp, "st-envoy", dir.path());
    let _legate = legate(&cp, "st-legate", dir.path());
    for port in [pe, pl] {
        wait_for("the gateways", Duration::from_secs(20), || upstream_of(port));
    }
    let sticky = RELEASE
        .replace("[20, 50, 100], hold: 5s", "[50, 100], hold: 10m, stickiness: {header: x-user}")
        .replace("minRequests: 20", "minRequests: 0");
    start_release(&cp, dir.path(), &sticky);
    wait_for("the first step", Duration::from_secs(20), || (status(&cp, "checkout-v2")["weight"] == 50).then_some(()));
    // Both proxies hold the step's routes.
    std::thread::sleep(Duration::from_secs(1));
    let mut placement: BTreeMap<String, (String, String)> = BTreeMap::new();
    for u in 0..40 {
        let user = format!("user-{u}");
        let h = [("x-user", user.as_str())];
        let (on_envoy, on_legate) = (answers(pe, &h, 6), answers(pl, &h, 6));
        assert_eq!(
            (on_envoy.len(), on_legate.len()),
            (1, 1),
            "{user} stays on one version: {on_envoy:?} {on_legate:?}"
        );
        let version = |c: &Counts| c.keys().next().map(|(u, _)| u.clone()).unwrap_or_default();
        placement.insert(user, (version(&on_envoy), version(&on_legate)));
    }
    eprintln!("sticky placement (envoy, legate): {placement:?}");
    assert!(placement.values().all(|(e, l)| e == l), "the same version through Envoy and Legate: {placement:?}");
    let on_candidate = placement.values().filter(|(e, _)| e == "v2").count();
    assert!((8..=32).contains(&on_candidate), "users spread over both versions: {on_candidate} of 40 on v2");
    // Without the header the pick is random: both versions answer.
    let anonymous = answers(pe, &[], 60);
    assert!(
        added(&Counts::new(), &anonymous, "v1") > 0 && added(&Counts::new(), &anonymous, "v2") > 0,
        "{anonymous:?}"
    );
}

/// Webhook gates: a step starts only once every gate answers 2xx to a POST
/// of the release and step; a gate that keeps refusing for `maxWait`
/// pauses the release, and `resume` tries again.
#[test]
fn gates_hold_each_step_until_they_answer_2xx() {
    let dir = TempDir::new("release-gates");
    let gate = harness::alerting::WebhookReceiver::start();
    gate.answer(503);
    let cp = ControlPlane::start(dir.path());
    cp.apply(dir.path(), &mesh(18001, 18002, "nobody", free_port()));
    let gated = RELEASE
        .replace("hold: 5s", "hold: 1s")
        .replace("minRequests: 20", &format!("minRequests: 0, maxWait: 3s, gates: ['{}']", gate.url("/gate")));
    start_release(&cp, dir.path(), &gated);
    std::thread::sleep(Duration::from_secs(2));
    let s = status(&cp, "checkout-v2");
    assert!(s["started"] == false && s["phase"] == "Progressing", "the gate holds the first step: {s}");
    let paused = wait_for("the release to pause", Duration::from_secs(10), || {
        let s = status(&cp, "checkout-v2");
        (s["phase"] == "Paused").then_some(s)
    });
    assert!(paused["message"].as_str().is_some_and(|m| m.contains("before step 1") && m.contains("503")), "{paused}");
    gate.answer(200);
    let (ok, out) = cp.ctl(&["release", "resume", "checkout-v2"]);
    assert!(ok, "{out}");
    let done = wait_for("the release to be promoted", Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(200));
        let s = status(&cp, "checkout-v2");
        (s["phase"] == "Promoted").then_some(s)
    });
    let asked = gate.received();
    eprintln!("gated release: {done}\ngate asked: {asked:?}");
    let granted: Vec<(u64, u64)> =
        asked.iter().filter_map(|b| Some((b["step"].as_u64()?, b["weight"].as_u64()?))).collect();
    for step in [(1, 20), (2, 50), (3, 100)] {
        assert!(granted.contains(&step), "the gate was asked before step {step:?}: {granted:?}");
    }
    assert!(asked.iter().all(|b| b["release"] == "checkout-v2" && b["service"] == "checkout"), "{asked:?}");
}

/// When each proxy's stream ACKed its routes at `rev` or later: (node, Unix ms).
fn route_acks(cp: &ControlPlane, rev: u64, proxies: usize) -> Vec<(String, u64)> {
    wait_for("every proxy to ACK the routes", Duration::from_secs(10), || {
        let routes: Vec<(String, u64, u64)> = cp
            .proxies()
            .iter()
            .map(|p| {
                let t = &p["types"]["RouteConfiguration"];
                let id = p["node"]["id"].as_str().unwrap_or("").to_string();
                (id, t["acked_revision"].as_u64().unwrap_or(0), t["acked_at_ms"].as_u64().unwrap_or(0))
            })
            .collect();
        (routes.len() == proxies && routes.iter().all(|(_, r, _)| *r >= rev))
            .then(|| routes.into_iter().map(|(n, _, at)| (n, at)).collect())
    })
}

/// Waits (at most a minute) for release `name` to switch all traffic to
/// its candidate; otherwise fails with its status.
fn switched(cp: &ControlPlane, name: &str) {
    let started = std::time::Instant::now();
    loop {
        let s = status(cp, name);
        if s["weight"] == 100 && s["phase"] == "Progressing" {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{name} did not switch: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The newest revision (by `author`, unless empty) whose message starts with `prefix`.
fn revision_by(cp: &ControlPlane, author: &str, prefix: &str) -> u64 {
    let history = cp.get("/v1/revisions").expect("revisions");
    history["revisions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| {
            (author.is_empty() || r["author"] == author) && r["message"].as_str().is_some_and(|m| m.starts_with(prefix))
        })
        .and_then(|r| r["revision"].as_u64())
        .unwrap_or_else(|| panic!("no revision by {author} starting with '{prefix}': {history}"))
}

/// Blue-green's instant rollback under steady load through Envoy 1.40 and
/// `legate proxy`: switched to a candidate that then starts answering 503,
/// the release is rolled back at the switch's analysis and every proxy
/// ACKs all traffic on stable within a second of the decision; the only
/// failed requests are the candidate's own 503s (and, while it is
/// restarted as a failing upstream, the proxies' 503 for its refused
/// connections). Then a good candidate switched to and aborted by an
/// operator: every proxy on stable within a second of the abort, and no
/// request failed.
#[test]
fn blue_green_rolls_back_to_stable_within_a_second_under_load() {
    let dir = TempDir::new("release-bg-rollback");
    let (_v1, p1) = echo("v1", dir.path());
    let (mut v2, p2) = echo("v2", dir.path());
    let cp = ControlPlane::start(dir.path());
    let (pe, pl) = (free_port(), free_port());
    cp.apply(dir.path(), &(mesh(p1, p2, "bgr-envoy", pe) + &gateway("edge-legate", "bgr-legate", pl)));
    let _envoy = envoy(&cp, "bgr-envoy", dir.path());
    let _legate = legate(&cp, "bgr-legate", dir.path());
    for port in [pe, pl] {
        wait_for("the gateways", Duration::from_secs(20), || upstream_of(port));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<UpstreamLoad> = [pe, pe, pl, pl]
        .iter()
        .map(|p| UpstreamLoad::start(*p, stop.clone(), 200_000, Duration::from_millis(2)))
        .collect();
    let counts = |loads: &[UpstreamLoad]| {
        let mut total = Counts::new();
        for (k, n) in loads.iter().flat_map(UpstreamLoad::snapshot) {
            *total.entry(k).or_default() += n;
        }
        total
    };
    let bg = RELEASE
        .replace("canary: {steps: [20, 50, 100], hold: 5s}", "blueGreen: {hold: 3s}")
        .replace("window: 5s, minRequests: 20", "window: 3s, minRequests: 0");
    start_release(&cp, dir.path(), &bg);
    switched(&cp, "checkout-v2");
    // The candidate starts failing: restarted on its port answering 503.
    v2.kill();
    let _v2_failing = echo_at("v2", p2, &["--status", "503"], dir.path());
    let done = wait_for("the rollback", Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(50));
        let s = status(&cp, "checkout-v2");
        (s["phase"] == "RolledBack").then_some(s)
    });
    let decided = done["analyses"].as_array().and_then(|a| a.last()).and_then(|a| a["atMs"].as_u64()).expect("at");
    let rollback = revision_by(&cp, "release/checkout-v2", "rolled back");
    let acks = route_acks(&cp, rollback, 2);
    let settled = counts(&loads);
    std::thread::sleep(Duration::from_secs(2));
    let after = counts(&loads);
    let failures: Counts = settled.iter().filter(|((_, s), _)| *s != 200).map(|(k, n)| (k.clone(), *n)).collect();
    eprintln!("rolled back: {done}\nrequests until every proxy ACKed: {settled:?}");
    for (node, at) in &acks {
        eprintln!("failing candidate: {node} ACKed the rollback {} ms after the decision", at.saturating_sub(decided));
        assert!(*at >= decided && at - decided <= 1000, "{node}: {} ms", at.saturating_sub(decided));
    }
    let from_candidate: usize = failures.iter().filter(|((u, s), _)| u == "v2" && *s == 503).map(|(_, n)| n).sum();
    let refused: usize = failures.iter().filter(|((u, s), _)| u == "-" && *s == 503).map(|(_, n)| n).sum();
    eprintln!(
        "failing candidate: {} requests, {from_candidate} answered 503 by the candidate, {refused} refused while it restarted, none other",
        settled.values().sum::<usize>()
    );
    assert_eq!(failures.values().sum::<usize>(), from_candidate + refused, "only the candidate failed: {failures:?}");
    assert!(from_candidate > 0, "the candidate's 503s were seen: {failures:?}");
    assert_eq!(failed(&after) - failed(&settled), 0, "nothing fails once every proxy ACKed: {after:?}");
    assert_eq!(added(&settled, &after, "v2"), 0, "stable only after the rollback");

    // A good candidate, switched to, then aborted by an operator.
    drop(_v2_failing);
    let _v2_good = echo_at("v2", p2, &[], dir.path());
    let (ok, out) = cp.ctl(&["delete", "release", "checkout-v2"]);
    assert!(ok, "{out}");
    start_release(&cp, dir.path(), &bg.replace("checkout-v2}", "checkout-v2b}"));
    switched(&cp, "checkout-v2b");
    // Held on the candidate (before the switch's analysis would promote it).
    let (ok, out) = cp.ctl(&["release", "pause", "checkout-v2b"]);
    assert!(ok, "{out}");
    wait_for("the candidate serving", Duration::from_secs(10), || {
        (upstream_of(pe).as_deref() == Some("v2") && upstream_of(pl).as_deref() == Some("v2")).then_some(())
    });
    let before = counts(&loads);
    let asked = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64;
    let (ok, out) = cp.ctl(&["release", "abort", "checkout-v2b"]);
    assert!(ok, "{out}");
    let aborted = revision_by(&cp, "", "aborted");
    let acks = route_acks(&cp, aborted, 2);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let mut total = Counts::new();
    for l in loads {
        for (k, n) in l.join() {
            *total.entry(k).or_default() += n;
        }
    }
    let during = total.iter().map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0))).collect::<Counts>();
    for (node, at) in &acks {
        eprintln!(
            "abort: {node} ACKed all traffic on stable {} ms after `ctl release abort` was run",
            at.saturating_sub(asked)
        );
        assert!(*at >= asked && at - asked <= 1000, "{node}: {} ms", at.saturating_sub(asked));
    }
    eprintln!(
        "abort: {} requests from the abort on, {} failed: {during:?}",
        during.values().sum::<usize>(),
        failed(&during)
    );
    assert_eq!(failed(&during), 0, "an abort fails no request: {during:?}");
    assert_eq!(status(&cp, "checkout-v2b")["phase"], "Aborted");
}

/// An `https://` gate: the control plane verifies it against `--gate-ca`
/// (a test CA). Presenting a certificate of another CA, the gate is not
/// believed and the release pauses with the TLS error; presenting one of
/// the test CA, every step is asked for and the release is promoted.
#[test]
fn https_gates_are_verified_against_the_gate_ca() {
    let dir = TempDir::new("release-https-gate");
    let (ca, other) = (certs::Ca::new("gate test CA"), certs::Ca::new("unknown CA"));
    ca.write(dir.path(), "gate-ca.pem");
    let leaf = certs::server(&["localhost"]).ip("127.0.0.1");
    let (trusted, untrusted) = (ca.issue(&leaf), other.issue(&leaf));
    let gate = harness::alerting::WebhookReceiver::start_tls(&untrusted.pem, &untrusted.key);
    let ca_file = dir.path().join("gate-ca.pem").to_string_lossy().to_string();
    let cp = ControlPlane::start_with(
        dir.path(),
        free_port(),
        free_port(),
        dir.path().join("data"),
        &["--gate-ca", &ca_file],
    );
    cp.apply(dir.path(), &mesh(18001, 18002, "nobody", free_port()));
    let url = gate.url("/gate");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let gated = RELEASE
        .replace("hold: 5s", "hold: 1s")
        .replace("minRequests: 20", &format!("minRequests: 0, maxWait: 3s, gates: ['{url}']"));
    start_release(&cp, dir.path(), &gated);
    let paused = wait_for("the release to pause", Duration::from_secs(15), || {
        let s = status(&cp, "checkout-v2");
        (s["phase"] == "Paused").then_some(s)
    });
    eprintln!("untrusted gate: {}", paused["message"]);
    assert!(paused["message"].as_str().is_some_and(|m| m.contains("TLS") && m.contains("certificate")), "{paused}");
    assert!(gate.received().is_empty(), "nothing was posted to an unverified gate");
    gate.present(&trusted.pem, &trusted.key);
    let (ok, out) = cp.ctl(&["release", "resume", "checkout-v2"]);
    assert!(ok, "{out}");
    let done = wait_for("the release to be promoted", Duration::from_secs(30), || {
        std::thread::sleep(Duration::from_millis(200));
        let s = status(&cp, "checkout-v2");
        (s["phase"] == "Promoted").then_some(s)
    });
    let asked = gate.received();
    eprintln!("https gate asked: {asked:?}\n{done}");
    let granted: Vec<u64> = asked.iter().filter_map(|b| b["weight"].as_u64()).collect();
    assert_eq!(granted, [20, 50, 100], "asked over TLS before every step");
}
