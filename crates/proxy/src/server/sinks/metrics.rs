//! The metric families of one flush, shaped as Envoy's metrics service sink
//! shapes them: every used counter (its value, or its change since the last
//! flush), every used gauge, and every used histogram as a summary and/or a
//! histogram of the samples recorded since the last flush.

use crate::stats::{HistogramSnapshot, Stat, Store, BUCKETS};
use legate_api::pb::io::prometheus::client::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary,
};
use std::collections::HashMap;

/// The quantiles Envoy's histograms report.
pub const QUANTILES: [f64; 10] = [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0];

/// What a histogram is sent as (`histogram_emit_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmitMode {
    pub summary: bool,
    pub histogram: bool,
}

/// The state kept between flushes: the last counter values (for deltas) and
/// the last histogram snapshots (for the interval's samples).
pub struct Flusher {
    deltas: bool,
    mode: EmitMode,
    /// `emit_tags_as_labels`: families named by the tag-extracted name,
    /// the tags as labels.
    labels: bool,
    counters: HashMap<String, u64>,
    histograms: HashMap<String, HistogramSnapshot>,
}

impl Flusher {
    pub fn new(deltas: bool, mode: EmitMode) -> Self {
        Self { deltas, mode, labels: false, counters: HashMap::new(), histograms: HashMap::new() }
    }

    /// With `emit_tags_as_labels`.
    pub fn with_labels(mut self, labels: bool) -> Self {
        self.labels = labels;
        self
    }

    fn family(&self, name: &str, ty: MetricType, mut m: Metric) -> MetricFamily {
        if !self.labels {
            return family(name, ty, m);
        }
        let (extracted, tags) = super::tags::extract(name);
        m.label = tags.into_iter().map(|(k, v)| LabelPair { name: Some(k.to_string()), value: Some(v) }).collect();
        family(&extracted, ty, m)
    }

    /// One flush: counters, then gauges, then histograms, each by name.
    pub fn flush(&mut self, store: &Store, now_ms: i64) -> Vec<MetricFamily> {
        let all = store.all();
        let mut out = Vec::with_capacity(all.len());
        for (name, stat) in &all {
            if let Stat::Counter(c) = stat {
                let value = c.value();
                let last = self.counters.insert(name.clone(), value).unwrap_or(0);
                if value > 0 {
                    let v = if self.deltas { value.saturating_sub(last) } else { value };
                    let m = Metric {
                        counter: Some(Counter { value: Some(v as f64), ..Default::default() }),
                        ..metric(now_ms)
                    };
                    out.push(self.family(name, MetricType::Counter, m));
                }
            }
        }
        for (name, stat) in &all {
            if let Stat::Gauge(g) = stat {
                if g.used() {
                    let m = Metric { gauge: Some(Gauge { value: Some(g.value() as f64) }), ..metric(now_ms) };
                    out.push(self.family(name, MetricType::Gauge, m));
                }
            }
        }
        for (name, stat) in &all {
            if let Stat::Histogram(h) = stat {
                let now = h.snapshot();
                let last = self.histograms.insert(name.clone(), now.clone()).unwrap_or_default();
                if now.count == 0 {
                    continue;
                }
                let interval = interval(&now, &last);
                if self.mode.summary {
                    let m = Metric { summary: Some(summary(&interval)), ..metric(now_ms) };
                    out.push(self.family(name, MetricType::Summary, m));
                }
                if self.mode.histogram {
                    let m = Metric { histogram: Some(histogram(&interval)), ..metric(now_ms) };
                    out.push(self.family(name, MetricType::Histogram, m));
                }
            }
        }
        out
    }
}

fn metric(now_ms: i64) -> Metric {
    Metric { timestamp_ms: Some(now_ms), ..Default::default() }
}

fn family(name: &str, ty: MetricType, m: Metric) -> MetricFamily {
    MetricFamily { name: Some(name.to_string()), r#type: Some(ty as i32), metric: vec![m], ..Default::default() }
}

/// The samples recorded between two snapshots of one histogram.
fn interval(now: &HistogramSnapshot, last: &HistogramSnapshot) -> HistogramSnapshot {
    let mut buckets = now.buckets;
    for (b, l) in buckets.iter_mut().zip(last.buckets.iter()) {
        *b = b.saturating_sub(*l);
    }
    HistogramSnapshot { buckets, count: now.count.saturating_sub(last.count), sum: now.sum.saturating_sub(last.sum) }
}

/// Quantiles of the interval; NaN when it has no sample, as Envoy sends.
fn summary(s: &HistogramSnapshot) -> Summary {
    Summary {
        sample_count: Some(s.count),
        sample_sum: Some(s.sum as f64),
        quantile: QUANTILES
            .iter()
            .map(|q| Quantile { quantile: Some(*q), value: Some(s.quantile(*q).unwrap_or(f64::NAN)) })
            .collect(),
        ..Default::default()
    }
}

/// Cumulative counts at Envoy's bucket bounds.
fn histogram(s: &HistogramSnapshot) -> Histogram {
    let mut seen = 0;
    let bucket = BUCKETS
        .iter()
        .zip(s.buckets.iter())
        .map(|(bound, n)| {
            seen += n;
            Bucket { upper_bound: Some(*bound), cumulative_count: Some(seen), ..Default::default() }
        })
        .collect();
    Histogram { sample_count: Some(s.count), sample_sum: Some(s.sum as f64), bucket, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_name<'a>(fams: &'a [MetricFamily], name: &str, ty: MetricType) -> Option<&'a Metric> {
        fams.iter().find(|f| f.name.as_deref() == Some(name) && f.r#type == Some(ty as i32)).map(|f| &f.metric[0])
    }

    #[test]
    fn used_stats_only_with_deltas_and_interval_histograms() {
        let store = Store::default();
        store.counter("a.used").add(3);
        store.counter("a.unused");
        store.gauge("g.unused");
        store.gauge("g.zero").set(0);
        let h = store.histogram("h.time");
        h.record(3.0);
        h.record(700.0);
        store.histogram("h.unused");
        let mut f = Flusher::new(true, EmitMode { summary: true, histogram: true });
        let fams = f.flush(&store, 42);
        let names: Vec<_> = fams.iter().filter_map(|f| f.name.as_deref()).collect();
        assert_eq!(names, ["a.used", "g.zero", "h.time", "h.time"]);
        let c = by_name(&fams, "a.used", MetricType::Counter).and_then(|m| m.counter.as_ref());
        assert_eq!(c.and_then(|c| c.value), Some(3.0));
        let hist = by_name(&fams, "h.time", MetricType::Histogram).and_then(|m| m.histogram.as_ref());
        let hist = hist.expect("histogram");
        assert_eq!(hist.sample_count, Some(2));
        assert_eq!(hist.bucket.len(), BUCKETS.len());
        assert_eq!(hist.bucket[2].upper_bound, Some(5.0));
        assert_eq!(hist.bucket[2].cumulative_count, Some(1));
        assert_eq!(hist.bucket[BUCKETS.len() - 1].cumulative_count, Some(2));
        assert_eq!(by_name(&fams, "a.used", MetricType::Counter).and_then(|m| m.timestamp_ms), Some(42));

        // The next flush: counter deltas, and only the interval's samples.
        store.counter("a.used").inc();
        h.record(1.0);
        let fams = f.flush(&store, 43);
        let c = by_name(&fams, "a.used", MetricType::Counter).and_then(|m| m.counter.as_ref());
        assert_eq!(c.and_then(|c| c.value), Some(1.0));
        let s = by_name(&fams, "h.time", MetricType::Summary).and_then(|m| m.summary.as_ref()).expect("summary");
        assert_eq!(s.sample_count, Some(1));
        assert_eq!(s.quantile.len(), QUANTILES.len());
        // Nothing new: the used counter is still sent, with 0; the summary has NaN quantiles.
        let fams = f.flush(&store, 44);
        let c = by_name(&fams, "a.used", MetricType::Counter).and_then(|m| m.counter.as_ref());
        assert_eq!(c.and_then(|c| c.value), Some(0.0));
        let s = by_name(&fams, "h.time", MetricType::Summary).and_then(|m| m.summary.as_ref()).expect("summary");
        assert!(s.quantile.iter().all(|q| q.value.is_some_and(f64::is_nan)));
    }
}
