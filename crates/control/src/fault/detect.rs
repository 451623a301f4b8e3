//! The detector: which nodes are abnormal now, each cause with its evidence.
//! A node is abnormal when its proxy is down (seen connected, now not, for
//! `after`) or crash-looping (its agent says so), NACKs what it was last
//! sent, lags behind it for `after`, has stopped reporting metrics for
//! `silence`, or answers with an error rate far above its peers' (the other
//! proxies of its node cluster, which serve the same services).
//!
//! [`Observation`] is everything the detector reads, taken from the
//! controller at one moment; unit tests build it directly. [`Detector`]
//! keeps what one observation cannot show: which nodes were seen, and since
//! when each condition holds.

use crate::discovery::agents::AgentStatus;
use crate::discovery::fleet::ProxyStatus;
use crate::monitor::ProxyFigures;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long a node that left is remembered (then taken as decommissioned).
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Fewest requests in the window before a proxy's error rate is judged.
pub const OUTLIER_MIN_REQUESTS: u64 = 100;
/// An outlier's error rate is at least this...
pub const OUTLIER_FLOOR: f64 = 0.1;
/// ...and at least this many times its peers' (their errors / their requests).
pub const OUTLIER_FACTOR: f64 = 5.0;

/// What makes a node abnormal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CauseKind {
    Down,
    CrashLoop,
    Nack,
    Lag,
    MetricsSilent,
    ErrorRate,
}

impl CauseKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Down => "down",
            Self::CrashLoop => "crash_loop",
            Self::Nack => "nack",
            Self::Lag => "lag",
            Self::MetricsSilent => "metrics_silent",
            Self::ErrorRate => "error_rate",
        }
    }
}

/// One cause, since when it holds, and what shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cause {
    pub cause: CauseKind,
    /// When the condition was first seen (Unix ms).
    pub since_ms: u64,
    /// What shows it, in words: the NACK's error, the revisions, the rates.
    pub evidence: String,
}

/// Thresholds of detection.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// How long a node must be down, or lag, before it counts.
    pub after: Duration,
    /// How long without a metrics report (after a first one) counts.
    pub silence: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { after: Duration::from_secs(30), silence: Duration::from_secs(60) }
    }
}

/// Everything the detector reads, at one moment.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub now_ms: u64,
    /// The connected proxies (one entry per stream).
    pub proxies: Vec<ProxyStatus>,
    /// Nodes whose last stream ended: node id to (cluster, Unix ms of the end).
    pub left: BTreeMap<String, (String, u64)>,
    /// Node agents' latest reports, by node id.
    pub agents: BTreeMap<String, AgentStatus>,
    /// Per node: the Unix ms of its last metrics report (any seen).
    pub last_report_ms: BTreeMap<String, u64>,
    /// Per proxy figures over the outlier window.
    pub figures: Vec<ProxyFigures>,
    /// (service, `address:port`) of endpoints HDS checkers report down.
    pub down: BTreeSet<(String, String)>,
}

/// A node found abnormal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub node: String,
    pub cluster: String,
    pub causes: Vec<Cause>,
}

impl Finding {
    /// When the node became abnormal: its oldest cause.
    pub fn since_ms(&self) -> u64 {
        self.causes.iter().map(|c| c.since_ms).min().unwrap_or(0)
    }
}

/// What the detector remembers between observations.
#[derive(Debug, Default)]
pub struct Detector {
    /// Nodes seen connected: node id to (cluster, last seen ms).
    seen: BTreeMap<String, (String, u64)>,
    /// Since when each (node, cause) condition holds.
    first: BTreeMap<(String, CauseKind), u64>,
}

/// A condition seen now: node, cluster, cause, evidence, and how long it
/// must hold before it counts.
type Condition = (String, String, CauseKind, String, Duration);

impl Detector {
    /// The abnormal nodes in `o`, by node id.
    pub fn observe(&mut self, o: &Observation, t: &Thresholds) -> Vec<Finding> {
        let connected: BTreeSet<&str> = o.proxies.iter().map(|p| p.node.id.as_str()).collect();
        for p in &o.proxies {
            self.seen.insert(p.node.id.clone(), (p.node.cluster.clone(), o.now_ms));
        }
        // Streams that ended since the last look, even ones never seen here.
        for (node, (cluster, at)) in o.left.iter().filter(|(n, _)| !connected.contains(n.as_str())) {
            let last = self.seen.entry(node.clone()).or_insert_with(|| (cluster.clone(), *at));
            if last.1 < *at {
                *last = (cluster.clone(), *at);
            }
        }
        let forget = FORGET_AFTER.as_millis() as u64;
        self.seen.retain(|_, (_, last)| o.now_ms.saturating_sub(*last) < forget);
        let mut conditions: Vec<Condition> = Vec::new();
        self.down(o, &connected, t, &mut conditions);
        config_conditions(o, t, &mut conditions);
        silence(o, &connected, t, &mut conditions);
        outliers(o, &mut conditions);
        self.hold(o.now_ms, conditions)
    }

    /// Down (seen, not connected now) and crash-looping (the agent says so).
    fn down(&self, o: &Observation, connected: &BTreeSet<&str>, t: &Thresholds, out: &mut Vec<Condition>) {
        for (node, a) in &o.agents {
            if a.report.state == "crash-loop" {
                let exit = a.report.last_exit.as_deref().unwrap_or("unknown");
                let evidence = format!("agent reports crash-loop: {} restarts, last exit: {exit}", a.report.restarts);
                out.push((node.clone(), a.report.cluster.clone(), CauseKind::CrashLoop, evidence, Duration::ZERO));
            }
        }
        for (node, (cluster, last)) in &self.seen {
            if connected.contains(node.as_str()) {
                continue;
            }
            let mut evidence = format!("no xDS stream since {}", crate::clock::rfc3339(*last));
            if let Some(a) = o.agents.get(node) {
                let stale = if a.stale { " (agent stale)" } else { "" };
                evidence.push_str(&format!("; agent: {}{stale}", a.report.state));
                if let Some(exit) = &a.report.last_exit {
                    evidence.push_str(&format!(", last exit: {exit}"));
                }
            }
            out.push((node.clone(), cluster.clone(), CauseKind::Down, evidence, t.after));
        }
    }

    /// Keeps the conditions' start times; those held long enough are causes.
    fn hold(&mut self, now_ms: u64, conditions: Vec<Condition>) -> Vec<Finding> {
        let present: BTreeSet<(String, CauseKind)> = conditions.iter().map(|c| (c.0.clone(), c.2)).collect();
        self.first.retain(|k, _| present.contains(k));
        let mut by_node: BTreeMap<String, Finding> = BTreeMap::new();
        for (node, cluster, cause, evidence, after) in conditions {
            let since = *self.first.entry((node.clone(), cause)).or_insert(now_ms);
            if now_ms.saturating_sub(since) < after.as_millis() as u64 {
                continue;
            }
            let f = by_node.entry(node.clone()).or_insert_with(|| Finding { node, cluster, causes: Vec::new() });
            if !f.causes.iter().any(|c| c.cause == cause) {
                f.causes.push(Cause { cause, since_ms: since, evidence });
            }
        }
        by_node.into_values().collect()
    }
}

/// NACKs (at once) and lag (after `t.after`), per stream and type.
fn config_conditions(o: &Observation, t: &Thresholds, out: &mut Vec<Condition>) {
    for p in &o.proxies {
        let (node, cluster) = (&p.node.id, &p.node.cluster);
        let mut nacks = Vec::new();
        let mut lags = Vec::new();
        for (kind, s) in &p.types {
            match &s.last_nack {
                Some(n) if s.acked_version != s.sent_version => {
                    nacks.push(format!("{kind} version {} NACKed at {}: {}", n.version, n.at, n.error));
                }
                _ if s.acked_revision < s.sent_revision => {
                    lags.push(format!("{kind} holds revision {} of {}", s.acked_revision, s.sent_revision));
                }
                _ => {}
            }
        }
        if !nacks.is_empty() {
            out.push((node.clone(), cluster.clone(), CauseKind::Nack, nacks.join("; "), Duration::ZERO));
        }
        if !lags.is_empty() {
            out.push((node.clone(), cluster.clone(), CauseKind::Lag, lags.join("; "), t.after));
        }
    }
}

/// Connected nodes that reported metrics once and then stopped.
fn silence(o: &Observation, connected: &BTreeSet<&str>, t: &Thresholds, out: &mut Vec<Condition>) {
    let silence = t.silence.as_millis() as u64;
    for p in &o.proxies {
        let Some(last) = o.last_report_ms.get(&p.node.id) else { continue };
        if connected.contains(p.node.id.as_str()) && o.now_ms.saturating_sub(*last) >= silence {
            let evidence = format!("last metrics report at {}", crate::clock::rfc3339(*last));
            out.push((p.node.id.clone(), p.node.cluster.clone(), CauseKind::MetricsSilent, evidence, Duration::ZERO));
        }
    }
}

/// Proxies whose error rate is far above their peers' (the other proxies of
/// their node cluster): at least [`OUTLIER_FLOOR`] and [`OUTLIER_FACTOR`]
/// times the peers' pooled rate, over at least [`OUTLIER_MIN_REQUESTS`].
fn outliers(o: &Observation, out: &mut Vec<Condition>) {
    for f in o.figures.iter().filter(|f| f.requests >= OUTLIER_MIN_REQUESTS) {
        let peers: Vec<&ProxyFigures> = o
            .figures
            .iter()
            .filter(|p| p.node_cluster == f.node_cluster && p.node != f.node && p.requests > 0)
            .collect();
        let (requests, errors) = peers.iter().fold((0, 0), |(r, e), p| (r + p.requests, e + p.errors));
        if requests == 0 {
            continue;
        }
        let peer_rate = errors as f64 / requests as f64;
        if f.error_rate >= OUTLIER_FLOOR && f.error_rate >= OUTLIER_FACTOR * peer_rate {
            let evidence = format!(
                "error rate {:.3} ({} of {} requests) against {:.3} on {} peers of cluster {}",
                f.error_rate,
                f.errors,
                f.requests,
                peer_rate,
                peers.len(),
                f.node_cluster
            );
            out.push((f.node.clone(), f.node_cluster.clone(), CauseKind::ErrorRate, evidence, Duration::ZERO));
        }
    }
}
