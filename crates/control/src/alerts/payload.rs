//! What notifications carry. Two shapes, one alert:
//!
//! - `webhooks:` receive Alertmanager's webhook payload (version "4"), the
//!   JSON Alertmanager itself posts to its receivers, so any receiver written
//!   for Alertmanager reads Legate's alerts;
//! - `alertmanagers:` receive what Prometheus sends an Alertmanager: a JSON
//!   list of alerts on `POST /api/v2/alerts`. A firing alert carries no
//!   `endsAt` (Alertmanager applies its `resolve_timeout`) and is sent again
//!   every [`RESEND`] while it fires; a resolved one carries its `endsAt`.

use crate::alerts::rule::Rule;
use crate::resources::resource::content_hash;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// How often a firing alert is sent to Alertmanagers again.
pub const RESEND: Duration = Duration::from_secs(60);

/// The receiver name in webhook payloads.
pub const RECEIVER: &str = "legate";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Firing,
    Resolved,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }
}

/// One alert, as both payloads carry it.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub status: Status,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at_ms: u64,
    pub ends_at_ms: Option<u64>,
    pub generator_url: String,
}

/// The alert a rule raises with `value` measured over `subjects`.
pub fn alert(
    rule: &Rule,
    status: Status,
    value: Option<f64>,
    subjects: &[String],
    times: (u64, Option<u64>),
    external: &str,
) -> Alert {
    let mut labels = rule.labels.clone();
    labels.insert("alertname".into(), rule.name.clone());
    labels.insert("severity".into(), rule.severity.clone());
    labels.insert("metric".into(), rule.metric.name().into());
    if let Some(s) = &rule.service {
        labels.insert("service".into(), s.clone());
    }
    let mut annotations = rule.annotations.clone();
    let shown = value.map_or("no data".to_string(), |v| format!("{v}"));
    annotations.entry("summary".into()).or_insert_with(|| {
        format!("{} {} {} {} ({shown})", rule.name, rule.metric.name(), rule.threshold.word(), rule.threshold.value())
    });
    annotations.insert("value".into(), shown);
    if !subjects.is_empty() {
        annotations.insert("subjects".into(), subjects.join(", "));
    }
    Alert {
        status,
        labels,
        annotations,
        starts_at_ms: times.0,
        ends_at_ms: times.1,
        generator_url: format!("{}/v1/alerts", external.trim_end_matches('/')),
    }
}

/// RFC 3339 (milliseconds, UTC) of Unix milliseconds.
pub fn rfc3339(ms: u64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Alertmanager's fingerprint of a label set: a 64-bit hash, 16 hex digits.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut bytes = Vec::new();
    for (k, v) in labels {
        bytes.extend_from_slice(k.as_bytes());
        bytes.push(0xff);
        bytes.extend_from_slice(v.as_bytes());
        bytes.push(0xff);
    }
    content_hash(&bytes)
}

/// Alertmanager's webhook payload (version 4) for one alert, grouped by alertname.
pub fn webhook(a: &Alert, external: &str) -> Value {
    let name = a.labels.get("alertname").cloned().unwrap_or_default();
    json!({
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{name}\"}}"),
        "truncatedAlerts": 0,
        "status": a.status.name(),
        "receiver": RECEIVER,
        "groupLabels": {"alertname": name},
        "commonLabels": a.labels,
        "commonAnnotations": a.annotations,
        "externalURL": external,
        "alerts": [{
            "status": a.status.name(),
            "labels": a.labels,
            "annotations": a.annotations,
            "startsAt": rfc3339(a.starts_at_ms),
            // Alertmanager's zero time for an alert that has not ended.
            "endsAt": a.ends_at_ms.map_or("0001-01-01T00:00:00Z".to_string(), rfc3339),
            "generatorURL": a.generator_url,
            "fingerprint": fingerprint(&a.labels),
        }],
    })
}

/// The body of Alertmanager's `POST /api/v2/alerts` for one alert.
pub fn alertmanager(a: &Alert) -> Value {
    let mut one = json!({
        "labels": a.labels,
        "annotations": a.annotations,
        "startsAt": rfc3339(a.starts_at_ms),
        "generatorURL": a.generator_url,
    });
    if let Some(end) = a.ends_at_ms {
        one["endsAt"] = json!(rfc3339(end));
    }
    json!([one])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::source::tests::rule;

    #[test]
    fn webhook_payload_has_alertmanagers_shape() {
        let r = rule("{service: checkout, metric: error_rate, above: 0.05, severity: critical, labels: {team: pay}}");
        let a =
            alert(&r, Status::Firing, Some(0.25), &["checkout".into()], (1_700_000_000_000, None), "http://cp:9900/");
        let v = webhook(&a, "http://cp:9900");
        for key in [
            "version",
            "groupKey",
            "status",
            "receiver",
            "groupLabels",
            "commonLabels",
            "commonAnnotations",
            "externalURL",
            "alerts",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!(v["version"], "4");
        assert_eq!(v["groupKey"], "{}:{alertname=\"r\"}");
        assert_eq!(v["status"], "firing");
        let one = &v["alerts"][0];
        assert_eq!(one["labels"]["alertname"], "r");
        assert_eq!(one["labels"]["service"], "checkout");
        assert_eq!(one["labels"]["severity"], "critical");
        assert_eq!(one["labels"]["team"], "pay");
        assert_eq!(one["annotations"]["value"], "0.25");
        assert_eq!(one["startsAt"], "2023-11-14T22:13:20.000Z");
        assert_eq!(one["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(one["generatorURL"], "http://cp:9900/v1/alerts");
        assert_eq!(one["fingerprint"].as_str().map(str::len), Some(16));
        let resolved = alert(&r, Status::Resolved, Some(0.0), &[], (1_700_000_000_000, Some(1_700_000_060_000)), "");
        let v = webhook(&resolved, "");
        assert_eq!(
            (v["status"].as_str(), v["alerts"][0]["endsAt"].as_str()),
            (Some("resolved"), Some("2023-11-14T22:14:20.000Z"))
        );
        assert_eq!(one["fingerprint"], v["alerts"][0]["fingerprint"], "same labels, same fingerprint");
    }

    #[test]
    fn alertmanager_list_ends_only_when_resolved() {
        let r = rule("{metric: proxy_down, above: 0}");
        let firing = alertmanager(&alert(&r, Status::Firing, Some(1.0), &["n1".into()], (0, None), "http://cp"));
        assert!(firing[0].get("endsAt").is_none(), "{firing}");
        assert_eq!(firing[0]["annotations"]["subjects"], "n1");
        let resolved = alertmanager(&alert(&r, Status::Resolved, Some(0.0), &[], (0, Some(5_000)), "http://cp"));
        assert_eq!(resolved[0]["endsAt"], "1970-01-01T00:00:05.000Z");
    }
}
