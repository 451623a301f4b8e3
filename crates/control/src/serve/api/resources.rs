//! The resources: apply (or dry-run) documents, list and read them (Secrets
//! with their certificates' validity), delete one, and see the Envoy
//! resources a proxy receives, compiled ones included.

use crate::resources::certinfo;
use crate::resources::document::{parse_documents, Document};
use crate::resources::kind::Kind;
use crate::resources::redact;
use crate::rollouts::board::{Policy, PolicySpec};
use crate::serve::api::access::authorize;
use crate::serve::api::auth::Role;
use crate::serve::api::reply::{bad_request, error, not_found};
use crate::state::apply::ApplyOptions;
use crate::state::controller::Controller;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

#[derive(Deserialize)]
pub struct ApplyBody {
    /// Documents as objects, or `text`: a YAML/JSON stream.
    #[serde(default)]
    documents: Vec<Document>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    dry_run: bool,
    /// Accept references no resource defines (a route to a cluster only
    /// the proxies' bootstraps hold, ...).
    #[serde(default)]
    force: bool,
    /// Stage the change: a canary share (or named proxies) first, the rest
    /// after the hold if the canary does no worse.
    #[serde(default)]
    rollout: Option<serde_json::Value>,
}

pub async fn apply(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, Json(body): Json<ApplyBody>) -> Response {
    let need = if body.dry_run { Role::Viewer } else { Role::Editor };
    let actor = authorize!(ctrl, headers, need, "apply", "resources");
    let mut docs = body.documents;
    if let Some(text) = &body.text {
        match parse_documents(text) {
            Ok(more) => docs.extend(more),
            Err(e) => return bad_request("parse", e),
        }
    }
    if docs.len() > MAX_DOCUMENTS {
        let msg = format!("{} documents in one apply; at most {MAX_DOCUMENTS}: split it", docs.len());
        return error(StatusCode::PAYLOAD_TOO_LARGE, "too_many_documents", msg, json!([]));
    }
    if let Err(r) = restore_secrets(&ctrl, &mut docs) {
        return *r;
    }
    let policy = match body.rollout.as_ref() {
        // `rollout: false`: applied to every proxy at once, whatever the Rollout policy.
        Some(serde_json::Value::Bool(false)) => None,
        Some(v) => match rollout_policy(v) {
            Ok(p) => Some(p).filter(|_| !body.dry_run),
            Err(r) => return *r,
        },
        None if body.dry_run || docs.iter().all(|d| Kind::parse(&d.kind) == Some(Kind::Rollout)) => None,
        None => ctrl.default_rollout_policy(),
    };
    // A policy is only ever chosen for a real (not dry) run.
    let opts = ApplyOptions { dry_run: body.dry_run, policy: policy.as_ref(), force: body.force, deletes: &[] };
    match ctrl.apply_with(&docs, &actor.name, &body.message, opts) {
        Ok(outcome) => {
            if let Some(rev) = outcome.revision {
                let changed: Vec<String> = outcome.created.iter().chain(&outcome.updated).cloned().collect();
                let _ = ctrl.store().audit(&actor.name, "apply", &changed.join(","), true, &format!("revision {rev}"));
            }
            Json(outcome).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// The `rollout` of an apply, or a 400 naming its bad fields.
fn rollout_policy(v: &serde_json::Value) -> Result<Policy, Box<Response>> {
    let spec: PolicySpec =
        serde_json::from_value(v.clone()).map_err(|e| Box::new(bad_request("rollout", format!("rollout: {e}"))))?;
    spec.check("rollout").map_err(|problems| {
        let errors: Vec<serde_json::Value> = problems
            .iter()
            .map(|(path, reason)| json!({"resource": "apply", "path": path, "reason": reason}))
            .collect();
        Box::new(error(
            StatusCode::BAD_REQUEST,
            "invalid",
            "the rollout is invalid; nothing was applied",
            json!(errors),
        ))
    })
}

/// The most documents one apply takes (a bound on the work and memory one
/// request can ask for; the request body is bounded too).
const MAX_DOCUMENTS: usize = 10_000;

/// Puts back the secrets a redacted copy (read from this API) stands for.
fn restore_secrets(ctrl: &Controller, docs: &mut [Document]) -> Result<(), Box<Response>> {
    let state = ctrl.stored();
    for (i, d) in docs.iter_mut().enumerate() {
        let stored = Kind::parse(&d.kind).and_then(|k| state.resources.get(&(k, d.metadata.name.clone())));
        let path = format!("documents[{i}].spec");
        redact::restore(&mut d.spec, stored.map(|r| &r.doc.spec), &path)
            .map_err(|e| Box::new(bad_request("secret", e)))?;
    }
    Ok(())
}

fn docs_json(ctrl: &Controller, kind: Option<Kind>, name: Option<&str>) -> Vec<serde_json::Value> {
    let state = ctrl.stored();
    state
        .resources
        .iter()
        .filter(|((k, n), _)| kind.is_none_or(|want| *k == want) && name.is_none_or(|want| n == want))
        .map(|(_, r)| {
            let mut spec = r.doc.spec.clone();
            redact::redact(&mut spec);
            let mut v = json!({"kind": r.kind.name(), "metadata": r.doc.metadata, "spec": spec, "version": r.version});
            if let Some(status) = &r.doc.status {
                v["status"] = status.clone();
            }
            if r.kind == Kind::Secret {
                // Each certificate's validity, read from the secret itself.
                let certs = certinfo::certificates(&r.any);
                v["status"] = json!({
                    "expiration_time": certinfo::earliest_expiry(&certs),
                    "certificates": certs,
                });
            }
            v
        })
        .collect()
}

pub async fn list(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "resources");
    Json(json!({"revision": ctrl.current().revision, "items": docs_json(&ctrl, None, None)})).into_response()
}

fn parse_kind(kind: &str) -> Result<Kind, Box<Response>> {
    Kind::parse(kind).ok_or_else(|| Box::new(bad_request("kind", format!("unknown kind '{kind}'"))))
}

pub async fn list_kind(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, Path(kind): Path<String>) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "resources");
    match parse_kind(&kind) {
        Ok(k) => {
            Json(json!({"revision": ctrl.current().revision, "items": docs_json(&ctrl, Some(k), None)})).into_response()
        }
        Err(r) => *r,
    }
}

pub async fn get_one(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Path((kind, name)): Path<(String, String)>,
) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "resources");
    let k = match parse_kind(&kind) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    match docs_json(&ctrl, Some(k), Some(&name)).pop() {
        Some(d) => Json(d).into_response(),
        None => not_found(format!("{}/{name} not found", k.name())),
    }
}

#[derive(Deserialize)]
pub struct MessageQuery {
    #[serde(default)]
    message: String,
}

pub async fn delete_one(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Path((kind, name)): Path<(String, String)>,
    Query(q): Query<MessageQuery>,
) -> Response {
    let target = format!("{kind}/{name}");
    let actor = authorize!(ctrl, headers, Role::Editor, "delete", &target);
    let k = match parse_kind(&kind) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    match ctrl.delete(k, &name, &actor.name, &q.message) {
        Ok(o) => {
            let _ = ctrl.store().audit(&actor.name, "delete", &target, true, &format!("revision {:?}", o.revision));
            Json(o).into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
pub struct EnvoyQuery {
    /// Show what this node id receives (with `cluster`, its node cluster).
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    cluster: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// The Envoy resources a proxy receives, compiled ones included: nothing hidden.
pub async fn envoy_resources(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    Query(q): Query<EnvoyQuery>,
) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "envoy resources");
    let k = match parse_kind(&kind) {
        Ok(k) if k.is_envoy() => k,
        Ok(_) => return bad_request("kind", "an Envoy kind is needed here"),
        Err(r) => return *r,
    };
    let node = crate::discovery::node::NodeInfo {
        id: q.node.clone().unwrap_or_default(),
        cluster: q.cluster.clone().unwrap_or_default(),
        ..Default::default()
    };
    let state = ctrl.current();
    let items: Vec<serde_json::Value> = state
        .for_node(k, &node)
        .filter(|r| q.node.is_some() || r.nodes.is_empty())
        .filter(|r| q.name.as_ref().is_none_or(|n| *n == r.name))
        .map(|r| {
            let mut resource = r.doc.spec.clone();
            redact::redact(&mut resource);
            json!({"kind": r.kind.name(), "name": r.name, "version": r.version, "resource": resource})
        })
        .collect();
    Json(json!({ "items": items })).into_response()
}
