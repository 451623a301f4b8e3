//! Peak-EWMA latency estimate of one host, as Finagle's `PeakEwma` and
//! tower's `tower::load::PeakEwma` (which linkerd2-proxy balances with)
//! compute it:
//!
//! - an observed response time above the estimate replaces it at once (the
//!   peak), so a host that turns slow is avoided on its first slow answer;
//! - one below it is blended in with weight `1 - e^(-elapsed / decay)`,
//!   where `elapsed` is the time since the estimate last changed: the longer
//!   since the last update, the more a new observation counts;
//! - reading the estimate decays it toward zero the same way (tower reads
//!   it as an observation of 0), so a host that was slow and has been left
//!   alone is tried again after a while;
//! - a host's cost is the estimate times (outstanding requests + 1).
//!
//! One departure from tower: a host's first observation replaces the
//! default estimate (tower blends it in like any other, so a host answering
//! faster than `default_rtt` looks like `default_rtt` for about `decay`);
//! Finagle's estimate starts empty and takes its first observation as is.
//!
//! tower's type wraps a `tower::Service` per endpoint and counts in-flight
//! requests by its handles; Legate's balancer picks among shared `Host`s
//! synchronously and already counts their active requests (`rq_active`,
//! over every worker), so the estimate is kept here, in the host, behind
//! its own small lock (taken once per pick for each of two hosts and once
//! per response), and the cost reads `rq_active`.

use std::sync::Mutex;
use std::time::Instant;

/// One host's estimate: unset until the policy first looks at the host.
#[derive(Default)]
pub struct PeakEwma(Mutex<Option<Estimate>>);

#[derive(Clone, Copy, Debug)]
struct Estimate {
    /// The estimate, in nanoseconds.
    rtt_ns: f64,
    /// When it last changed.
    at: Instant,
    /// Whether a response was observed yet (else `rtt_ns` is the default).
    observed: bool,
}

/// A policy's constants: the decay's time constant and the first estimate.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub decay_ns: f64,
    pub default_rtt_ns: f64,
}

impl Estimate {
    /// The estimate after a response that took `rtt_ns`, at `now`.
    fn observe(&mut self, rtt_ns: f64, now: Instant, decay_ns: f64) -> f64 {
        if self.rtt_ns < rtt_ns || !self.observed {
            self.rtt_ns = rtt_ns;
            self.at = now;
            self.observed = true;
            self.rtt_ns
        } else {
            self.blend(rtt_ns, now, decay_ns)
        }
    }

    /// `rtt_ns` blended in with weight `1 - e^(-elapsed / decay)`; with 0,
    /// the estimate decayed toward zero.
    fn blend(&mut self, rtt_ns: f64, now: Instant, decay_ns: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_nanos() as f64;
        let decay = (-elapsed / decay_ns).exp();
        self.rtt_ns = self.rtt_ns * decay + rtt_ns * (1.0 - decay);
        self.at = now;
        self.rtt_ns
    }
}

impl PeakEwma {
    /// Records a response (or failure) that took `rtt_ns` to come.
    pub fn observe(&self, rtt_ns: f64, now: Instant, p: Params) {
        let mut e = self.0.lock().unwrap_or_else(|e| e.into_inner());
        e.get_or_insert(Estimate { rtt_ns: p.default_rtt_ns, at: now, observed: false })
            .observe(rtt_ns, now, p.decay_ns);
    }

    /// The estimate at `now`, decayed since it last changed; the default
    /// one for a host not seen before.
    pub fn estimate(&self, now: Instant, p: Params) -> f64 {
        let mut e = self.0.lock().unwrap_or_else(|e| e.into_inner());
        e.get_or_insert(Estimate { rtt_ns: p.default_rtt_ns, at: now, observed: false }).blend(0.0, now, p.decay_ns)
    }

    /// The cost of sending one more request: the estimate times the
    /// requests in flight plus this one.
    pub fn cost(&self, active: u64, now: Instant, p: Params) -> f64 {
        self.estimate(now, p) * (active as f64 + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MS: f64 = 1_000_000.0;
    const P: Params = Params { decay_ns: 1000.0 * MS, default_rtt_ns: 10.0 * MS };

    #[test]
    fn the_default_decays_toward_zero_while_unused() {
        let (e, t0) = (PeakEwma::default(), Instant::now());
        assert_eq!(e.estimate(t0, P), 10.0 * MS);
        // 100 ms of a 1 s decay: e^-0.1 of it is left each time.
        let after = e.estimate(t0 + Duration::from_millis(100), P);
        assert!((after - 10.0 * MS * (-0.1f64).exp()).abs() < 1.0, "{after}");
        let after2 = e.estimate(t0 + Duration::from_millis(200), P);
        assert!((8.0 * MS..9.0 * MS).contains(&after2), "{after2}");
        assert!(e.estimate(t0 + Duration::from_secs(20), P) < 0.001 * MS);
    }

    #[test]
    fn a_slower_answer_is_taken_at_once_a_faster_one_blended_by_time() {
        let (e, t0) = (PeakEwma::default(), Instant::now());
        e.observe(50.0 * MS, t0, P);
        assert_eq!(e.estimate(t0, P), 50.0 * MS, "the peak replaces the estimate");
        // A 10 ms answer 1 s later: weight 1 - e^-1 for it.
        let t1 = t0 + Duration::from_secs(1);
        e.observe(10.0 * MS, t1, P);
        let d = (-1f64).exp();
        let want = 50.0 * MS * d + 10.0 * MS * (1.0 - d);
        assert!((e.estimate(t1, P) - want).abs() < 1.0);
        // The same answer at once after an update moves nothing.
        e.observe(1.0 * MS, t1, P);
        assert!((e.estimate(t1, P) - want).abs() < 1.0);
    }

    #[test]
    fn the_first_answer_replaces_the_default() {
        let (e, t0) = (PeakEwma::default(), Instant::now());
        assert_eq!(e.estimate(t0, P), 10.0 * MS);
        e.observe(2.0 * MS, t0, P);
        assert_eq!(e.estimate(t0, P), 2.0 * MS);
    }

    #[test]
    fn cost_grows_with_requests_in_flight() {
        let (e, t0) = (PeakEwma::default(), Instant::now());
        e.observe(20.0 * MS, t0, P);
        assert_eq!(e.cost(0, t0, P), 20.0 * MS);
        assert_eq!(e.cost(3, t0, P), 80.0 * MS);
    }
}
