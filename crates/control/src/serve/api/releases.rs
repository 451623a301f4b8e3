//! Releases: list them with their state, read one, start one (apply a
//! Release document), and act on one (pause, resume, promote, abort).

use crate::releases::driver::{operate, OperateError};
use crate::releases::machine::Action;
use crate::releases::spec::candidate_weight;
use crate::releases::spec::{check, Status};
use crate::resources::document::{parse_documents, Document};
use crate::resources::kind::Kind;
use crate::resources::resource::{of_kind, Resource};
use crate::serve::api::access::authorize;
use crate::serve::api::auth::Role;
use crate::serve::api::reply::{bad_request, error, not_found};
use crate::state::controller::Controller;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// One release as the API shows it: `step` counts from 1, `weight` is the
/// candidate's percent of traffic now.
fn view(r: &Resource) -> Value {
    let status = Status::of(&r.doc);
    let release = check(&r.doc).ok();
    json!({
        "name": r.name,
        "service": release.as_ref().map(|x| x.service.clone()),
        "phase": status.phase,
        "step": status.step + 1,
        "steps": release.as_ref().map(|x| x.steps.clone()).unwrap_or_default(),
        "weight": candidate_weight(&status),
        "stableCluster": release.as_ref().map(|x| x.stable_cluster()),
        "candidateCluster": release.as_ref().map(|x| x.candidate_cluster()),
        "started": status.step_started_ms != 0,
        "message": status.message,
        "analyses": status.analyses,
    })
}

pub async fn list(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "releases");
    let state = ctrl.stored();
    let items: Vec<Value> = of_kind(&state.resources, Kind::Release).map(|(_, r)| view(r)).collect();
    Json(json!({"revision": state.revision, "items": items})).into_response()
}

pub async fn get_one(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "releases");
    match ctrl.stored().resources.get(&(Kind::Release, name.clone())) {
        Some(r) => Json(view(r)).into_response(),
        None => not_found(format!("Release/{name} not found")),
    }
}

#[derive(Deserialize)]
pub struct StartBody {
    /// A Release document as an object, or `text`: YAML/JSON.
    #[serde(default)]
    document: Option<Document>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    message: String,
}

/// Starts a release: applies one Release document (the driver takes it from there).
pub async fn start(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, Json(body): Json<StartBody>) -> Response {
    let actor = authorize!(ctrl, headers, Role::Editor, "start", "releases");
    let mut docs: Vec<Document> = body.document.into_iter().collect();
    if let Some(text) = &body.text {
        match parse_documents(text) {
            Ok(more) => docs.extend(more),
            Err(e) => return bad_request("parse", e),
        }
    }
    if docs.len() != 1 || Kind::parse(&docs[0].kind) != Some(Kind::Release) {
        return bad_request("release", "exactly one document of kind Release is expected");
    }
    match ctrl.apply(&docs, &actor.name, &body.message, false) {
        Ok(outcome) => {
            let name = &docs[0].metadata.name;
            let _ = ctrl.store().audit(&actor.name, "release start", name, true, &format!("{:?}", outcome.revision));
            Json(outcome).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/releases/{name}/{action}`: pause, resume, promote or abort.
pub async fn act(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let target = format!("Release/{name}");
    let actor = authorize!(ctrl, headers, Role::Editor, &format!("release {action}"), &target);
    let Some(a) = Action::parse(&action) else {
        return bad_request("action", format!("unknown action '{action}': pause, resume, promote or abort"));
    };
    let c = ctrl.clone();
    let who = actor.name.clone();
    let n = name.clone();
    let done = tokio::task::spawn_blocking(move || operate(&c, &n, a, &who)).await;
    match done {
        Ok(Ok(_)) => {
            let _ = ctrl.store().audit(&actor.name, &format!("release {action}"), &target, true, "");
            match ctrl.stored().resources.get(&(Kind::Release, name)) {
                Some(r) => Json(view(r)).into_response(),
                None => not_found(format!("{target} not found")),
            }
        }
        Ok(Err(OperateError::NotFound(what))) => not_found(format!("{what} not found")),
        Ok(Err(OperateError::Refused(why))) => error(StatusCode::CONFLICT, "conflict", why, json!([])),
        Ok(Err(OperateError::Apply(e))) => e.into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string(), json!([])),
    }
}
