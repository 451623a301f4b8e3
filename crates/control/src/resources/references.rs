//! References between raw Envoy resources, checked at apply: a route's
//! cluster (`route.cluster`, `weighted_clusters`, `request_mirror_policies`),
//! a connection manager's RDS name, an EDS cluster's load assignment and an
//! SDS secret name (each over ADS or this server's `api_config_source`) must
//! name a resource that the proxies receiving the reference also receive.
//! Resources of the proxies' own bootstraps are out of the control plane's
//! sight: an apply that relies on them is forced (`ctl apply --force`).
//!
//! Cheap on purpose: one walk of the documents' JSON, and only the references
//! an apply can have broken are judged (those of the resources it changed,
//! and those naming a resource it changed or removed).

use crate::discovery::node::NodeInfo;
use crate::resources::document::NodeSelector;
use crate::resources::kind::Kind;
use crate::resources::resource::{DocError, ResourceMap};
use serde_json::Value;
use std::collections::BTreeSet;

/// One reference: the kind and name it names, and the field naming it.
#[derive(Debug, PartialEq)]
pub struct Ref {
    pub kind: Kind,
    pub name: String,
    pub path: String,
}

/// Either spelling protobuf JSON allows (snake_case or lowerCamelCase).
fn field<'a>(o: &'a serde_json::Map<String, Value>, snake: &str) -> Option<(&'a str, &'a Value)> {
    if let Some((k, v)) = o.get_key_value(snake) {
        return Some((k.as_str(), v));
    }
    let mut camel = String::with_capacity(snake.len());
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            camel.push(c.to_ascii_uppercase());
            up = false;
        } else {
            camel.push(c);
        }
    }
    o.get_key_value(&camel).map(|(k, v)| (k.as_str(), v))
}

/// A config source this control plane answers: ADS, or an `api_config_source`.
fn served_here(source: Option<(&str, &Value)>) -> bool {
    source
        .and_then(|(_, v)| v.as_object())
        .is_some_and(|o| o.contains_key("ads") || field(o, "api_config_source").is_some())
}

/// Every reference in a raw Envoy resource's `spec`.
pub fn references(kind: Kind, spec: &Value) -> Vec<Ref> {
    let mut out = Vec::new();
    if kind == Kind::Cluster {
        eds_reference(spec, &mut out);
    }
    walk(spec, "spec", &mut out);
    out
}

/// An EDS cluster's load assignment (`eds_cluster_config.service_name`, or
/// the cluster's name).
fn eds_reference(spec: &Value, out: &mut Vec<Ref>) {
    let Some(o) = spec.as_object() else { return };
    if field(o, "type").and_then(|(_, v)| v.as_str()) != Some("EDS") {
        return;
    }
    let eds = field(o, "eds_cluster_config").and_then(|(k, v)| v.as_object().map(|v| (k, v)));
    if !eds.is_some_and(|(_, e)| served_here(field(e, "eds_config"))) {
        return;
    }
    let service = eds.and_then(|(k, e)| field(e, "service_name").map(|(s, v)| (format!("spec.{k}.{s}"), v)));
    let (path, name) = match service.and_then(|(p, v)| v.as_str().filter(|s| !s.is_empty()).map(|s| (p, s))) {
        Some((p, s)) => (p, s),
        None => ("spec.name".to_string(), field(o, "name").and_then(|(_, v)| v.as_str()).unwrap_or_default()),
    };
    out.push(Ref { kind: Kind::ClusterLoadAssignment, name: name.to_string(), path });
}

fn walk(v: &Value, path: &str, out: &mut Vec<Ref>) {
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, &format!("{path}[{i}]"), out);
            }
        }
        Value::Object(o) => {
            object_references(o, path, out);
            for (k, child) in o {
                walk(child, &format!("{path}.{k}"), out);
            }
        }
        _ => {}
    }
}

/// The references an object itself makes: an SDS secret config, an RDS
/// config, a route action's clusters.
fn object_references(o: &serde_json::Map<String, Value>, path: &str, out: &mut Vec<Ref>) {
    let name = |key: &str| field(o, key).and_then(|(k, v)| v.as_str().map(|s| (k, s)));
    if served_here(field(o, "sds_config")) {
        if let Some((k, n)) = name("name") {
            out.push(Ref { kind: Kind::Secret, name: n.into(), path: format!("{path}.{k}") });
        }
    }
    if served_here(field(o, "config_source")) {
        if let Some((k, n)) = name("route_config_name") {
            out.push(Ref { kind: Kind::RouteConfiguration, name: n.into(), path: format!("{path}.{k}") });
        }
    }
    let Some((rk, Value::Object(action))) = field(o, "route") else { return };
    let at = format!("{path}.{rk}");
    let cluster = |out: &mut Vec<Ref>, obj: &serde_json::Map<String, Value>, key: &str, at: String| {
        if let Some((k, Value::String(n))) = field(obj, key) {
            out.push(Ref { kind: Kind::Cluster, name: n.clone(), path: format!("{at}.{k}") });
        }
    };
    cluster(out, action, "cluster", at.clone());
    if let Some((wk, Value::Object(w))) = field(action, "weighted_clusters") {
        if let Some((ck, Value::Array(cs))) = field(w, "clusters") {
            for (i, c) in cs.iter().enumerate() {
                if let Value::Object(c) = c {
                    cluster(out, c, "name", format!("{at}.{wk}.{ck}[{i}]"));
                }
            }
        }
    }
    if let Some((mk, Value::Array(ms))) = field(action, "request_mirror_policies") {
        for (i, m) in ms.iter().enumerate() {
            if let Value::Object(m) = m {
                cluster(out, m, "cluster", format!("{at}.{mk}[{i}]"));
            }
        }
    }
}

/// True when every node `by` selects is selected by `def` as well (judged
/// from the selectors alone).
fn covers(def: &NodeSelector, by: &NodeSelector) -> bool {
    let within = |d: &[String], b: &[String]| d.is_empty() || (!b.is_empty() && b.iter().all(|x| d.contains(x)));
    within(&def.ids, &by.ids)
        && within(&def.clusters, &by.clusters)
        && def.metadata.iter().all(|(k, v)| by.metadata.get(k) == Some(v))
}

/// The references `next` leaves unresolved that this apply could have
/// broken: those of the resources in `changed`, and those naming one.
/// `published` is what `next` publishes (Services' clusters included);
/// `nodes` the connected proxies, which decide when the selectors alone
/// cannot.
pub fn dangling(
    next: &ResourceMap,
    published: &ResourceMap,
    changed: &BTreeSet<(Kind, String)>,
    nodes: &[NodeInfo],
) -> Vec<DocError> {
    let mut errors = Vec::new();
    for ((kind, name), r) in next.iter().filter(|((k, _), _)| k.is_envoy() && *k != Kind::Runtime) {
        let own_changed = changed.contains(&(*kind, name.clone()));
        for re in references(*kind, &r.doc.spec) {
            let key = (re.kind, re.name.clone());
            if !own_changed && !changed.contains(&key) {
                continue;
            }
            let reason = match published.get(&key) {
                None => format!("no {} named '{}' is defined", re.kind.name(), re.name),
                Some(def) if covers(&def.nodes, &r.nodes) => continue,
                Some(def) => match nodes.iter().find(|n| r.nodes.matches(n) && !def.nodes.matches(n)) {
                    Some(n) => format!(
                        "the {} '{}' is not sent to proxy '{}', which receives this",
                        re.kind.name(),
                        re.name,
                        n.id
                    ),
                    None => continue,
                },
            };
            errors.push(DocError { resource: format!("{}/{name}", kind.name()), path: re.path, reason });
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(kind: Kind, yaml: &str) -> Vec<(Kind, String, String)> {
        let v: Value = serde_yaml_ng::from_str(yaml).expect("yaml");
        references(kind, &v).into_iter().map(|r| (r.kind, r.name, r.path)).collect()
    }

    #[test]
    fn finds_routes_rds_eds_and_sds_references() {
        let route = "virtual_hosts: [{routes: [{route: {cluster: a, request_mirror_policies: [{cluster: m}]}}, \
                     {route: {weightedClusters: {clusters: [{name: b}]}}}]}]";
        assert_eq!(
            refs(Kind::RouteConfiguration, route),
            vec![
                (Kind::Cluster, "a".into(), "spec.virtual_hosts[0].routes[0].route.cluster".into()),
                (
                    Kind::Cluster,
                    "m".into(),
                    "spec.virtual_hosts[0].routes[0].route.request_mirror_policies[0].cluster".into()
                ),
                (
                    Kind::Cluster,
                    "b".into(),
                    "spec.virtual_hosts[0].routes[1].route.weightedClusters.clusters[0].name".into()
                ),
            ]
        );
        let eds = "{name: c, type: EDS, eds_cluster_config: {eds_config: {ads: {}}}, transport_socket: {typed_config: \
                   {common_tls_context: {tls_certificate_sds_secret_configs: [{name: s, sds_config: {ads: {}}}, \
                   {name: file, sds_config: {path_config_source: {path: /x}}}]}}}}";
        let found = refs(Kind::Cluster, eds);
        assert_eq!(found[0], (Kind::ClusterLoadAssignment, "c".into(), "spec.name".into()));
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[1].1, "s");
        let rds =
            "{filter_chains: [{filters: [{typed_config: {rds: {route_config_name: r, config_source: {ads: {}}}}}]}]}";
        assert_eq!(refs(Kind::Listener, rds)[0].1, "r");
    }

    #[test]
    fn selectors_cover_only_what_they_surely_select() {
        let sel = |ids: &[&str], clusters: &[&str]| NodeSelector {
            ids: ids.iter().map(|s| s.to_string()).collect(),
            clusters: clusters.iter().map(|s| s.to_string()).collect(),
            ..NodeSelector::default()
        };
        assert!(covers(&sel(&[], &[]), &sel(&["a"], &[])));
        assert!(covers(&sel(&["a", "b"], &[]), &sel(&["a"], &[])));
        assert!(!covers(&sel(&["a"], &[]), &sel(&[], &[])));
        assert!(!covers(&sel(&["a"], &[]), &sel(&["a", "b"], &[])));
        assert!(!covers(&sel(&[], &["c"]), &sel(&["a"], &[])));
    }
}
