//! The state machine with figures fed directly: steps, hold, the wait for
//! minRequests, roll back on errors and on latency, promote, pause/resume.

use crate::monitor::{RequestFigures, ServiceFigures};
use crate::releases::analysis::Figures;
use crate::releases::machine::{act, advance, Action};
use crate::releases::spec::{check, Phase, Release, Status};
use crate::resources::document::parse_documents;
use std::collections::BTreeMap;
use std::time::Duration;

const EXAMPLE: &str = "kind: Release\nmetadata: {name: checkout-v2}\nspec:\n  service: checkout\n  stable: {version: v1}\n  candidate: {version: v2}\n  strategy:\n    canary: {steps: [20, 50, 100], hold: 5s}\n  analysis: {window: 5s, minRequests: 20, maxErrorRate: 0.05, maxP99Ms: 500}\n";

fn release() -> Release {
    check(&parse_documents(EXAMPLE).expect("yaml").remove(0)).expect("valid")
}

/// Figures by cluster name.
#[derive(Default)]
struct Fixed(BTreeMap<String, ServiceFigures>);

impl Fixed {
    fn candidate(requests: u64, errors: u64, p99: f64) -> Self {
        let mut m = BTreeMap::new();
        let f = |service: &str, requests: u64, errors: u64| ServiceFigures {
            service: service.into(),
            traffic: RequestFigures {
                requests,
                errors,
                error_rate: if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
                p99_ms: Some(p99),
                ..Default::default()
            },
            ..Default::default()
        };
        m.insert("checkout~v2".into(), f("checkout~v2", requests, errors));
        m.insert("checkout~v1".into(), f("checkout~v1", 400, 0));
        Self(m)
    }
}

impl Figures for Fixed {
    fn service(&self, cluster: &str, _window: Duration) -> Option<ServiceFigures> {
        self.0.get(cluster).cloned()
    }
}

const S: u64 = 1000;

#[test]
fn a_good_candidate_goes_through_every_step_and_is_promoted() {
    let r = release();
    let good = Fixed::candidate(100, 1, 40.0);
    assert_eq!(advance(&r, &Status::default(), &good, 9 * S, false), None, "clusters not yet warm");
    let st = advance(&r, &Status::default(), &good, 10 * S, true).expect("starts");
    assert_eq!((st.phase, st.step, st.weight, st.step_started_ms), (Phase::Progressing, 0, 20, 10 * S));
    assert_eq!(advance(&r, &st, &good, 14 * S, true), None, "held for 5s");
    let st = advance(&r, &st, &good, 15 * S, true).expect("step 2");
    assert_eq!((st.step, st.weight, st.analyses.len()), (1, 50, 1));
    assert_eq!((st.analyses[0].requests, st.analyses[0].result.as_str()), (100, "passed"));
    let st = advance(&r, &st, &good, 20 * S, true).expect("step 3");
    assert_eq!((st.step, st.weight), (2, 100));
    let st = advance(&r, &st, &good, 25 * S, true).expect("promoted");
    assert_eq!((st.phase, st.weight, st.analyses.len()), (Phase::Promoted, 100, 3));
    assert_eq!(advance(&r, &st, &good, 60 * S, true), None, "a finished release stays");
}

#[test]
fn too_few_requests_wait_then_pause() {
    let r = release();
    let quiet = Fixed::candidate(19, 0, 40.0);
    let st = advance(&r, &Status::default(), &quiet, 10 * S, true).expect("starts");
    assert_eq!(advance(&r, &st, &quiet, 15 * S, true), None, "no decision below minRequests");
    assert_eq!(advance(&r, &st, &quiet, 64 * S, true), None, "still waiting within maxWait (50s)");
    let paused = advance(&r, &st, &quiet, 65 * S, true).expect("bounded wait");
    assert_eq!((paused.phase, paused.weight), (Phase::Paused, 20));
    assert!(paused.message.contains("19 candidate requests"), "{}", paused.message);
    let busy = Fixed::candidate(20, 0, 40.0);
    assert_eq!(advance(&r, &st, &busy, 15 * S, true).map(|s| s.weight), Some(50), "20 is enough");
}

#[test]
fn errors_roll_back_at_once() {
    let r = release();
    let st = advance(&r, &Status::default(), &Fixed::default(), 10 * S, true).expect("starts");
    let bad = Fixed::candidate(100, 6, 40.0);
    let st = advance(&r, &st, &bad, 15 * S, true).expect("decided");
    assert_eq!((st.phase, st.weight), (Phase::RolledBack, 0));
    assert_eq!(st.analyses[0].result, "failed");
    assert!(st.message.contains("error rate 0.0600 above 0.05"), "{}", st.message);
}

#[test]
fn an_error_rate_above_stables_rolls_back() {
    let doc = EXAMPLE.replace("maxErrorRate: 0.05,", "maxErrorRate: 0.05, maxErrorRateOverStable: 0.01,");
    let r = check(&parse_documents(&doc).expect("yaml").remove(0)).expect("valid");
    let st = advance(&r, &Status::default(), &Fixed::default(), 10 * S, true).expect("starts");
    // 3% is under maxErrorRate but 3 points above stable's 0%.
    let st = advance(&r, &st, &Fixed::candidate(100, 3, 40.0), 15 * S, true).expect("decided");
    assert_eq!(st.phase, Phase::RolledBack);
    assert!(st.message.contains("above stable's 0.0000 by more than 0.01"), "{}", st.message);
    assert_eq!(st.analyses[0].stable_requests, 400);
}

#[test]
fn latency_rolls_back() {
    let r = release();
    let st = advance(&r, &Status::default(), &Fixed::default(), 10 * S, true).expect("starts");
    let good = Fixed::candidate(100, 0, 40.0);
    let st = advance(&r, &st, &good, 15 * S, true).expect("step 2");
    let slow = Fixed::candidate(100, 0, 800.0);
    let st = advance(&r, &st, &slow, 20 * S, true).expect("decided");
    assert_eq!((st.phase, st.weight, st.analyses.len()), (Phase::RolledBack, 0, 2));
    assert!(st.message.contains("p99 800.0 ms above 500 ms"), "{}", st.message);
}

#[test]
fn pause_resume_promote_abort() {
    let r = release();
    let good = Fixed::candidate(100, 0, 40.0);
    let st = advance(&r, &Status::default(), &good, 10 * S, true).expect("starts");
    let paused = act(&st, Action::Pause, 11 * S).expect("pause");
    assert_eq!(advance(&r, &paused, &good, 30 * S, true), None, "a paused release stays");
    assert!(act(&paused, Action::Pause, 12 * S).is_err());
    let resumed = act(&paused, Action::Resume, 30 * S).expect("resume");
    assert_eq!((resumed.phase, resumed.step_started_ms, resumed.weight), (Phase::Progressing, 30 * S, 20));
    assert_eq!(advance(&r, &resumed, &good, 34 * S, true), None, "held again from the resume");
    let promoted = act(&resumed, Action::Promote, 31 * S).expect("promote");
    assert_eq!((promoted.phase, promoted.weight), (Phase::Promoted, 100));
    assert!(act(&promoted, Action::Abort, 32 * S).is_err(), "finished");
    let aborted = act(&resumed, Action::Abort, 31 * S).expect("abort");
    assert_eq!((aborted.phase, aborted.weight), (Phase::Aborted, 0));
}

mod expansion {
    use super::EXAMPLE;
    use crate::releases::spec::{Phase, Status};
    use crate::resources::document::parse_documents;
    use crate::resources::kind::Kind;
    use crate::state::controller::Controller;
    use crate::store::Store;
    use serde_json::Value;
    use std::sync::Arc;

    const MESH: &str = "kind: Service\nmetadata: {name: checkout}\nspec:\n  endpoints:\n  - {address: 127.0.0.1, port: 8001, labels: {version: v1}}\n  - {address: 127.0.0.1, port: 8002, labels: {version: v2}}\n---\nkind: Gateway\nmetadata: {name: edge}\nspec:\n  port: 8080\n  routes:\n  - match: {prefix: /}\n    to: [{service: checkout}]\n";

    fn temp_controller() -> (Arc<Controller>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("legate-release-{}-{}", std::process::id(), rand::random::<u32>()));
        let store = Store::open(&dir).expect("store");
        (Controller::open(store).expect("controller"), dir)
    }

    fn route_action(ctrl: &Controller) -> Value {
        let state = ctrl.current();
        let r = state.resources.get(&(Kind::RouteConfiguration, "gateway.edge".into())).expect("routes");
        r.doc.spec["virtual_hosts"][0]["routes"][0]["route"].clone()
    }

    fn endpoints_of(ctrl: &Controller, cluster: &str) -> Vec<u64> {
        let state = ctrl.current();
        let r = state.resources.get(&(Kind::ClusterLoadAssignment, cluster.into())).expect("assignment");
        let eps = r.doc.spec["endpoints"][0]["lb_endpoints"].as_array().cloned().unwrap_or_default();
        eps.iter().filter_map(|e| e["endpoint"]["address"]["socket_address"]["port_value"].as_u64()).collect()
    }

    #[test]
    fn a_release_splits_its_service_and_survives_a_restart() {
        let (ctrl, dir) = temp_controller();
        let docs = parse_documents(&format!("{MESH}---\n{EXAMPLE}")).expect("yaml");
        ctrl.apply(&docs, "test", "", false).expect("applied");
        assert_eq!((endpoints_of(&ctrl, "checkout~v1"), endpoints_of(&ctrl, "checkout~v2")), (vec![8001], vec![8002]));
        assert_eq!(route_action(&ctrl)["cluster"], "checkout", "not started: routes as before");
        let started = Status { step_started_ms: 1, weight: 20, ..Default::default() };
        ctrl.set_status(Kind::Release, "checkout-v2", started.to_value(), "release/checkout-v2", "step 1")
            .expect("step");
        let w = &route_action(&ctrl)["weighted_clusters"]["clusters"];
        assert_eq!((&w[0]["name"], &w[0]["weight"]), (&Value::from("checkout~v1"), &Value::from(80)), "{w}");
        assert_eq!((&w[1]["name"], &w[1]["weight"]), (&Value::from("checkout~v2"), &Value::from(20)), "{w}");
        // A user's apply keeps the driver's status.
        ctrl.apply(&parse_documents(EXAMPLE).expect("yaml"), "test", "", false).expect("re-applied");
        drop(ctrl);
        let ctrl = Controller::open(Store::open(&dir).expect("store")).expect("reopened");
        let state = ctrl.stored();
        let r = state.resources.get(&(Kind::Release, "checkout-v2".into())).expect("release");
        assert_eq!(Status::of(&r.doc).weight, 20, "the step survives a restart");
        let rolled = Status { phase: Phase::RolledBack, step_started_ms: 1, ..Default::default() };
        ctrl.set_status(Kind::Release, "checkout-v2", rolled.to_value(), "release/checkout-v2", "back").expect("back");
        assert_eq!(route_action(&ctrl)["cluster"], "checkout~v1", "rolled back: stable only");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn references_are_checked() {
        let (ctrl, dir) = temp_controller();
        let other = EXAMPLE.replace("service: checkout", "service: payments");
        let docs = parse_documents(&format!("{MESH}---\n{other}")).expect("yaml");
        let Err(crate::state::apply::ApplyError::Invalid(errs)) = ctrl.apply(&docs, "t", "", false) else {
            panic!("accepted")
        };
        assert_eq!((errs[0].resource.as_str(), errs[0].path.as_str()), ("Release/checkout-v2", "spec.service"));
        let none = EXAMPLE.replace("candidate: {version: v2}", "candidate: {version: v3}");
        let docs = parse_documents(&format!("{MESH}---\n{none}")).expect("yaml");
        let Err(crate::state::apply::ApplyError::Invalid(errs)) = ctrl.apply(&docs, "t", "", false) else {
            panic!("accepted")
        };
        assert_eq!(errs[0].path, "spec.candidate", "{errs:?}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

mod blue_green {
    use super::Fixed;
    use crate::releases::machine::advance;
    use crate::releases::spec::{check, Phase, Status};
    use crate::resources::document::parse_documents;
    use crate::resources::kind::Kind;
    use crate::state::controller::Controller;
    use crate::store::Store;
    use serde_json::json;

    const BG: &str = "kind: Release\nmetadata: {name: checkout-bg}\nspec:\n  service: checkout\n  stable: {version: v1}\n  candidate: {version: v2}\n  strategy:\n    blueGreen: {preview: {header: X-Preview, value: 'yes'}, hold: 5s}\n  analysis: {window: 5s, minRequests: 20, maxErrorRate: 0.05}\n";
    const MESH: &str = "kind: Service\nmetadata: {name: checkout}\nspec:\n  endpoints:\n  - {address: 127.0.0.1, port: 8001, labels: {version: v1}}\n  - {address: 127.0.0.1, port: 8002, labels: {version: v2}}\n---\nkind: Gateway\nmetadata: {name: edge}\nspec:\n  port: 8080\n  routes:\n  - match: {prefix: /}\n    to: [{service: checkout}]\n    response_headers: {x-gw: edge}\n";

    #[test]
    fn preview_then_switch_then_promote() {
        let r = check(&parse_documents(BG).expect("yaml").remove(0)).expect("valid");
        let good = Fixed::candidate(30, 0, 10.0);
        let st = advance(&r, &Status::default(), &good, 1_000, true).expect("preview");
        assert_eq!((st.step, st.weight), (0, 0));
        let st = advance(&r, &st, &good, 6_000, true).expect("switch");
        assert_eq!((st.step, st.weight, st.phase), (1, 100, Phase::Progressing));
        let st = advance(&r, &st, &good, 11_000, true).expect("promoted");
        assert_eq!((st.phase, st.weight), (Phase::Promoted, 100));
    }

    #[test]
    fn the_preview_header_reaches_the_candidate_until_the_release_ends() {
        let dir = std::env::temp_dir().join(format!("legate-bg-{}-{}", std::process::id(), rand::random::<u32>()));
        let ctrl = Controller::open(Store::open(&dir).expect("store")).expect("controller");
        let docs = parse_documents(&format!("{MESH}---\n{BG}")).expect("yaml");
        ctrl.apply(&docs, "test", "", false).expect("applied");
        let routes = |ctrl: &Controller| {
            let state = ctrl.current();
            let r = state.resources.get(&(Kind::RouteConfiguration, "gateway.edge".into())).expect("routes");
            r.doc.spec["virtual_hosts"][0]["routes"].clone()
        };
        assert_eq!(routes(&ctrl).as_array().map(Vec::len), Some(1), "not started");
        let preview = Status { step_started_ms: 1, ..Default::default() };
        ctrl.set_status(Kind::Release, "checkout-bg", preview.to_value(), "release/checkout-bg", "").expect("step");
        let rs = routes(&ctrl);
        assert_eq!(rs[0]["match"]["headers"], json!([{"name": "x-preview", "string_match": {"exact": "yes"}}]));
        assert_eq!(rs[0]["route"]["cluster"], "checkout~v2");
        assert_eq!(rs[0]["response_headers_to_add"], rs[1]["response_headers_to_add"]);
        assert_eq!(rs[1]["route"]["cluster"], "checkout~v1", "everyone else: stable");
        let back = Status { phase: Phase::RolledBack, step_started_ms: 1, ..Default::default() };
        ctrl.set_status(Kind::Release, "checkout-bg", back.to_value(), "release/checkout-bg", "").expect("back");
        let rs = routes(&ctrl);
        assert_eq!((rs.as_array().map(Vec::len), &rs[0]["route"]["cluster"]), (Some(1), &json!("checkout~v1")));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_ab_test_sends_matching_requests_to_the_candidate_and_a_canary_can_be_sticky() {
        let dir = std::env::temp_dir().join(format!("legate-ab-{}-{}", std::process::id(), rand::random::<u32>()));
        let ctrl = Controller::open(Store::open(&dir).expect("store")).expect("controller");
        let ab = BG.replace(
            "blueGreen: {preview: {header: X-Preview, value: 'yes'}, hold: 5s}",
            "abTest: {headers: {X-Beta: 'on'}, cookies: {group: b.2}, hold: 5s}",
        );
        let docs = parse_documents(&format!("{MESH}---\n{ab}")).expect("yaml");
        ctrl.apply(&docs, "test", "", false).expect("applied");
        let routes = |ctrl: &Controller| {
            let state = ctrl.current();
            let r = state.resources.get(&(Kind::RouteConfiguration, "gateway.edge".into())).expect("routes");
            r.doc.spec["virtual_hosts"][0]["routes"].clone()
        };
        let started = Status { step_started_ms: 1, ..Default::default() };
        ctrl.set_status(Kind::Release, "checkout-bg", started.to_value(), "release/checkout-bg", "").expect("step");
        let rs = routes(&ctrl);
        assert_eq!(rs.as_array().map(Vec::len), Some(3), "{rs}");
        assert_eq!(rs[0]["match"]["headers"], json!([{"name": "x-beta", "string_match": {"exact": "on"}}]));
        let cookie =
            json!([{"name": "cookie", "string_match": {"safe_regex": {"regex": "(.*;\\s*)?group=b\\.2(;.*)?"}}}]);
        assert_eq!(rs[1]["match"]["headers"], cookie);
        assert_eq!(
            (&rs[0]["route"]["cluster"], &rs[1]["route"]["cluster"]),
            (&json!("checkout~v2"), &json!("checkout~v2"))
        );
        assert_eq!(rs[2]["route"]["cluster"], "checkout~v1", "everyone else: stable");
        // A sticky canary hashes the header for the weighted pick.
        let sticky = ab.replace(
            "abTest: {headers: {X-Beta: 'on'}, cookies: {group: b.2}, hold: 5s}",
            "canary: {steps: [30, 100], hold: 5s, stickiness: {header: X-User}}",
        );
        ctrl.apply(&parse_documents(&sticky).expect("yaml"), "test", "", false).expect("applied");
        let step = Status { step_started_ms: 1, weight: 30, ..Default::default() };
        ctrl.set_status(Kind::Release, "checkout-bg", step.to_value(), "release/checkout-bg", "").expect("step");
        let rs = routes(&ctrl);
        assert_eq!(rs.as_array().map(Vec::len), Some(1), "{rs}");
        let action = &rs[0]["route"];
        assert_eq!(action["hash_policy"], json!([{"header": {"header_name": "x-user"}}]));
        assert_eq!(action["weighted_clusters"]["use_hash_policy"], true);
        let names: Vec<&str> = action["weighted_clusters"]["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["checkout~v1", "checkout~v2"], "the candidate last, so its clients stay on it");
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn a_p99_above_stables_by_the_ratio_rolls_back() {
    let doc = EXAMPLE.replace("maxP99Ms: 500}", "maxP99Over Stable: 2}").replace("Over Stable", "OverStable");
    let r = check(&parse_documents(&doc).expect("yaml").remove(0)).expect("valid");
    let mut figures = Fixed::candidate(100, 0, 90.0);
    if let Some(s) = figures.0.get_mut("checkout~v1") {
        s.traffic.p99_ms = Some(40.0);
    }
    let st = advance(&r, &Status::default(), &figures, S, true).expect("starts");
    let st = advance(&r, &st, &figures, 6 * S, true).expect("analysed");
    assert_eq!(st.phase, Phase::RolledBack, "{st:?}");
    assert!(st.message.contains("2 times stable's 40.0 ms"), "{}", st.message);
    assert_eq!(st.analyses[0].stable_p99_ms, Some(40.0));
    if let Some(s) = figures.0.get_mut("checkout~v1") {
        s.traffic.p99_ms = Some(50.0);
    }
    let st = advance(&r, &Status::default(), &figures, S, true).expect("starts");
    assert_eq!(advance(&r, &st, &figures, 6 * S, true).map(|s| s.phase), Some(Phase::Progressing), "90 <= 2 x 50");
}

/// Figures that remember the windows they were asked for.
#[derive(Default)]
struct Asked(std::cell::RefCell<Vec<Duration>>);

impl Figures for Asked {
    fn service(&self, _cluster: &str, window: Duration) -> Option<ServiceFigures> {
        self.0.borrow_mut().push(window);
        None
    }
}

/// A step is judged on its own traffic: with a hold shorter than the
/// window, the window starts at the step, not before it.
#[test]
fn the_window_never_reaches_back_before_the_step() {
    let r = release();
    let short_hold = Release { hold: Duration::from_secs(2), min_requests: 0, ..r.clone() };
    let asked = Asked::default();
    let st = advance(&short_hold, &Status::default(), &asked, 10 * S, true).expect("starts");
    let st = advance(&short_hold, &st, &asked, 12 * S, true).expect("decided on an empty window");
    assert_eq!(st.step, 1);
    assert_eq!(asked.0.borrow().as_slice(), [Duration::from_secs(2); 2], "candidate and stable over the step's 2 s");
    asked.0.borrow_mut().clear();
    advance(&short_hold, &st, &asked, 40 * S, true).expect("next step");
    assert_eq!(asked.0.borrow().as_slice(), [r.window; 2], "the configured 5 s once the step is older");
}
