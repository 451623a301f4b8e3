//! The causes of an abnormal node end to end, each seen in `ctl abnormal
//! -o json` with its evidence, and timed: a proxy its agent cannot bring
//! back (`down`, then `crash_loop`), cured once it can run again; a proxy
//! stopped (SIGSTOP) so it sends no metrics (`metrics_silent`), normal again
//! once continued; a proxy whose upstream answers 503 while its peer's
//! answers 200 (`error_rate`).

mod harness;

use harness::agent::Agent;
use harness::xds::web_resources;
use harness::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// `node` as `ctl abnormal -o json` shows it, when abnormal.
fn abnormal(cp: &ControlPlane, node: &str) -> Option<Value> {
    let (ok, out) = cp.ctl(&["abnormal", "-o", "json"]);
    let v: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
    v["nodes"].as_array()?.iter().find(|n| n["node"] == node).cloned()
}

/// `node`'s cause `cause`, when it has it.
fn cause(cp: &ControlPlane, node: &str, cause: &str) -> Option<Value> {
    abnormal(cp, node)?["causes"].as_array()?.iter().find(|c| c["cause"] == cause).cloned()
}

fn evidence(c: &Value) -> String {
    c["evidence"].as_str().unwrap_or("").to_string()
}

fn alert_state(cp: &ControlPlane, name: &str) -> Option<String> {
    let v = cp.get("/v1/alerts")?;
    let r = v["rules"].as_array()?.iter().find(|r| r["name"] == name)?.clone();
    r["state"].as_str().map(String::from)
}

fn agent_of(cp: &ControlPlane, node: &str) -> Option<Value> {
    cp.proxies().into_iter().find(|p| p["node"]["id"] == node).map(|p| p["agent"].clone()).filter(|a| !a.is_null())
}

fn connected(cp: &ControlPlane, node: &str) -> bool {
    cp.proxies().iter().any(|p| p["node"]["id"] == node && p["connected"] != false)
}

fn control_plane(dir: &Path, extra: &[&str]) -> ControlPlane {
    let mut flags = vec!["--alert-interval", "200ms", "--repair-after", "off"];
    flags.extend(extra);
    ControlPlane::start_with(dir, free_port(), free_port(), dir.join("cp-data"), &flags)
}

/// An Envoy that runs only while `mark` exists (else exits 1 at once).
fn guarded_envoy(d: &Path, mark: &Path) -> std::path::PathBuf {
    let script = d.join("guarded-envoy.sh");
    let text = format!("#!/bin/sh\n[ -f '{}' ] && exec '{}' \"$@\"\nexit 1\n", mark.display(), envoy_bin().display());
    std::fs::write(&script, text).expect("script");
    let _ = std::process::Command::new("chmod").arg("755").arg(&script).status();
    script
}

/// Envoy 1.40 under its agent, an endpoint of service `svc` (label `node`);
/// its binary then refuses to run and the running process is killed: the
/// node is `down` (no stream, the agent's state as evidence), then
/// `crash_loop` (the agent gives up for its pause), isolated from EDS and
/// alerted; the binary runs again: after the pause the agent starts it, the
/// node is normal, back in EDS, and the alert resolves.
#[test]
fn a_proxy_its_agent_cannot_bring_back_is_down_then_crash_looping_then_cured() {
    let dir = TempDir::new("fault-down");
    let d = dir.path();
    let mark = d.join("may-run");
    std::fs::write(&mark, "").expect("mark");
    let envoy = guarded_envoy(d, &mark);
    let cp = control_plane(d, &["--abnormal-after", "2s"]);
    let (_a, a_port) = echo("a", d);
    let (_b, b_port) = echo("b", d);
    let svc = format!(
        "kind: Service\nmetadata: {{ name: svc }}\nspec:\n  endpoints:\n  - {{ address: 127.0.0.1, port: {a_port}, labels: {{ node: flaky }} }}\n  - {{ address: 127.0.0.1, port: {b_port}, labels: {{ node: steady }} }}\n  isolation: {{ enabled: true, max_percent: 50 }}\n"
    );
    cp.apply(d, &svc);
    cp.apply(d, "kind: AlertRule\nmetadata: { name: flaky-abnormal }\nspec: { metric: node_abnormal, above: 0, nodes: { ids: [flaky] } }\n");
    let mut agent = Agent::start_with(&cp, "flaky", "envoy", Some(&envoy), free_port(), d, &["--crash-pause-s", "6"]);
    let a = wait_for("flaky's Envoy to run", Duration::from_secs(40), || {
        agent_of(&cp, "flaky").filter(|a| a["state"] == "running")
    });
    let pid = a["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).expect("pid");
    agent.proxy_pids.push(pid);
    wait_for("flaky connected", Duration::from_secs(20), || connected(&cp, "flaky").then_some(()));
    let observer = attach(Bin::Legate, &cp, "observer", false, d);
    let both = {
        let mut v = vec![a_port, b_port];
        v.sort_unstable();
        v
    };
    wait_for("the observer to hold both endpoints", Duration::from_secs(20), || {
        (cluster_ports(observer.admin, "svc") == both).then_some(())
    });

    std::fs::remove_file(&mark).expect("unmark");
    let t0 = Instant::now();
    let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    let down = wait_for("flaky down", Duration::from_secs(20), || cause(&cp, "flaky", "down"));
    let down_at = t0.elapsed();
    let e = evidence(&down);
    assert!(e.contains("no xDS stream since") && e.contains("agent: "), "{down}");
    let looping = wait_for("flaky crash-looping", Duration::from_secs(20), || cause(&cp, "flaky", "crash_loop"));
    let loop_at = t0.elapsed();
    let e = evidence(&looping);
    assert!(e.contains("agent reports crash-loop") && e.contains("last exit: exit code 1"), "{looping}");
    let node = abnormal(&cp, "flaky").expect("abnormal");
    assert_eq!(node["isolated"], serde_json::json!([format!("svc 127.0.0.1:{a_port}")]), "{node}");
    wait_for("flaky out of the observer's EDS", Duration::from_secs(10), || {
        (cluster_ports(observer.admin, "svc") == vec![b_port]).then_some(())
    });
    wait_for("the alert to fire", Duration::from_secs(5), || {
        (alert_state(&cp, "flaky-abnormal").as_deref() == Some("firing")).then_some(())
    });
    eprintln!("killed, binary refusing: down after {down_at:?}, crash_loop after {loop_at:?} ({e})");

    // The binary runs again: the agent starts it after its pause.
    std::fs::write(&mark, "").expect("mark");
    let t1 = Instant::now();
    let a = wait_for("flaky running again", Duration::from_secs(20), || {
        agent_of(&cp, "flaky").filter(|a| a["state"] == "running" && a["pid"].as_u64() != Some(u64::from(pid)))
    });
    agent.proxy_pids.push(a["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).expect("pid"));
    wait_for("flaky normal", Duration::from_secs(15), || abnormal(&cp, "flaky").is_none().then_some(()));
    let normal = t1.elapsed();
    wait_for("flaky back in the observer's EDS", Duration::from_secs(10), || {
        (cluster_ports(observer.admin, "svc") == both).then_some(())
    });
    wait_for("the alert to resolve", Duration::from_secs(5), || {
        (alert_state(&cp, "flaky-abnormal").as_deref() == Some("inactive")).then_some(())
    });
    eprintln!("runnable again: normal (back in EDS, alert resolved) after {normal:?}");
    assert!(down_at < Duration::from_secs(6) && loop_at < Duration::from_secs(12), "{down_at:?} {loop_at:?}");
}

/// Sends SIGCONT to a stopped process however the test ends.
struct Stopped(u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

/// The last metrics report the control plane holds of `node` (Unix ms).
fn last_report_ms(cp: &ControlPlane, node: &str) -> Option<u64> {
    let (ok, out) = cp.ctl(&["top", "proxies", "--window", "1h", "-o", "json"]);
    let list: Vec<Value> = serde_json::from_str(&out).ok().filter(|_| ok)?;
    list.iter().find(|p| p["node"] == node)?["last_report_ms"].as_u64()
}

/// A `legate proxy` stopped with SIGSTOP sends no metrics (its xDS stream
/// stays open): `metrics_silent` after `--abnormal-silence`; continued, it
/// reports again and is normal.
#[test]
fn a_stopped_proxy_is_metrics_silent_until_continued() {
    let dir = TempDir::new("fault-silent");
    let d = dir.path();
    let cp = control_plane(d, &["--abnormal-silence", "8s"]);
    let quiet = attach(Bin::Legate, &cp, "quiet", false, d);
    wait_for("a metrics report from quiet", Duration::from_secs(20), || last_report_ms(&cp, "quiet"));
    let pid = quiet.proc_.pid();
    let _ = std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status();
    let stopped = Stopped(pid);
    let t0 = Instant::now();
    let silent = wait_for("quiet metrics_silent", Duration::from_secs(25), || cause(&cp, "quiet", "metrics_silent"));
    let found = t0.elapsed();
    assert!(evidence(&silent).starts_with("last metrics report at "), "{silent}");
    drop(stopped);
    let t1 = Instant::now();
    wait_for("quiet normal", Duration::from_secs(20), || abnormal(&cp, "quiet").is_none().then_some(()));
    let back = t1.elapsed();
    eprintln!("SIGSTOP: metrics_silent after {found:?} ({}); SIGCONT: normal after {back:?}", evidence(&silent));
    // Silence 8 s, reports every 5 s, evaluated every second.
    assert!(found >= Duration::from_secs(3) && found < Duration::from_secs(15), "{found:?}");
}

/// Two `legate proxy` of one node cluster: `bad`'s upstream answers 503,
/// `good`'s 200; `bad` is abnormal for its error rate against its peer's.
#[test]
fn a_proxy_with_far_more_errors_than_its_peers_is_abnormal() {
    let dir = TempDir::new("fault-errors");
    let d = dir.path();
    let cp = control_plane(d, &[]);
    let (_ok_up, ok_up) = echo("fine", d);
    let (_bad_up, bad_up) = echo_with("failing", d, &["--status", "503"]);
    let (good_port, bad_port) = (free_port(), free_port());
    cp.apply(d, &web_resources(good_port, ok_up, &["good"], "-good"));
    cp.apply(d, &web_resources(bad_port, bad_up, &["bad"], "-bad"));
    let _good = attach(Bin::Legate, &cp, "good", false, d);
    let _bad = attach(Bin::Legate, &cp, "bad", false, d);
    for (port, status) in [(good_port, 200), (bad_port, 503)] {
        wait_for("the listener to answer", Duration::from_secs(15), || {
            http_get(addr(port), "/", "app").ok().filter(|r| r.status == status)
        });
    }
    let t0 = Instant::now();
    for _ in 0..150 {
        for port in [good_port, bad_port] {
            let _ = http_get(addr(port), "/", "app");
        }
    }
    let sent = t0.elapsed();
    let c = wait_for("bad abnormal for its error rate", Duration::from_secs(25), || cause(&cp, "bad", "error_rate"));
    let found = t0.elapsed();
    let e = evidence(&c);
    assert!(e.starts_with("error rate 1.000") && e.contains("against 0.000 on 1 peers of cluster legate"), "{c}");
    assert!(abnormal(&cp, "good").is_none(), "{:?}", abnormal(&cp, "good"));
    eprintln!("error_rate: 300 requests in {sent:?}; bad abnormal after {found:?} ({e})");
}
