//! One document to a validated resource: Envoy kinds through the proxy's own
//! loader (one parser, one validator), higher-level kinds through their
//! own checks, and the name in the spec held to the one in `metadata`.

use crate::resources::document::Document;
use crate::resources::kind::Kind;
use crate::resources::resource::{content_hash, DocError, Resource};
use legate_api::pb::envoy::config::cluster::v3::Cluster;
use legate_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use legate_api::pb::envoy::config::listener::v3::Listener;
use legate_api::pb::envoy::config::route::v3::RouteConfiguration;
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use legate_api::pb::envoy::service::runtime::v3::Runtime;
use legate_api::pb::google::protobuf::Any;
use legate_api::FieldError;

fn decode<T: prost::Message + prost::Name + Default>(doc: &Document) -> Result<(T, Any), Vec<FieldError>> {
    let (msg, _) = legate_api::convert::decode_typed::<T>(doc.spec.clone())?;
    let any = legate_api::any::pack(&msg);
    Ok((msg, any))
}

/// Validates a document with the proxy's own loader (one parser, one validator).
pub fn compile(doc: &Document) -> Result<Resource, Vec<DocError>> {
    let label = format!("{}/{}", doc.kind, doc.metadata.name);
    let err = |path: &str, reason: String| vec![DocError { resource: label.clone(), path: path.to_string(), reason }];
    let Some(kind) = Kind::parse(&doc.kind) else {
        return Err(err(
            "kind",
            format!(
                "unknown kind '{}': expected Listener, Cluster, RouteConfiguration, ClusterLoadAssignment, Secret, Runtime, Service, Gateway, Route, AlertRule, Release, Rollout or RateLimit",
                doc.kind
            ),
        ));
    };
    if doc.metadata.name.is_empty() {
        return Err(err("metadata.name", "value is required".into()));
    }
    let to_doc_errors = |errs: Vec<FieldError>| -> Vec<DocError> {
        errs.into_iter()
            .map(|e| DocError {
                resource: label.clone(),
                path: if e.path.is_empty() { "spec".into() } else { format!("spec.{}", e.path) },
                reason: e.reason,
            })
            .collect()
    };
    if let Some(checked) = control_plane_kind(kind, doc) {
        return checked.map_err(|errs| {
            errs.into_iter().map(|(path, reason)| DocError { resource: label.clone(), path, reason }).collect()
        });
    }
    if !kind.is_envoy() {
        return crate::resources::mesh::check::check(kind, doc).map_err(|errs| {
            errs.into_iter().map(|(path, reason)| DocError { resource: label.clone(), path, reason }).collect()
        });
    }
    let (own_name, any) = match kind {
        Kind::Cluster => decode::<Cluster>(doc).map(|(m, a)| (m.name, a)),
        Kind::ClusterLoadAssignment => decode::<ClusterLoadAssignment>(doc).map(|(m, a)| (m.cluster_name, a)),
        Kind::Listener => decode::<Listener>(doc).map(|(m, a)| (m.name, a)),
        Kind::RouteConfiguration => decode::<RouteConfiguration>(doc).map(|(m, a)| (m.name, a)),
        Kind::Secret => decode::<Secret>(doc).map(|(m, a)| (m.name, a)),
        Kind::Runtime => decode::<Runtime>(doc).and_then(|(m, a)| runtime_values(&m).map(|()| (m.name, a))),
        Kind::Service
        | Kind::Gateway
        | Kind::Route
        | Kind::AlertRule
        | Kind::Release
        | Kind::Rollout
        | Kind::RateLimit => Err(vec![FieldError::new("kind", "not an Envoy resource kind")]),
    }
    .map_err(to_doc_errors)?;
    if kind == Kind::Secret {
        // The PEM a secret carries inline must read, or every proxy would NACK it.
        if let Some((path, reason)) = crate::resources::certinfo::check(&any) {
            return Err(err(&path, reason));
        }
    }
    if own_name != doc.metadata.name {
        let field = if kind == Kind::ClusterLoadAssignment { "spec.cluster_name" } else { "spec.name" };
        return Err(err(field, format!("must equal metadata.name '{}' (is '{own_name}')", doc.metadata.name)));
    }
    let version = content_hash(&any.value);
    Ok(Resource {
        kind,
        name: doc.metadata.name.clone(),
        nodes: doc.metadata.nodes.clone(),
        doc: doc.clone(),
        any,
        version,
    })
}

/// A `Runtime`'s layer as a proxy reads it: every value a number, a
/// string, a boolean or a map (a fractional percent, or nested keys), as
/// Envoy refuses lists and nulls (`Invalid runtime entry value`).
fn runtime_values(r: &Runtime) -> Result<(), Vec<FieldError>> {
    use legate_api::pb::google::protobuf::{value::Kind as V, Value};
    fn walk(v: &Value, path: &str, key: &str) -> Result<(), FieldError> {
        match &v.kind {
            Some(V::StructValue(s)) => {
                s.fields.iter().try_for_each(|(k, v)| walk(v, &format!("{path}.{k}"), &format!("{key}.{k}")))
            }
            Some(V::NullValue(_) | V::ListValue(_)) | None => {
                Err(FieldError::new(path, format!("Invalid runtime entry value for {key}")))
            }
            Some(_) => Ok(()),
        }
    }
    let fields = r.layer.as_ref().map(|l| &l.fields);
    for (k, v) in fields.into_iter().flatten() {
        walk(v, &format!("layer.{k}"), k).map_err(|e| vec![e])?;
    }
    Ok(())
}

/// A Release's version covers its status too: a step is a change.
pub fn release_version(doc: &Document) -> String {
    content_hash(serde_json::to_vec(&(&doc.spec, &doc.status)).unwrap_or_default().as_slice())
}

/// The kinds the control plane reads itself and sends to no proxy
/// (`AlertRule`, `Release`, `Rollout`, `RateLimit`), each checked by its own module;
/// None for the other kinds.
fn control_plane_kind(kind: Kind, doc: &Document) -> Option<Result<Resource, Vec<(String, String)>>> {
    let nodes = |reason: &str| Err(vec![("metadata.nodes".to_string(), reason.to_string())]);
    let checked = match kind {
        Kind::AlertRule if !doc.metadata.nodes.is_empty() => {
            nodes("an AlertRule is not sent to proxies; spec.nodes selects the proxies it counts")
        }
        Kind::AlertRule => crate::alerts::rule::check(doc).map(|_| ()),
        Kind::Release if !doc.metadata.nodes.is_empty() => {
            nodes("a Release is not sent to proxies; its Service's nodes apply")
        }
        Kind::Release => crate::releases::spec::check(doc).map(|_| ()),
        Kind::Rollout => crate::rollouts::board::check_document(doc).map(|_| ()),
        Kind::RateLimit => crate::ratelimit::spec::check(doc).map(|_| ()),
        _ => return None,
    };
    let version = match kind {
        Kind::Release => release_version(doc),
        _ => content_hash(serde_json::to_vec(&doc.spec).unwrap_or_default().as_slice()),
    };
    Some(checked.map(|()| Resource::from_document(kind, doc, version)))
}
