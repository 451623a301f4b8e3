//! Judging a staged rollout once its hold is over: every canary proxy must
//! have ACKed the revision, and the canary's error rate and p99 over the
//! rollout's window must not be worse than the other proxies' (still on the
//! previous revision). Pure: the fleet, the figures and the time come in.

use crate::discovery::fleet::ProxyStatus;
use crate::rollouts::board::{AckState, Evidence, Group, Record, P99_SLACK_MS};

/// Where proxies' figures come from: the monitor of every replica
/// (`shared::Fleetwide`), or fixed figures in tests.
pub trait ProxyFigures {
    /// Requests, errors and p99 of `nodes` together since the staging.
    fn group(&self, nodes: &[String]) -> (u64, u64, Option<f64>);
}

/// What the judge decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not yet: the hold, an ACK or enough requests to compare.
    Wait,
    Promote(String, Evidence),
    RollBack(String, Evidence),
}

/// Whether each canary proxy holds revision `revision` (every type it
/// subscribes to), a NACK if it refused it; a canary with no stream is
/// reported as not connected.
pub fn acks(canary: &[String], fleet: &[ProxyStatus], revision: u64) -> Vec<AckState> {
    canary
        .iter()
        .map(|node| {
            let streams: Vec<&ProxyStatus> = fleet.iter().filter(|p| &p.node.id == node).collect();
            let mut state = AckState { node: node.clone(), acked: !streams.is_empty(), acked_at_ms: None, nack: None };
            if streams.is_empty() {
                state.nack = Some("not connected".into());
            }
            for t in streams.iter().flat_map(|p| p.types.values()) {
                if t.acked_revision < revision {
                    state.acked = false;
                    if !t.awaiting {
                        if let Some(n) = &t.last_nack {
                            state.nack = Some(n.error.clone());
                        }
                    }
                } else if t.acked_at_ms > 0 {
                    state.acked_at_ms = state.acked_at_ms.max(Some(t.acked_at_ms));
                }
            }
            state
        })
        .collect()
}

fn group(figures: &dyn ProxyFigures, nodes: &[String]) -> Group {
    let (requests, errors, p99_ms) = figures.group(nodes);
    let error_rate = if requests == 0 { 0.0 } else { errors as f64 / requests as f64 };
    Group { proxies: nodes.len(), requests, errors, error_rate, p99_ms }
}

/// Judges `record` at `now_ms`, given the canary proxies' ACK states.
pub fn judge(record: &Record, acks: Vec<AckState>, figures: &dyn ProxyFigures, now_ms: u64) -> Verdict {
    let p = &record.policy;
    let held = now_ms.saturating_sub(record.started_ms);
    if held < p.hold_ms {
        return Verdict::Wait;
    }
    let waited_out = held >= p.hold_ms.saturating_add(p.max_wait_ms);
    let evidence = Evidence {
        canary: group(figures, &record.canary),
        others: group(figures, &record.others),
        acks,
        window_ms: held,
    };
    let refused: Vec<String> = evidence
        .acks
        .iter()
        .filter(|a| !a.acked && a.nack.is_some())
        .map(|a| format!("{}: {}", a.node, a.nack.as_deref().unwrap_or("")))
        .collect();
    if !refused.is_empty() {
        return Verdict::RollBack(format!("not taken by {}", refused.join("; ")), evidence);
    }
    let pending: Vec<&str> = evidence.acks.iter().filter(|a| !a.acked).map(|a| a.node.as_str()).collect();
    if !pending.is_empty() {
        if !waited_out {
            return Verdict::Wait;
        }
        let why = format!("not ACKed within {} ms by {}", held, pending.join(", "));
        return Verdict::RollBack(why, evidence);
    }
    let (c, o) = (&evidence.canary, &evidence.others);
    if c.requests < p.min_requests {
        if !waited_out {
            return Verdict::Wait;
        }
        let why =
            format!("ACKed; {} requests on the canary, too few to compare ({} needed)", c.requests, p.min_requests);
        return Verdict::Promote(why, evidence);
    }
    // The others' figures count when they carry enough requests; with
    // none (every receiver is the canary) errors are judged on their own.
    let compare = o.requests >= p.min_requests;
    let base_rate = if compare { o.error_rate } else { 0.0 };
    let mut worse = Vec::new();
    if c.error_rate > base_rate + p.max_error_rate_increase {
        worse.push(format!(
            "error rate {:.4} on the canary against {:.4} on the other proxies (at most +{} allowed)",
            c.error_rate, base_rate, p.max_error_rate_increase
        ));
    }
    if let (true, Some(cp), Some(op)) = (compare, c.p99_ms, o.p99_ms) {
        if cp > op * p.max_p99_ratio + P99_SLACK_MS {
            worse.push(format!(
                "p99 {cp:.1} ms on the canary against {op:.1} ms on the other proxies (at most {}x + {P99_SLACK_MS} ms)",
                p.max_p99_ratio
            ));
        }
    }
    if !worse.is_empty() {
        return Verdict::RollBack(worse.join("; "), evidence);
    }
    let why = format!(
        "ACKed by {}; error rate {:.4} on the canary ({} requests) against {:.4} on the others ({} requests)",
        record.canary.join(", "),
        c.error_rate,
        c.requests,
        o.error_rate,
        o.requests
    );
    Verdict::Promote(why, evidence)
}
