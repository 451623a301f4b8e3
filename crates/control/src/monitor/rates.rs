//! Cumulative counters to differences, per proxy and stat. The first report
//! of a proxy only sets the baseline (a control plane that restarts must not
//! count a proxy's whole past again) unless the proxy started after this
//! control plane did (its `server.uptime` says so): then all it counted
//! happened while we listened and counts from zero. A stat first seen later counts from
//! zero (Envoy creates `upstream_rq_5xx` at the first 5xx). A value lower
//! than the last is a restart: the new value is the difference from zero,
//! never a negative or doubled rate.

use super::buckets::{self, Buckets};
use super::Histogram;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Baseline {
    counters: HashMap<String, u64>,
    histograms: HashMap<String, Histogram>,
    /// Whether a report has set the baseline.
    seen: bool,
}

/// One stat's difference since the last report, and whether it restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    pub value: u64,
    pub reset: bool,
}

impl Baseline {
    /// Whether this is the proxy's first report (differences are all zero).
    pub fn first(&self) -> bool {
        !self.seen
    }

    /// Counts the next report from zero: the proxy started after us.
    pub fn count_from_zero(&mut self) {
        self.seen = true;
    }

    /// Marks the end of a report.
    pub fn seen(&mut self) {
        self.seen = true;
    }

    pub fn counter(&mut self, name: &str, now: u64) -> Delta {
        let first = !self.seen;
        let prev = match self.counters.get_mut(name) {
            Some(v) => std::mem::replace(v, now),
            None => {
                self.counters.insert(name.to_string(), now);
                return Delta { value: if first { 0 } else { now }, reset: false };
            }
        };
        if now < prev {
            Delta { value: now, reset: true }
        } else {
            Delta { value: now - prev, reset: false }
        }
    }

    /// The histogram's new samples; None on the baseline report.
    pub fn histogram(&mut self, name: &str, now: &Histogram) -> (Option<Buckets>, bool) {
        let first = !self.seen;
        match self.histograms.get_mut(name) {
            Some(prev) => {
                let (d, reset) = buckets::delta(prev, now);
                *prev = now.clone();
                (Some(d), reset)
            }
            None => {
                self.histograms.insert(name.to_string(), now.clone());
                ((!first).then(|| Buckets::from_cumulative(now)), false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_with_a_restart_never_go_negative_or_double() {
        let mut b = Baseline::default();
        assert_eq!(b.counter("c", 100), Delta { value: 0, reset: false }, "the first report is the baseline");
        b.seen();
        assert_eq!(b.counter("c", 130), Delta { value: 30, reset: false });
        // The proxy restarted and served 7 since.
        assert_eq!(b.counter("c", 7), Delta { value: 7, reset: true });
        assert_eq!(b.counter("c", 10), Delta { value: 3, reset: false });
        // A stat that appears later counts from zero.
        assert_eq!(b.counter("new", 4), Delta { value: 4, reset: false });
        let total: u64 = [30, 7, 3].iter().sum();
        assert_eq!(total, 40);
    }

    #[test]
    fn histogram_differences_follow_the_counters() {
        let h = |c: &[u64], n: u64| Histogram { bounds: vec![1.0, 10.0], cumulative: c.to_vec(), count: n, sum: 0.0 };
        let mut b = Baseline::default();
        assert_eq!(b.histogram("h", &h(&[1, 1], 1)).0, None);
        b.seen();
        let (d, reset) = b.histogram("h", &h(&[1, 3], 4));
        assert!(!reset);
        assert_eq!(d.map(|d| d.counts), Some(vec![0, 2, 1]));
        let (d, reset) = b.histogram("h", &h(&[1, 1], 1));
        assert!(reset);
        assert_eq!(d.map(|d| d.count()), Some(1));
    }
}
