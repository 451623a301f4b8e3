//! A request descriptor's limit, found as the reference rate limit service
//! finds it: each entry in turn picks, at its level of the domain's tree,
//! the descriptor with its key and value, else the one with its key and no
//! value; the limit is that of the descriptor the last entry picked (none
//! when an entry finds nothing, or the last one has no limit), with that
//! descriptor's `shadow_mode`.

use super::spec::{Descriptor, Limit, Spec};
use std::collections::HashMap;

/// Every `RateLimit` resource's domain, by domain.
#[derive(Debug, Default)]
pub struct Domains {
    domains: HashMap<String, Vec<Descriptor>>,
}

impl Domains {
    /// Specs of one domain given twice are merged, the later's
    /// descriptors after the earlier's.
    pub fn new(specs: impl IntoIterator<Item = Spec>) -> Self {
        let mut domains: HashMap<String, Vec<Descriptor>> = HashMap::new();
        for s in specs {
            domains.entry(s.domain).or_default().extend(s.descriptors);
        }
        Self { domains }
    }

    /// The limit of a request descriptor's `(key, value)` entries in
    /// `domain`, and whether it is in shadow mode.
    pub fn limit<'a>(&'a self, domain: &str, entries: &[(&str, &str)]) -> Option<(&'a Limit, bool)> {
        let mut level = self.domains.get(domain)?.as_slice();
        let mut picked = None;
        for (k, v) in entries {
            let d = level
                .iter()
                .find(|d| d.key == *k && !d.value.is_empty() && d.value == *v)
                .or_else(|| level.iter().find(|d| d.key == *k && d.value.is_empty()))?;
            picked = Some(d);
            level = &d.descriptors;
        }
        let picked: &Descriptor = picked?;
        picked.rate_limit.as_ref().map(|l| (l, picked.shadow_mode))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: serde_json::Value) -> Spec {
        serde_json::from_value(yaml).expect("spec")
    }

    #[test]
    fn exact_value_first_then_the_key_default_and_nested_keys() {
        let d = Domains::new([spec(serde_json::json!({
            "domain": "api",
            "descriptors": [
                {"key": "user", "rate_limit": {"unit": "minute", "requests_per_unit": 10}},
                {"key": "user", "value": "alice", "rate_limit": {"unit": "second", "requests_per_unit": 100},
                 "descriptors": [{"key": "path", "value": "/x", "rate_limit": {"unit": "hour", "requests_per_unit": 1}}]},
                {"key": "tier", "descriptors": [{"key": "user"}]},
                {"key": "trial", "shadow_mode": true, "rate_limit": {"unit": "minute", "requests_per_unit": 2}},
            ],
        }))]);
        let rpu = |entries: &[(&str, &str)]| d.limit("api", entries).map(|l| l.0.requests_per_unit);
        assert_eq!(rpu(&[("user", "bob")]), Some(10));
        assert_eq!(rpu(&[("user", "alice")]), Some(100));
        assert_eq!(rpu(&[("user", "alice"), ("path", "/x")]), Some(1));
        assert_eq!(rpu(&[("user", "alice"), ("path", "/y")]), None);
        assert_eq!(rpu(&[("tier", "gold"), ("user", "bob")]), None);
        assert_eq!(rpu(&[("other", "x")]), None);
        assert_eq!(d.limit("nope", &[("user", "bob")]), None);
        assert_eq!(d.limit("api", &[("user", "bob")]).map(|l| l.1), Some(false));
        assert_eq!(d.limit("api", &[("trial", "x")]).map(|l| (l.0.requests_per_unit, l.1)), Some((2, true)));
    }
}
