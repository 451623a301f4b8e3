//! What a staged rollout is and what is kept of it: the policy (as users
//! write it, checked with field paths), the record of each rollout (canary,
//! state, evidence) and the last ones, which the API reads. A leaf: the
//! controller holds the board without importing the task that judges.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// How many finished rollouts are kept.
const KEPT: usize = 50;

/// A rollout policy as written: in `POST /v1/apply`'s `rollout` (what
/// `ctl apply --canary` sends).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    /// The share of the proxies that would receive the change, `25%`.
    #[serde(default)]
    pub canary: Option<String>,
    /// Or the canary proxies by node id.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// How long the canary runs the new revision before it is judged.
    #[serde(default)]
    pub hold: Option<String>,
    /// Fewer requests on the canary in the window: no comparison yet.
    #[serde(default)]
    pub min_requests: Option<u64>,
    /// The canary's error rate may exceed the others' by at most this.
    #[serde(default)]
    pub max_error_rate_increase: Option<f64>,
    /// The canary's p99 may be at most this many times the others' (plus 10 ms).
    #[serde(default)]
    pub max_p99_ratio: Option<f64>,
    /// How long past the hold to wait for ACKs and `minRequests`.
    #[serde(default)]
    pub max_wait: Option<String>,
}

/// A checked policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Percent of the proxies, when no nodes are named.
    pub share: Option<u32>,
    pub nodes: Vec<String>,
    pub hold_ms: u64,
    pub min_requests: u64,
    pub max_error_rate_increase: f64,
    pub max_p99_ratio: f64,
    pub max_wait_ms: u64,
}

/// The p99 slack added to `maxP99Ratio`: latency histograms' buckets make
/// low percentiles coarse, so a few milliseconds are not a regression.
pub const P99_SLACK_MS: f64 = 10.0;

impl PolicySpec {
    /// The policy, or each problem with its field path under `prefix`.
    pub fn check(&self, prefix: &str) -> Result<Policy, Vec<(String, String)>> {
        let mut p = Vec::new();
        let share = self.canary.as_deref().and_then(|c| match c.trim().trim_end_matches('%').trim().parse::<u32>() {
            Ok(n) if (1..=99).contains(&n) => Some(n),
            _ => {
                p.push((format!("{prefix}.canary"), format!("'{c}' is not a share of proxies from 1% to 99%")));
                None
            }
        });
        match (&self.canary, self.nodes.is_empty()) {
            (Some(_), false) => p.push((format!("{prefix}.nodes"), "give canary or nodes, not both".into())),
            (None, true) => p.push((prefix.to_string(), "needs canary (a share such as 10%) or nodes".into())),
            _ => {}
        }
        if self.nodes.iter().any(String::is_empty) {
            p.push((format!("{prefix}.nodes"), "node ids must not be empty".into()));
        }
        let hold = duration(&mut p, &format!("{prefix}.hold"), self.hold.as_deref().unwrap_or("30s"));
        let max_wait = match &self.max_wait {
            Some(t) => duration(&mut p, &format!("{prefix}.maxWait"), t),
            None => hold.max(Duration::from_secs(10)) * 2,
        };
        let inc = self.max_error_rate_increase.unwrap_or(0.01);
        if !(0.0..=1.0).contains(&inc) {
            p.push((format!("{prefix}.maxErrorRateIncrease"), "must be between 0 and 1".into()));
        }
        let ratio = self.max_p99_ratio.unwrap_or(1.5);
        if ratio.is_nan() || ratio < 1.0 {
            p.push((format!("{prefix}.maxP99Ratio"), "must be 1 or more".into()));
        }
        if !p.is_empty() {
            return Err(p);
        }
        Ok(Policy {
            share,
            nodes: self.nodes.clone(),
            hold_ms: hold.as_millis() as u64,
            min_requests: self.min_requests.unwrap_or(20),
            max_error_rate_increase: inc,
            max_p99_ratio: ratio,
            max_wait_ms: max_wait.as_millis() as u64,
        })
    }
}

/// The one `Rollout` resource's name: the policy every apply through the
/// API is staged with unless it gives its own.
pub const POLICY_NAME: &str = "default";

/// Checks a `Rollout` document: named `default`, for no nodes, its spec a policy.
pub fn check_document(doc: &crate::resources::document::Document) -> Result<Policy, Vec<(String, String)>> {
    if doc.metadata.name != POLICY_NAME {
        let reason = format!("the rollout policy is the Rollout named '{POLICY_NAME}'");
        return Err(vec![("metadata.name".into(), reason)]);
    }
    if !doc.metadata.nodes.is_empty() {
        let reason = "a Rollout is not sent to proxies; its canary picks among them".to_string();
        return Err(vec![("metadata.nodes".into(), reason)]);
    }
    let spec: PolicySpec =
        serde_json::from_value(doc.spec.clone()).map_err(|e| vec![("spec".to_string(), e.to_string())])?;
    spec.check("spec")
}

fn duration(p: &mut Vec<(String, String)>, field: &str, text: &str) -> Duration {
    humantime::parse_duration(text.trim()).unwrap_or_else(|e| {
        p.push((field.into(), format!("'{text}' is not a duration such as 30s or 1m: {e}")));
        Duration::ZERO
    })
}

impl Policy {
    /// The canary among `proxies` (the connected node ids that would
    /// receive the change, sorted): the named ones, or the share (at least
    /// one, and one fewer than all when there are two or more, so some
    /// proxies stay on the previous revision to compare with). The share
    /// is taken in an order that depends on the revision, so successive
    /// rollouts do not always start on the same proxies.
    pub fn pick(&self, proxies: &[String], revision: u64) -> Vec<String> {
        if !self.nodes.is_empty() {
            return proxies.iter().filter(|p| self.nodes.contains(p)).cloned().collect();
        }
        let share = u64::from(self.share.unwrap_or(10));
        let n = proxies.len() as u64;
        let mut k = (n * share).div_ceil(100).max(1);
        if n >= 2 {
            k = k.min(n - 1);
        }
        let mut order: Vec<&String> = proxies.iter().collect();
        order.sort_by_key(|p| (fnv(p.as_bytes()) ^ revision.wrapping_mul(0x9e37_79b9_7f4a_7c15), p.to_string()));
        let mut canary: Vec<String> = order.into_iter().take(k as usize).cloned().collect();
        canary.sort();
        canary
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Only the canary runs the revision.
    Staged,
    /// Every proxy runs it.
    Promoted,
    /// The canary got the previous revision back.
    RolledBack,
}

/// One group of proxies' figures over the rollout's window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Group {
    pub proxies: usize,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p99_ms: Option<f64>,
}

/// Whether a canary proxy holds the staged revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AckState {
    pub node: String,
    pub acked: bool,
    /// When it ACKed the last type of the revision (Unix ms).
    pub acked_at_ms: Option<u64>,
    pub nack: Option<String>,
}

/// What the decision rested on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    pub canary: Group,
    pub others: Group,
    pub acks: Vec<AckState>,
    pub window_ms: u64,
}

/// One staged rollout: what went where, and how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The staged revision.
    pub revision: u64,
    /// The revision the other proxies kept.
    pub previous: u64,
    pub state: RolloutState,
    pub author: String,
    pub canary: Vec<String>,
    pub others: Vec<String>,
    pub policy: Policy,
    pub started_ms: u64,
    pub decided_ms: Option<u64>,
    /// The revision that ended it: the same resources for everyone, or the previous ones back.
    pub final_revision: Option<u64>,
    pub reason: String,
    pub evidence: Option<Evidence>,
}

/// What one replica tells the others through the shared store (etcd),
/// written every 250 ms under a lease that lapses with the replica: the
/// proxies connected to it and, during a staged rollout, what only it
/// knows of that rollout.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReplicaReport {
    pub replica: String,
    pub at_ms: u64,
    pub proxies: Vec<crate::discovery::node::NodeInfo>,
    #[serde(default)]
    pub rollout: Option<SharedRollout>,
    /// The node ids of `proxies` whose last response was NACKed, and of
    /// those behind the current revision (for the leader's alert rules).
    #[serde(default)]
    pub nacked: Vec<String>,
    #[serde(default)]
    pub lagging: Vec<String>,
    /// When each of `proxies` was last heard of (its last metrics report,
    /// or its connection when later; Unix ms).
    #[serde(default)]
    pub heard: std::collections::BTreeMap<String, u64>,
}

/// One replica's part of a staged rollout: the ACKs of the staged revision
/// by the canary proxies connected to it, and what each of its proxies
/// reported since it learnt of the staging.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SharedRollout {
    pub revision: u64,
    pub acks: Vec<AckState>,
    pub figures: std::collections::BTreeMap<String, crate::monitor::series::Agg>,
}

/// Finished rollouts, newest last.
#[derive(Default)]
pub struct History {
    done: Mutex<VecDeque<Record>>,
}

impl History {
    pub fn push(&self, r: Record) {
        let mut d = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if d.len() == KEPT {
            d.pop_front();
        }
        d.push_back(r);
    }

    pub fn list(&self) -> Vec<Record> {
        self.done.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// Adds `r` unless a rollout of its revision is kept already (another
    /// replica's decision, learnt from the store).
    pub fn push_new(&self, r: Record) {
        if !self.done.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|d| d.revision == r.revision) {
            self.push(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(canary: &str) -> PolicySpec {
        PolicySpec { canary: Some(canary.into()), hold: Some("5s".into()), ..Default::default() }
    }

    #[test]
    fn policies_are_checked_with_paths() {
        let p = spec("25%").check("rollout").expect("valid");
        assert_eq!((p.share, p.hold_ms, p.min_requests, p.max_wait_ms), (Some(25), 5000, 20, 20_000));
        let bad = PolicySpec { hold: Some("soon".into()), max_p99_ratio: Some(0.5), ..spec("150%") };
        let paths: Vec<String> = bad.check("rollout").unwrap_err().into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, ["rollout.canary", "rollout.hold", "rollout.maxP99Ratio"]);
        let none = PolicySpec::default().check("spec").unwrap_err();
        assert_eq!(none[0].0, "spec");
    }

    #[test]
    fn the_canary_is_a_share_of_the_receivers_leaving_some_to_compare() {
        let ids: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let p = spec("25%").check("r").expect("valid");
        assert_eq!(p.pick(&ids, 7).len(), 1);
        assert_eq!(spec("10%").check("r").expect("valid").pick(&ids, 7).len(), 1, "at least one");
        assert_eq!(spec("99%").check("r").expect("valid").pick(&ids, 7).len(), 3, "one stays behind");
        assert_eq!(p.pick(&ids[..1], 7), ["a"], "a single receiver is the canary");
        let spread: std::collections::BTreeSet<Vec<String>> = (1..40).map(|rev| p.pick(&ids, rev)).collect();
        assert!(spread.len() > 1, "not always the same proxy: {spread:?}");
        let named = PolicySpec { nodes: vec!["c".into(), "z".into()], ..Default::default() };
        assert_eq!(named.check("r").expect("valid").pick(&ids, 1), ["c"]);
    }
}
