//! What the controller holds of alerts and the API reads: each rule's state
//! as last evaluated, the history and the notifier. A leaf: the evaluator
//! (`alerts/mod.rs`) reads the controller, the controller holds this.

use super::{history, notify};
use serde::Serialize;
use std::sync::Mutex;

/// One rule as `GET /v1/alerts` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RuleView {
    pub name: String,
    pub service: Option<String>,
    pub metric: String,
    pub severity: String,
    pub state: String,
    pub value: Option<f64>,
    pub threshold: f64,
    /// `above` or `below`.
    pub comparison: String,
    /// When the current state began (RFC 3339).
    pub since: String,
    pub window: String,
    #[serde(rename = "for")]
    pub for_: String,
    /// The nodes, secrets or service the value is about.
    pub subjects: Vec<String>,
}

/// What the API reads: each rule's state and the history.
#[derive(Default)]
pub struct Alerts {
    rules: Mutex<Vec<RuleView>>,
    pub history: history::History,
    pub notifier: notify::Notifier,
}

impl Alerts {
    pub fn rules(&self) -> Vec<RuleView> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(super) fn set_rules(&self, views: Vec<RuleView>) {
        *self.rules.lock().unwrap_or_else(|e| e.into_inner()) = views;
    }
}
