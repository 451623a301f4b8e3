//! The `RateLimit` resource: one domain's descriptors and their limits, in
//! the reference rate limit service's config form:
//!
//! ```yaml
//! kind: RateLimit
//! metadata: {name: api}
//! spec:
//!   domain: api
//!   descriptors:
//!     - key: remote_address
//!       rate_limit: {unit: minute, requests_per_unit: 10}
//!     - key: user
//!       value: alice
//!       rate_limit: {unit: second, requests_per_unit: 100}
//!       shadow_mode: true         # counted, never denied
//!       descriptors: [...]        # nested keys: a descriptor's next entry
//! ```
//!
//! Checked with field paths at apply.

use crate::resources::document::Document;
use serde::Deserialize;

/// A limit's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    #[serde(alias = "SECOND")]
    Second,
    #[serde(alias = "MINUTE")]
    Minute,
    #[serde(alias = "HOUR")]
    Hour,
    #[serde(alias = "DAY")]
    Day,
    #[serde(alias = "WEEK")]
    Week,
    #[serde(alias = "MONTH")]
    Month,
    #[serde(alias = "YEAR")]
    Year,
}

impl Unit {
    /// The window in seconds (a month is 30 days, a year 365, as Envoy's
    /// `x-ratelimit-*` headers count them).
    pub fn seconds(self) -> u64 {
        match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3600,
            Self::Day => 86_400,
            Self::Week => 7 * 86_400,
            Self::Month => 30 * 86_400,
            Self::Year => 365 * 86_400,
        }
    }

    /// The unit's number in `RateLimitResponse.RateLimit.Unit`.
    pub fn proto(self) -> i32 {
        match self {
            Self::Second => 1,
            Self::Minute => 2,
            Self::Hour => 3,
            Self::Day => 4,
            Self::Month => 5,
            Self::Year => 6,
            Self::Week => 7,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub unit: Unit,
    pub requests_per_unit: u32,
    /// `unlimited`: matched, never limited.
    #[serde(default)]
    pub unlimited: bool,
    /// The limit's name, for the `x-ratelimit-limit` header's quota policy.
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Descriptor {
    pub key: String,
    /// Empty: any value of the key (the key's default).
    #[serde(default)]
    pub value: String,
    #[serde(default)]
    pub rate_limit: Option<Limit>,
    /// `shadow_mode`, as the reference service: the limit is counted and
    /// its status says what remains, but its code is OK even when over.
    #[serde(default)]
    pub shadow_mode: bool,
    #[serde(default)]
    pub descriptors: Vec<Descriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub descriptors: Vec<Descriptor>,
}

/// Reads and checks a `RateLimit` document: (field path, reason) for each
/// problem.
pub fn check(doc: &Document) -> Result<Spec, Vec<(String, String)>> {
    if !doc.metadata.nodes.is_empty() {
        return Err(vec![("metadata.nodes".into(), "a RateLimit is not sent to proxies".into())]);
    }
    let spec: Spec = serde_path_to_error::deserialize(doc.spec.clone()).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { "spec".to_string() } else { format!("spec.{path}") };
        vec![(path, e.inner().to_string())]
    })?;
    let mut errs = Vec::new();
    if spec.domain.is_empty() {
        errs.push(("spec.domain".into(), "value is required".into()));
    }
    check_level(&spec.descriptors, "spec.descriptors", &mut errs);
    if errs.is_empty() {
        Ok(spec)
    } else {
        Err(errs)
    }
}

fn check_level(level: &[Descriptor], path: &str, errs: &mut Vec<(String, String)>) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, d) in level.iter().enumerate() {
        let p = format!("{path}[{i}]");
        if d.key.is_empty() {
            errs.push((format!("{p}.key"), "value is required".into()));
        }
        if !seen.insert((d.key.as_str(), d.value.as_str())) {
            errs.push((p.clone(), format!("key {:?} with value {:?} is given twice", d.key, d.value)));
        }
        if d.rate_limit.as_ref().is_some_and(|l| l.requests_per_unit == 0 && !l.unlimited) {
            errs.push((format!("{p}.rate_limit.requests_per_unit"), "must be above 0 (or set unlimited)".into()));
        }
        check_level(&d.descriptors, &format!("{p}.descriptors"), errs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(spec: serde_json::Value) -> Document {
        serde_json::from_value(serde_json::json!({"kind": "RateLimit", "metadata": {"name": "x"}, "spec": spec}))
            .expect("document")
    }

    fn errors(spec: serde_json::Value) -> Vec<(String, String)> {
        check(&doc(spec)).err().unwrap_or_default()
    }

    #[test]
    fn problems_are_named_by_field_path() {
        assert!(check(&doc(serde_json::json!({"domain": "d", "descriptors": [{"key": "k"}]}))).is_ok());
        assert_eq!(
            errors(serde_json::json!({"descriptors": []})),
            [("spec.domain".into(), "value is required".into())]
        );
        let bad_unit = errors(
            serde_json::json!({"domain": "d", "descriptors": [{"key": "k", "rate_limit": {"unit": "fortnight", "requests_per_unit": 1}}]}),
        );
        assert_eq!(bad_unit.first().map(|e| e.0.as_str()), Some("spec.descriptors[0].rate_limit.unit"), "{bad_unit:?}");
        let unknown =
            errors(serde_json::json!({"domain": "d", "descriptors": [{"key": "k", "detailed_metric": true}]}));
        assert!(unknown.first().is_some_and(|e| e.1.contains("detailed_metric")), "{unknown:?}");
        assert!(
            check(&doc(serde_json::json!({"domain": "d", "descriptors": [{"key": "k", "shadow_mode": true}]}))).is_ok()
        );
        let nested = errors(serde_json::json!({"domain": "d", "descriptors": [{"key": "k", "descriptors": [
            {"key": "a", "value": "1"}, {"key": "a", "value": "1"}, {"key": "", "rate_limit": {"unit": "second", "requests_per_unit": 0}}]}]}));
        let paths: Vec<&str> = nested.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.descriptors[0].descriptors[1]",
                "spec.descriptors[0].descriptors[2].key",
                "spec.descriptors[0].descriptors[2].rate_limit.requests_per_unit"
            ]
        );
    }
}
