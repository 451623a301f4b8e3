//! Figures and series read from the tiers. A window counts whole slots from
//! the first slot start inside it to now, so `requests` and `errors` are
//! exact sums of counter differences; rates divide by that same span.

use super::buckets::Buckets;
use super::ingest::{Gauges, State};
use super::series::{Agg, Tier};
use super::stat::{route_of, route_stat_prefix, ROUTE_PREFIX};
use super::{Metric, Point, ProxyFigures, RequestFigures, RouteFigures, ServiceFigures};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// At most this many points in one series (the step grows to fit).
const MAX_POINTS: u64 = 2000;

/// The start of a window over `tier` ending now, and its length in seconds.
fn span(tier: &Tier, now_ms: u64, window: Duration) -> (u64, f64) {
    let current = now_ms - now_ms % tier.resolution_ms;
    let from = tier.align_up(now_ms.saturating_sub(window.as_millis() as u64)).min(current);
    (from, ((now_ms - from) as f64 / 1000.0).max(1.0))
}

fn sum(tier: &Tier, from_ms: u64, to_ms: u64) -> BTreeMap<Arc<str>, Agg> {
    let mut out: BTreeMap<Arc<str>, Agg> = BTreeMap::new();
    for slot in tier.range(from_ms, to_ms) {
        for (name, agg) in &slot.by {
            out.entry(name.clone()).or_default().add(agg);
        }
    }
    out
}

fn ratio(errors: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        errors as f64 / requests as f64
    }
}

fn request_figures(agg: &Agg, secs: f64) -> RequestFigures {
    let q = |p| agg.latency.quantile(p);
    RequestFigures {
        requests: agg.requests,
        errors: agg.errors,
        rq_2xx: agg.rq_2xx,
        rq_4xx: agg.rq_4xx,
        rq_5xx: agg.rq_5xx,
        rps: agg.requests as f64 / secs,
        error_rate: ratio(agg.errors, agg.requests),
        p50_ms: q(0.5),
        p90_ms: q(0.9),
        p99_ms: q(0.99),
        retries: agg.retries,
        timeouts: agg.timeouts,
    }
}

fn service_figures(name: &str, agg: &Agg, secs: f64, gauges: &Gauges, proxies: usize) -> ServiceFigures {
    ServiceFigures {
        service: name.to_string(),
        traffic: request_figures(agg, secs),
        active_rq: gauges.active_rq,
        active_cx: gauges.active_cx,
        ejected: gauges.ejected,
        unhealthy: (gauges.membership - gauges.healthy).max(0.0),
        proxies,
    }
}

impl State {
    /// The finest services' tier that still holds the whole window.
    pub(super) fn service_tier(&self, window: Duration) -> &Tier {
        let w = window.as_millis() as u64;
        if w <= self.recent.retention_ms && self.recent.resolution_ms < self.fine.resolution_ms {
            &self.recent
        } else if w <= self.fine.retention_ms {
            &self.fine
        } else {
            &self.coarse
        }
    }

    pub fn services(&self, now_ms: u64, window: Duration) -> Vec<ServiceFigures> {
        let tier = self.service_tier(window);
        let (from, secs) = span(tier, now_ms, window);
        let sums = sum(tier, from, u64::MAX);
        let since = now_ms.saturating_sub(window.as_millis() as u64);
        // Gauges: the latest of each proxy that reported in the window, summed.
        let mut gauges: BTreeMap<Arc<str>, (Gauges, usize)> = BTreeMap::new();
        for latest in self.latest.values().filter(|l| l.at_ms >= since) {
            for (svc, g) in &latest.services {
                let e = gauges.entry(svc.clone()).or_default();
                e.0.active_rq += g.active_rq;
                e.0.active_cx += g.active_cx;
                e.0.ejected += g.ejected;
                e.0.healthy += g.healthy;
                e.0.membership += g.membership;
                e.1 += 1;
            }
        }
        let empty = Agg::default();
        let mut names: Vec<&Arc<str>> =
            sums.keys().chain(gauges.keys()).filter(|n| !n.starts_with(ROUTE_PREFIX)).collect();
        names.sort();
        names.dedup();
        let mut out: Vec<ServiceFigures> = names
            .into_iter()
            .map(|n| {
                let (g, proxies) = gauges.get(n).copied().unwrap_or_default();
                service_figures(n, sums.get(n).unwrap_or(&empty), secs, &g, proxies)
            })
            .collect();
        out.sort_by(|a, b| b.traffic.requests.cmp(&a.traffic.requests).then_with(|| a.service.cmp(&b.service)));
        out
    }

    /// Every virtual cluster counted in the window, busiest first.
    pub fn routes(&self, now_ms: u64, window: Duration) -> Vec<RouteFigures> {
        let tier = self.service_tier(window);
        let (from, secs) = span(tier, now_ms, window);
        let mut out: Vec<RouteFigures> = sum(tier, from, u64::MAX)
            .iter()
            .filter_map(|(key, agg)| {
                let (vh, vc) = route_of(key)?;
                Some(RouteFigures {
                    virtual_host: vh.to_string(),
                    virtual_cluster: if route_stat_prefix(vc).is_some() { String::new() } else { vc.to_string() },
                    route: route_stat_prefix(vc).unwrap_or_default().to_string(),
                    traffic: request_figures(agg, secs),
                })
            })
            .collect();
        out.sort_by(|a, b| {
            b.traffic.requests.cmp(&a.traffic.requests).then_with(|| {
                (&a.virtual_host, &a.virtual_cluster, &a.route).cmp(&(&b.virtual_host, &b.virtual_cluster, &b.route))
            })
        });
        out
    }

    pub fn proxies(&self, now_ms: u64, window: Duration) -> Vec<ProxyFigures> {
        let (from, secs) = span(&self.proxies, now_ms, window);
        let sums = sum(&self.proxies, from, u64::MAX);
        let since = now_ms.saturating_sub(window.as_millis() as u64);
        let empty = Agg::default();
        let mut out: Vec<ProxyFigures> = self
            .latest
            .iter()
            .filter(|(_, l)| l.at_ms >= since)
            .map(|(node, l)| {
                let agg = sums.get(node).unwrap_or(&empty);
                ProxyFigures {
                    node: node.to_string(),
                    node_cluster: l.node_cluster.clone(),
                    requests: agg.requests,
                    errors: agg.errors,
                    rps: agg.requests as f64 / secs,
                    error_rate: ratio(agg.errors, agg.requests),
                    p99_ms: agg.latency.quantile(0.99),
                    active_cx: l.proxy.active_cx,
                    active_rq: l.proxy.active_rq,
                    last_report_ms: l.at_ms,
                    source: l.source.clone(),
                    resets: l.resets,
                }
            })
            .collect();
        out.sort_by(|a, b| b.requests.cmp(&a.requests).then_with(|| a.node.cmp(&b.node)));
        out
    }

    /// Requests, errors and p99 of a set of proxies together (their
    /// latency histograms merged) over `window`.
    pub fn proxy_group(&self, now_ms: u64, window: Duration, nodes: &[String]) -> (u64, u64, Option<f64>) {
        let (from, _) = span(&self.proxies, now_ms, window);
        let sums = sum(&self.proxies, from, u64::MAX);
        let mut agg = Agg::default();
        for n in nodes {
            if let Some(a) = sums.get(n.as_str()) {
                agg.add(a);
            }
        }
        (agg.requests, agg.errors, agg.latency.quantile(0.99))
    }

    pub fn series(&self, now_ms: u64, service: &str, metric: Metric, window: Duration, step: Duration) -> Vec<Point> {
        let tier = self.service_tier(window);
        let res = tier.resolution_ms;
        let window_ms = window.as_millis() as u64;
        let mut step_ms = (step.as_millis() as u64).max(res).div_ceil(res) * res;
        if window_ms / step_ms > MAX_POINTS {
            step_ms = (window_ms / MAX_POINTS).div_ceil(res) * res;
        }
        let (from, _) = span(tier, now_ms, window);
        let mut points = Vec::new();
        let mut t = from;
        while t <= now_ms && points.len() < MAX_POINTS as usize + 1 {
            let mut agg = Agg::default();
            for slot in tier.range(t, t + step_ms) {
                if let Some(a) = slot.by.get(service) {
                    agg.add(a);
                }
            }
            let secs = ((t + step_ms).min(now_ms).saturating_sub(t) as f64 / 1000.0).max(1.0);
            points.push(Point { t, v: value(metric, &agg, secs) });
            t += step_ms;
        }
        points
    }

    /// Node, node cluster and last report of the proxies heard within `within`.
    pub fn reporting(&self, now_ms: u64, within: Duration) -> Vec<(String, String, u64)> {
        let since = now_ms.saturating_sub(within.as_millis() as u64);
        let mut v: Vec<_> = self
            .latest
            .iter()
            .filter(|(_, l)| l.at_ms >= since)
            .map(|(n, l)| (n.to_string(), l.source.clone(), l.at_ms))
            .collect();
        v.sort();
        v
    }
}

fn value(metric: Metric, agg: &Agg, secs: f64) -> Option<f64> {
    let q = |b: &Buckets, p| b.quantile(p);
    match metric {
        Metric::Rps => Some(agg.requests as f64 / secs),
        Metric::ErrorRate => (agg.requests > 0).then(|| ratio(agg.errors, agg.requests)),
        Metric::P50Ms => q(&agg.latency, 0.5),
        Metric::P90Ms => q(&agg.latency, 0.9),
        Metric::P99Ms => q(&agg.latency, 0.99),
        Metric::Requests => Some(agg.requests as f64),
        Metric::Errors => Some(agg.errors as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_report::report;
    use super::super::{Report, Retention};
    use super::*;

    #[test]
    fn window_totals_are_exact_across_a_restart() {
        let now = crate::clock::unix_ms();
        let mut st = State::new(Retention::default());
        st.ingest(&report("n1", now - 40_000, 1000, 10, 1000)); // baseline
        st.ingest(&report("n1", now - 30_000, 1100, 15, 1050));
        st.ingest(&report("n1", now - 20_000, 40, 2, 40)); // restarted
        st.ingest(&report("n1", now - 10_000, 90, 3, 80));
        let s = st.services(now, Duration::from_secs(60));
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].traffic.requests, s[0].traffic.errors), (100 + 40 + 50, 5 + 2 + 1));
        assert!(s[0].traffic.rps > 0.0 && s[0].traffic.rps <= 190.0 / 50.0);
        let p = st.proxies(now, Duration::from_secs(60));
        assert_eq!(p[0].resets, 1);
        let points = st.series(now, "web", Metric::Requests, Duration::from_secs(60), Duration::from_secs(10));
        let total: f64 = points.iter().filter_map(|p| p.v).sum();
        assert_eq!(total, 190.0);
        assert!(points.iter().all(|p| p.v.unwrap_or(0.0) >= 0.0));
    }

    /// A 3 s window counts the last three seconds, not the whole 10 s slot
    /// around them: errors reported 5 s ago are out of it, and a chart of
    /// the last minute has one-second points.
    #[test]
    fn a_short_window_counts_only_its_own_seconds() {
        let mut st = State::new(Retention::default());
        let slot = crate::clock::unix_ms() / 10_000 * 10_000 - 20_000;
        st.ingest(&report("n1", slot + 1_000, 100, 0, 100)); // baseline
        st.ingest(&report("n1", slot + 2_000, 300, 200, 300)); // 200 failed, 6 s before `now`
        st.ingest(&report("n1", slot + 7_000, 310, 200, 310)); // 10 good
        let now = slot + 8_000;
        let s = st.services(now, Duration::from_secs(3));
        assert_eq!((s[0].traffic.requests, s[0].traffic.errors), (10, 0), "{s:?}");
        let s = st.services(now, Duration::from_secs(60));
        assert_eq!((s[0].traffic.requests, s[0].traffic.errors), (210, 200));
        let points = st.series(now, "web", Metric::Requests, Duration::from_secs(60), Duration::from_secs(1));
        assert!(points.len() >= 60, "{}", points.len());
        assert_eq!(points.iter().filter_map(|p| p.v).sum::<f64>(), 210.0);
    }

    fn proxy_report(node: &str, at_ms: u64, completed: u64, errors: u64) -> Report {
        Report {
            node: node.into(),
            at_ms,
            counters: vec![
                ("http.ingress.downstream_rq_completed".into(), completed),
                ("http.ingress.downstream_rq_5xx".into(), errors),
            ],
            source: "stream".into(),
            ..Default::default()
        }
    }

    /// A staged rollout's window starts at its staging, not at the start of
    /// the 10 s slot it falls in: errors reported before the mark are left
    /// out, even in the same slot, while the slot-based window counts them.
    #[test]
    fn a_mark_counts_only_what_is_reported_after_it() {
        let mut st = State::new(Retention::default());
        let slot = crate::clock::unix_ms() / 10_000 * 10_000 - 20_000;
        st.ingest(&proxy_report("a", slot + 1_000, 100, 0)); // baseline
        st.ingest(&proxy_report("a", slot + 2_000, 200, 60)); // 100 requests, 60 errors, before
        st.marks.entry(7).or_default();
        st.ingest(&proxy_report("a", slot + 3_000, 250, 61)); // 50 requests, 1 error, after
        st.ingest(&proxy_report("b", slot + 3_000, 10, 0)); // b's baseline: nothing counted
        st.ingest(&proxy_report("b", slot + 4_000, 30, 0));
        let marked = |nodes: &[&str]| {
            let mut agg = Agg::default();
            for n in nodes {
                if let Some(a) = st.marks[&7].get(*n) {
                    agg.add(a);
                }
            }
            (agg.requests, agg.errors)
        };
        assert_eq!(marked(&["a"]), (50, 1));
        assert_eq!(marked(&["a", "b"]), (70, 1));
        let (requests, errors, _) = st.proxy_group(slot + 5_000, Duration::from_secs(3), &["a".to_string()]);
        assert_eq!((requests, errors), (150, 61), "the slot holds the errors from before the mark");
    }
}
