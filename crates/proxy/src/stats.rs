//! Stats with Envoy's names, sharded per worker and merged when read.
//!
//! A stat is created once, when a config is compiled, and the hot path holds a
//! direct `Arc` to it: incrementing a counter is one relaxed atomic add on a
//! cache line owned by the calling worker (no lookup, no lock, no sharing).
//! Reading (admin) sums the shards.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Shard count: one per worker plus one for the main thread.
fn shard_count() -> usize {
    SHARDS.load(Relaxed).max(1) as usize
}
static SHARDS: AtomicU64 = AtomicU64::new(1);

#[repr(align(64))]
#[derive(Default)]
struct Padded<T>(T);

pub struct Counter {
    shards: Box<[Padded<AtomicU64>]>,
}

impl Counter {
    fn new() -> Self {
        Self { shards: (0..shard_count()).map(|_| Padded::default()).collect() }
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }
    #[inline]
    pub fn add(&self, n: u64) {
        let shard = worker_index() % self.shards.len();
        self.shards[shard].0.fetch_add(n, Relaxed);
    }
    pub fn value(&self) -> u64 {
        self.shards.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

/// A gauge goes up and down from any thread; it is a single atomic because
/// increments and decrements of one request may run on different threads.
/// `used` is Envoy's "used" flag (set once the gauge is changed): stats sinks
/// send only used stats. Its store lands on the cache line the add just took.
#[derive(Default)]
pub struct Gauge {
    value: AtomicI64,
    used: std::sync::atomic::AtomicBool,
}

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        self.value.fetch_add(1, Relaxed);
        self.used.store(true, Relaxed);
    }
    #[inline]
    pub fn dec(&self) {
        self.value.fetch_sub(1, Relaxed);
        self.used.store(true, Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.value.store(v, Relaxed);
        self.used.store(true, Relaxed);
    }
    /// Adds `n` (negative to subtract): a hot restart child adds its parent's value.
    pub fn add(&self, n: i64) {
        self.value.fetch_add(n, Relaxed);
        self.used.store(true, Relaxed);
    }
    pub fn value(&self) -> i64 {
        self.value.load(Relaxed)
    }
    /// Whether the gauge was ever set, raised or lowered.
    pub fn used(&self) -> bool {
        self.used.load(Relaxed)
    }
}

/// Envoy's default histogram bucket bounds (milliseconds for timing stats).
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// A histogram of cumulative-able bucket counts, sharded like counters.
pub struct Histogram {
    // Per shard: BUCKETS.len() + 1 (overflow) counts, then sample count, then sum.
    shards: Box<[Padded<[AtomicU64; BUCKETS.len() + 3]>]>,
}

impl Histogram {
    fn new() -> Self {
        Self { shards: (0..shard_count()).map(|_| Padded(std::array::from_fn(|_| AtomicU64::new(0)))).collect() }
    }
    pub fn record(&self, v: f64) {
        let shard = &self.shards[worker_index() % self.shards.len()].0;
        let i = BUCKETS.iter().position(|b| v <= *b).unwrap_or(BUCKETS.len());
        shard[i].fetch_add(1, Relaxed);
        shard[BUCKETS.len() + 1].fetch_add(1, Relaxed);
        shard[BUCKETS.len() + 2].fetch_add(v.max(0.0) as u64, Relaxed);
    }
    /// (per-bucket counts, overflow, count, sum)
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = [0u64; BUCKETS.len() + 1];
        let (mut count, mut sum) = (0, 0);
        for s in self.shards.iter() {
            for (i, b) in buckets.iter_mut().enumerate() {
                *b += s.0[i].load(Relaxed);
            }
            count += s.0[BUCKETS.len() + 1].load(Relaxed);
            sum += s.0[BUCKETS.len() + 2].load(Relaxed);
        }
        HistogramSnapshot { buckets, count, sum }
    }
}

#[derive(Clone, Default)]
pub struct HistogramSnapshot {
    pub buckets: [u64; BUCKETS.len() + 1],
    pub count: u64,
    pub sum: u64,
}

impl HistogramSnapshot {
    /// The value at quantile q, interpolated within the bucket that holds it.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let target = q * self.count as f64;
        let mut seen = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            if *n == 0 {
                continue;
            }
            if (seen + n) as f64 >= target {
                let lo = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
                let hi = BUCKETS.get(i).copied().unwrap_or(lo * 2.0);
                let frac = ((target - seen as f64) / *n as f64).clamp(0.0, 1.0);
                return Some(lo + (hi - lo) * frac);
            }
            seen += n;
        }
        Some(BUCKETS[BUCKETS.len() - 1])
    }
}

thread_local! {
    static WORKER_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The shard of the calling thread: 0 for the main thread, 1..=N for workers.
#[inline]
pub fn worker_index() -> usize {
    WORKER_INDEX.with(|w| w.get())
}

/// Called once by each worker thread at start.
pub fn set_worker_index(i: usize) {
    WORKER_INDEX.with(|w| w.set(i));
}

/// The number of workers, as `set_concurrency` was told (0 before).
pub fn workers() -> usize {
    shard_count() - 1
}

/// Called once, before any stat is created, with the number of workers.
pub fn set_concurrency(workers: usize) {
    SHARDS.store(workers as u64 + 1, Relaxed);
}

#[derive(Clone)]
pub enum Stat {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<Histogram>),
}

/// Which stat names the store shows (Envoy's `stats_config.stats_matcher`).
pub type StatFilter = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// The registry of every stat by name. Locked only when a config is compiled
/// (to create stats) and when the admin reads them; never per request.
#[derive(Default)]
pub struct Store {
    stats: Mutex<BTreeMap<String, Stat>>,
    /// Stats the filter rejects: they work for whoever holds them (the same
    /// one for the same name) but nobody reads them, as Envoy's rejected
    /// stats are never shown or sent.
    hidden: Mutex<BTreeMap<String, Stat>>,
    accept: Option<StatFilter>,
}

impl Store {
    /// A store that shows only the stats `accept` takes.
    pub fn with_filter(accept: StatFilter) -> Self {
        Self { accept: Some(accept), ..Self::default() }
    }

    fn get_or_make(&self, name: &str, make: impl FnOnce() -> Stat, same: impl Fn(&Stat) -> bool) -> Stat {
        let shown = self.accept.as_ref().is_none_or(|f| f(name));
        let map = if shown { &self.stats } else { &self.hidden };
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = m.get(name).filter(|s| same(s)) {
            return s.clone();
        }
        let s = make();
        m.insert(name.to_string(), s.clone());
        s
    }

    pub fn counter(&self, name: &str) -> Arc<Counter> {
        let made =
            self.get_or_make(name, || Stat::Counter(Arc::new(Counter::new())), |s| matches!(s, Stat::Counter(_)));
        match made {
            Stat::Counter(c) => c,
            _ => Arc::new(Counter::new()),
        }
    }
    pub fn gauge(&self, name: &str) -> Arc<Gauge> {
        let made = self.get_or_make(name, || Stat::Gauge(Arc::new(Gauge::default())), |s| matches!(s, Stat::Gauge(_)));
        match made {
            Stat::Gauge(g) => g,
            _ => Arc::new(Gauge::default()),
        }
    }
    pub fn histogram(&self, name: &str) -> Arc<Histogram> {
        let made =
            self.get_or_make(name, || Stat::Histogram(Arc::new(Histogram::new())), |s| matches!(s, Stat::Histogram(_)));
        match made {
            Stat::Histogram(h) => h,
            _ => Arc::new(Histogram::new()),
        }
    }
    /// Every stat shown, sorted by name.
    pub fn all(&self) -> Vec<(String, Stat)> {
        let m = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// Envoy's names for `downstream_rq_2xx` and friends: 1xx..5xx.
pub struct StatusClassCounters {
    pub by_class: [Arc<Counter>; 5],
}

impl StatusClassCounters {
    pub fn new(store: &Store, prefix: &str, stem: &str) -> Self {
        Self { by_class: std::array::from_fn(|i| store.counter(&format!("{prefix}{stem}_{}xx", i + 1))) }
    }
    #[inline]
    pub fn record(&self, status: u16) {
        let class = (status / 100) as usize;
        if (1..=5).contains(&class) {
            self.by_class[class - 1].inc();
        }
    }
}
