//! Steady traffic while something changes, counted: requests back to back
//! from a thread until told to stop ([`steady_load`]), or for a while from
//! the caller, with when the failures happened ([`load_for`]).

use super::http_client::{http_get, http_request};
use super::process::addr;
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
