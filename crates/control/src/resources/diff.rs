//! Resource-level and field-level differences between two configurations.

use crate::resources::document::Document;
use crate::resources::kind::Kind;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldChange {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ResourceChange {
    /// `Kind/name`.
    pub resource: String,
    /// `added`, `removed` or `modified`.
    pub change: &'static str,
    pub fields: Vec<FieldChange>,
}

fn key(d: &Document) -> String {
    let kind = Kind::parse(&d.kind).map_or(d.kind.clone(), |k| k.name().to_string());
    format!("{kind}/{}", d.metadata.name)
}

/// What changes from `from` to `to`, resource by resource, field by field.
pub fn diff(from: &[Document], to: &[Document]) -> Vec<ResourceChange> {
    let a: BTreeMap<String, &Document> = from.iter().map(|d| (key(d), d)).collect();
    let b: BTreeMap<String, &Document> = to.iter().map(|d| (key(d), d)).collect();
    let mut out = Vec::new();
    for (k, old) in &a {
        match b.get(k) {
            None => out.push(ResourceChange { resource: k.clone(), change: "removed", fields: vec![] }),
            Some(new) => {
                let mut fields = Vec::new();
                // Shown to people: secret material as fingerprints only.
                let mut old_v = serde_json::to_value(old).unwrap_or(Value::Null);
                let mut new_v = serde_json::to_value(new).unwrap_or(Value::Null);
                super::redact::redact(&mut old_v);
                super::redact::redact(&mut new_v);
                values(&old_v["metadata"], &new_v["metadata"], "metadata", &mut fields);
                values(&old_v["spec"], &new_v["spec"], "spec", &mut fields);
                values(&old_v["status"], &new_v["status"], "status", &mut fields);
                if !fields.is_empty() {
                    out.push(ResourceChange { resource: k.clone(), change: "modified", fields });
                }
            }
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            out.push(ResourceChange { resource: k.clone(), change: "added", fields: vec![] });
        }
    }
    out
}

fn values(a: &Value, b: &Value, path: &str, out: &mut Vec<FieldChange>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = format!("{path}.{k}");
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => values(va, vb, &p, out),
                    (Some(va), None) => out.push(FieldChange { path: p, from: Some(va.clone()), to: None }),
                    (None, Some(vb)) => out.push(FieldChange { path: p, from: None, to: Some(vb.clone()) }),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                values(va, vb, &format!("{path}[{i}]"), out);
            }
        }
        _ if a != b => out.push(FieldChange { path: path.to_string(), from: Some(a.clone()), to: Some(b.clone()) }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(kind: &str, name: &str, spec: Value) -> Document {
        Document {
            kind: kind.into(),
            metadata: crate::resources::document::Metadata { name: name.into(), ..Default::default() },
            spec,
            status: None,
        }
    }

    #[test]
    fn resource_and_field_changes() {
        let a = vec![
            doc("Cluster", "a", serde_json::json!({"name": "a", "connect_timeout": "1s"})),
            doc("Cluster", "gone", serde_json::json!({"name": "gone"})),
        ];
        let b = vec![
            doc("cluster", "a", serde_json::json!({"name": "a", "connect_timeout": "2s", "lb_policy": "RANDOM"})),
            doc("Listener", "new", serde_json::json!({"name": "new"})),
        ];
        let d = diff(&a, &b);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].resource, "Cluster/a");
        assert_eq!(d[0].change, "modified");
        assert_eq!(
            d[0].fields,
            vec![
                FieldChange { path: "spec.connect_timeout".into(), from: Some("1s".into()), to: Some("2s".into()) },
                FieldChange { path: "spec.lb_policy".into(), from: None, to: Some("RANDOM".into()) },
            ]
        );
        assert_eq!((d[1].resource.as_str(), d[1].change), ("Cluster/gone", "removed"));
        assert_eq!((d[2].resource.as_str(), d[2].change), ("Listener/new", "added"));
    }
}
