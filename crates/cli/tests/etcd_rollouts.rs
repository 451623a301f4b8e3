//! Staged config rollouts on two control-plane replicas sharing a real
//! etcd, with proxies (Envoy 1.40 and `legate proxy`) streaming from both.
//! The rollout's record is in etcd, so both replicas serve the canary the
//! staged revision and every other proxy the previous one; the leader
//! judges on what every replica reports (the canary's ACKs and figures
//! streamed to the other replica) and decides; when the leader dies during
//! the hold, the other replica takes over and ends the rollout.

mod harness;

use harness::load::{steady_load, Load};
use harness::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One `legate control-plane --store etcd://...`, killed by its PID on drop.
fn replica(name: &str, etcd: &Etcd, dir: &Path) -> ControlPlane {
    let data = dir.join(format!("{name}-data"));
    ControlPlane::start_named(name, dir, free_port(), free_port(), data, &["--store", &etcd.store_url()])
}

/// The Service `web` on `upstream` and one Gateway per node on its port.
fn mesh(upstream: u16, gateways: &[(&str, u16)]) -> String {
    let mut y = format!(
        "kind: Service\nmetadata: {{ name: web }}\nspec:\n  endpoints:\n  - {{ address: 127.0.0.1, port: {upstream} }}\n"
    );
    for (i, (node, port)) in gateways.iter().enumerate() {
        y.push_str(&format!(
            "---\nkind: Gateway\nmetadata: {{ name: edge-{i}, nodes: {{ ids: [{node}] }} }}\nspec:\n  address: 127.0.0.1\n  port: {port}\n  routes:\n  - match: {{ prefix: / }}\n    to: [{{ service: web }}]\n"
        ));
    }
    y
}

/// A proxy on `cp`'s xDS address (stats flushed every second to it).
fn proxy_on(cp: &ControlPlane, bin: Bin, node: &str, dir: &Path) -> Attached {
    let admin = free_port();
    let boot = ctl_bootstrap(&format!("http://127.0.0.1:{}", cp.api), node, cp.xds, admin, &[]);
    start_on(bin, &boot.replace("stats_flush_interval: 5s", "stats_flush_interval: 1s"), node, admin, dir)
}

/// Watches `/v1/proxies` of every replica every 20 ms: the revisions each
/// node was sent, of any type.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<BTreeMap<String, BTreeSet<u64>>>,
}

fn watch(apis: &[u16]) -> Watch {
    let stop = Arc::new(AtomicBool::new(false));
    let (s, apis) = (stop.clone(), apis.to_vec());
    let thread = std::thread::spawn(move || {
        let mut seen: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for _ in 0..3_000 {
            if s.load(Ordering::Relaxed) {
                break;
            }
            for api in &apis {
                let Ok(r) = http_get(addr(*api), "/v1/proxies", "cp") else { continue };
                let v: Value = serde_json::from_str(&r.body).unwrap_or_default();
                for p in v["proxies"].as_array().into_iter().flatten() {
                    let id = p["node"]["id"].as_str().unwrap_or("").to_string();
                    for t in p["types"].as_object().into_iter().flat_map(|m| m.values()) {
                        seen.entry(id.clone()).or_default().insert(t["sent_revision"].as_u64().unwrap_or(0));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    });
    Watch { stop, thread }
}

impl Watch {
    fn finish(self) -> BTreeMap<String, BTreeSet<u64>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("watch")
    }
}

fn staged_apply(cp: &ControlPlane, dir: &Path, yaml: &str, nodes: &str, hold: &str, wait: bool) -> (bool, String) {
    let f = dir.join(format!("staged-{}.yaml", free_port()));
    std::fs::write(&f, yaml).expect("write");
    let mut args = vec!["apply", "-f", f.to_str().expect("path"), "--canary-nodes", nodes, "--hold", hold];
    if !wait {
        args.push("--no-wait");
    }
    cp.ctl(&args)
}

/// Steady load on each gateway, by node.
fn loads(ports: &[(&'static str, u16)], stop: &Arc<AtomicBool>) -> Vec<(&'static str, Load)> {
    ports.iter().map(|(n, p)| (*n, steady_load(*p, stop.clone(), 100_000, Duration::from_millis(4)))).collect()
}

const NODES: [(&str, Bin, usize); 4] = [
    ("er-envoy-0", Bin::Envoy, 0),
    ("er-legate-0", Bin::Legate, 0),
    ("er-envoy-1", Bin::Envoy, 1),
    ("er-legate-1", Bin::Legate, 1),
];

#[test]
fn a_rollout_staged_on_two_replicas_is_judged_by_the_leader_and_survives_its_death() {
    let dir = TempDir::new("etcd-rollout");
    let etcd = Etcd::start(dir.path());
    let (_live, live) = echo("live", dir.path());
    let (_v2, v2) = echo("v2", dir.path());
    let dead = free_port();
    let mut r0 = replica("replica-0", &etcd, dir.path());
    wait_for("replica-0 to lead", Duration::from_secs(10), || r0.is_leader().then_some(()));
    let r1 = replica("replica-1", &etcd, dir.path());
    assert!(!r1.is_leader(), "one leader");
    let ports: Vec<(&'static str, u16)> = NODES.iter().map(|(n, _, _)| (*n, free_port())).collect();
    r0.apply(dir.path(), &mesh(live, &ports));
    let _procs: Vec<Attached> =
        NODES.iter().map(|(n, bin, at)| proxy_on(if *at == 0 { &r0 } else { &r1 }, *bin, n, dir.path())).collect();
    for (node, port) in &ports {
        wait_for(&format!("{node} serving"), Duration::from_secs(20), || {
            (upstream_of(*port).as_deref() == Some("live")).then_some(())
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let running = loads(&ports, &stop);
    std::thread::sleep(Duration::from_secs(3));

    // A broken change applied on the leader, its canary a proxy streaming
    // from the other replica (the leader knows it from that replica's report).
    let w = watch(&[r0.api, r1.api]);
    let started = Instant::now();
    let (ok, out) = staged_apply(&r0, dir.path(), &mesh(dead, &ports), "er-legate-1", "4s", true);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let seen = w.finish();
    let r = r1.get("/v1/rollouts").expect("rollouts")["history"][0].clone();
    eprintln!("ctl apply on replica-0 ({took:?}):\n{out}\nrollout as replica-1 has it: {r}\nsent: {seen:?}");
    assert!(!ok && out.contains("rolled_back") && out.contains("error rate"), "{out}");
    assert_eq!(r["state"], "rolled_back", "replica-1 learnt the outcome from the store: {r}");
    assert_eq!(r["canary"], serde_json::json!(["er-legate-1"]), "{r}");
    assert_eq!(r["others"].as_array().map(Vec::len), Some(3), "the proxies of both replicas: {r}");
    let e = &r["evidence"];
    assert!(e["acks"][0]["acked"] == true, "the canary's ACK, reported by replica-1: {e}");
    assert!(e["canary"]["errors"].as_u64() > Some(0) && e["others"]["errors"] == 0, "{e}");
    assert!(e["others"]["requests"].as_u64() >= Some(20), "{e}");
    let staged = r["revision"].as_u64().expect("revision");
    for (node, _) in &ports {
        let sent = seen.get(*node).cloned().unwrap_or_default();
        assert_eq!(sent.contains(&staged), *node == "er-legate-1", "{node} was sent revision {staged}: {sent:?}");
    }
    let decided = format!("rollout of revision {staged} rolled back");
    assert!(r0.logged(&decided).contains(&decided), "the leader decided");
    assert!(!r1.output().contains(&decided), "the other replica did not: {}", r1.output());

    // A good change staged on a proxy of replica-1; the leader dies during
    // the hold and replica-1, leading then, promotes it.
    let (ok, out) = staged_apply(&r0, dir.path(), &mesh(v2, &ports), "er-envoy-1", "8s", false);
    assert!(ok && out.contains("staged on er-envoy-1"), "{out}");
    let staged = wait_for("replica-1 to hold the rollout", Duration::from_secs(5), || {
        r1.get("/v1/rollouts").and_then(|v| v["current"]["revision"].as_u64())
    });
    wait_for("the canary on v2", Duration::from_secs(10), || {
        (upstream_of(ports[2].1).as_deref() == Some("v2")).then_some(())
    });
    assert_eq!(upstream_of(ports[3].1).as_deref(), Some("live"), "the other proxy of replica-1 keeps the previous");
    let killed = Instant::now();
    r0.proc_.kill();
    wait_for("replica-1 to lead", Duration::from_secs(15), || r1.is_leader().then_some(()));
    let done = wait_for("the rollout to end", Duration::from_secs(40), || {
        std::thread::sleep(Duration::from_millis(200));
        let v = r1.get(&format!("/v1/rollouts/{staged}"))?;
        (v["state"] != "staged").then_some(v)
    });
    eprintln!("ended {:?} after the leader was killed: {done}", killed.elapsed());
    assert_eq!(done["state"], "promoted", "{done}");
    wait_for("replica-1's proxies on v2", Duration::from_secs(10), || {
        (upstream_of(ports[3].1).as_deref() == Some("v2")).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for (node, l) in running {
        let (okc, failed, errors) = l.join();
        eprintln!("{node}: {okc} ok, {failed} failed");
        if node != "er-legate-1" {
            assert_eq!(failed, 0, "{node}: {:?}", errors.iter().take(3).collect::<Vec<_>>());
        }
    }
    let (ok, hist) = r1.ctl(&["history"]);
    assert!(ok && hist.matches(&format!("rollout of revision {staged} promoted")).count() == 1, "{hist}");
    let promoted = format!("rollout of revision {staged} promoted");
    assert!(r1.logged(&promoted).contains(&promoted), "replica-1 decided");
}
