//! One step's analysis: the candidate's figures over the window against the
//! thresholds, with no decision below `minRequests`.

use crate::monitor::ServiceFigures;
use crate::releases::spec::{Release, StepAnalysis};
use std::time::Duration;

/// Where figures come from: the monitor in the control plane, fixed
/// figures in unit tests. Names are upstream cluster names.
pub trait Figures {
    fn service(&self, cluster: &str, window: Duration) -> Option<ServiceFigures>;
}

impl Figures for crate::monitor::Monitor {
    fn service(&self, cluster: &str, window: Duration) -> Option<ServiceFigures> {
        crate::monitor::Monitor::service(self, cluster, window)
    }
}

impl Figures for crate::state::controller::Controller {
    fn service(&self, cluster: &str, window: Duration) -> Option<ServiceFigures> {
        self.monitor.service(cluster, window)
    }
}

/// What an analysis concluded.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Too few candidate requests in the window (how many there were).
    Wait(u64),
    Passed(StepAnalysis),
    Failed(StepAnalysis),
}

/// Analyses step `step` (at `weight`) of `release` over `window` ending at `now_ms`.
pub fn analyse(
    release: &Release,
    figures: &dyn Figures,
    window: Duration,
    step: usize,
    weight: u32,
    now_ms: u64,
) -> Verdict {
    let cand = figures.service(&release.candidate_cluster(), window).unwrap_or_default();
    // `minRequests: 0` decides even on an empty window.
    if cand.traffic.requests < release.min_requests {
        return Verdict::Wait(cand.traffic.requests);
    }
    let stable = figures.service(&release.stable_cluster(), window).unwrap_or_default();
    let mut a = StepAnalysis {
        step,
        weight,
        requests: cand.traffic.requests,
        errors: cand.traffic.errors,
        error_rate: cand.traffic.error_rate,
        p99_ms: cand.traffic.p99_ms,
        stable_requests: stable.traffic.requests,
        stable_error_rate: stable.traffic.error_rate,
        stable_p99_ms: stable.traffic.p99_ms,
        result: "passed".into(),
        reason: String::new(),
        at_ms: now_ms,
    };
    let mut reasons = Vec::new();
    if cand.traffic.error_rate > release.max_error_rate {
        reasons.push(format!("error rate {:.4} above {}", cand.traffic.error_rate, release.max_error_rate));
    }
    if let Some(over) = release.max_error_rate_over_stable {
        if stable.traffic.requests >= release.min_requests && cand.traffic.error_rate - stable.traffic.error_rate > over
        {
            reasons.push(format!(
                "error rate {:.4} above stable's {:.4} by more than {over}",
                cand.traffic.error_rate, stable.traffic.error_rate
            ));
        }
    }
    if let (Some(max), Some(p99)) = (release.max_p99_ms, cand.traffic.p99_ms) {
        if p99 > max {
            reasons.push(format!("p99 {p99:.1} ms above {max} ms"));
        }
    }
    if let (Some(ratio), Some(p99), Some(base)) =
        (release.max_p99_over_stable, cand.traffic.p99_ms, stable.traffic.p99_ms)
    {
        if stable.traffic.requests >= release.min_requests && p99 > base * ratio {
            reasons.push(format!("p99 {p99:.1} ms above {ratio} times stable's {base:.1} ms"));
        }
    }
    if reasons.is_empty() {
        a.reason = format!("{} requests, error rate {:.4}", cand.traffic.requests, cand.traffic.error_rate);
        Verdict::Passed(a)
    } else {
        a.result = "failed".into();
        a.reason = reasons.join("; ");
        Verdict::Failed(a)
    }
}
