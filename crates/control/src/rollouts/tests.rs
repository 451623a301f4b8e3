//! The judge on fixed fleets and figures.

use super::board::{PolicySpec, Record, RolloutState};
use super::judge::{acks, ProxyFigures, Verdict};
use crate::discovery::fleet::{Nack, ProxyStatus, TypeStatus};
use crate::discovery::node::NodeInfo;
use std::collections::BTreeMap;

/// Figures per node: (requests, errors, p99).
struct Fixed(BTreeMap<String, (u64, u64, Option<f64>)>);

impl ProxyFigures for Fixed {
    fn group(&self, nodes: &[String]) -> (u64, u64, Option<f64>) {
        let mut out = (0, 0, None::<f64>);
        for n in nodes {
            if let Some((r, e, p)) = self.0.get(n) {
                out.0 += r;
                out.1 += e;
                out.2 = match (out.2, p) {
                    (Some(a), Some(b)) => Some(a.max(*b)),
                    (a, b) => a.or(*b),
                };
            }
        }
        out
    }
}

/// The judge with the canary's ACKs taken from `fleet`.
fn judge(r: &Record, fleet: &[ProxyStatus], f: &dyn ProxyFigures, now_ms: u64) -> Verdict {
    super::judge::judge(r, acks(&r.canary, fleet, r.revision), f, now_ms)
}

fn figures(rows: &[(&str, u64, u64, f64)]) -> Fixed {
    Fixed(rows.iter().map(|(n, r, e, p)| (n.to_string(), (*r, *e, Some(*p)))).collect())
}

fn record() -> Record {
    let spec = PolicySpec { canary: Some("25%".into()), hold: Some("5s".into()), ..Default::default() };
    Record {
        revision: 8,
        previous: 7,
        state: RolloutState::Staged,
        author: "ops".into(),
        canary: vec!["a".into()],
        others: vec!["b".into(), "c".into(), "d".into()],
        policy: spec.check("rollout").expect("valid"),
        started_ms: 100_000,
        decided_ms: None,
        final_revision: None,
        reason: String::new(),
        evidence: None,
    }
}

fn proxy(id: &str, acked: u64, nack: Option<&str>) -> ProxyStatus {
    let t = TypeStatus {
        acked_revision: acked,
        sent_revision: 8,
        acked_at_ms: 101_000,
        last_nack: nack.map(|e| Nack { error: e.into(), ..Default::default() }),
        ..Default::default()
    };
    ProxyStatus {
        stream: 1,
        node: NodeInfo { id: id.into(), ..Default::default() },
        mode: "sotw",
        connected_since: String::new(),
        connected_ms: 0,
        types: [("Cluster".to_string(), t)].into_iter().collect(),
        raw_node: None,
    }
}

#[test]
fn a_healthy_canary_is_promoted_after_its_hold() {
    let fleet = [proxy("a", 8, None), proxy("b", 7, None)];
    let f = figures(&[("a", 100, 0, 20.0), ("b", 300, 1, 22.0)]);
    assert_eq!(judge(&record(), &fleet, &f, 104_000), Verdict::Wait, "still holding");
    match judge(&record(), &fleet, &f, 105_000) {
        Verdict::Promote(why, e) => {
            assert!(why.contains("ACKed by a"), "{why}");
            assert_eq!((e.canary.requests, e.others.requests, e.acks[0].acked_at_ms), (100, 300, Some(101_000)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn errors_or_latency_worse_than_the_others_roll_back() {
    let fleet = [proxy("a", 8, None)];
    let errors = figures(&[("a", 100, 60, 5.0), ("b", 300, 3, 5.0)]);
    match judge(&record(), &fleet, &errors, 105_000) {
        Verdict::RollBack(why, e) => assert!(why.contains("error rate 0.6000") && e.canary.errors == 60, "{why}"),
        other => panic!("{other:?}"),
    }
    let slow = figures(&[("a", 100, 0, 400.0), ("b", 300, 0, 20.0)]);
    assert!(matches!(judge(&record(), &fleet, &slow, 105_000), Verdict::RollBack(w, _) if w.contains("p99 400.0")));
    // A little slower is within the ratio and slack.
    let close = figures(&[("a", 100, 0, 35.0), ("b", 300, 0, 20.0)]);
    assert!(matches!(judge(&record(), &fleet, &close, 105_000), Verdict::Promote(..)));
}

#[test]
fn a_nack_rolls_back_and_a_missing_ack_waits_then_rolls_back() {
    let f = figures(&[("a", 100, 0, 5.0), ("b", 300, 0, 5.0)]);
    let nacked = [proxy("a", 7, Some("unknown cluster 'x'"))];
    assert!(matches!(judge(&record(), &nacked, &f, 105_000), Verdict::RollBack(w, _) if w.contains("unknown cluster")));
    let mut slow = proxy("a", 7, None);
    slow.types.values_mut().for_each(|t| t.awaiting = true);
    assert_eq!(judge(&record(), std::slice::from_ref(&slow), &f, 105_000), Verdict::Wait);
    let late = 105_000 + record().policy.max_wait_ms;
    assert!(matches!(judge(&record(), &[slow], &f, late), Verdict::RollBack(w, _) if w.contains("not ACKed")));
    assert!(matches!(judge(&record(), &[], &f, 105_000), Verdict::RollBack(w, _) if w.contains("not connected")));
}

#[test]
fn too_little_traffic_waits_then_goes_on_acks_alone() {
    let fleet = [proxy("a", 8, None)];
    let quiet = figures(&[("a", 3, 0, 5.0), ("b", 300, 0, 5.0)]);
    assert_eq!(judge(&record(), &fleet, &quiet, 105_000), Verdict::Wait);
    let late = 105_000 + record().policy.max_wait_ms;
    assert!(matches!(judge(&record(), &fleet, &quiet, late), Verdict::Promote(w, _) if w.contains("too few")));
}
