//! Hot restart of `legate proxy` (`--restart-epoch`, Envoy's contract) under
//! steady load: wrk over HTTP/1.1 keep-alive connections and an HTTP/2 load
//! over keep-alive connections (`harness::h2_load`: a request the server did
//! not process is sent again, as HTTP/2 clients do; any other failure counts),
//! both running through two handovers (epoch 0 -> 1 -> 2, each with
//! a different worker count, so sockets are passed to fewer and to more
//! workers). Not one request may fail and no connection may break; each
//! parent exits within `--parent-shutdown-time-s`; the counters go on.
//! The same run through Envoy 1.40's own hot restart gives the reference
//! figures beside Legate's. Then the refusals: a child without a parent, with the wrong epoch, and a
//! second process on an epoch in use.

mod harness;

use harness::config::{bootstrap, cluster, hcm, listener};
use harness::h2_load::{spawn_h2_load, H2Figures};
use harness::load::{spawn_wrk, wrk_figures, Figures};
use harness::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const DRAIN_S: u64 = 2;
const PARENT_SHUTDOWN_S: u64 = 4;
/// How long a child may take to start before its parent-shutdown timer runs.
const STARTUP_SLACK: Duration = Duration::from_secs(3);
const RQ_TOTAL: &str = "http.ingress_http.downstream_rq_total";

/// One listener (`ingress_http`) on `port` to the echo upstream `up`.
fn config_file(dir: &Path, admin: u16, port: u16, up: u16) -> std::path::PathBuf {
    let chain = format!("{{filters: [{}]}}", hcm("ingress_http", "echo"));
    let text = bootstrap(admin, &[listener("main", port, &chain)], &[cluster("echo", up, "")]);
    let path = dir.join("legate.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proxy {
    Legate,
    Envoy,
}

/// The proxy at `epoch` of the restart family `base_id`, with the same flags
/// for both proxies.
fn spawn_epoch(proxy: Proxy, config: &Path, base_id: u64, epoch: u32, workers: usize, dir: &Path) -> Proc {
    let mut cmd = match proxy {
        Proxy::Legate => {
            let mut c = Command::new(LEGATE);
            c.arg("proxy");
            c
        }
        Proxy::Envoy => Command::new(envoy_bin()),
    };
    cmd.args(["--concurrency", &workers.to_string(), "--base-id", &base_id.to_string()]);
    cmd.args(["--restart-epoch", &epoch.to_string(), "--drain-time-s", &DRAIN_S.to_string()]);
    cmd.args(["--parent-shutdown-time-s", &PARENT_SHUTDOWN_S.to_string(), "-l", "info", "-c"]).arg(config);
    Proc::spawn(&format!("{proxy:?}-epoch{epoch}"), &mut cmd, dir)
}

fn legate_epoch(config: &Path, base_id: u64, epoch: u32, workers: usize, dir: &Path) -> Proc {
    spawn_epoch(Proxy::Legate, config, base_id, epoch, workers, dir)
}

/// A base-id no other test uses.
fn fresh_base_id() -> u64 {
    u64::from(free_port()) * 1000 + u64::from(std::process::id() % 1000)
}

/// Waits until the admin on `admin` is the process at `epoch`.
fn wait_epoch(admin: u16, proc_: &mut Proc, epoch: u32) {
    wait_for(&format!("epoch {epoch} to serve its admin"), Duration::from_secs(30), || {
        assert!(proc_.is_running(), "{} exited:\n{}", proc_.name, proc_.output());
        (stat(admin, "server.hot_restart_epoch") == Some(i64::from(epoch))).then_some(())
    });
}

/// What one handover took.
struct Handover {
    parent_count: i64,
    child_count: i64,
    child_admin_after: Duration,
    parent_exit_after: Duration,
}

/// One restart family: its proxy, config, base-id and admin port.
struct Family {
    proxy: Proxy,
    config: std::path::PathBuf,
    base_id: u64,
    admin: u16,
}

/// Starts `epoch` over `parent` and waits for the parent to exit.
fn hand_over(f: &Family, parent: &mut Proc, epoch: u32, workers: usize) -> (Proc, Handover) {
    let (config, admin) = (&f.config, f.admin);
    let dir = config.parent().expect("config dir");
    let parent_count = stat(admin, RQ_TOTAL).expect("parent's request count");
    let t0 = Instant::now();
    let mut child = spawn_epoch(f.proxy, config, f.base_id, epoch, workers, dir);
    wait_epoch(admin, &mut child, epoch);
    let child_admin_after = t0.elapsed();
    let limit = Duration::from_secs(PARENT_SHUTDOWN_S) + STARTUP_SLACK;
    let status = parent.wait_exit(limit);
    assert!(status.is_some(), "{} still runs {limit:?} after its child started:\n{}", parent.name, parent.output());
    let parent_exit_after = t0.elapsed();
    assert!(child.is_running(), "{} exited:\n{}", child.name, child.output());
    let child_count = stat(admin, RQ_TOTAL).expect("child's request count");
    let h = Handover { parent_count, child_count, child_admin_after, parent_exit_after };
    (child, h)
}

/// A load generator's report, once it has finished.
fn figures(p: &mut Proc, parse: fn(&str) -> Option<Figures>) -> Figures {
    assert!(p.wait_exit(Duration::from_secs(60)).is_some(), "{} did not finish", p.name);
    parse(&p.output()).unwrap_or_else(|| panic!("no report from {}:\n{}", p.name, p.output()))
}

/// The HTTP/2 load's figures in the shape wrk's are kept in; the requests
/// the server did not process (sent again) are printed.
fn h2_figures(proxy: Proxy, h: H2Figures) -> Figures {
    eprintln!(
        "{proxy:?} h2: {} connections; {} requests the server did not process (GOAWAY or REFUSED_STREAM) were sent again",
        h.connections, h.unprocessed
    );
    Figures { tool: "h2", requests: h.ok + h.failed, failed: h.failed, socket_errors: h.connect_errors }
}

/// Two handovers (epochs 0 -> 1 -> 2 with `workers` each) under 16 s of
/// wrk and HTTP/2 load: the load generators' figures, each handover's, and
/// the request count on the last child.
fn restarts_under_load(proxy: Proxy, workers: [usize; 3]) -> (Figures, Figures, i64) {
    let dir = TempDir::new("hot-restart");
    let (_echo, up) = echo("a", dir.path());
    let (admin, port) = (free_port(), free_port());
    let f = Family { proxy, config: config_file(dir.path(), admin, port, up), base_id: fresh_base_id(), admin };
    let mut p0 = spawn_epoch(proxy, &f.config, f.base_id, 0, workers[0], dir.path());
    wait_epoch(admin, &mut p0, 0);

    let secs = 16;
    let label = format!("{proxy:?}");
    let mut wrk = spawn_wrk(&label, port, secs, 8, dir.path());
    let h2 = spawn_h2_load(port, 4, 4, Duration::from_secs(secs.into()));
    std::thread::sleep(Duration::from_millis(2500));
    let (mut p1, first) = hand_over(&f, &mut p0, 1, workers[1]);
    std::thread::sleep(Duration::from_secs(1));
    let (mut p2, second) = hand_over(&f, &mut p1, 2, workers[2]);

    let (w, h) = (figures(&mut wrk, wrk_figures), h2_figures(proxy, h2.finish()));
    for (i, ho) in [&first, &second].iter().enumerate() {
        eprintln!(
            "{proxy:?} handover {}: child's admin after {:?}, parent exited after {:?}; {RQ_TOTAL} parent {} -> child {}",
            i + 1,
            ho.child_admin_after,
            ho.parent_exit_after,
            ho.parent_count,
            ho.child_count
        );
        // Envoy's counters are printed, not checked: read right after its
        // parent's exit, its second child was seen counting less than the
        // parent had.
        if proxy == Proxy::Legate {
            assert!(ho.child_count >= ho.parent_count, "the child's count does not go on from the parent's");
        }
    }
    for f in [&w, &h] {
        eprintln!(
            "{proxy:?} {}: {} requests, {} failed, {} connection errors",
            f.tool, f.requests, f.failed, f.socket_errors
        );
        assert!(f.requests > 500, "{} sent too little to show anything: {f:?}", f.tool);
    }
    // The last child serves.
    let r = http_get(addr(port), "/after", "app").expect("request after the handovers");
    assert_eq!(r.status, 200);
    let total = stat(admin, RQ_TOTAL).expect("count");
    assert!(p2.is_running(), "{}", p2.output());
    (w, h, total)
}

#[test]
fn legate_hands_over_twice_under_load_without_a_failed_request() {
    // Two workers to one, then one to three: sockets go to fewer and to more workers.
    let (w, h, total) = restarts_under_load(Proxy::Legate, [2, 1, 3]);
    for f in [&w, &h] {
        assert_eq!((f.failed, f.socket_errors), (0, 0), "{} saw failures across the handovers: {f:?}", f.tool);
    }
    // The last child counted what came through all three processes.
    assert!(total as u64 >= w.requests + h.requests, "{total} < {} + {}", w.requests, h.requests);
}

/// The reference: Envoy 1.40's own hot restart, same flags, same load (the
/// same worker count throughout: Envoy passes a socket per worker index).
/// Its failures are printed beside Legate's, not asserted: on this 2-core
/// machine Envoy's handover occasionally loses a request (seen about one run
/// in five), and the suite must not fail on Envoy's account.
#[test]
fn envoy_hands_over_twice_under_the_same_load() {
    let (w, h, total) = restarts_under_load(Proxy::Envoy, [2, 2, 2]);
    eprintln!("Envoy's last child counts {total} requests; wrk and the HTTP/2 load sent {}", w.requests + h.requests);
    for f in [&w, &h] {
        eprintln!(
            "Envoy's {}: {} requests, {} failed, {} socket errors",
            f.tool, f.requests, f.failed, f.socket_errors
        );
        assert!(f.requests > 0, "the load ran through Envoy: {f:?}");
    }
}

#[test]
fn a_child_without_its_parent_is_refused_with_a_reason() {
    let dir = TempDir::new("hot-restart-refused");
    let (_echo, up) = echo("a", dir.path());
    let (admin, port) = (free_port(), free_port());
    let config = config_file(dir.path(), admin, port, up);
    let base_id = fresh_base_id();
    let refused = |epoch: u32, expect: &str| {
        let mut p = legate_epoch(&config, base_id, epoch, 1, dir.path());
        let status = p.wait_exit(Duration::from_secs(20)).expect("a refused child exits");
        assert!(!status.success(), "epoch {epoch} started: {}", p.output());
        assert!(p.output().contains(expect), "epoch {epoch}: wanted {expect:?} in:\n{}", p.output());
    };
    // No process of this base-id runs.
    refused(1, "--restart-epoch 1 needs a running parent at epoch 0");
    let mut p0 = legate_epoch(&config, base_id, 0, 1, dir.path());
    wait_epoch(admin, &mut p0, 0);
    // An epoch skipped, and an epoch already running.
    refused(2, "--restart-epoch 2 needs a running parent at epoch 1");
    refused(0, "epoch 0 is already in use by a running process");
    // The parent did not notice and still serves.
    assert_eq!(http_get(addr(port), "/", "app").expect("request").status, 200);
    assert!(p0.is_running());
}

/// A listener the child's config no longer has: its address is served by
/// the parent until the parent exits, and then nobody listens there (the
/// passed socket is closed, not left queueing connections nobody accepts).
#[test]
fn a_listener_the_child_drops_stops_listening_when_the_parent_exits() {
    let dir = TempDir::new("hot-restart-dropped");
    let (_echo, up) = echo("a", dir.path());
    let (admin, port, extra) = (free_port(), free_port(), free_port());
    let chain = format!("{{filters: [{}]}}", hcm("ingress_http", "echo"));
    let (main, other) = (listener("main", port, &chain), listener("extra", extra, &chain));
    let with_both = dir.path().join("both.yaml");
    std::fs::write(&with_both, bootstrap(admin, &[main.clone(), other], &[cluster("echo", up, "")])).expect("config");
    let config = config_file(dir.path(), admin, port, up);
    let base_id = fresh_base_id();
    let mut p0 = legate_epoch(&with_both, base_id, 0, 1, dir.path());
    wait_epoch(admin, &mut p0, 0);
    assert_eq!(http_get(addr(extra), "/", "app").expect("extra listener").status, 200);
    let f = Family { proxy: Proxy::Legate, config, base_id, admin };
    let (mut p1, _) = hand_over(&f, &mut p0, 1, 1);
    wait_for("the dropped address to stop listening", Duration::from_secs(3), || {
        std::net::TcpStream::connect(addr(extra)).is_err().then_some(())
    });
    assert_eq!(http_get(addr(port), "/", "app").expect("main listener").status, 200);
    assert!(p1.is_running());
}
