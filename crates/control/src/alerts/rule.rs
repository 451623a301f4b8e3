//! An `AlertRule` as users write it, checked field by field, and the
//! compiled rule evaluation reads. `resources/compile` calls [`check`] so a
//! rule that cannot be evaluated is refused at apply, like any resource.

use crate::resources::document::{Document, NodeSelector};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Problems with one document: (field path, reason).
pub type Problems = Vec<(String, String)>;

/// What a rule measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleMetric {
    /// 5xx / requests of a service (a cluster) over `window`.
    ErrorRate,
    /// The service's upstream p99 latency over `window`, in milliseconds.
    P99Ms,
    /// The service's requests per second over `window`.
    Rps,
    /// Proxies whose last response (of any type) was NACKed.
    ProxyNack,
    /// Proxies that have not ACKed what they were last sent.
    ProxyLag,
    /// Proxies seen connected that are no longer connected.
    ProxyDown,
    /// Connected proxies that have sent no metrics report for `window`.
    ProxySilent,
    /// Days until the nearest expiry among the Secrets' certificates.
    CertExpiryDays,
    /// Nodes the fault detector finds abnormal (any cause).
    NodeAbnormal,
    /// Abnormal nodes whose repair failed (a restart did not help, or no
    /// agent could restart them).
    RepairFailed,
}

pub const METRICS: &str =
    "error_rate, p99_ms, rps, proxy_nack, proxy_lag, proxy_down, proxy_silent, cert_expiry_days, node_abnormal, repair_failed";

impl RuleMetric {
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::ErrorRate => "error_rate",
            Self::P99Ms => "p99_ms",
            Self::Rps => "rps",
            Self::ProxyNack => "proxy_nack",
            Self::ProxyLag => "proxy_lag",
            Self::ProxyDown => "proxy_down",
            Self::ProxySilent => "proxy_silent",
            Self::CertExpiryDays => "cert_expiry_days",
            Self::NodeAbnormal => "node_abnormal",
            Self::RepairFailed => "repair_failed",
        }
    }

    /// Metrics read from the monitor's figures for one service.
    pub fn is_service(self) -> bool {
        matches!(self, Self::ErrorRate | Self::P99Ms | Self::Rps)
    }

    /// Metrics that count proxies (the rule's `nodes` selects which).
    pub fn is_proxy(self) -> bool {
        matches!(
            self,
            Self::ProxyNack
                | Self::ProxyLag
                | Self::ProxyDown
                | Self::ProxySilent
                | Self::NodeAbnormal
                | Self::RepairFailed
        )
    }
}

/// The condition: the value above or below a threshold (strictly).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Above(f64),
    Below(f64),
}

impl Threshold {
    pub fn breached(self, value: f64) -> bool {
        match self {
            Self::Above(t) => value > t,
            Self::Below(t) => value < t,
        }
    }

    pub fn value(self) -> f64 {
        match self {
            Self::Above(t) | Self::Below(t) => t,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Self::Above(_) => "above",
            Self::Below(_) => "below",
        }
    }
}

/// The spec as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    service: Option<String>,
    metric: String,
    #[serde(default)]
    above: Option<f64>,
    #[serde(default)]
    below: Option<f64>,
    #[serde(default)]
    window: Option<String>,
    #[serde(default, rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    webhooks: Vec<String>,
    #[serde(default)]
    alertmanagers: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    summary: Option<String>,
    #[serde(default)]
    nodes: NodeSelector,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    min_requests: u64,
}

/// A rule ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub service: Option<String>,
    pub metric: RuleMetric,
    pub threshold: Threshold,
    pub window: Duration,
    pub for_: Duration,
    pub severity: String,
    /// Receivers of Alertmanager's webhook payload (what it sends its receivers).
    pub webhooks: Vec<String>,
    /// Alertmanagers, sent the alert list of `POST /api/v2/alerts`.
    pub alertmanagers: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Which proxies a proxy metric counts (empty: all).
    pub nodes: NodeSelector,
    /// Which Secrets `cert_expiry_days` reads (empty: all).
    pub secrets: Vec<String>,
    /// Service metrics: fewer requests in the window than this is no data.
    pub min_requests: u64,
}

pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// Reads and checks an AlertRule document: the rule, or every problem with
/// its field path.
pub fn check(doc: &Document) -> Result<Rule, Problems> {
    let spec: Spec = crate::resources::mesh::spec::parse(doc)?;
    let mut p: Problems = Vec::new();
    let metric = RuleMetric::parse(&spec.metric);
    match metric {
        None => p.push(("spec.metric".into(), format!("unknown metric '{}' (one of {METRICS})", spec.metric))),
        Some(m) if m.is_service() && spec.service.as_deref().is_none_or(str::is_empty) => {
            p.push(("spec.service".into(), format!("a cluster name is required for {}", m.name())))
        }
        Some(_) => {}
    }
    let threshold = match (spec.above, spec.below) {
        (Some(a), None) if a.is_finite() => Some(Threshold::Above(a)),
        (None, Some(b)) if b.is_finite() => Some(Threshold::Below(b)),
        (Some(_), Some(_)) => {
            p.push(("spec.below".into(), "set either above or below, not both".into()));
            None
        }
        (None, None) => {
            p.push(("spec.above".into(), "one of above or below is required (proxy metrics: above: 0)".into()));
            None
        }
        (a, _) => {
            let field = if a.is_some() { "spec.above" } else { "spec.below" };
            p.push((field.into(), "must be a finite number".into()));
            None
        }
    };
    let window = duration(&mut p, "spec.window", spec.window.as_deref(), DEFAULT_WINDOW);
    let for_ = duration(&mut p, "spec.for", spec.for_.as_deref(), Duration::ZERO);
    if window.is_zero() {
        p.push(("spec.window".into(), "must be longer than zero".into()));
    }
    let severity = spec.severity.clone().unwrap_or_else(|| "warning".into());
    if severity.is_empty() {
        p.push(("spec.severity".into(), "must not be empty".into()));
    }
    check_urls(&mut p, "spec.webhooks", &spec.webhooks);
    check_urls(&mut p, "spec.alertmanagers", &spec.alertmanagers);
    for k in spec.labels.keys().chain(spec.annotations.keys()) {
        if !label_name(k) {
            let field = if spec.labels.contains_key(k) { "spec.labels" } else { "spec.annotations" };
            p.push((format!("{field}.{k}"), "a name is letters, digits and _, not starting with a digit".into()));
        }
    }
    let (Some(metric), Some(threshold), true) = (metric, threshold, p.is_empty()) else { return Err(p) };
    let mut annotations = spec.annotations;
    if let Some(s) = spec.summary {
        annotations.insert("summary".into(), s);
    }
    Ok(Rule {
        name: doc.metadata.name.clone(),
        service: spec.service.filter(|s| !s.is_empty()),
        metric,
        threshold,
        window,
        for_,
        severity,
        webhooks: spec.webhooks,
        alertmanagers: spec.alertmanagers,
        labels: spec.labels,
        annotations,
        nodes: spec.nodes,
        secrets: spec.secrets,
        min_requests: spec.min_requests,
    })
}

/// A duration such as `30s`, `1m30s`, `500ms`, `2h`.
fn duration(p: &mut Problems, field: &str, text: Option<&str>, default: Duration) -> Duration {
    let Some(text) = text else { return default };
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d <= Duration::from_secs(30 * 86_400) => d,
        Ok(_) => {
            p.push((field.into(), format!("'{text}' is longer than 30 days")));
            default
        }
        Err(e) => {
            p.push((field.into(), format!("'{text}' is not a duration such as 30s, 5m or 1h: {e}")));
            default
        }
    }
}

/// Webhook and Alertmanager URLs: absolute `http://` URLs with a host.
fn check_urls(p: &mut Problems, field: &str, urls: &[String]) {
    for (i, u) in urls.iter().enumerate() {
        if let Err(reason) = crate::remote::webhook::parse_url(u) {
            p.push((format!("{field}[{i}]"), format!("'{u}': {reason}")));
        }
    }
}

/// A Prometheus label name.
fn label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::document::parse_documents;

    fn doc(yaml: &str) -> Document {
        parse_documents(yaml).expect("yaml").remove(0)
    }

    #[test]
    fn the_example_rule_reads() {
        let d = doc("kind: AlertRule\nmetadata: {name: checkout-errors}\nspec:\n  service: checkout\n  metric: error_rate\n  above: 0.05\n  window: 30s\n  for: 10s\n  severity: critical\n  webhooks: [http://127.0.0.1:9099/hook]\n");
        let r = check(&d).expect("valid");
        assert_eq!(r.metric, RuleMetric::ErrorRate);
        assert_eq!(r.threshold, Threshold::Above(0.05));
        assert_eq!((r.window, r.for_), (Duration::from_secs(30), Duration::from_secs(10)));
        assert_eq!(r.service.as_deref(), Some("checkout"));
        let t = crate::remote::webhook::parse_url(&r.webhooks[0]).expect("url");
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("127.0.0.1", 9099, "/hook"));
    }

    fn problems(spec: &str) -> Vec<String> {
        let d = doc(&format!("kind: AlertRule\nmetadata: {{name: r}}\nspec: {spec}\n"));
        check(&d).err().unwrap_or_default().into_iter().map(|(path, _)| path).collect()
    }

    #[test]
    fn problems_name_their_fields() {
        assert_eq!(problems("{metric: latency, above: 1}"), ["spec.metric"]);
        assert_eq!(problems("{metric: error_rate, above: 1}"), ["spec.service"]);
        assert_eq!(problems("{metric: proxy_nack, above: 0, below: 1}"), ["spec.below"]);
        assert_eq!(problems("{metric: proxy_nack}"), ["spec.above"]);
        assert_eq!(problems("{metric: proxy_nack, above: 0, window: soon, for: -1s}"), ["spec.window", "spec.for"]);
        assert_eq!(
            problems("{metric: proxy_nack, above: 0, webhooks: [ftp://x/, 'http://ok:1/a']}"),
            ["spec.webhooks[0]"]
        );
        assert_eq!(problems("{metric: proxy_nack, above: 0, alertmanagers: ['not a url']}"), ["spec.alertmanagers[0]"]);
        assert_eq!(problems("{metric: proxy_nack, above: 0, labels: {9x: a}}"), ["spec.labels.9x"]);
        assert_eq!(problems("{metric: proxy_nack, above: 0, colour: red}"), ["spec.colour"]);
        assert!(problems("{metric: cert_expiry_days, below: 14, for: 1h, secrets: [web]}").is_empty());
    }
}
