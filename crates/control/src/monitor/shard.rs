//! One replica's part of the fleet's series, as raw data that adds up: the
//! slots of every tier from a moment on (counter differences and bucket
//! counts per name), the latest gauges of the proxies that report to this
//! replica, and the totals since it started. With several replicas on one
//! store each keeps what its own proxies sent; a query merges every
//! replica's shard into one [`State`] and reads the figures from that, so
//! counts are exact sums and percentiles come from merged buckets.

use super::ingest::{Latest, State};
use super::series::{Agg, Tier};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// One slot's sums per name.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SlotData {
    pub start_ms: u64,
    pub by: BTreeMap<String, Agg>,
}

/// A replica's monitor from `since_ms` on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Shard {
    pub since_ms: u64,
    /// Services at the fine and the coarse resolution; proxies at the fine one.
    pub fine: Vec<SlotData>,
    pub coarse: Vec<SlotData>,
    pub proxies: Vec<SlotData>,
    /// Services at one second (windows of a few minutes).
    #[serde(default)]
    pub recent: Vec<SlotData>,
    /// The last report of each proxy streaming to (or scraped by) this replica.
    pub latest: BTreeMap<String, LatestData>,
    /// Since the replica started (`/metrics?fleet=1`).
    pub totals: BTreeMap<String, Agg>,
    pub proxy_totals: BTreeMap<String, Agg>,
}

/// [`Latest`] with plain names.
pub type LatestData = Latest<String>;

/// The names a shard holds: every one, or only those asked for.
fn wanted<'a>(only: &'a [String]) -> impl Fn(&str) -> bool + Copy + 'a {
    move |name| only.is_empty() || only.iter().any(|o| o == name)
}

fn slots(tier: &Tier, since_ms: u64, keep: impl Fn(&str) -> bool) -> Vec<SlotData> {
    tier.slots()
        .filter(|s| s.start_ms + tier.resolution_ms > since_ms)
        .map(|s| SlotData {
            start_ms: s.start_ms,
            by: s.by.iter().filter(|(n, _)| keep(n)).map(|(n, a)| (n.to_string(), a.clone())).collect(),
        })
        .collect()
}

fn plain(m: &BTreeMap<Arc<str>, Agg>, keep: impl Fn(&str) -> bool) -> BTreeMap<String, Agg> {
    m.iter().filter(|(n, _)| keep(n)).map(|(n, a)| (n.to_string(), a.clone())).collect()
}

impl State {
    /// Everything of a window of `window_ms` ending at `now_ms`, from the
    /// slot holding its start on; of the services' tiers only the one a
    /// query of that window reads; of the services only `only` (all when
    /// empty).
    pub fn shard(&self, now_ms: u64, window_ms: u64, only: &[String]) -> Shard {
        let keep = wanted(only);
        let since_ms = now_ms.saturating_sub(window_ms);
        // Only the tier a query of this window reads is sent.
        let read = self.service_tier(std::time::Duration::from_millis(window_ms));
        let of = |tier: &Tier| if std::ptr::eq(read, tier) { slots(tier, since_ms, keep) } else { Vec::new() };
        let latest = self.latest.iter().map(|(n, l)| (n.to_string(), l.renamed(|s| s.to_string()))).collect();
        Shard {
            since_ms,
            fine: of(&self.fine),
            coarse: of(&self.coarse),
            proxies: slots(&self.proxies, since_ms, |_| true),
            // A shard of named services (for the control plane's own
            // decisions, which judge shorter windows inside this one) has
            // the one-second slots too.
            recent: if only.is_empty() { of(&self.recent) } else { slots(&self.recent, since_ms, keep) },
            latest,
            totals: plain(&self.totals, keep),
            proxy_totals: plain(&self.proxy_totals, |_| true),
        }
    }

    /// An empty state with this one's resolutions and retention.
    pub fn empty_like(&self) -> State {
        State::with_tiers(
            Tier::new(self.fine.resolution_ms, self.fine.retention_ms),
            Tier::new(self.coarse.resolution_ms, self.coarse.retention_ms),
            Tier::new(self.proxies.resolution_ms, self.proxies.retention_ms),
            Tier::new(self.recent.resolution_ms, self.recent.retention_ms),
        )
    }

    /// Adds a shard in: slots and totals add up; a proxy known from two
    /// replicas (it moved) keeps its latest report.
    pub fn absorb(&mut self, shard: &Shard) {
        for (tier, data) in [(0, &shard.fine), (1, &shard.coarse), (2, &shard.proxies), (3, &shard.recent)] {
            for slot in data {
                for (name, agg) in &slot.by {
                    let name = self.intern(name);
                    let agg = self.shared_bounds(agg.clone());
                    let t = match tier {
                        0 => &mut self.fine,
                        1 => &mut self.coarse,
                        2 => &mut self.proxies,
                        _ => &mut self.recent,
                    };
                    t.add(slot.start_ms, &name, &agg);
                }
            }
        }
        for (into, from) in [(0, &shard.totals), (1, &shard.proxy_totals)] {
            for (name, agg) in from {
                let name = self.intern(name);
                let m = if into == 0 { &mut self.totals } else { &mut self.proxy_totals };
                m.entry(name).or_default().add(agg);
            }
        }
        for (node, l) in &shard.latest {
            let node = self.intern(node);
            if self.latest.get(&node).is_some_and(|have| have.at_ms >= l.at_ms) {
                continue;
            }
            let latest = l.renamed(|s| self.intern(s));
            self.latest.insert(node, latest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_report::report;
    use super::super::Retention;
    use super::*;
    use std::time::Duration;

    /// Two replicas, one proxy each: the merged shards count exactly the
    /// sum, and the p99 is the one of the merged buckets (what one state
    /// holding both proxies gives), not an average of the two p99s.
    #[test]
    fn merged_shards_sum_exactly_and_merge_buckets() {
        let now = crate::clock::unix_ms();
        let (mut a, mut b, mut both) =
            (State::new(Retention::default()), State::new(Retention::default()), State::new(Retention::default()));
        for st in [&mut a, &mut both] {
            st.ingest(&report("p1", now - 30_000, 0, 0, 0));
            st.ingest(&report("p1", now - 20_000, 100, 7, 100));
        }
        for st in [&mut b, &mut both] {
            st.ingest(&report("p2", now - 30_000, 0, 0, 0));
            st.ingest(&report("p2", now - 20_000, 10, 1, 0));
        }
        let mut merged = a.empty_like();
        merged.absorb(&a.shard(now, 60_000, &[]));
        let wire = serde_json::to_string(&b.shard(now, 60_000, &[])).expect("json");
        merged.absorb(&serde_json::from_str(&wire).expect("shard"));
        let w = Duration::from_secs(60);
        let (m, one) = (merged.services(now, w), both.services(now, w));
        assert_eq!((m[0].traffic.requests, m[0].traffic.errors), (110, 8));
        assert_eq!(m[0].traffic.p99_ms, one[0].traffic.p99_ms);
        assert_eq!(m[0].proxies, one[0].proxies);
        let (pa, pb) = (a.services(now, w)[0].traffic.p99_ms, b.services(now, w)[0].traffic.p99_ms);
        assert_ne!(m[0].traffic.p99_ms, pa.zip(pb).map(|(x, y)| (x + y) / 2.0), "not an average of percentiles");
        let nodes: Vec<String> = merged.proxies(now, w).into_iter().map(|p| p.node).collect();
        assert_eq!(nodes.len(), 2);
    }

    /// A shard asked for named services (a release's clusters) holds only
    /// those, and its one-second slots: a window of 10 minutes asked, a
    /// step's 30 s read from the merged state still counts.
    #[test]
    fn a_shard_of_named_services_serves_shorter_windows_too() {
        let now = crate::clock::unix_ms();
        let mut a = State::new(Retention::default());
        a.ingest(&report("p1", now - 20_000, 0, 0, 0));
        a.ingest(&report("p1", now - 10_000, 50, 5, 50));
        let mut other = report("p1", now - 5_000, 60, 5, 60);
        other.counters.push(("cluster.admin.upstream_rq_completed".into(), 9));
        a.ingest(&other);
        let shard = a.shard(now, 600_000, &["web".to_string()]);
        assert!(shard.fine.iter().chain(&shard.recent).all(|s| s.by.keys().all(|n| n == "web")), "{shard:?}");
        let mut merged = a.empty_like();
        merged.absorb(&shard);
        let s = merged.services(now, Duration::from_secs(30));
        assert_eq!((s[0].service.as_str(), s[0].traffic.requests, s[0].traffic.errors), ("web", 60, 5));
    }
}
