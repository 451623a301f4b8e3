//! Detection, repair planning and the evaluator, fed observations directly.

use super::detect::{CauseKind, Detector, Observation, Thresholds};
use super::repair::{AgentProgress, Planner, Repair, RepairSettings};
use super::{Evaluator, Settings};
use crate::discovery::agents::{AgentReport, Agents};
use crate::discovery::fleet::{Nack, ProxyStatus, TypeStatus};
use crate::discovery::health::EndpointHealth;
use crate::discovery::node::NodeInfo;
use crate::monitor::ProxyFigures;
use crate::resources::isolate::{decide, IsolationSpec, NODE_LABEL};
use std::collections::BTreeMap;
use std::time::Duration;

fn proxy(id: &str, types: &[(&str, TypeStatus)]) -> ProxyStatus {
    ProxyStatus {
        stream: 1,
        node: NodeInfo { id: id.into(), cluster: "gw".into(), ..Default::default() },
        mode: "sotw",
        connected_since: String::new(),
        connected_ms: 0,
        types: types.iter().map(|(k, t)| (k.to_string(), t.clone())).collect(),
        raw_node: None,
    }
}

fn acked(rev: u64) -> TypeStatus {
    TypeStatus {
        sent_version: "v".into(),
        acked_version: "v".into(),
        sent_revision: rev,
        acked_revision: rev,
        ..Default::default()
    }
}

fn nacked() -> TypeStatus {
    TypeStatus {
        sent_version: "v2".into(),
        acked_version: "v1".into(),
        sent_revision: 2,
        acked_revision: 1,
        last_nack: Some(Nack { version: "v2".into(), error: "cannot bind 127.0.0.1:80".into(), at: "t".into() }),
        ..Default::default()
    }
}

fn thresholds() -> Thresholds {
    Thresholds { after: Duration::from_secs(5), silence: Duration::from_secs(10) }
}

#[test]
fn a_nack_is_abnormal_at_once_with_its_error_as_evidence() {
    let mut d = Detector::default();
    let o = Observation {
        now_ms: 1_000,
        proxies: vec![
            proxy("bad", &[("Listener", nacked()), ("Cluster", acked(2))]),
            proxy("ok", &[("Listener", acked(2))]),
        ],
        ..Default::default()
    };
    let f = d.observe(&o, &thresholds());
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].node.as_str(), f[0].causes[0].cause), ("bad", CauseKind::Nack));
    assert!(
        f[0].causes[0].evidence.contains("Listener version v2 NACKed")
            && f[0].causes[0].evidence.contains("cannot bind")
    );
    assert_eq!(f[0].causes.len(), 1, "a NACKed type is not also counted as lag");
}

#[test]
fn lag_and_down_count_only_after_the_threshold() {
    let mut d = Detector::default();
    let lagging = TypeStatus { acked_revision: 1, sent_revision: 2, ..acked(2) };
    let o = |now_ms, proxies| Observation { now_ms, proxies, ..Default::default() };
    assert!(d
        .observe(&o(0, vec![proxy("a", &[("Cluster", lagging.clone())]), proxy("b", &[])]), &thresholds())
        .is_empty());
    assert!(d.observe(&o(4_000, vec![proxy("a", &[("Cluster", lagging.clone())])]), &thresholds()).is_empty());
    let f = d.observe(&o(5_000, vec![proxy("a", &[("Cluster", lagging)])]), &thresholds());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].causes[0].cause, f[0].causes[0].since_ms), (CauseKind::Lag, 0));
    assert!(f[0].causes[0].evidence.contains("revision 1 of 2"));
    let f = d.observe(&o(9_000, vec![proxy("a", &[])]), &thresholds());
    assert_eq!(f.len(), 1, "b is down since 4 s: {f:?}");
    assert_eq!((f[0].node.as_str(), f[0].causes[0].cause, f[0].since_ms()), ("b", CauseKind::Down, 4_000));
    assert!(d.observe(&o(10_000, vec![proxy("a", &[]), proxy("b", &[])]), &thresholds()).is_empty(), "b is back");
}

#[test]
fn a_node_that_left_between_two_looks_is_down_after_the_threshold() {
    let mut d = Detector::default();
    let left = |at: u64| [("gone".to_string(), ("web".to_string(), at))].into_iter().collect();
    let o = |now_ms, left| Observation { now_ms, left, ..Default::default() };
    assert!(d.observe(&o(1_000, left(500)), &thresholds()).is_empty(), "not yet 5 s");
    let f = d.observe(&o(6_000, left(500)), &thresholds());
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].node.as_str(), f[0].cluster.as_str(), f[0].causes[0].cause), ("gone", "web", CauseKind::Down));
    assert!(f[0].causes[0].evidence.starts_with("no xDS stream since"), "{f:?}");
    let back = Observation { now_ms: 6_500, proxies: vec![proxy("gone", &[])], left: left(500), ..Default::default() };
    assert!(d.observe(&back, &thresholds()).is_empty(), "connected again");
}

#[test]
fn crash_loops_silence_and_error_outliers() {
    let agents = Agents::default();
    agents.report(
        "loop",
        AgentReport {
            state: "crash-loop".into(),
            restarts: 6,
            last_exit: Some("exit code 1".into()),
            ..Default::default()
        },
    );
    let fig = |node: &str, requests, errors| ProxyFigures {
        node: node.into(),
        node_cluster: "gw".into(),
        requests,
        errors,
        error_rate: errors as f64 / requests as f64,
        ..Default::default()
    };
    let o = Observation {
        now_ms: 100_000,
        proxies: vec![proxy("quiet", &[]), proxy("noisy", &[]), proxy("p1", &[]), proxy("p2", &[])],
        agents: agents.list(),
        last_report_ms: BTreeMap::from([("quiet".into(), 80_000), ("p1".into(), 99_000)]),
        figures: vec![fig("noisy", 1000, 300), fig("p1", 1000, 10), fig("p2", 1000, 20), fig("fine", 1000, 25)],
        ..Default::default()
    };
    let f = Detector::default().observe(&o, &thresholds());
    let causes: Vec<(&str, CauseKind)> =
        f.iter().flat_map(|f| f.causes.iter().map(move |c| (f.node.as_str(), c.cause))).collect();
    assert_eq!(
        causes,
        [("loop", CauseKind::CrashLoop), ("noisy", CauseKind::ErrorRate), ("quiet", CauseKind::MetricsSilent)]
    );
    assert!(f[0].causes[0].evidence.contains("exit code 1"));
    assert!(f[1].causes[0].evidence.contains("error rate 0.300"), "{}", f[1].causes[0].evidence);
}

fn settings(after_ms: u64) -> RepairSettings {
    RepairSettings {
        after: Some(Duration::from_millis(after_ms)),
        max_concurrent: 1,
        interval: Duration::from_secs(10),
        verify: Duration::from_secs(20),
    }
}

fn agents(progress: &[(&str, Option<u64>, bool)]) -> BTreeMap<String, AgentProgress> {
    progress.iter().map(|(n, c, r)| (n.to_string(), AgentProgress { last_command: *c, running: *r })).collect()
}

#[test]
fn repairs_wait_their_turn_then_succeed_or_fail() {
    let mut p = Planner::default();
    let idle = agents(&[("a", None, true), ("b", None, true)]);
    let abnormal = BTreeMap::from([("a".to_string(), 0), ("b".to_string(), 1_000)]);
    let s = settings(30_000);
    assert!(p.plan(&abnormal, &idle, &s, 29_999).is_empty(), "not yet due");
    let r = p.plan(&abnormal, &idle, &s, 31_000);
    assert_eq!(r.iter().map(|r| r.node.as_str()).collect::<Vec<_>>(), ["a"], "one at a time, the oldest first");
    p.issued("a", 7);
    assert!(p.plan(&abnormal, &idle, &s, 40_000).is_empty(), "a still restarting; b waits");
    // a is normal again: repaired; b waits for the interval since a's start.
    let only_b = BTreeMap::from([("b".to_string(), 1_000)]);
    assert!(p.plan(&only_b, &idle, &s, 40_500).is_empty(), "10 s between two repairs");
    assert_eq!(p.plan(&only_b, &idle, &s, 41_000).len(), 1);
    p.issued("b", 8);
    assert_eq!(p.repaired, 1);
    // b's agent carries the restart out 5 s later (its proxy starting slowly):
    // the 20 s of verification run from then.
    let restarting = agents(&[("b", Some(8), false)]);
    assert!(p.plan(&only_b, &restarting, &s, 45_000).is_empty());
    let done = agents(&[("b", Some(8), true)]);
    assert!(p.plan(&only_b, &done, &s, 46_000).is_empty());
    assert!(p.plan(&only_b, &done, &s, 65_000).is_empty());
    assert!(matches!(p.get("b"), Some(Repair::Restarting { done_ms: Some(46_000), .. })), "{:?}", p.get("b"));
    // Still abnormal 20 s after its restart: failed, never restarted again.
    assert!(p.plan(&only_b, &done, &s, 66_000).is_empty());
    assert!(matches!(p.get("b"), Some(Repair::Failed { reason, .. }) if reason.contains("after its restart")));
    assert!(p.plan(&only_b, &done, &s, 200_000).is_empty());
    assert_eq!((p.started, p.repaired, p.failed), (2, 1, 1));
    // Recovered: forgotten, so a later fault is repaired again.
    assert!(p.plan(&BTreeMap::new(), &done, &s, 201_000).is_empty());
    assert_eq!(p.plan(&BTreeMap::from([("b".to_string(), 201_000)]), &done, &s, 240_000).len(), 1);
}

#[test]
fn no_agent_or_an_agent_that_never_restarts_fails_and_off_never_restarts() {
    let mut p = Planner::default();
    let abnormal = BTreeMap::from([("x".to_string(), 0)]);
    assert!(p.plan(&abnormal, &BTreeMap::new(), &settings(0), 0).is_empty());
    assert!(matches!(p.get("x"), Some(Repair::Failed { reason, .. }) if reason.contains("no agent")));
    let mut p = Planner::default();
    let stuck = agents(&[("x", Some(3), true)]);
    assert_eq!(p.plan(&abnormal, &stuck, &settings(0), 0).len(), 1);
    p.issued("x", 4);
    assert!(p.plan(&abnormal, &stuck, &settings(0), 20_000).is_empty());
    assert!(matches!(p.get("x"), Some(Repair::Failed { reason, .. }) if reason.contains("did not carry out")));
    let mut p = Planner::default();
    let off = RepairSettings { after: None, ..settings(0) };
    assert!(p.plan(&abnormal, &stuck, &off, 100_000).is_empty());
    assert_eq!(p.get("x"), Some(&Repair::Off));
}

#[test]
fn the_evaluator_isolates_within_the_cap_and_says_what_it_held() {
    let mut ev = Evaluator::default();
    let o = Observation {
        now_ms: 1_000,
        proxies: vec![proxy("bad", &[("Listener", nacked())]), proxy("worse", &[("Listener", nacked())])],
        ..Default::default()
    };
    let endpoints: Vec<(String, u16, BTreeMap<String, String>)> = ["bad", "worse", "good"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            ("127.0.0.1".to_string(), 8000 + i as u16, BTreeMap::from([(NODE_LABEL.to_string(), n.to_string())]))
        })
        .collect();
    let isolation = |h: &EndpointHealth| {
        vec![("gateways".to_string(), decide(&IsolationSpec { enabled: true, max_percent: 34 }, &endpoints, h))]
    };
    let (health, views, restarts) = ev.tick(&o, &isolation, &Settings::default(), true);
    assert_eq!(health.abnormal.keys().collect::<Vec<_>>(), ["bad", "worse"]);
    assert!(restarts.is_empty(), "not yet due");
    assert_eq!(views[0].isolated, ["gateways 127.0.0.1:8000"]);
    assert_eq!(views[1].held, ["gateways 127.0.0.1:8001"], "one of three at most");
    assert_eq!(views[0].causes[0].cause, "nack");
}
