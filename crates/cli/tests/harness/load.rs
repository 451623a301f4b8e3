//! Steady traffic while something changes, counted: requests back to back
//! from a thread until told to stop ([`steady_load`]), or for a while from
//! the caller, with when the failures happened ([`load_for`]); or from wrk
//! (HTTP/1.1 keep-alive) for a fixed time, with its own counts of failed
//! requests and broken connections ([`Figures`]). HTTP/2 load is `h2_load`.

use super::http_client::{http_get, http_request};
use super::install::wrk_bin;
use super::process::{addr, Proc};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// GET /load (host `app`) requests to one port from a thread.
pub struct Load {
    pub ok: Arc<AtomicUsize>,
    pub failed: Arc<AtomicUsize>,
    thread: JoinHandle<Vec<String>>,
}

impl Load {
    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits for the thread (stop it first): how many requests succeeded,
    /// how many failed, and what each failure was.
    pub fn join(self) -> (usize, usize, Vec<String>) {
        let Load { ok, failed, thread } = self;
        let errors = thread.join().expect("load thread");
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed), errors)
    }
}

/// Requests `port` in a loop, `pause` apart, until `stop` is set (or `max`
/// requests were sent); a request fails unless answered 200.
pub fn steady_load(port: u16, stop: Arc<AtomicBool>, max: usize, pause: Duration) -> Load {
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (o, f) = (ok.clone(), failed.clone());
    let thread = std::thread::spawn(move || {
        let mut errors = Vec::new();
        for _ in 0..max {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match http_get(addr(port), "/load", "app") {
                Ok(r) if r.status == 200 => {
                    o.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    f.fetch_add(1, Ordering::Relaxed);
                    errors.push(format!("{other:?}"));
                }
            }
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
        errors
    });
    Load { ok, failed, thread }
}

/// Runs `change` while requests flow to `port` without pause (`settle`
/// before and after it): how many succeeded, and how many failed.
pub fn under_load(port: u16, settle: Duration, change: impl FnOnce()) -> (usize, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(port, stop.clone(), 20_000, Duration::ZERO);
    std::thread::sleep(settle);
    change();
    std::thread::sleep(settle);
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, _) = load.join();
    (ok, failed)
}

/// Sends requests back to back to `port` for `run` (at most `max`), and
/// returns (sent, failed, first failure, last failure) with times since `t0`.
pub fn load_for(
    port: u16,
    path: &str,
    t0: Instant,
    run: Duration,
    max: usize,
) -> (usize, usize, Option<Duration>, Option<Duration>) {
    let (mut sent, mut failed, mut first, mut last) = (0, 0, None, None);
    while t0.elapsed() < run && sent < max {
        sent += 1;
        let ok = http_request(addr(port), "GET", path, "example.com", &[], "").is_ok_and(|r| r.status == 200);
        if !ok {
            failed += 1;
            let at = t0.elapsed();
            first.get_or_insert(at);
            last = Some(at);
        }
    }
    (sent, failed, first, last)
}

/// What a load generator counted.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub tool: &'static str,
    /// Requests answered (any status).
    pub requests: u64,
    /// Requests answered with other than 2xx/3xx, or not answered.
    pub failed: u64,
    /// Connection-level errors: connect, read (a reset or a close before the
    /// response), write, timeout.
    pub socket_errors: u64,
}

/// wrk on `port` for `secs` seconds over `conns` keep-alive connections
/// (one thread), its output in `wrk-<label>.log`.
pub fn spawn_wrk(label: &str, port: u16, secs: u32, conns: u32, dir: &Path) -> Proc {
    let mut cmd = Command::new(wrk_bin());
    cmd.args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s"), "--timeout", "5s"]);
    cmd.arg(format!("http://127.0.0.1:{port}/load"));
    Proc::spawn(&format!("wrk-{label}"), &mut cmd, dir)
}

/// The number written after `word` in `line` ("read 3," -> 3).
fn count_after(line: &str, word: &str) -> Option<u64> {
    let tokens: Vec<&str> = line.split_whitespace().map(|t| t.trim_end_matches(',')).collect();
    let at = tokens.iter().position(|t| *t == word)?;
    tokens.get(at + 1)?.parse().ok()
}

/// wrk's report: `N requests in`, `Socket errors: connect a, read b, write
/// c, timeout d` and `Non-2xx or 3xx responses: n` (the last two only when
/// not zero). None when the report is missing.
pub fn wrk_figures(out: &str) -> Option<Figures> {
    let requests = out.lines().find(|l| l.contains(" requests in "))?.split_whitespace().next()?.parse().ok()?;
    let errors = out.lines().find(|l| l.contains("Socket errors:")).unwrap_or("");
    let socket_errors = ["connect", "read", "write", "timeout"].iter().filter_map(|k| count_after(errors, k)).sum();
    let non_2xx = out.lines().find(|l| l.contains("Non-2xx or 3xx responses:"));
    let failed = non_2xx.and_then(|l| l.rsplit(':').next()?.trim().parse().ok()).unwrap_or(0);
    Some(Figures { tool: "wrk", requests, failed, socket_errors })
}

/// GET /load (host `app`) requests from a thread, counted by the upstream
/// that answered (`x-upstream`) and by status.
pub struct UpstreamLoad {
    /// (upstream, status) -> count; failures to get an answer under ("-", 0).
    pub counts: Arc<std::sync::Mutex<std::collections::BTreeMap<(String, u16), usize>>>,
    thread: JoinHandle<()>,
}

impl UpstreamLoad {
    /// Requests `port` until `stop` is set or `max` were sent, `pause` apart.
    pub fn start(port: u16, stop: Arc<AtomicBool>, max: usize, pause: Duration) -> UpstreamLoad {
        let counts: Arc<std::sync::Mutex<std::collections::BTreeMap<(String, u16), usize>>> = Arc::default();
        let c = counts.clone();
        let thread = std::thread::spawn(move || {
            for _ in 0..max {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = match http_get(addr(port), "/load", "app") {
                    Ok(r) => (r.header("x-upstream").unwrap_or("-").to_string(), r.status),
                    Err(_) => ("-".to_string(), 0),
                };
                *c.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default() += 1;
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
        });
        UpstreamLoad { counts, thread }
    }

    /// The counts so far.
    pub fn snapshot(&self) -> std::collections::BTreeMap<(String, u16), usize> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits for the thread (stop it first): the final counts.
    pub fn join(self) -> std::collections::BTreeMap<(String, u16), usize> {
        let UpstreamLoad { counts, thread } = self;
        let _ = thread.join();
        let c = counts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        c
    }
}
