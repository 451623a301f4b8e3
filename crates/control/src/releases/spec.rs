//! A `Release` as users write it, checked on its own with field paths, and
//! the status the control plane keeps beside it (phase, step, weight, the
//! analysis of each step). The status lives in the Release document's
//! `status`, so it is part of every revision and survives a restart.

use crate::releases::strategy::{duration, strategy, StrategySpec};
use crate::resources::document::Document;
use crate::resources::mesh::spec::{parse, Problems, Sticky, ToCandidate};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Labels that pick a version's endpoints (`{version: v2}`).
pub type Selector = BTreeMap<String, String>;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSpec {
    pub service: String,
    pub stable: Selector,
    pub candidate: Selector,
    pub strategy: StrategySpec,
    #[serde(default)]
    pub analysis: AnalysisSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnalysisSpec {
    #[serde(default = "default_window")]
    pub window: String,
    /// Fewer candidate requests than this in the window: no decision yet
    /// (0: decide even on a window without requests).
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    #[serde(default = "default_max_error_rate")]
    pub max_error_rate: f64,
    #[serde(default)]
    pub max_p99_ms: Option<f64>,
    /// The candidate's error rate may exceed stable's by at most this
    /// (judged when stable also has `minRequests` in the window).
    #[serde(default)]
    pub max_error_rate_over_stable: Option<f64>,
    /// The candidate's p99 may be at most this many times stable's over
    /// the same window (judged when stable also has `minRequests`).
    #[serde(default)]
    pub max_p99_over_stable: Option<f64>,
    /// `http://` or `https://` URLs that must each answer 2xx (to a POST of the release's
    /// name, step and weight) before each step starts, the first included.
    #[serde(default)]
    pub gates: Vec<String>,
    /// How long a step may wait for `minRequests` before the release pauses
    /// (default: ten windows).
    #[serde(default)]
    pub max_wait: Option<String>,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            window: default_window(),
            min_requests: default_min_requests(),
            max_error_rate: default_max_error_rate(),
            max_p99_ms: None,
            max_error_rate_over_stable: None,
            max_p99_over_stable: None,
            gates: Vec::new(),
            max_wait: None,
        }
    }
}

fn default_window() -> String {
    "30s".into()
}

fn default_min_requests() -> u64 {
    20
}

fn default_max_error_rate() -> f64 {
    0.01
}

/// A checked canary release, durations read.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    pub name: String,
    pub service: String,
    pub stable: Selector,
    pub candidate: Selector,
    /// The candidate's percent at each step (blue-green: 0 then 100).
    pub steps: Vec<u32>,
    /// Requests that go to the candidate whatever the weights, until the
    /// release is finished (blue-green's preview header, an A/B test's
    /// headers and cookies).
    pub preview: Vec<ToCandidate>,
    /// A canary's stickiness: the header or cookie the weighted pick hashes.
    pub sticky: Option<Sticky>,
    pub hold: Duration,
    pub window: Duration,
    pub min_requests: u64,
    pub max_error_rate: f64,
    pub max_p99_ms: Option<f64>,
    pub max_error_rate_over_stable: Option<f64>,
    pub max_p99_over_stable: Option<f64>,
    pub gates: Vec<String>,
    pub max_wait: Duration,
}

impl Release {
    /// The Envoy cluster of the stable version: `<service>~<label values>`.
    pub fn stable_cluster(&self) -> String {
        version_cluster(&self.service, &self.stable)
    }

    pub fn candidate_cluster(&self) -> String {
        version_cluster(&self.service, &self.candidate)
    }
}

/// `<service>~<the selector's values, in key order, joined by '-'>`:
/// `checkout~v2`. `~` because `.` already joins a service and its subsets,
/// and stat names split on `.`.
pub fn version_cluster(service: &str, selector: &Selector) -> String {
    let values: Vec<&str> = selector.values().map(String::as_str).collect();
    format!("{service}~{}", values.join("-"))
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum Phase {
    #[default]
    Progressing,
    Paused,
    Promoted,
    RolledBack,
    Aborted,
}

impl Phase {
    /// A finished release: the driver leaves it alone.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Promoted | Self::RolledBack | Self::Aborted)
    }
}

/// What one step's analysis measured and decided.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StepAnalysis {
    pub step: usize,
    pub weight: u32,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
    pub p99_ms: Option<f64>,
    /// The stable version's figures over the same window.
    pub stable_requests: u64,
    pub stable_error_rate: f64,
    pub stable_p99_ms: Option<f64>,
    /// `passed` or `failed`.
    pub result: String,
    pub reason: String,
    pub at_ms: u64,
}

/// Where a release is: kept in the Release document's `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Status {
    pub phase: Phase,
    /// Index into the steps.
    pub step: usize,
    /// The candidate's percent of traffic now.
    pub weight: u32,
    /// When the current step's weight was set (Unix ms); 0: not started.
    pub step_started_ms: u64,
    pub analyses: Vec<StepAnalysis>,
    pub message: String,
}

impl Status {
    /// The status recorded in a document (the default before the driver's first step).
    pub fn of(doc: &Document) -> Self {
        doc.status.as_ref().and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default()
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// Checks a Release document on its own: shape, steps, durations, thresholds.
pub fn check(doc: &Document) -> Result<Release, Problems> {
    let spec: ReleaseSpec = parse(doc)?;
    let mut p = Vec::new();
    let st = strategy(&spec.strategy, &mut p);
    check_selectors(&spec, &mut p);
    let a = &spec.analysis;
    let window = duration(&mut p, "spec.analysis.window", &a.window);
    if window.is_zero() {
        p.push(("spec.analysis.window".into(), "must be longer than zero".into()));
    }
    if !(0.0..=1.0).contains(&a.max_error_rate) {
        p.push(("spec.analysis.maxErrorRate".into(), "must be between 0 and 1".into()));
    }
    if a.max_error_rate_over_stable.is_some_and(|v| !(0.0..=1.0).contains(&v)) {
        p.push(("spec.analysis.maxErrorRateOverStable".into(), "must be between 0 and 1".into()));
    }
    if a.max_p99_ms.is_some_and(|v| v.is_nan() || v <= 0.0) {
        p.push(("spec.analysis.maxP99Ms".into(), "must be above 0".into()));
    }
    if a.max_p99_over_stable.is_some_and(|v| v.is_nan() || v < 1.0) {
        p.push(("spec.analysis.maxP99OverStable".into(), "must be 1 or more (a ratio to stable's p99)".into()));
    }
    for (i, g) in a.gates.iter().enumerate() {
        let scheme = ["http://", "https://"].into_iter().find(|s| g.starts_with(s));
        if scheme.is_none_or(|s| g.len() <= s.len()) {
            p.push((format!("spec.analysis.gates[{i}]"), format!("'{g}' is not an http:// or https:// URL")));
        }
    }
    let max_wait = match &a.max_wait {
        Some(t) => duration(&mut p, "spec.analysis.maxWait", t),
        None => window * 10,
    };
    if !p.is_empty() {
        return Err(p);
    }
    Ok(Release {
        name: doc.metadata.name.clone(),
        service: spec.service,
        stable: spec.stable,
        candidate: spec.candidate,
        steps: st.steps,
        preview: st.preview,
        sticky: st.sticky,
        hold: st.hold,
        window,
        min_requests: a.min_requests,
        max_error_rate: a.max_error_rate,
        max_p99_ms: a.max_p99_ms,
        max_error_rate_over_stable: a.max_error_rate_over_stable,
        max_p99_over_stable: a.max_p99_over_stable,
        gates: a.gates.clone(),
        max_wait,
    })
}

fn check_selectors(spec: &ReleaseSpec, p: &mut Problems) {
    if spec.service.is_empty() {
        p.push(("spec.service".into(), "value is required".into()));
    }
    if spec.stable.is_empty() {
        p.push(("spec.stable".into(), "needs at least one label".into()));
    }
    if spec.candidate.is_empty() {
        p.push(("spec.candidate".into(), "needs at least one label".into()));
    }
    if spec.stable == spec.candidate {
        p.push(("spec.candidate".into(), "must differ from spec.stable".into()));
    } else if version_cluster("", &spec.stable) == version_cluster("", &spec.candidate) {
        p.push(("spec.candidate".into(), "its label values must differ from spec.stable's".into()));
    }
}

/// The candidate's percent of traffic a status routes.
pub fn candidate_weight(status: &Status) -> u32 {
    match status.phase {
        Phase::Progressing | Phase::Paused => status.weight.min(100),
        Phase::Promoted => 100,
        Phase::RolledBack | Phase::Aborted => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::document::parse_documents;

    pub const EXAMPLE: &str = "kind: Release\nmetadata: {name: checkout-v2}\nspec:\n  service: checkout\n  stable: {version: v1}\n  candidate: {version: v2}\n  strategy:\n    canary: {steps: [20, 50, 100], hold: 5s}\n  analysis: {window: 5s, minRequests: 20, maxErrorRate: 0.05, maxP99Ms: 500}\n";

    fn paths(yaml: &str) -> Vec<String> {
        let doc = parse_documents(yaml).expect("yaml").remove(0);
        check(&doc).err().unwrap_or_default().into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn the_example_reads() {
        let doc = parse_documents(EXAMPLE).expect("yaml").remove(0);
        let r = check(&doc).expect("valid");
        assert_eq!(r.steps, [20, 50, 100]);
        assert_eq!(
            (r.hold, r.window, r.max_wait),
            (Duration::from_secs(5), Duration::from_secs(5), Duration::from_secs(50))
        );
        assert_eq!((r.stable_cluster().as_str(), r.candidate_cluster().as_str()), ("checkout~v1", "checkout~v2"));
    }

    #[test]
    fn bad_steps_and_strategies_are_refused_with_paths() {
        let bad = EXAMPLE.replace("[20, 50, 100]", "[50, 20, 90]").replace("hold: 5s", "hold: soon");
        assert_eq!(
            paths(&bad),
            ["spec.strategy.canary.steps[1]", "spec.strategy.canary.steps", "spec.strategy.canary.hold"]
        );
        let ab = EXAMPLE.replace("canary: {steps: [20, 50, 100], hold: 5s}", "abTest: {}");
        assert_eq!(paths(&ab), ["spec.strategy.abTest"]);
        let ab = EXAMPLE.replace(
            "canary: {steps: [20, 50, 100], hold: 5s}",
            "abTest: {headers: {X-Beta: 'yes'}, cookies: {beta: '1', 'bad;name': x}}",
        );
        assert_eq!(paths(&ab), ["spec.strategy.abTest.cookies.bad;name"]);
        let ab = ab.replace(", 'bad;name': x", "");
        let r = check(&parse_documents(&ab).expect("yaml").remove(0)).expect("abTest");
        assert_eq!(r.steps, [0]);
        assert_eq!(
            r.preview,
            [ToCandidate::Header("x-beta".into(), "yes".into()), ToCandidate::Cookie("beta".into(), "1".into())]
        );
        let sticky = EXAMPLE.replace("hold: 5s}", "hold: 5s, stickiness: {header: X-User}}");
        let r = check(&parse_documents(&sticky).expect("yaml").remove(0)).expect("sticky");
        assert_eq!(r.sticky, Some(Sticky::Header("x-user".into())));
        let both = EXAMPLE.replace("hold: 5s}", "hold: 5s, stickiness: {header: a, cookie: b}}");
        assert_eq!(paths(&both), ["spec.strategy.canary.stickiness"]);
        let gates = EXAMPLE.replace("maxP99Ms: 500}", "maxP99Ms: 500, maxP99OverStable: 0.5, gates: [ftp://x]}");
        assert_eq!(paths(&gates), ["spec.analysis.maxP99OverStable", "spec.analysis.gates[0]"]);
        let bg = EXAMPLE.replace("canary: {steps: [20, 50, 100], hold: 5s}", "blueGreen: {hold: 2s}");
        let r = check(&parse_documents(&bg).expect("yaml").remove(0)).expect("blue-green");
        assert_eq!(
            (r.steps, r.preview),
            (vec![0, 100], vec![ToCandidate::Header("x-release-preview".into(), "candidate".into())])
        );
        let same = EXAMPLE.replace("candidate: {version: v2}", "candidate: {version: v1}");
        assert_eq!(paths(&same), ["spec.candidate"]);
        let rate = EXAMPLE.replace("maxErrorRate: 0.05", "maxErrorRate: 5");
        assert_eq!(paths(&rate), ["spec.analysis.maxErrorRate"]);
    }
}
