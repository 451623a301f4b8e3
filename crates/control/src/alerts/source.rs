//! What a rule reads: service figures from the monitor, the connected
//! proxies from the fleet, certificate expiries from the Secrets. [`Source`]
//! is the seam: the controller implements it, unit tests feed figures
//! directly. [`measure`] turns one rule and a source into a value.
//!
//! `proxy_down` needs memory the fleet does not keep (it forgets a stream
//! when it ends): [`Seen`] remembers every node id this replica has had
//! connected; a node whose every stream has ended is down until it connects
//! again, or until it has been gone for [`FORGET_AFTER`] (then it is taken
//! to be decommissioned, and a firing alert on it resolves).

use crate::alerts::rule::{Rule, RuleMetric};
use crate::discovery::node::NodeInfo;
use crate::monitor::ServiceFigures;
use crate::resources::kind::Kind;
use crate::resources::resource::of_kind;
use crate::state::controller::Controller;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a node that left counts as down.
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// One connected proxy as rules see it.
#[derive(Debug, Clone, Default)]
pub struct ProxyView {
    pub node: NodeInfo,
    /// Some type's last response was NACKed (and nothing newer was ACKed).
    pub nacked: bool,
    /// Some type's ACKed revision is behind the one last sent (the
    /// current revision's config for it), or its version differs.
    pub lagging: bool,
    /// When it was last heard of: its last metrics report, or its
    /// connection when later (Unix ms).
    pub heard_ms: u64,
}

/// Everything a rule can read.
pub trait Source {
    fn service(&self, name: &str, window: Duration) -> Option<ServiceFigures>;
    /// The connected proxies (one entry per stream).
    fn proxies(&self) -> Vec<ProxyView>;
    /// (secret name, Unix seconds of expiry) of every inline certificate.
    fn certificates(&self) -> Vec<(String, i64)>;
    /// The abnormal nodes, each with whether its repair failed.
    fn abnormal(&self) -> Vec<(NodeInfo, bool)>;
}

impl Source for Controller {
    fn service(&self, name: &str, window: Duration) -> Option<ServiceFigures> {
        self.monitor.service(name, window)
    }

    fn proxies(&self) -> Vec<ProxyView> {
        let fleet = self.fleet.list();
        let heard = self.monitor.last_heard(&fleet);
        let mut views: Vec<ProxyView> = fleet
            .into_iter()
            .map(|p| ProxyView {
                nacked: p.nacked(),
                lagging: p.lagging(),
                heard_ms: heard.get(&p.node.id).copied().unwrap_or(p.connected_ms),
                node: p.node,
            })
            .collect();
        // With other replicas (etcd), their proxies as they last reported
        // them; one this replica streams too is taken from here.
        for r in self.remote_reports() {
            for node in r.proxies {
                if views.iter().any(|v| v.node.id == node.id) {
                    continue;
                }
                let (nacked, lagging) = (r.nacked.contains(&node.id), r.lagging.contains(&node.id));
                // A report without it (an older replica) vouches for it now.
                let heard_ms = r.heard.get(&node.id).copied().unwrap_or(r.at_ms);
                views.push(ProxyView { node, nacked, lagging, heard_ms });
            }
        }
        views
    }

    fn certificates(&self) -> Vec<(String, i64)> {
        let state = self.stored();
        let mut out = Vec::new();
        for (name, r) in of_kind(&state.resources, Kind::Secret) {
            for c in crate::resources::certinfo::certificates(&r.any) {
                let at = c["expiration_time"].as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
                if let Some(at) = at {
                    out.push((name.clone(), at.timestamp()));
                }
            }
        }
        out
    }

    fn abnormal(&self) -> Vec<(NodeInfo, bool)> {
        self.faults
            .nodes()
            .into_iter()
            .map(|v| {
                let failed = v.repair_failed();
                (NodeInfo { id: v.node, cluster: v.cluster, ..Default::default() }, failed)
            })
            .collect()
    }
}

/// The controller, with service figures from a monitor merging every
/// replica's part of the fleet.
pub struct WithFleet<'a> {
    pub ctrl: &'a Controller,
    pub monitor: &'a crate::monitor::Monitor,
}

impl Source for WithFleet<'_> {
    fn service(&self, name: &str, window: Duration) -> Option<ServiceFigures> {
        self.monitor.service(name, window)
    }
    fn proxies(&self) -> Vec<ProxyView> {
        self.ctrl.proxies()
    }
    fn certificates(&self) -> Vec<(String, i64)> {
        self.ctrl.certificates()
    }
    fn abnormal(&self) -> Vec<(NodeInfo, bool)> {
        self.ctrl.abnormal()
    }
}

/// What `rules` read of the fleet's figures: the longest window of a
/// service rule, and those services; `None` without a service rule.
pub fn ask_for(rules: &[Rule]) -> Option<crate::remote::shards::Ask> {
    let mut ask = crate::remote::shards::Ask::default();
    for r in rules {
        if let Some(service) = &r.service {
            ask.window = ask.window.max(r.window);
            ask.services.push(service.clone());
        }
    }
    (!ask.services.is_empty()).then_some(ask)
}

/// Nodes this replica has seen connected: node id to (node, last seen, Unix ms).
#[derive(Debug, Default)]
pub struct Seen {
    nodes: BTreeMap<String, (NodeInfo, u64)>,
}

impl Seen {
    /// Records the connected proxies; returns the nodes that are down now.
    pub fn update(&mut self, connected: &[ProxyView], now_ms: u64) -> Vec<NodeInfo> {
        for p in connected {
            self.nodes.insert(p.node.id.clone(), (p.node.clone(), now_ms));
        }
        let forget = FORGET_AFTER.as_millis() as u64;
        self.nodes.retain(|_, (_, last)| now_ms.saturating_sub(*last) < forget);
        self.nodes.values().filter(|(_, last)| *last < now_ms).map(|(n, _)| n.clone()).collect()
    }
}

/// A rule's value now, and what it is about (the nodes or secrets counted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Measurement {
    pub value: Option<f64>,
    pub subjects: Vec<String>,
}

/// Measures one rule. `down`: the nodes [`Seen`] reports down.
pub fn measure(rule: &Rule, source: &dyn Source, proxies: &[ProxyView], down: &[NodeInfo], now_s: i64) -> Measurement {
    let count = |ids: Vec<String>| {
        let mut ids = ids;
        ids.sort();
        ids.dedup();
        Measurement { value: Some(ids.len() as f64), subjects: ids }
    };
    let selected = |p: &&ProxyView| rule.nodes.matches(&p.node);
    match rule.metric {
        RuleMetric::ErrorRate | RuleMetric::P99Ms | RuleMetric::Rps => {
            let figures = rule.service.as_deref().and_then(|s| source.service(s, rule.window));
            let value =
                figures.filter(|f| f.traffic.requests >= rule.min_requests.max(1)).and_then(|f| match rule.metric {
                    RuleMetric::ErrorRate => Some(f.traffic.error_rate),
                    RuleMetric::P99Ms => f.traffic.p99_ms,
                    _ => Some(f.traffic.rps),
                });
            Measurement { value, subjects: rule.service.iter().cloned().collect() }
        }
        RuleMetric::ProxyNack => count(proxies.iter().filter(selected).filter(|p| p.nacked).map(id).collect()),
        RuleMetric::ProxyLag => count(proxies.iter().filter(selected).filter(|p| p.lagging).map(id).collect()),
        RuleMetric::ProxySilent => {
            let quiet = |p: &&ProxyView| {
                (now_s.max(0) as u64 * 1000).saturating_sub(p.heard_ms) > rule.window.as_millis() as u64
            };
            count(proxies.iter().filter(selected).filter(quiet).map(id).collect())
        }
        RuleMetric::ProxyDown => count(down.iter().filter(|n| rule.nodes.matches(n)).map(|n| n.id.clone()).collect()),
        RuleMetric::NodeAbnormal | RuleMetric::RepairFailed => {
            let failed_only = rule.metric == RuleMetric::RepairFailed;
            let nodes =
                source.abnormal().into_iter().filter(|(n, failed)| rule.nodes.matches(n) && (*failed || !failed_only));
            count(nodes.map(|(n, _)| n.id).collect())
        }
        RuleMetric::CertExpiryDays => {
            let nearest = source
                .certificates()
                .into_iter()
                .filter(|(name, _)| rule.secrets.is_empty() || rule.secrets.contains(name))
                .min_by_key(|(_, at)| *at);
            match nearest {
                Some((name, at)) => Measurement { value: Some((at - now_s) as f64 / 86_400.0), subjects: vec![name] },
                None => Measurement::default(),
            }
        }
    }
}

fn id(p: &ProxyView) -> String {
    p.node.id.clone()
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::alerts::rule::check;
    use crate::monitor::RequestFigures;
    use crate::resources::document::parse_documents;

    /// Figures fed directly.
    #[derive(Default)]
    pub struct Fixed {
        pub services: Vec<ServiceFigures>,
        pub proxies: Vec<ProxyView>,
        pub certs: Vec<(String, i64)>,
        pub abnormal: Vec<(NodeInfo, bool)>,
    }

    impl Source for Fixed {
        fn service(&self, name: &str, _window: Duration) -> Option<ServiceFigures> {
            self.services.iter().find(|s| s.service == name).cloned()
        }
        fn proxies(&self) -> Vec<ProxyView> {
            self.proxies.clone()
        }
        fn certificates(&self) -> Vec<(String, i64)> {
            self.certs.clone()
        }
        fn abnormal(&self) -> Vec<(NodeInfo, bool)> {
            self.abnormal.clone()
        }
    }

    pub fn rule(spec: &str) -> Rule {
        let d = parse_documents(&format!("kind: AlertRule\nmetadata: {{name: r}}\nspec: {spec}\n")).expect("yaml");
        check(&d[0]).expect("valid rule")
    }

    pub fn proxy(id: &str, cluster: &str, nacked: bool) -> ProxyView {
        ProxyView {
            node: NodeInfo { id: id.into(), cluster: cluster.into(), ..Default::default() },
            nacked,
            lagging: nacked,
            heard_ms: 0,
        }
    }

    /// `proxy_silent`: connected proxies not heard of (no metrics report,
    /// nor a connection) for longer than the window.
    #[test]
    fn silent_proxies_are_those_not_heard_of_for_the_window() {
        let r = rule("{metric: proxy_silent, above: 0, window: 5s}");
        let heard = |id: &str, at: u64| ProxyView { heard_ms: at, ..proxy(id, "edge", false) };
        let proxies = [heard("quiet", 10_000), heard("fresh", 19_000), heard("edge", 15_000)];
        let m = measure(&r, &Fixed::default(), &proxies, &[], 20);
        assert_eq!((m.value, m.subjects), (Some(1.0), vec!["quiet".to_string()]), "15 s is exactly the window");
    }

    #[test]
    fn min_requests_is_no_data() {
        let figures = ServiceFigures {
            service: "checkout".into(),
            traffic: RequestFigures { requests: 5, error_rate: 0.4, ..Default::default() },
            ..Default::default()
        };
        let src = Fixed { services: vec![figures], ..Default::default() };
        let r = rule("{service: checkout, metric: error_rate, above: 0.05, min_requests: 10}");
        assert_eq!(measure(&r, &src, &[], &[], 0).value, None);
        let r = rule("{service: checkout, metric: error_rate, above: 0.05, min_requests: 5}");
        assert_eq!(measure(&r, &src, &[], &[], 0).value, Some(0.4));
        let r = rule("{service: payments, metric: rps, below: 1}");
        assert_eq!(measure(&r, &src, &[], &[], 0).value, None, "an unknown service has no data");
    }

    #[test]
    fn proxy_metrics_count_selected_nodes() {
        let proxies = vec![proxy("a", "edge", true), proxy("b", "edge", false), proxy("c", "mesh", true)];
        let src = Fixed::default();
        let all = rule("{metric: proxy_nack, above: 0}");
        assert_eq!(measure(&all, &src, &proxies, &[], 0).subjects, ["a", "c"]);
        let edge = rule("{metric: proxy_nack, above: 0, nodes: {clusters: [edge]}}");
        assert_eq!(measure(&edge, &src, &proxies, &[], 0).value, Some(1.0));
    }

    #[test]
    fn abnormal_and_failed_repairs_count_selected_nodes() {
        let node = |id: &str| NodeInfo { id: id.into(), cluster: "edge".into(), ..Default::default() };
        let src = Fixed { abnormal: vec![(node("a"), false), (node("b"), true)], ..Default::default() };
        let r = rule("{metric: node_abnormal, above: 0}");
        assert_eq!(measure(&r, &src, &[], &[], 0).subjects, ["a", "b"]);
        let r = rule("{metric: repair_failed, above: 0}");
        assert_eq!(measure(&r, &src, &[], &[], 0), Measurement { value: Some(1.0), subjects: vec!["b".into()] });
        let r = rule("{metric: repair_failed, above: 0, nodes: {clusters: [mesh]}}");
        assert_eq!(measure(&r, &src, &[], &[], 0).value, Some(0.0));
    }

    #[test]
    fn down_is_seen_then_gone_then_forgotten() {
        let mut seen = Seen::default();
        let a = proxy("a", "edge", false);
        assert!(seen.update(std::slice::from_ref(&a), 1_000).is_empty());
        let down = seen.update(&[], 2_000);
        assert_eq!(down.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), ["a"]);
        assert!(seen.update(&[a], 3_000).is_empty(), "back");
        assert!(seen.update(&[], 3_000 + FORGET_AFTER.as_millis() as u64).is_empty(), "forgotten");
    }

    #[test]
    fn cert_expiry_reads_the_nearest_selected() {
        let day = 86_400;
        let src = Fixed { certs: vec![("web".into(), 30 * day), ("db".into(), 3 * day)], ..Default::default() };
        let r = rule("{metric: cert_expiry_days, below: 14}");
        assert_eq!(measure(&r, &src, &[], &[], 0), Measurement { value: Some(3.0), subjects: vec!["db".into()] });
        let r = rule("{metric: cert_expiry_days, below: 14, secrets: [web]}");
        assert_eq!(measure(&r, &src, &[], &[], 0).value, Some(30.0));
    }
}
