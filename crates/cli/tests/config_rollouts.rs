//! Staged config rollouts end to end: four proxies — two Envoy 1.40, two
//! `legate proxy` — on one control plane over ADS, each with its own
//! Gateway to the Service `web` and under steady load, streaming their
//! stats every second. `legate ctl apply --canary 25% --hold 5s` stages a
//! change on one of them; the control plane compares that proxy's error
//! rate and p99 with the three others' and then sends the change to all, or
//! gives the canary the previous revision back.

mod harness;

use harness::load::UpstreamLoad;
use harness::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Counts = BTreeMap<(String, u16), usize>;

const NODES: [(&str, Bin); 4] = [
    ("cr-envoy-1", Bin::Envoy),
    ("cr-envoy-2", Bin::Envoy),
    ("cr-legate-1", Bin::Legate),
    ("cr-legate-2", Bin::Legate),
];

/// The Service `web` on `upstreams` (name, port) and one Gateway per node on its port.
fn mesh(upstreams: &[u16], gateways: &[(&str, u16)]) -> String {
    let endpoints: Vec<String> =
        upstreams.iter().map(|p| format!("  - {{ address: 127.0.0.1, port: {p} }}\n")).collect();
    let mut y = format!("kind: Service\nmetadata: {{ name: web }}\nspec:\n  endpoints:\n{}", endpoints.concat());
    for (i, (node, port)) in gateways.iter().enumerate() {
        y.push_str(&format!(
            "---\nkind: Gateway\nmetadata: {{ name: edge-{i}, nodes: {{ ids: [{node}] }} }}\nspec:\n  address: 127.0.0.1\n  port: {port}\n  routes:\n  - match: {{ prefix: / }}\n    to: [{{ service: web }}]\n"
        ));
    }
    y
}

/// The four proxies on `ctl bootstrap` (stats flushed every second), each
/// with its gateway port.
struct Fleet {
    _procs: Vec<Attached>,
    ports: Vec<(&'static str, u16)>,
}

fn fleet(cp: &ControlPlane, dir: &Path) -> Fleet {
    let ports: Vec<(&str, u16)> = NODES.iter().map(|(n, _)| (*n, free_port())).collect();
    let mut procs = Vec::new();
    for (node, bin) in NODES {
        let admin = free_port();
        let boot = ctl_bootstrap(&format!("http://127.0.0.1:{}", cp.api), node, cp.xds, admin, &[]);
        assert!(boot.contains("stats_flush_interval: 5s"), "{boot}");
        let boot = boot.replace("stats_flush_interval: 5s", "stats_flush_interval: 1s");
        procs.push(start_on(bin, &boot, node, admin, dir));
    }
    Fleet { _procs: procs, ports }
}

/// Steady load on every gateway, counted per node.
struct Loads {
    stop: Arc<AtomicBool>,
    loads: Vec<(&'static str, UpstreamLoad)>,
}

impl Loads {
    fn start(f: &Fleet) -> Loads {
        let stop = Arc::new(AtomicBool::new(false));
        let loads = f
            .ports
            .iter()
            .map(|(n, p)| (*n, UpstreamLoad::start(*p, stop.clone(), 100_000, Duration::from_millis(4))))
            .collect();
        Loads { stop, loads }
    }

    fn snapshot(&self) -> BTreeMap<&'static str, Counts> {
        self.loads.iter().map(|(n, l)| (*n, l.snapshot())).collect()
    }

    fn join(self) -> BTreeMap<&'static str, Counts> {
        self.stop.store(true, Ordering::Relaxed);
        self.loads.into_iter().map(|(n, l)| (n, l.join())).collect()
    }
}

fn failed(c: &Counts) -> usize {
    c.iter().filter(|((_, s), _)| *s != 200).map(|(_, n)| n).sum()
}

fn from(c: &Counts, upstream: &str) -> usize {
    c.iter().filter(|((u, _), _)| u == upstream).map(|(_, n)| n).sum()
}

fn minus(a: &Counts, b: &Counts) -> Counts {
    a.iter().map(|(k, n)| (k.clone(), n - b.get(k).copied().unwrap_or(0))).filter(|(_, n)| *n > 0).collect()
}

/// Every gateway answers from `upstream`.
fn serving(f: &Fleet, upstream: &str) {
    for (node, port) in &f.ports {
        wait_for(&format!("{node} serving from {upstream}"), Duration::from_secs(20), || {
            (upstream_of(*port).as_deref() == Some(upstream)).then_some(())
        });
    }
}

/// Watches `/v1/proxies` every 20 ms: every revision each node was sent of
/// any type, and one `ctl proxies` table taken while the rollout was staged.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(BTreeMap<String, BTreeSet<u64>>, String)>,
}

fn watch(cp: &ControlPlane) -> Watch {
    let stop = Arc::new(AtomicBool::new(false));
    let (s, api) = (stop.clone(), cp.api);
    let thread = std::thread::spawn(move || {
        let server = format!("http://127.0.0.1:{api}");
        let mut seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        let mut table = String::new();
        for _ in 0..3_000 {
            if s.load(Ordering::Relaxed) {
                break;
            }
            let Ok(r) = http_get(addr(api), "/v1/proxies", "cp") else { continue };
            let v: Value = serde_json::from_str(&r.body).unwrap_or_default();
            for p in v["proxies"].as_array().into_iter().flatten() {
                let id = p["node"]["id"].as_str().unwrap_or("").to_string();
                for t in p["types"].as_object().into_iter().flat_map(|m| m.values()) {
                    seen.entry(id.clone()).or_default().insert(t["sent_revision"].as_u64().unwrap_or(0));
                }
            }
            let staged = v["proxies"].as_array().is_some_and(|a| a.iter().any(|p| p["rollout"].is_object()));
            if staged && table.is_empty() {
                table = ctl(&server, &["proxies"]).1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (seen, table)
    });
    Watch { stop, thread }
}

/// `ctl apply -f FILE --canary SHARE --hold HOLD` (SHARE a percent, or
/// node ids for `--canary-nodes`): whether it succeeded and what it printed.
fn staged_apply(cp: &ControlPlane, dir: &Path, yaml: &str, share: &str, hold: &str) -> (bool, String) {
    let f = dir.join(format!("staged-{}.yaml", free_port()));
    std::fs::write(&f, yaml).expect("write");
    let flag = if share.ends_with('%') { "--canary" } else { "--canary-nodes" };
    cp.ctl(&["apply", "-f", &f.to_string_lossy(), flag, share, "--hold", hold, "-m", "staged change"])
}

/// 25 % of the four: the canary the control plane picks (an Envoy, for these node ids).
#[test]
fn a_broken_change_is_rolled_back_after_reaching_only_the_canary() {
    broken_change_rolled_back("25%");
}

/// The same with a `legate proxy` named as the canary.
#[test]
fn a_broken_change_on_a_named_legate_canary_is_rolled_back() {
    broken_change_rolled_back("cr-legate-2");
}

fn broken_change_rolled_back(canary_flag: &str) {
    let dir = TempDir::new("rollout-bad");
    let (_live, live) = echo("live", dir.path());
    let dead = free_port();
    let cp = ControlPlane::start(dir.path());
    let f = fleet(&cp, dir.path());
    cp.apply(dir.path(), &mesh(&[live], &f.ports));
    serving(&f, "live");
    let loads = Loads::start(&f);
    // Every proxy's figures reach the monitor before the change.
    std::thread::sleep(Duration::from_secs(3));
    let before = loads.snapshot();
    let w = watch(&cp);
    let started = Instant::now();
    let (ok, out) = staged_apply(&cp, dir.path(), &mesh(&[dead], &f.ports), canary_flag, "5s");
    let took = started.elapsed();
    let rollouts = cp.get("/v1/rollouts").expect("rollouts");
    let r = rollouts["history"][0].clone();
    // Load goes on a little after the rollback, then everything is counted.
    std::thread::sleep(Duration::from_secs(2));
    let settled = loads.snapshot();
    std::thread::sleep(Duration::from_secs(2));
    let after = loads.join();
    w.stop.store(true, Ordering::Relaxed);
    let (seen, table) = w.thread.join().expect("watch");
    eprintln!(
        "ctl apply ({took:?}):\n{out}\nrollout: {r}\nproxies during the rollout:\n{table}\nrevisions sent: {seen:?}"
    );
    assert!(!ok, "a rolled-back apply fails: {out}");
    assert!(out.contains("rolled_back") && out.contains("error rate"), "{out}");
    assert_eq!(r["state"], "rolled_back", "{r}");
    let canary: Vec<String> =
        r["canary"].as_array().into_iter().flatten().filter_map(|c| c.as_str().map(String::from)).collect();
    assert_eq!(canary.len(), 1, "25% of four proxies is one: {r}");
    if !canary_flag.ends_with('%') {
        assert_eq!(canary, [canary_flag], "the named canary: {r}");
    }
    assert_eq!(r["others"].as_array().map(Vec::len), Some(3), "{r}");
    let (staged, previous) = (r["revision"].as_u64().expect("revision"), r["previous"].as_u64().expect("previous"));
    let e = &r["evidence"];
    assert!(e["canary"]["errorRate"].as_f64() > Some(0.2) && e["others"]["errors"] == 0, "the evidence: {e}");
    assert!(e["others"]["requests"].as_u64() >= Some(20), "compared with the others' traffic: {e}");
    // The other proxies never saw the staged revision ...
    for (node, _) in &f.ports {
        let sent = seen.get(*node).cloned().unwrap_or_default();
        assert!(sent.contains(&previous), "{node}: {sent:?}");
        let is_canary = canary.iter().any(|c| c == node);
        assert_eq!(sent.contains(&staged), is_canary, "{node} was sent revision {staged} only if canary: {sent:?}");
    }
    // ... and answered every request from the live upstream.
    let mut canary_failed = 0;
    for (node, counts) in &after {
        let during = minus(counts, &before[node]);
        if canary.iter().any(|c| c == node) {
            canary_failed = failed(&during);
            assert!(canary_failed > 0, "the canary met the dead endpoint: {during:?}");
            assert_eq!(failed(&minus(counts, &settled[node])), 0, "the canary is whole again: {counts:?}");
        } else {
            assert_eq!(failed(counts), 0, "{node} never failed a request: {counts:?}");
            assert_eq!(from(counts, "live"), counts.values().sum::<usize>(), "{node}: {counts:?}");
        }
    }
    // The canary holds the previous configuration again (every type ACKed).
    let canary_now: Vec<Value> =
        cp.proxies().into_iter().filter(|p| p["node"]["id"].as_str() == canary.first().map(String::as_str)).collect();
    let final_rev = r["finalRevision"].as_u64().expect("final revision");
    let back_at = canary_now
        .iter()
        .flat_map(|p| p["types"].as_object().cloned().unwrap_or_default().into_values())
        .inspect(|t| assert!(t["acked_revision"].as_u64() >= Some(final_rev), "{t}"))
        .filter_map(|t| t["acked_at_ms"].as_u64())
        .max()
        .unwrap_or(0);
    let decided = r["decidedMs"].as_u64().unwrap_or(0);
    eprintln!(
        "config canary: {canary_failed} requests failed on the canary {canary:?}, 0 on the other three; \
         the canary ACKed the rollback {} ms after the decision",
        back_at.saturating_sub(decided)
    );
    assert!(table.contains("canary of") && table.matches("kept (staged").count() == 3, "{table}");
    // History shows the staged revision and the rollback.
    let (ok, hist) = cp.ctl(&["history"]);
    assert!(
        ok && hist.contains("staged rollout to 1 of 4 proxies") && hist.contains("rolled back to revision"),
        "{hist}"
    );
}

#[test]
fn a_good_change_goes_to_every_proxy_after_the_hold() {
    let dir = TempDir::new("rollout-good");
    let (_v1, p1) = echo("v1", dir.path());
    let (_v2, p2) = echo("v2", dir.path());
    let cp = ControlPlane::start(dir.path());
    let f = fleet(&cp, dir.path());
    cp.apply(dir.path(), &mesh(&[p1], &f.ports));
    serving(&f, "v1");
    let loads = Loads::start(&f);
    std::thread::sleep(Duration::from_secs(3));
    let w = watch(&cp);
    let (ok, out) = staged_apply(&cp, dir.path(), &mesh(&[p2], &f.ports), "cr-envoy-1,cr-legate-1", "4s");
    let r = cp.get("/v1/rollouts").expect("rollouts")["history"][0].clone();
    serving(&f, "v2");
    let after = loads.join();
    w.stop.store(true, Ordering::Relaxed);
    let (seen, table) = w.thread.join().expect("watch");
    eprintln!("ctl apply:\n{out}\nrollout: {r}\nproxies during the rollout:\n{table}\nrequests: {after:?}");
    assert!(ok && out.contains("promoted"), "{out}");
    assert_eq!(r["state"], "promoted", "{r}");
    let canary: Vec<&str> = r["canary"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert_eq!(canary, ["cr-envoy-1", "cr-legate-1"], "an Envoy and a Legate named: {r}");
    let staged = r["revision"].as_u64().expect("revision");
    for (node, _) in &f.ports {
        let sent = seen.get(*node).cloned().unwrap_or_default();
        assert_eq!(sent.contains(&staged), canary.contains(node), "{node}: staged only on the canary ({seen:?})");
    }
    assert!(r["evidence"]["canary"]["requests"].as_u64() >= Some(20), "{r}");
    for (node, counts) in &after {
        assert_eq!(failed(counts), 0, "{node}: no request failed: {counts:?}");
    }
    assert!(table.matches("canary of").count() == 2, "{table}");
    let (ok, hist) = cp.ctl(&["history"]);
    assert!(
        ok && hist.contains("staged rollout to 2 of 4 proxies") && hist.contains("promoted to every proxy"),
        "{hist}"
    );
}

/// A bad rollout request is refused with its fields; changes wait while a
/// rollout is staged.
#[test]
fn rollouts_are_checked_and_hold_other_changes() {
    let dir = TempDir::new("rollout-ctl");
    let (_v1, p1) = echo("v1", dir.path());
    let cp = ControlPlane::start(dir.path());
    let node = "cr-lone";
    let port = free_port();
    cp.apply(dir.path(), &mesh(&[p1], &[(node, port)]));
    let (ok, out) = staged_apply(&cp, dir.path(), &mesh(&[p1, 18003], &[(node, port)]), "150%", "soon");
    assert!(!ok && out.contains("rollout.canary") && out.contains("rollout.hold"), "{out}");
    // No proxy receives it: nothing to stage, applied at once.
    let (ok, out) = staged_apply(&cp, dir.path(), &mesh(&[p1, 18003], &[(node, port)]), "25%", "30s");
    assert!(ok && out.contains("no connected proxy receives the change"), "{out}");
    let f = dir.path().join("more.yaml");
    std::fs::write(&f, mesh(&[p1], &[(node, port)])).expect("write");
    let fs = f.to_string_lossy().to_string();
    let (ok, out) = cp.ctl(&["apply", "-f", &fs, "--canary-nodes", node, "--hold", "30s"]);
    assert!(!ok && out.contains("none of the named proxies"), "the named canary is not connected: {out}");
    let _proxy = attach(Bin::Legate, &cp, node, false, dir.path());
    wait_for("the proxy", Duration::from_secs(20), || upstream_of(port));
    // A Rollout policy stages every apply that gives none.
    let policy =
        |name: &str| format!("kind: Rollout\nmetadata: {{ name: {name} }}\nspec: {{ nodes: [{node}], hold: 30s }}\n");
    let (ok, out) = staged_policy(&cp, dir.path(), &policy("sometimes"));
    assert!(!ok && out.contains("metadata.name") && out.contains("'default'"), "{out}");
    let (ok, out) = staged_policy(&cp, dir.path(), &policy("default"));
    assert!(
        ok && out.contains("Rollout/default created") && !out.contains("staged"),
        "the policy itself is not staged: {out}"
    );
    let (ok, out) = cp.ctl(&["apply", "-f", &fs, "--no-wait"]);
    assert!(ok && out.contains(&format!("staged on {node}")), "staged by the policy: {out}");
    let (ok, table) = cp.ctl(&["proxies"]);
    assert!(ok && table.contains("canary of"), "{table}");
    let (ok, out) = cp.ctl(&["delete", "gateway", "edge-0"]);
    assert!(!ok && out.contains("is being rolled out"), "changes wait for the rollout: {out}");
    // A control plane stopped during the hold rolls the staged revision back when it starts.
    let staged = cp.get("/v1/rollouts").expect("rollouts")["current"]["revision"].as_u64().expect("staged");
    let data = cp.data.clone();
    drop(cp);
    let cp = ControlPlane::start_at(dir.path(), free_port(), free_port(), data);
    let (ok, hist) = cp.ctl(&["history"]);
    assert!(
        ok && hist.contains(&format!("rollout of revision {staged} rolled back"))
            && hist.contains("restarted during its hold"),
        "{hist}"
    );
    assert!(cp.get("/v1/rollouts").expect("rollouts")["current"].is_null());
}

/// `ctl apply -f` of `yaml`: whether it succeeded and what it printed.
fn staged_policy(cp: &ControlPlane, dir: &Path, yaml: &str) -> (bool, String) {
    let f = dir.join(format!("policy-{}.yaml", free_port()));
    std::fs::write(&f, yaml).expect("write");
    cp.ctl(&["apply", "-f", &f.to_string_lossy()])
}

/// The watched folder's changes are staged by the `Rollout` policy named
/// `default` as API applies are: a saved file reaches only the canary, then
/// every proxy after the hold; a file saved during the hold waits for the
/// rollout to end and is applied (staged in turn) after it.
#[test]
fn the_watched_folder_is_staged_by_the_rollout_policy() {
    let dir = TempDir::new("rollout-folder");
    let (_v1, p1) = echo("v1", dir.path());
    let (_v2, p2) = echo("v2", dir.path());
    let (_v3, p3) = echo("v3", dir.path());
    let folder = dir.path().join("config");
    std::fs::create_dir_all(&folder).expect("folder");
    let ports: Vec<(&str, u16)> = vec![("cr-envoy-1", free_port()), ("cr-legate-1", free_port())];
    std::fs::write(folder.join("mesh.yaml"), mesh(&[p1], &ports)).expect("write");
    let policy =
        "kind: Rollout\nmetadata: { name: default }\nspec: { nodes: [cr-legate-1], hold: 4s, minRequests: 0 }\n";
    std::fs::write(folder.join("rollout.yaml"), policy).expect("write");
    let watch_dir = folder.to_string_lossy().to_string();
    let cp = ControlPlane::start_with(
        dir.path(),
        free_port(),
        free_port(),
        dir.path().join("data"),
        &["--watch", &watch_dir],
    );
    let _envoy = attach(Bin::Envoy, &cp, "cr-envoy-1", false, dir.path());
    let _legate = attach(Bin::Legate, &cp, "cr-legate-1", false, dir.path());
    for (node, port) in &ports {
        wait_for(&format!("{node} on v1"), Duration::from_secs(20), || {
            (upstream_of(*port).as_deref() == Some("v1")).then_some(())
        });
    }
    let w = watch(&cp);
    std::fs::write(folder.join("mesh.yaml"), mesh(&[p2], &ports)).expect("write");
    let staged = wait_for("the folder's change staged", Duration::from_secs(10), || {
        cp.get("/v1/rollouts").and_then(|v| v["current"]["revision"].as_u64())
    });
    wait_for("the canary on v2", Duration::from_secs(10), || {
        (upstream_of(ports[1].1).as_deref() == Some("v2")).then_some(())
    });
    assert_eq!(upstream_of(ports[0].1).as_deref(), Some("v1"), "the other proxy keeps the previous revision");
    // Saved during the hold: waits, then goes out after the rollout ends.
    std::fs::write(folder.join("mesh.yaml"), mesh(&[p3], &ports)).expect("write");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cp.get("/v1/rollouts").expect("rollouts")["current"]["revision"].as_u64(), Some(staged), "held");
    let done = wait_for("the first rollout to end", Duration::from_secs(30), || {
        let v = cp.get(&format!("/v1/rollouts/{staged}"))?;
        (v["state"] != "staged").then_some(v)
    });
    assert_eq!(done["state"], "promoted", "{done}");
    let second = wait_for("the waiting change staged", Duration::from_secs(10), || {
        cp.get("/v1/rollouts").and_then(|v| v["current"]["revision"].as_u64()).filter(|r| *r > staged)
    });
    for (node, port) in &ports {
        wait_for(&format!("{node} on v3"), Duration::from_secs(30), || {
            (upstream_of(*port).as_deref() == Some("v3")).then_some(())
        });
    }
    w.stop.store(true, Ordering::Relaxed);
    let (seen, _) = w.thread.join().expect("watch");
    let (ok, hist) = cp.ctl(&["history"]);
    eprintln!("revisions sent: {seen:?}\n{hist}");
    for rev in [staged, second] {
        assert!(seen["cr-legate-1"].contains(&rev), "the canary got {rev}: {seen:?}");
        assert!(!seen["cr-envoy-1"].contains(&rev), "the other proxy never got {rev}: {seen:?}");
    }
    assert!(ok && hist.matches("staged rollout to 1 of 2 proxies").count() == 2, "{hist}");
    assert!(hist.matches("promoted to every proxy").count() == 2 && hist.contains("watch:"), "{hist}");
}
