//! A cluster's hosts at one moment (`HostSet`), arranged for picking: by
//! priority level with Envoy's priority load and panic, by locality for
//! locality-weighted clusters, with the consistent-hash table of each level
//! and the slow-start window. Built when the hosts or their health change,
//! never per request.

use crate::upstream::clock::clock_ms;
use crate::upstream::host::{Host, SlowStart};
use crate::upstream::lb::hash_table::{HashTable, Hashing};
use legate_api::pb::envoy::config::cluster::v3::{
    cluster::common_lb_config::LocalityConfigSpecifier, Cluster as PbCluster,
};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Envoy's priority-load parameters: `overprovisioning_factor` (percent,
/// default 140) and `healthy_panic_threshold` (percent, default 50).
#[derive(Debug, Clone)]
pub struct LbParams {
    pub overprovisioning: u64,
    pub panic_threshold: f64,
    /// Consistent hashing (RING_HASH, MAGLEV): a table per level.
    pub hashing: Option<Hashing>,
    /// `common_lb_config.locality_weighted_lb_config`: pick a locality by
    /// its weight (scaled by its availability), then a host in it.
    pub locality_weighted: bool,
    /// ROUND_ROBIN / LEAST_REQUEST `slow_start_config`.
    pub slow_start: Option<SlowStart>,
}

impl LbParams {
    /// The cluster's priority and locality settings, with what its policy
    /// needs of the host set (a hash table, slow-start windows).
    pub fn compile(c: &PbCluster, hashing: Option<Hashing>, slow_start: Option<SlowStart>) -> Result<Self, String> {
        let params = Self {
            overprovisioning: c
                .load_assignment
                .as_ref()
                .and_then(|la| la.policy.as_ref())
                .and_then(|p| p.overprovisioning_factor.map(|f| u64::from(f.value)))
                .unwrap_or(140),
            panic_threshold: c
                .common_lb_config
                .as_ref()
                .and_then(|l| l.healthy_panic_threshold.as_ref())
                .map_or(50.0, |p| p.value.round()),
            hashing,
            slow_start,
            locality_weighted: c.common_lb_config.as_ref().is_some_and(|l| {
                matches!(l.locality_config_specifier, Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_)))
            }),
        };
        if params.locality_weighted && params.slow_start.is_some() {
            return Err("common_lb_config.locality_weighted_lb_config: not supported with slow_start_config".into());
        }
        if params.locality_weighted && params.hashing.is_some() {
            return Err("common_lb_config.locality_weighted_lb_config: not supported with RING_HASH or MAGLEV".into());
        }
        Ok(params)
    }
}

impl Default for LbParams {
    fn default() -> Self {
        Self { overprovisioning: 140, panic_threshold: 50.0, hashing: None, locality_weighted: false, slow_start: None }
    }
}

/// A locality of a level, for locality-weighted balancing: the hosts to
/// pick from and its effective weight.
pub struct LocalityHosts {
    pub hosts: Vec<Arc<Host>>,
    pub weight: f64,
}

/// One priority level as requests see it: the hosts to pick from (its
/// healthy hosts, or all of them in panic) and its share of the load.
pub struct Level {
    pub hosts: Vec<Arc<Host>>,
    /// Percent of requests this level takes (all levels sum to 100).
    pub load: u32,
    pub panic: bool,
    /// Whether every host of `hosts` has the same weight.
    pub equal_weights: bool,
    /// The ring or Maglev table over `hosts`, for hashing clusters.
    pub table: Option<HashTable>,
    /// Locality-weighted clusters: the level's localities with weight > 0.
    pub localities: Vec<LocalityHosts>,
}

/// The hosts of a cluster at one moment; replaced whole when DNS, EDS or a
/// host's health changes them. Everything a pick needs (per-level load,
/// panic, the hosts to choose from) is computed here, never per request.
#[derive(Default)]
pub struct HostSet {
    pub all: Vec<Arc<Host>>,
    /// Levels in priority order; only those with load > 0.
    pub levels: Vec<Level>,
    pub healthy: usize,
    /// With slow start: until when (on `upstream::clock::clock_ms`) some host may
    /// still be in its window; weights are scaled before then.
    pub slow_start_until: u64,
}

impl HostSet {
    /// Envoy's priority load: each level's availability is
    /// min(100, overprovisioning × healthy / hosts); load goes to levels in
    /// order, scaled when the availabilities sum to less than 100, and the
    /// rounding remainder to the first available level. A level is in panic
    /// (all its hosts used) when the total is short of 100 and under the
    /// panic threshold of its hosts are healthy; when every level is, load
    /// follows host counts instead.
    pub fn new(all: Vec<Arc<Host>>, params: &LbParams) -> Self {
        let mut by_priority: std::collections::BTreeMap<u32, Vec<Arc<Host>>> = Default::default();
        for h in &all {
            by_priority.entry(h.priority).or_default().push(h.clone());
        }
        let usable = |h: &Arc<Host>| h.hc_healthy.load(Relaxed) && !h.ejected.load(Relaxed);
        let healthy = all.iter().filter(|h| usable(h)).count();
        let tiers: Vec<Tier> = by_priority
            .into_values()
            .map(|hosts| {
                let ok: Vec<Arc<Host>> = hosts.iter().filter(|h| usable(h)).cloned().collect();
                (hosts, ok)
            })
            .collect();
        if tiers.is_empty() {
            return Self { all, levels: vec![], healthy, slow_start_until: 0 };
        }
        let (loads, panic) = priority_loads(&tiers, params);
        let levels = tiers
            .into_iter()
            .zip(loads)
            .zip(panic)
            .filter(|((_, load), _)| *load > 0)
            .map(|(((all_hosts, ok), load), panic)| {
                let localities =
                    if params.locality_weighted { localities(&all_hosts, panic, params) } else { Vec::new() };
                let hosts = if panic { all_hosts } else { ok };
                let equal_weights = hosts.windows(2).all(|w| w[0].weight == w[1].weight);
                let table = params.hashing.and_then(|h| HashTable::build(h, &hosts));
                Level { hosts, load, panic, equal_weights, table, localities }
            })
            .collect();
        let slow_start_until = params.slow_start.as_ref().map_or(0, |ss| slow_start_until(&all, ss));
        Self { all, levels, healthy, slow_start_until }
    }

    /// Whether a host may still be in its slow-start window.
    pub fn in_slow_start(&self) -> bool {
        self.slow_start_until != 0 && clock_ms() <= self.slow_start_until
    }

    /// The level a request goes to: by a draw in 1..=100 against the loads
    /// (the request's hash stands in for the draw when it has one, as in Envoy).
    pub fn level(&self, hash: Option<u64>) -> Option<(usize, &Level)> {
        if self.levels.len() == 1 {
            return self.levels.first().map(|l| (0, l));
        }
        let draw = hash.map_or_else(|| rand::random_range(1..=100u32), |h| (h % 100) as u32 + 1);
        let mut acc = 0;
        self.levels.iter().enumerate().find(|(_, l)| {
            acc += l.load;
            draw <= acc
        })
    }
}

/// A level's localities as Envoy weighs them: `load_balancing_weight` ×
/// min(1, overprovisioning × healthy share); those at zero take nothing. In
/// panic every host counts and the weights stand as configured.
fn localities(hosts: &[Arc<Host>], panic: bool, params: &LbParams) -> Vec<LocalityHosts> {
    let mut by: std::collections::BTreeMap<u32, (Vec<Arc<Host>>, usize, u32)> = Default::default();
    for h in hosts {
        let e = by.entry(h.locality).or_insert_with(|| (Vec::new(), 0, h.locality_weight));
        e.1 += 1;
        if panic || (h.hc_healthy.load(Relaxed) && !h.ejected.load(Relaxed)) {
            e.0.push(h.clone());
        }
    }
    by.into_values()
        .filter_map(|(usable, total, weight)| {
            let availability = if panic {
                1.0
            } else {
                (params.overprovisioning as f64 / 100.0 * usable.len() as f64 / total as f64).min(1.0)
            };
            let w = weight as f64 * availability;
            (w > 0.0 && !usable.is_empty()).then_some(LocalityHosts { hosts: usable, weight: w })
        })
        .collect()
}

/// A priority level's hosts: all of them, and those usable (healthy and not
/// ejected).
type Tier = (Vec<Arc<Host>>, Vec<Arc<Host>>);

/// Each level's share of the load (percent) and whether it is in panic, as
/// `HostSet::new` describes.
fn priority_loads(tiers: &[Tier], params: &LbParams) -> (Vec<u32>, Vec<bool>) {
    let availability: Vec<u64> = tiers
        .iter()
        .map(|(hosts, ok)| (params.overprovisioning * ok.len() as u64 / hosts.len() as u64).min(100))
        .collect();
    let total: u64 = availability.iter().sum::<u64>().min(100);
    let in_panic =
        |(hosts, ok): &Tier| total < 100 && (100.0 * ok.len() as f64 / hosts.len() as f64) < params.panic_threshold;
    let panic: Vec<bool> = tiers.iter().map(in_panic).collect();
    let mut loads = vec![0u32; tiers.len()];
    if panic.iter().all(|p| *p) && params.panic_threshold > 0.0 {
        // Total panic: load by host count, whatever their health.
        let count: usize = tiers.iter().map(|(h, _)| h.len()).sum();
        let mut left = 100u32;
        for (i, (hosts, _)) in tiers.iter().enumerate() {
            loads[i] = (100 * hosts.len() / count.max(1)) as u32;
            left -= loads[i];
        }
        loads[0] += left;
    } else if let Some(share) = (total > 0).then_some(total) {
        let mut left = 100u64;
        let mut first = None;
        for (i, a) in availability.iter().enumerate() {
            if first.is_none() && *a > 0 {
                first = Some(i);
            }
            let l = left.min(a * 100 / share);
            loads[i] = l as u32;
            left -= l;
        }
        if let Some(f) = first {
            loads[f] += left as u32;
        }
    } else {
        // Panic disabled and nothing healthy: P0 gets the load, and no host.
        loads[0] = 100;
    }
    (loads, panic)
}

/// Slow start (Envoy's refresh): until when some host may still be in its
/// window. A host with no healthy time yet (no active checks, or none
/// answered) starts its window now.
fn slow_start_until(all: &[Arc<Host>], ss: &SlowStart) -> u64 {
    let now = clock_ms();
    let mut latest = 0;
    for h in all {
        let since = match h.healthy_since.load(Relaxed) {
            0 => {
                h.healthy_since.store(now, Relaxed);
                now
            }
            t => t,
        };
        if now.saturating_sub(since) <= ss.window_ms {
            latest = latest.max(since);
        }
    }
    if latest == 0 {
        0
    } else {
        latest + ss.window_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::host::Placement;
    use std::net::SocketAddr;

    fn hosts(healthy: &[bool], priority: u32) -> Vec<Arc<Host>> {
        healthy
            .iter()
            .enumerate()
            .map(|(i, ok)| {
                let h = Host::new(SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)), String::new(), 1, priority);
                h.hc_healthy.store(*ok, Relaxed);
                Arc::new(h)
            })
            .collect()
    }

    fn loads(set: &HostSet) -> Vec<(u32, usize, bool)> {
        set.levels.iter().map(|l| (l.load, l.hosts.len(), l.panic)).collect()
    }

    #[test]
    fn locality_weights_scale_with_availability() {
        let placed = |healthy: &[bool], locality: u32, weight: u32| -> Vec<Arc<Host>> {
            healthy
                .iter()
                .enumerate()
                .map(|(i, ok)| {
                    let addr = SocketAddr::from(([127, 0, 0, 1], 2000 + locality as u16 * 10 + i as u16));
                    let h =
                        Host::new(addr, String::new(), 1, Placement { priority: 0, locality, locality_weight: weight });
                    h.hc_healthy.store(*ok, Relaxed);
                    Arc::new(h)
                })
                .collect()
        };
        let hosts = [placed(&[true], 0, 2), placed(&[true, false], 1, 2), placed(&[true], 2, 0)].concat();
        let got: Vec<(usize, f64)> =
            localities(&hosts, false, &LbParams::default()).iter().map(|l| (l.hosts.len(), l.weight)).collect();
        // Half healthy: 2 × min(1, 1.4 × 0.5) = 1.4; no weight: left out.
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (1, 2.0));
        assert_eq!(got[1].0, 1);
        assert!((got[1].1 - 1.4).abs() < 1e-9, "{got:?}");
    }

    #[test]
    fn priority_load_follows_overprovisioned_health() {
        let p = LbParams::default();
        // All healthy: P0 takes everything.
        let all = [hosts(&[true, true], 0), hosts(&[true], 1)].concat();
        assert_eq!(loads(&HostSet::new(all, &p)), vec![(100, 2, false)]);
        // Half of P0 healthy: 1.4 × 50 = 70 % stays, 30 % spills to P1.
        let half = [hosts(&[true, false], 0), hosts(&[true], 1)].concat();
        assert_eq!(loads(&HostSet::new(half, &p)), vec![(70, 1, false), (30, 1, false)]);
        // Health short of 100 % overall and every level under the panic
        // threshold: total panic, load by host count over all hosts.
        let short = [hosts(&[true, false, false, false], 0), hosts(&[false], 1)].concat();
        assert_eq!(loads(&HostSet::new(short.clone(), &p)), vec![(80, 4, true), (20, 1, true)]);
        // P0 dead, P1 half healthy (not under the threshold): P1 takes the
        // whole load from its healthy host; P0's panic gives it no load.
        let one = [hosts(&[false, false], 0), hosts(&[true, false], 1)].concat();
        assert_eq!(loads(&HostSet::new(one, &p)), vec![(100, 1, false)]);
        // Scaled split: 35 and 46 of 81.
        let scaled = [hosts(&[true, false, false, false], 0), hosts(&[true, false, false], 1)].concat();
        let off = LbParams { panic_threshold: 0.0, ..p.clone() };
        assert_eq!(loads(&HostSet::new(scaled, &off)), vec![(44, 1, false), (56, 1, false)]);
        // Panic disabled: only the healthy host.
        assert_eq!(loads(&HostSet::new(short, &off)), vec![(100, 1, false)]);
        // Nothing healthy anywhere: total panic, load by host count.
        let none = [hosts(&[false, false, false], 0), hosts(&[false], 1)].concat();
        assert_eq!(loads(&HostSet::new(none, &p)), vec![(75, 3, true), (25, 1, true)]);
        // A custom overprovisioning factor of 100: P0 half healthy keeps 50 %.
        let exact = LbParams { overprovisioning: 100, ..p.clone() };
        let half = [hosts(&[true, false], 0), hosts(&[true], 1)].concat();
        assert_eq!(loads(&HostSet::new(half, &exact)), vec![(50, 1, false), (50, 1, false)]);
    }
}
