//! `legate agent`, the node agent, with real processes: it takes the node's
//! bootstrap from the control plane, runs `legate proxy` or Envoy 1.40,
//! brings a killed proxy back, hot restarts it on `ctl restart` under
//! keep-alive load without a failed request, reports a crash loop, and
//! stops its proxy when it gets SIGTERM.

mod harness;

use harness::agent::{alive, Agent};
use harness::h2_load::spawn_h2_load;
use harness::load::{spawn_wrk, steady_load, wrk_figures};
use harness::xds::web_resources;
use harness::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `node`'s agent report as `ctl proxies -o json` shows it.
fn agent_of(cp: &ControlPlane, node: &str) -> Option<Value> {
    cp.proxies().into_iter().find(|p| p["node"]["id"] == node).map(|p| p["agent"].clone()).filter(|a| !a.is_null())
}

/// Waits until `node`'s agent reports what `ok` accepts: that report.
fn wait_agent(cp: &ControlPlane, node: &str, what: &str, limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, limit, || agent_of(cp, node).filter(|a| ok(a)))
}

fn pid_of(a: &Value) -> u32 {
    a["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).expect("a pid")
}

/// A control plane serving one HTTP service on `listen` to an echo upstream,
/// and an agent running `proxy` for node `node` once its proxy serves.
fn setup(dir: &Path, node: &str, proxy: &str) -> (ControlPlane, Proc, Agent, u16, u16) {
    let (echo_proc, up) = echo("up", dir);
    let cp = ControlPlane::start(dir);
    let (admin, listen) = (free_port(), free_port());
    cp.apply(dir, &web_resources(listen, up, &[], ""));
    let bin = (proxy == "envoy").then(envoy_bin);
    let mut agent = Agent::start(&cp, node, proxy, bin.as_deref(), admin, dir);
    let a = wait_agent(&cp, node, "the agent's proxy to run", Duration::from_secs(40), |a| a["state"] == "running");
    agent.proxy_pids.push(pid_of(&a));
    wait_for("the proxy to serve", Duration::from_secs(20), || {
        assert!(agent.proc_.is_running(), "{}", agent.proc_.output());
        http_get(addr(listen), "/", "app").ok().filter(|r| r.status == 200)
    });
    (cp, echo_proc, agent, admin, listen)
}

/// Stops the agent with SIGTERM: it exits and leaves no proxy running.
fn stop_and_check(mut agent: Agent) {
    let status = agent.terminate();
    assert!(status.is_some(), "the agent did not stop on SIGTERM:\n{}", agent.proc_.output());
    for pid in &agent.proxy_pids {
        assert!(!alive(*pid), "proxy pid {pid} still runs after its agent stopped");
    }
}

#[test]
fn a_killed_proxy_is_back_within_two_seconds() {
    let dir = TempDir::new("agent-kill");
    let node = "agent-kill";
    let (cp, _echo, mut agent, admin, listen) = setup(dir.path(), node, "legate");
    let before = agent_of(&cp, node).expect("report");
    let old = pid_of(&before);
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(listen, stop.clone(), 50_000, Duration::from_millis(2));
    std::thread::sleep(Duration::from_millis(500));

    let t0 = Instant::now();
    assert!(Command::new("kill").args(["-KILL", &old.to_string()]).status().expect("kill").success());
    let ready = wait_for("a new proxy's admin", Duration::from_secs(10), || {
        http_get(addr(admin), "/ready", "admin").ok().filter(|r| r.status == 200).map(|_| t0.elapsed())
    });
    let serving = wait_for("the new proxy to serve", Duration::from_secs(10), || {
        http_get(addr(listen), "/", "app").ok().filter(|r| r.status == 200).map(|_| t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, _) = load.join();
    eprintln!("kill -9: new proxy ready after {ready:?}, serving after {serving:?}; load {ok} ok, {failed} failed");
    assert!(ready < Duration::from_secs(2), "the proxy came back after {ready:?}");

    let a = wait_agent(&cp, node, "the restart in the report", Duration::from_secs(5), |a| {
        a["restarts"] == 1 && a["state"] == "running" && a["pid"].as_u64().is_some_and(|p| p != u64::from(old))
    });
    agent.proxy_pids.push(pid_of(&a));
    assert_eq!(a["last_exit"], "signal 9", "{a}");
    let (ok, table) = cp.ctl(&["proxies"]);
    assert!(ok && table.contains("PROCESS") && table.contains("running pid="), "{table}");
    stop_and_check(agent);
    // Its last report says so.
    let a = agent_of(&cp, node).expect("the last report");
    assert!(a["state"] == "stopped" && a["pid"].is_null() && a["stale"] == false, "{a}");
}

/// `ctl restart` under 8 s of wrk (HTTP/1.1 keep-alive) and HTTP/2 load
/// (keep-alive connections, 4 streams each): no failed request, the epoch
/// goes up, a new pid serves.
fn restart_under_load(proxy: &str) {
    let dir = TempDir::new(&format!("agent-restart-{proxy}"));
    let node = format!("agent-restart-{proxy}");
    let (cp, _echo, mut agent, _admin, listen) = setup(dir.path(), &node, proxy);
    let old = pid_of(&agent_of(&cp, &node).expect("report"));
    let mut wrk = spawn_wrk(proxy, listen, 8, 8, dir.path());
    let h2 = spawn_h2_load(listen, 4, 4, Duration::from_secs(8));
    std::thread::sleep(Duration::from_millis(2000));
    let t0 = Instant::now();
    let (ok, out) = cp.ctl(&["restart", &node]);
    assert!(ok, "{out}");
    let a = wait_agent(&cp, &node, "epoch 1 to run", Duration::from_secs(20), |a| {
        a["epoch"] == 1 && a["state"] == "running"
    });
    let took = t0.elapsed();
    let new = pid_of(&a);
    agent.proxy_pids.push(new);
    assert_ne!(new, old);
    assert!(wrk.wait_exit(Duration::from_secs(30)).is_some(), "wrk did not finish");
    let f = wrk_figures(&wrk.output()).unwrap_or_else(|| panic!("no wrk report:\n{}", wrk.output()));
    eprintln!(
        "{proxy}: ctl restart -> epoch 1 running (pid {old} -> {new}) after {took:?}; wrk {} requests, {} failed, {} socket errors",
        f.requests, f.failed, f.socket_errors
    );
    assert!(f.requests > 500, "{f:?}");
    assert_eq!((f.failed, f.socket_errors), (0, 0), "{proxy}: requests failed across ctl restart: {f:?}");
    let h = h2.finish();
    eprintln!("{proxy}: HTTP/2 {h:?}");
    assert!(h.ok > 500, "{h:?}");
    assert_eq!((h.failed, h.connect_errors), (0, 0), "{proxy}: HTTP/2 requests failed across ctl restart: {h:?}");
    assert_eq!(a["restarts"], 1, "{a}");
    assert_eq!(a["proxy"], proxy, "{a}");
    let version = a["version"].as_str().unwrap_or("");
    assert!(!version.is_empty() && version != "unknown", "{a}");
    // The parent exits within its parent-shutdown time; the agent reaps it.
    wait_for("the parent to exit", Duration::from_secs(10), || (!alive(old)).then_some(()));
    stop_and_check(agent);
}

#[test]
fn ctl_restart_hot_restarts_legate_proxy_without_a_failed_request() {
    restart_under_load("legate");
}

#[test]
fn ctl_restart_hot_restarts_envoy_without_a_failed_request() {
    restart_under_load("envoy");
}

#[test]
fn a_proxy_that_keeps_failing_is_reported_in_crash_loop() {
    let dir = TempDir::new("agent-crash");
    let cp = ControlPlane::start(dir.path());
    let script = failing_script(dir.path());
    let node = "agent-crash";
    let agent = Agent::start(&cp, node, "envoy", Some(&script), free_port(), dir.path());
    let t0 = Instant::now();
    let a = wait_agent(&cp, node, "crash-loop", Duration::from_secs(20), |a| a["state"] == "crash-loop");
    eprintln!("crash-loop reported after {:?}: {a}", t0.elapsed());
    assert_eq!(a["last_exit"], "exit code 1", "{a}");
    assert!(a["pid"].is_null(), "{a}");
    assert_eq!(a["restarts"], 5, "the sixth stop within the window is the crash loop: {a}");
    // Not restarted any more.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(agent_of(&cp, node).expect("report")["restarts"], 5);
    let (ok, table) = cp.ctl(&["proxies"]);
    assert!(ok && table.contains("crash-loop"), "{table}");
    assert!(agent.proc_.output().contains("crash loop"), "{}", agent.proc_.output());
    stop_and_check(agent);
}

#[test]
fn ctl_drain_fails_the_health_checks_and_reports_draining() {
    let dir = TempDir::new("agent-drain");
    let node = "agent-drain";
    let (cp, _echo, agent, admin, listen) = setup(dir.path(), node, "legate");
    let (ok, out) = cp.ctl(&["drain", node]);
    assert!(ok, "{out}");
    let a = wait_agent(&cp, node, "draining", Duration::from_secs(10), |a| a["state"] == "draining");
    assert_eq!(a["restarts"], 0, "a drain is not a restart: {a}");
    // Still serving what arrives; not restarted while draining.
    assert_eq!(http_get(addr(listen), "/", "app").expect("request").status, 200);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(agent_of(&cp, node).expect("report")["restarts"], 0);
    let _ = admin;
    let (ok, out) = cp.ctl(&["restart", "no-such-node"]);
    assert!(!ok && out.contains("no agent"), "{out}");
    stop_and_check(agent);
}

/// A script that exits 1 at once, as `--envoy-bin`.
fn failing_script(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("failing-proxy.sh");
    std::fs::write(&script, "#!/bin/sh\necho failing on purpose >&2\nexit 1\n").expect("script");
    let _ = Command::new("chmod").arg("+x").arg(&script).status();
    script
}

#[test]
fn agents_report_with_an_editor_token_and_viewers_may_not_restart() {
    let dir = TempDir::new("agent-tokens");
    let cp = ControlPlane::start(dir.path());
    let server = format!("http://127.0.0.1:{}", cp.api);
    let with = |token: &str, args: &[&str]| {
        let mut all = vec!["--token", token];
        all.extend(args);
        ctl(&server, &all)
    };
    let token_of = |out: &str| -> String {
        let v: Value = serde_json::from_str(out).unwrap_or_else(|_| panic!("token json: {out}"));
        v["token"].as_str().expect("token").to_string()
    };
    let (ok, out) = cp.ctl(&["token", "create", "--role", "admin", "--name", "root", "-o", "json"]);
    assert!(ok, "{out}");
    let admin = token_of(&out);
    let (editor, viewer) = (
        token_of(&with(&admin, &["token", "create", "--role", "editor", "--name", "agent", "-o", "json"]).1),
        token_of(&with(&admin, &["token", "create", "--role", "viewer", "--name", "watcher", "-o", "json"]).1),
    );
    let script = failing_script(dir.path());
    let port = free_port();
    let agent = Agent::start_with(&cp, "agent-tok", "envoy", Some(&script), port, dir.path(), &["--token", &editor]);
    let anon = Agent::start(&cp, "agent-anon", "envoy", Some(&script), free_port(), dir.path());
    let nodes = || -> Vec<String> {
        let (ok, out) = with(&viewer, &["proxies", "-o", "json"]);
        assert!(ok, "{out}");
        let v: Value = serde_json::from_str(&out).expect("json");
        v["proxies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["node"]["id"].as_str().map(String::from))
            .collect()
    };
    wait_for("the agent with a token to report", Duration::from_secs(10), || {
        nodes().contains(&"agent-tok".to_string()).then_some(())
    });
    assert!(!nodes().contains(&"agent-anon".to_string()), "an agent without a token was accepted");
    assert!(anon.proc_.output().contains("a token is required"), "{}", anon.proc_.output());
    let (ok, out) = with(&viewer, &["restart", "agent-tok"]);
    assert!(!ok && out.contains("may not"), "a viewer restarted a proxy: {out}");
    let (ok, out) = with(&editor, &["drain", "agent-tok"]);
    assert!(ok, "{out}");
    stop_and_check(agent);
    stop_and_check(anon);
}

/// An agent killed with SIGKILL leaves its proxy serving; the next agent
/// for the node takes over from it by a hot restart, under wrk, without a
/// failed request.
#[test]
fn a_new_agent_takes_over_the_proxy_a_killed_agent_left() {
    let dir = TempDir::new("agent-adopt");
    let node = "agent-adopt";
    let (cp, _echo, mut first, admin, listen) = setup(dir.path(), node, "legate");
    let orphan = pid_of(&agent_of(&cp, node).expect("report"));
    let base = first.base_id.clone();
    first.proxy_pids.push(orphan);
    first.proc_.kill();
    assert!(alive(orphan), "the proxy died with its agent");
    let mut wrk = spawn_wrk("adopt", listen, 8, 8, dir.path());
    std::thread::sleep(Duration::from_millis(2000));
    let extra = ["--base-id", base.as_str()];
    let mut second = Agent::start_with(&cp, node, "legate", None, admin, dir.path(), &extra);
    second.proxy_pids.push(orphan);
    let a = wait_agent(&cp, node, "the new agent's epoch 1", Duration::from_secs(20), |a| {
        a["epoch"] == 1 && a["state"] == "running" && a["pid"].as_u64().is_some_and(|p| p != u64::from(orphan))
    });
    second.proxy_pids.push(pid_of(&a));
    assert!(wrk.wait_exit(Duration::from_secs(30)).is_some(), "wrk did not finish");
    let f = wrk_figures(&wrk.output()).unwrap_or_else(|| panic!("no wrk report:\n{}", wrk.output()));
    eprintln!("agent replaced: wrk {} requests, {} failed, {} socket errors", f.requests, f.failed, f.socket_errors);
    assert!(f.requests > 500, "{f:?}");
    assert_eq!((f.failed, f.socket_errors), (0, 0), "requests failed while the new agent took over: {f:?}");
    assert!(!alive(orphan), "the old proxy still runs after its parent-shutdown time");
    stop_and_check(second);
}

/// A front proxy whose cluster is the two nodes' listeners, retrying a
/// reset or refused attempt on the other node (`previous_hosts`).
fn retrying_front(dir: &Path, admin: u16, port: u16, nodes: [u16; 2]) -> std::path::PathBuf {
    let ep = |p: u16| format!("{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {p}}}}}}}}}");
    let yaml = format!(
        "admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}\n\
         static_resources:\n  listeners:\n  - name: front\n    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}\n    \
         filter_chains: [{{filters: [{{name: envoy.filters.network.http_connection_manager, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, stat_prefix: front, \
         route_config: {{virtual_hosts: [{{name: all, domains: [\"*\"], routes: [{{match: {{prefix: \"/\"}}, route: {{cluster: nodes, \
         retry_policy: {{retry_on: \"connect-failure,reset\", num_retries: 3, retry_host_predicate: [{{name: envoy.retry_host_predicates.previous_hosts, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate}}}}]}}}}}}]}}]}}, \
         http_filters: [{{name: envoy.filters.http.router, typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}}}]}}}}]}}]\n  \
         clusters:\n  - name: nodes\n    connect_timeout: 1s\n    type: STATIC\n    \
         load_assignment: {{cluster_name: nodes, endpoints: [{{lb_endpoints: [{}, {}]}}]}}\n",
        ep(nodes[0]),
        ep(nodes[1])
    );
    let f = dir.join("front.yaml");
    std::fs::write(&f, yaml).expect("write front config");
    f
}

#[test]
fn a_killed_proxy_behind_a_client_that_retries_on_the_other_loses_nothing() {
    let dir = TempDir::new("agent-kill-pair");
    let d = dir.path();
    let (_echo, up) = echo("up", d);
    let cp = ControlPlane::start(d);
    let (listen_a, listen_b) = (free_port(), free_port());
    cp.apply(d, &web_resources(listen_a, up, &["pair-a"], "-a"));
    cp.apply(d, &web_resources(listen_b, up, &["pair-b"], "-b"));
    let (admin_a, admin_b) = (free_port(), free_port());
    let mut a = Agent::start(&cp, "pair-a", "legate", None, admin_a, d);
    let mut b = Agent::start(&cp, "pair-b", "legate", None, admin_b, d);
    for (node, listen, agent) in [("pair-a", listen_a, &mut a), ("pair-b", listen_b, &mut b)] {
        let r = wait_agent(&cp, node, "the agent's proxy to run", Duration::from_secs(40), |r| r["state"] == "running");
        agent.proxy_pids.push(pid_of(&r));
        wait_for("the proxy to serve", Duration::from_secs(20), || {
            http_get(addr(listen), "/", "app").ok().filter(|r| r.status == 200)
        });
    }
    let (front_admin, front_port) = (free_port(), free_port());
    let mut front = spawn_legate("front", &retrying_front(d, front_admin, front_port, [listen_a, listen_b]), &[], d);
    wait_ready(front_admin, &mut front);

    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(front_port, stop.clone(), 50_000, Duration::from_millis(2));
    std::thread::sleep(Duration::from_millis(800));
    let old = pid_of(&agent_of(&cp, "pair-a").expect("report"));
    let t0 = Instant::now();
    assert!(Command::new("kill").args(["-KILL", &old.to_string()]).status().expect("kill").success());
    let back = wait_for("node a to serve again", Duration::from_secs(10), || {
        http_get(addr(listen_a), "/", "app").ok().filter(|r| r.status == 200).map(|_| t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, errors) = load.join();
    let retried = stat(front_admin, "cluster.nodes.upstream_rq_retry").unwrap_or(0);
    eprintln!(
        "kill -9 behind a retrying client: node a back after {back:?}; {ok} ok, {failed} failed, {retried} retried"
    );
    assert!(back < Duration::from_secs(2), "node a came back after {back:?}");
    assert!(ok > 300, "the load ran: {ok}");
    assert_eq!(failed, 0, "requests lost: {errors:?}");
    let r = wait_agent(&cp, "pair-a", "the restart in the report", Duration::from_secs(5), |r| r["restarts"] == 1);
    a.proxy_pids.push(pid_of(&r));
    stop_and_check(a);
    stop_and_check(b);
}

/// A control plane serving its API and xDS over mutual TLS: the agent,
/// given the CA and a client certificate (`--ca-file`, `--cert-file`,
/// `--key-file`), takes its bootstrap and reports over TLS, and its
/// `legate proxy` gets its xDS over mutual TLS with the same files (and
/// the node's `--locality`).
#[test]
fn an_agent_reaches_a_mutual_tls_control_plane() {
    let dir = TempDir::new("agent-tls");
    let d = dir.path();
    let [ca, cert, key, ccert, ckey] = harness::certs::openssl_ca_server_client(d);
    let (xds, api) = (free_port(), free_port());
    let tls = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str(), "--client-ca", ca.as_str()];
    let mut cp = spawn_control_plane("control-plane", d, xds, api, &d.join("data"), &tls);
    let server = format!("https://localhost:{api}");
    let creds = ["--cacert", ca.as_str(), "--cert", ccert.as_str(), "--key", ckey.as_str()];
    let ctl = |args: &[&str]| harness::ctl(&server, &[&creds[..], args].concat());
    wait_for("the TLS API", Duration::from_secs(20), || {
        assert!(cp.is_running(), "control plane exited: {}", cp.output());
        ctl(&["history"]).0.then_some(())
    });
    let admin = free_port();
    let mut cmd = Command::new(LEGATE);
    cmd.args(["agent", "--server", &server, "--node-id", "tls-node", "--proxy", "legate"]);
    cmd.args(["--ca-file", &ca, "--cert-file", &ccert, "--key-file", &ckey, "--locality", "eu/a"]);
    cmd.args(["--admin-port", &admin.to_string(), "--base-id", &base_id(), "--concurrency", "1"]);
    cmd.args(["--report-interval-ms", "300", "-l", "warning"]).arg("--work-dir").arg(d.join("work"));
    let mut agent =
        Agent { proc_: Proc::spawn("agent-tls", &mut cmd, d), proxy_pids: Vec::new(), base_id: String::new() };
    let proxies = || -> Vec<Value> {
        let (ok, out) = ctl(&["proxies", "-o", "json"]);
        let v: Value = serde_json::from_str(&out).ok().filter(|_| ok).unwrap_or_default();
        v["proxies"].as_array().cloned().unwrap_or_default()
    };
    let p = wait_for("the agent's report and its proxy's xDS stream", Duration::from_secs(40), || {
        proxies()
            .into_iter()
            .find(|p| p["node"]["id"] == "tls-node" && p["agent"]["state"] == "running" && p["connected"] != false)
    });
    agent.proxy_pids.push(pid_of(&p["agent"]));
    assert!(p["types"].is_object(), "the proxy streams xDS: {p}");
    let boot = std::fs::read_to_string(d.join("work").join("bootstrap.yaml")).expect("bootstrap");
    assert!(boot.contains("transport_socket") && boot.contains("tls_certificates"), "{boot}");
    assert_eq!(p["node"]["locality"]["zone"], "a", "the node's locality from --locality: {p}");
    stop_and_check(agent);
}
