//! Alerts: `AlertRule` resources evaluated every second against the fleet's
//! figures, notifying webhooks and Alertmanagers when they fire and resolve.
//!
//! - [`rule`]: the spec as written and the compiled rule (also used by
//!   `resources/compile` to refuse a bad rule at apply);
//! - [`source`]: what a rule reads (monitor, fleet, Secrets), behind a trait;
//! - [`board`]: what the controller holds and the API reads (rule states, history, notifier);
//! - [`evaluate`]: one rule's state machine: inactive, pending, firing;
//! - [`payload`]: Alertmanager's webhook payload and its `/api/v2/alerts` list;
//! - [`notify`]: bounded per-destination queues, retries with backoff;
//! - [`history`]: firing and resolved, bounded, kept in the data directory.
//!
//! Every replica evaluates (so each answers `/v1/alerts`); only the leader
//! (`Controller::is_leader`, always true on SQLite) notifies.

pub mod board;
pub mod evaluate;
pub mod history;
pub mod notify;
pub mod payload;
pub mod rule;
pub mod source;

use crate::clock::unix_ms;
use crate::resources::kind::Kind;
use crate::resources::resource::of_kind;
use crate::state::controller::Controller;
pub use board::{Alerts, RuleView};
use evaluate::{State, Tracker, Transition};
use payload::Status;
use rule::Rule;
use source::{measure, Measurement, Seen, Source};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How the evaluation runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time between evaluations.
    pub period: Duration,
    /// The control plane's URL as people reach it (`externalURL`, `generatorURL`).
    pub external_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self { period: Duration::from_secs(1), external_url: String::new() }
    }
}

/// A notification to send: the rule it is for, its alert, whether it only
/// refreshes a firing alert in Alertmanagers (`resend`), and whether it is a
/// change the history records (`record`).
#[derive(Debug, Clone)]
pub struct Event {
    pub rule: Rule,
    pub alert: payload::Alert,
    pub measurement: Measurement,
    pub resend: bool,
    pub record: bool,
}

struct Tracked {
    rule: Rule,
    tracker: Tracker,
    measurement: Measurement,
    /// When the firing alert was last sent to Alertmanagers.
    sent_ms: u64,
}

/// Every rule's state between evaluations.
#[derive(Default)]
pub struct Evaluator {
    rules: BTreeMap<String, Tracked>,
    seen: Seen,
    pub external_url: String,
}

impl Evaluator {
    /// Evaluates `rules` at `now_ms`: the rules' views and what to notify.
    pub fn tick(&mut self, rules: Vec<Rule>, source: &dyn Source, now_ms: u64) -> (Vec<RuleView>, Vec<Event>) {
        let proxies = source.proxies();
        let down = self.seen.update(&proxies, now_ms);
        let now_s = (now_ms / 1000) as i64;
        let mut events = Vec::new();
        let names: Vec<String> = rules.iter().map(|r| r.name.clone()).collect();
        for gone in self.rules.keys().filter(|n| !names.contains(n)).cloned().collect::<Vec<_>>() {
            if let Some(mut t) = self.rules.remove(&gone) {
                if t.tracker.remove(now_ms) == Transition::Resolved {
                    events.push(self.event(&t, Status::Resolved, false));
                }
                t.tracker.value = None;
            }
        }
        for rule in rules {
            let m = measure(&rule, source, &proxies, &down, now_s);
            let name = rule.name.clone();
            let t = self.rules.entry(name.clone()).or_insert_with(|| Tracked {
                rule: rule.clone(),
                tracker: Tracker::new(now_ms),
                measurement: Measurement::default(),
                sent_ms: 0,
            });
            t.rule = rule;
            let transition = t.tracker.step(m.value, t.rule.threshold, t.rule.for_, now_ms);
            t.measurement = m;
            let resend = t.tracker.state == State::Firing
                && !t.rule.alertmanagers.is_empty()
                && now_ms.saturating_sub(t.sent_ms) >= payload::RESEND.as_millis() as u64;
            if transition == Transition::Fired || resend {
                t.sent_ms = now_ms;
            }
            let t = &self.rules[&name];
            match transition {
                Transition::Fired => events.push(self.event(t, Status::Firing, false)),
                Transition::Resolved => events.push(self.event(t, Status::Resolved, false)),
                Transition::None if resend => events.push(self.event(t, Status::Firing, true)),
                Transition::None => {}
            }
        }
        (self.rules.values().map(view).collect(), events)
    }

    fn event(&self, t: &Tracked, status: Status, resend: bool) -> Event {
        let starts = t.tracker.active_since_ms.unwrap_or(t.tracker.since_ms);
        let ends = if status == Status::Resolved { t.tracker.resolved_ms } else { None };
        let m = &t.measurement;
        Event {
            rule: t.rule.clone(),
            alert: payload::alert(&t.rule, status, m.value, &m.subjects, (starts, ends), &self.external_url),
            measurement: m.clone(),
            resend,
            record: !resend,
        }
    }

    /// Every firing alert again, for a replica that has just become the
    /// leader (the transition happened while another replica notified).
    pub fn firing(&self) -> Vec<Event> {
        self.rules
            .values()
            .filter(|t| t.tracker.state == State::Firing)
            .map(|t| Event { record: false, ..self.event(t, Status::Firing, false) })
            .collect()
    }
}

fn view(t: &Tracked) -> RuleView {
    let r = &t.rule;
    RuleView {
        name: r.name.clone(),
        service: r.service.clone(),
        metric: r.metric.name().into(),
        severity: r.severity.clone(),
        state: t.tracker.state.name().into(),
        value: t.tracker.value,
        threshold: r.threshold.value(),
        comparison: r.threshold.word().into(),
        since: payload::rfc3339(t.tracker.since_ms),
        window: humantime::format_duration(r.window).to_string(),
        for_: humantime::format_duration(r.for_).to_string(),
        subjects: t.measurement.subjects.clone(),
    }
}

/// The AlertRules of the committed revision, compiled.
pub fn rules_of(ctrl: &Controller) -> Vec<Rule> {
    let state = ctrl.stored();
    of_kind(&state.resources, Kind::AlertRule).filter_map(|(_, r)| rule::check(&r.doc).ok()).collect()
}

/// Records an event in the history and, on the leader, sends it.
fn deliver(alerts: &Alerts, e: &Event, leader: bool, external: &str) {
    if e.record {
        alerts.history.push(history::Entry {
            rule: e.rule.name.clone(),
            status: e.alert.status.name().into(),
            at: payload::rfc3339(e.alert.ends_at_ms.unwrap_or_else(unix_ms)),
            value: e.measurement.value,
            severity: e.rule.severity.clone(),
            metric: e.rule.metric.name().into(),
            subjects: e.measurement.subjects.clone(),
        });
        tracing::info!(rule = e.rule.name, status = e.alert.status.name(), value = ?e.measurement.value, "alert");
    }
    if !leader {
        return;
    }
    if !e.resend {
        let body = payload::webhook(&e.alert, external);
        for url in &e.rule.webhooks {
            alerts.notifier.send(url, &body);
        }
    }
    let body = payload::alertmanager(&e.alert);
    for base in &e.rule.alertmanagers {
        alerts.notifier.send(&format!("{}/api/v2/alerts", base.trim_end_matches('/')), &body);
    }
}

/// Evaluates every `settings.period` until the process ends.
pub fn start(ctrl: Arc<Controller>, settings: Settings) {
    tokio::spawn(async move {
        let fresh = || Evaluator { external_url: settings.external_url.clone(), ..Default::default() };
        let mut evaluator = fresh();
        let mut tick = tokio::time::interval(settings.period.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_leader = ctrl.is_leader();
        loop {
            tick.tick().await;
            let rules = rules_of(&ctrl);
            // With other replicas, the services' figures are the fleet's.
            let fleet = match source::ask_for(&rules) {
                Some(ask) => crate::remote::shards::fleet_monitor(&ctrl, &ask).await,
                None => None,
            };
            // The other replicas' proxies are read from the store: off the
            // async workers.
            let (c, mut ev) = (ctrl.clone(), std::mem::replace(&mut evaluator, fresh()));
            let ticked = tokio::task::spawn_blocking(move || {
                let with_fleet = fleet.as_ref().map(|monitor| source::WithFleet { ctrl: &c, monitor });
                let from: &dyn Source = match &with_fleet {
                    Some(w) => w,
                    None => c.as_ref(),
                };
                let out = ev.tick(rules, from, unix_ms());
                (ev, out)
            })
            .await;
            let Ok((ev, (views, mut events))) = ticked else { continue };
            evaluator = ev;
            ctrl.alerts.set_rules(views);
            let leader = ctrl.is_leader();
            if leader && !was_leader {
                events.extend(evaluator.firing());
            }
            was_leader = leader;
            for e in &events {
                deliver(&ctrl.alerts, e, leader, &settings.external_url);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::source::tests::{proxy, rule, Fixed};

    fn statuses(events: &[Event]) -> Vec<(&str, bool)> {
        events.iter().map(|e| (e.alert.status.name(), e.resend)).collect()
    }

    #[test]
    fn evaluator_fires_resends_to_alertmanagers_and_resolves_removed_rules() {
        let mut ev = Evaluator { external_url: "http://cp:9900".into(), ..Default::default() };
        let r = rule("{metric: proxy_nack, above: 0, for: 1s, alertmanagers: ['http://am:9093']}");
        let nacking = Fixed { proxies: vec![proxy("a", "edge", true)], ..Default::default() };
        let (views, events) = ev.tick(vec![r.clone()], &nacking, 10_000);
        assert_eq!((views[0].state.as_str(), events.len()), ("pending", 0));
        let (views, events) = ev.tick(vec![r.clone()], &nacking, 11_000);
        assert_eq!((views[0].state.as_str(), statuses(&events)), ("firing", vec![("firing", false)]));
        assert_eq!(events[0].alert.starts_at_ms, 10_000);
        assert_eq!(ev.firing().len(), 1, "a new leader sends what fires");
        let (_, events) = ev.tick(vec![r.clone()], &nacking, 12_000);
        assert!(events.is_empty());
        let later = 11_000 + payload::RESEND.as_millis() as u64;
        let (_, events) = ev.tick(vec![r.clone()], &nacking, later);
        assert_eq!(statuses(&events), [("firing", true)], "Alertmanagers hear it again");
        let (views, events) = ev.tick(vec![], &nacking, later + 1_000);
        assert!(views.is_empty());
        assert_eq!(statuses(&events), [("resolved", false)], "a deleted rule resolves");
        assert_eq!(events[0].alert.ends_at_ms, Some(later + 1_000));
    }
}
