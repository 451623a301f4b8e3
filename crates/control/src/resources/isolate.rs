//! Isolation: endpoints whose node is abnormal leave their service's load
//! assignment, for every proxy, until the node is normal again. An endpoint
//! names its node by the label [`NODE_LABEL`] (listed endpoints' `labels`,
//! registered instances' `labels`). Per service (`Service` `spec.isolation`;
//! registry services without a Service take the default): on or off, and
//! at most `max_percent` of the service's endpoints isolated at once (as
//! Envoy's `max_ejection_percent`), the longest abnormal first; the others
//! stay in and are reported as held back.
//!
//! A `ClusterLoadAssignment` written by hand has no labels: an endpoint
//! there names its node in its metadata, `lb_endpoints[].metadata.
//! filter_metadata.legate.node` ([`METADATA_NAMESPACE`]), and is isolated
//! with the default policy (on, at most half of the assignment's endpoints).

use crate::discovery::health::EndpointHealth;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The endpoint label that names the node (proxy) an endpoint is.
pub const NODE_LABEL: &str = "node";

/// The endpoint metadata namespace whose `node` key names an endpoint's
/// node in a hand-written `ClusterLoadAssignment`.
pub const METADATA_NAMESPACE: &str = "legate";

/// A service's isolation policy.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IsolationSpec {
    /// Whether abnormal nodes leave this service's endpoints (default: yes).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// At most this share of the service's endpoints isolated at once
    /// (percent, rounded down; default 50).
    #[serde(default = "default_max_percent")]
    pub max_percent: u32,
}

fn yes() -> bool {
    true
}

fn default_max_percent() -> u32 {
    50
}

impl Default for IsolationSpec {
    fn default() -> Self {
        Self { enabled: true, max_percent: default_max_percent() }
    }
}

/// What isolation did to one service's endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Per endpoint (in the order given): whether it stays in EDS.
    pub keep: Vec<bool>,
    /// (node, `address:port`) taken out.
    pub isolated: Vec<(String, String)>,
    /// (node, `address:port`) of abnormal nodes kept in: the cap was reached,
    /// or isolation is off for the service.
    pub held: Vec<(String, String)>,
}

/// Decides which of `endpoints` ((address, port, labels)) stay in EDS.
pub fn decide(
    policy: &IsolationSpec,
    endpoints: &[(String, u16, BTreeMap<String, String>)],
    health: &EndpointHealth,
) -> Decision {
    let mut d = Decision { keep: vec![true; endpoints.len()], ..Default::default() };
    // (abnormal since, node, index): the longest abnormal are isolated first.
    let mut candidates: Vec<(u64, &str, usize)> = endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, (_, _, labels))| {
            let node = labels.get(NODE_LABEL)?;
            health.abnormal.get(node).map(|since| (*since, node.as_str(), i))
        })
        .collect();
    candidates.sort();
    let cap = if policy.enabled { endpoints.len() * policy.max_percent.min(100) as usize / 100 } else { 0 };
    for (n, (_, node, i)) in candidates.into_iter().enumerate() {
        let (address, port, _) = &endpoints[i];
        let entry = (node.to_string(), format!("{address}:{port}"));
        if n < cap {
            d.keep[i] = false;
            d.isolated.push(entry);
        } else {
            d.held.push(entry);
        }
    }
    d
}

/// `endpoints` without those `decide` takes out.
pub fn kept<T: Clone>(items: &[T], decision: &Decision) -> Vec<T> {
    items.iter().zip(&decision.keep).filter(|(_, k)| **k).map(|(e, _)| e.clone()).collect()
}

/// The endpoints of a hand-written `ClusterLoadAssignment` spec (Envoy
/// JSON, field names in snake case), in order: address, port and, as the
/// label [`NODE_LABEL`], the node its metadata names.
fn assignment_endpoints(spec: &Value) -> Vec<(String, u16, BTreeMap<String, String>)> {
    let groups = spec["endpoints"].as_array().into_iter().flatten();
    groups
        .flat_map(|g| g["lb_endpoints"].as_array().into_iter().flatten())
        .map(|e| {
            let socket = &e["endpoint"]["address"]["socket_address"];
            let address = socket["address"].as_str().unwrap_or_default().to_string();
            let port = socket["port_value"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
            let node = e["metadata"]["filter_metadata"][METADATA_NAMESPACE][NODE_LABEL].as_str();
            let labels = node.map(|n| (NODE_LABEL.to_string(), n.to_string())).into_iter().collect();
            (address, port, labels)
        })
        .collect()
}

/// What the default policy does to a hand-written `ClusterLoadAssignment`:
/// the decision, and the spec without the endpoints it takes out (`None`
/// when none of its endpoints names a node).
pub fn assignment(spec: &Value, health: &EndpointHealth) -> Option<(Value, Decision)> {
    let eps = assignment_endpoints(spec);
    if eps.iter().all(|(_, _, l)| l.is_empty()) {
        return None;
    }
    let decision = decide(&IsolationSpec::default(), &eps, health);
    let mut out = spec.clone();
    let mut keep = decision.keep.iter();
    if let Some(groups) = out["endpoints"].as_array_mut() {
        for g in groups {
            if let Some(lbs) = g["lb_endpoints"].as_array_mut() {
                lbs.retain(|_| keep.next().copied().unwrap_or(true));
            }
        }
    }
    Some((out, decision))
}

/// A policy's problems, with their field paths under `path`.
pub fn check(spec: &IsolationSpec, path: &str) -> Vec<(String, String)> {
    if spec.max_percent > 100 {
        return vec![(format!("{path}.max_percent"), format!("{} is above 100", spec.max_percent))];
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16, node: Option<&str>) -> (String, u16, BTreeMap<String, String>) {
        let labels = node.map(|n| (NODE_LABEL.to_string(), n.to_string())).into_iter().collect();
        ("10.0.0.1".to_string(), port, labels)
    }

    fn health(nodes: &[(&str, u64)]) -> EndpointHealth {
        EndpointHealth { abnormal: nodes.iter().map(|(n, s)| (n.to_string(), *s)).collect(), ..Default::default() }
    }

    #[test]
    fn abnormal_nodes_leave_within_the_cap_longest_abnormal_first() {
        let eps = vec![ep(1, Some("a")), ep(2, Some("b")), ep(3, Some("c")), ep(4, None)];
        let policy = IsolationSpec { enabled: true, max_percent: 50 };
        let d = decide(&policy, &eps, &health(&[("c", 100), ("a", 200), ("b", 300)]));
        assert_eq!(d.keep, [false, true, false, true], "two of four: c (oldest) then a");
        assert_eq!(d.isolated, [("c".into(), "10.0.0.1:3".into()), ("a".into(), "10.0.0.1:1".into())]);
        assert_eq!(d.held, [("b".to_string(), "10.0.0.1:2".to_string())]);
        assert_eq!(kept(&eps, &d).iter().map(|e| e.1).collect::<Vec<_>>(), [2, 4]);
    }

    #[test]
    fn the_cap_rounds_down_and_off_isolates_nothing() {
        let eps = vec![ep(1, Some("a")), ep(2, Some("b")), ep(3, Some("c"))];
        let h = health(&[("a", 1)]);
        let d = decide(&IsolationSpec { enabled: true, max_percent: 34 }, &eps, &h);
        assert_eq!(d.keep, [false, true, true], "34% of 3 is one endpoint");
        let d = decide(&IsolationSpec { enabled: true, max_percent: 33 }, &eps, &h);
        assert_eq!((d.keep, d.held.len()), (vec![true; 3], 1), "33% of 3 rounds down to none");
        let d = decide(&IsolationSpec { enabled: false, max_percent: 100 }, &eps, &h);
        assert_eq!((d.isolated.len(), d.held.len()), (0, 1));
        assert!(decide(&IsolationSpec::default(), &eps, &EndpointHealth::default()).held.is_empty());
    }

    #[test]
    fn a_hand_written_assignment_names_nodes_in_endpoint_metadata() {
        let ep = |port: u16, node: Option<&str>| {
            let mut e = serde_json::json!({"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": port}}}});
            if let Some(n) = node {
                e["metadata"] = serde_json::json!({"filter_metadata": {"legate": {"node": n}}});
            }
            e
        };
        let spec = serde_json::json!({"cluster_name": "c", "endpoints": [
            {"lb_endpoints": [ep(1, Some("a")), ep(2, None)]},
            {"lb_endpoints": [ep(3, Some("b"))], "priority": 1},
        ]});
        let (out, d) = assignment(&spec, &health(&[("b", 1)])).expect("names nodes");
        assert_eq!(d.isolated, [("b".to_string(), "10.0.0.1:3".to_string())]);
        assert_eq!(out["endpoints"][0]["lb_endpoints"].as_array().map(Vec::len), Some(2));
        assert_eq!(out["endpoints"][1]["lb_endpoints"], serde_json::json!([]));
        assert_eq!(out["endpoints"][1]["priority"], 1);
        let (_, d) = assignment(&spec, &health(&[("a", 1), ("b", 2)])).expect("names nodes");
        assert_eq!((d.isolated.len(), d.held.len()), (1, 1), "at most half of three");
        let plain = serde_json::json!({"cluster_name": "c", "endpoints": [{"lb_endpoints": [ep(1, None)]}]});
        assert!(assignment(&plain, &health(&[("a", 1)])).is_none());
    }

    #[test]
    fn a_share_above_100_is_refused_with_its_path() {
        let bad = IsolationSpec { enabled: true, max_percent: 150 };
        assert_eq!(check(&bad, "spec.isolation")[0].0, "spec.isolation.max_percent");
        assert!(check(&IsolationSpec::default(), "spec.isolation").is_empty());
    }
}
