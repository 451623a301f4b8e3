//! Latency histograms as counts per bucket (not cumulative), so that two of
//! them merge by adding and a window is the sum of its slots. Percentiles
//! are read from merged buckets, never averaged.

use super::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Counts per bucket: `counts[i]` samples in `(bounds[i-1], bounds[i]]`, and
/// one more count past the last bound (+Inf).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Buckets {
    pub bounds: Arc<[f64]>,
    /// Trailing empty buckets may be left off (see [`Buckets::trimmed`]).
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl Buckets {
    /// From a cumulative histogram (as Envoy and Prometheus carry it).
    pub fn from_cumulative(h: &Histogram) -> Self {
        let mut counts = Vec::with_capacity(h.bounds.len() + 1);
        let mut prev = 0u64;
        for &c in &h.cumulative {
            counts.push(c.saturating_sub(prev));
            prev = prev.max(c);
        }
        counts.push(h.count.saturating_sub(prev));
        Self { bounds: Arc::from(h.bounds.as_slice()), counts, sum: h.sum }
    }

    /// Without the trailing empty buckets (most latencies fill a few low ones).
    pub fn trimmed(mut self) -> Self {
        while self.counts.last() == Some(&0) {
            self.counts.pop();
        }
        self
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&c| c == 0)
    }

    /// Adds `other` in. Equal bounds add bucket by bucket; different bounds
    /// merge onto the union of both (each count stays under its own upper
    /// bound, so no sample moves to a lower bucket).
    pub fn merge(&mut self, other: &Buckets) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        self.sum += other.sum;
        if self.bounds == other.bounds {
            if self.counts.len() < other.counts.len() {
                self.counts.resize(other.counts.len(), 0);
            }
            for (a, b) in self.counts.iter_mut().zip(&other.counts) {
                *a += b;
            }
            return;
        }
        let mut bounds: Vec<f64> =
            self.bounds.iter().chain(other.bounds.iter()).copied().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let mut counts = vec![0u64; bounds.len() + 1];
        for side in [&*self, other] {
            for (i, &c) in side.counts.iter().enumerate() {
                let at = match side.bounds.get(i) {
                    Some(b) => bounds.partition_point(|x| x < b),
                    None => bounds.len(),
                };
                counts[at] += c;
            }
        }
        let sum = self.sum;
        *self = Self { bounds: Arc::from(bounds), counts, sum };
    }

    /// The `q` quantile (0..1), interpolated linearly inside its bucket as
    /// Prometheus' `histogram_quantile` does; None without samples. Samples
    /// past the last bound answer the last bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 && (seen + c) as f64 >= rank {
                let Some(&upper) = self.bounds.get(i) else {
                    return self.bounds.last().copied().or(Some(0.0));
                };
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let within = (rank - seen as f64) / c as f64;
                return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
            }
            seen += c;
        }
        self.bounds.last().copied()
    }
}

/// What a cumulative histogram added since `prev` (same proxy, same stat).
/// A count that went down is a restart: the new histogram is all new.
pub fn delta(prev: &Histogram, now: &Histogram) -> (Buckets, bool) {
    let reset = now.count < prev.count
        || (prev.bounds == now.bounds && prev.cumulative.iter().zip(&now.cumulative).any(|(p, n)| n < p));
    let fresh = Buckets::from_cumulative(now);
    if reset || prev.bounds != now.bounds {
        return (fresh, reset);
    }
    let old = Buckets::from_cumulative(prev);
    let counts = fresh.counts.iter().zip(&old.counts).map(|(n, p)| n.saturating_sub(*p)).collect();
    let sum = (fresh.sum - old.sum).max(0.0);
    (Buckets { bounds: fresh.bounds, counts, sum }, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(bounds: &[f64], cumulative: &[u64], count: u64) -> Histogram {
        Histogram { bounds: bounds.to_vec(), cumulative: cumulative.to_vec(), count, sum: 0.0 }
    }

    #[test]
    fn merging_adds_buckets_and_percentiles_come_from_the_merge() {
        // One proxy: 100 fast samples (<= 1 ms); another: 100 slow (<= 100 ms).
        let mut a = Buckets::from_cumulative(&hist(&[1.0, 10.0, 100.0], &[100, 100, 100], 100));
        let b = Buckets::from_cumulative(&hist(&[1.0, 10.0, 100.0], &[0, 0, 100], 100));
        let (pa, pb) = (a.quantile(0.99).unwrap_or(0.0), b.quantile(0.99).unwrap_or(0.0));
        a.merge(&b);
        assert_eq!(a.counts, vec![100, 0, 100, 0]);
        // The merged p50 sits at the edge of the fast bucket, not at the mean
        // of the two proxies' p50s; p99 in the slow bucket.
        assert_eq!(a.quantile(0.5), Some(1.0));
        let p99 = a.quantile(0.99).unwrap_or(0.0);
        assert!(p99 > 10.0 && p99 <= 100.0, "{p99}");
        assert!((p99 - (pa + pb) / 2.0).abs() > 1.0, "not an average of percentiles");
    }

    #[test]
    fn merging_different_bounds_keeps_every_sample_under_its_bound() {
        let mut a = Buckets::from_cumulative(&hist(&[1.0, 10.0], &[5, 7], 8));
        let b = Buckets::from_cumulative(&hist(&[5.0], &[3], 4));
        a.merge(&b);
        assert_eq!(&a.bounds[..], &[1.0, 5.0, 10.0]);
        assert_eq!(a.counts, vec![5, 3, 2, 2]);
        assert_eq!(a.count(), 12);
    }

    #[test]
    fn delta_is_the_difference_and_a_lower_count_is_a_restart() {
        let b = [1.0, 10.0];
        let (d, reset) = delta(&hist(&b, &[2, 3], 3), &hist(&b, &[4, 6], 7));
        assert!(!reset);
        assert_eq!(d.counts, vec![2, 1, 1]);
        let (d, reset) = delta(&hist(&b, &[4, 6], 7), &hist(&b, &[1, 1], 2));
        assert!(reset);
        assert_eq!(d.counts, vec![1, 0, 1]);
    }

    #[test]
    fn quantile_without_samples_is_none_and_past_the_last_bound_is_the_last_bound() {
        assert_eq!(Buckets::default().quantile(0.99), None);
        let b = Buckets::from_cumulative(&hist(&[1.0, 10.0], &[0, 0], 5));
        assert_eq!(b.quantile(0.99), Some(10.0));
    }
}
