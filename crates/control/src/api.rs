//! The REST API under `/v1`: JSON in and out, errors as `{code, message, errors}`.

use crate::model::{parse_documents, Document, Kind};
use crate::state::{ApplyError, Controller};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub fn router(ctrl: Arc<Controller>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/ui", get(dashboard))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/apply", post(apply))
        .route("/v1/resources", get(list))
        .route("/v1/resources/{kind}", get(list_kind))
        .route("/v1/resources/{kind}/{name}", get(get_one))
        .route("/v1/resources/{kind}/{name}", delete(delete_one))
        .route("/v1/proxies", get(proxies))
        .route("/v1/revisions", get(revisions))
        .route("/v1/diff", get(diff))
        .route("/v1/rollback", post(rollback))
        .with_state(ctrl)
}

/// The dashboard: one page that reads the API below.
async fn dashboard() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("ui/index.html"))
}

fn error(status: StatusCode, code: &str, message: impl Into<String>, errors: serde_json::Value) -> Response {
    (status, Json(json!({"code": code, "message": message.into(), "errors": errors}))).into_response()
}

impl IntoResponse for ApplyError {
    fn into_response(self) -> Response {
        match self {
            ApplyError::Invalid(errs) => {
                error(StatusCode::BAD_REQUEST, "invalid", "the resources are invalid; nothing was applied", json!(errs))
            }
            ApplyError::NotFound(what) => {
                error(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"), json!([]))
            }
            ApplyError::Store(crate::store::StoreError::NoRevision(r)) => {
                error(StatusCode::NOT_FOUND, "not_found", format!("revision {r} does not exist"), json!([]))
            }
            ApplyError::Store(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string(), json!([])),
        }
    }
}

#[derive(Deserialize)]
struct ApplyBody {
    /// Documents as objects, or `text`: a YAML/JSON stream.
    #[serde(default)]
    documents: Vec<Document>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    dry_run: bool,
}

const AUTHOR: &str = "anonymous";

async fn apply(State(ctrl): State<Arc<Controller>>, Json(body): Json<ApplyBody>) -> Response {
    let mut docs = body.documents;
    if let Some(text) = &body.text {
        match parse_documents(text) {
            Ok(more) => docs.extend(more),
            Err(e) => return error(StatusCode::BAD_REQUEST, "parse", e, json!([])),
        }
    }
    match ctrl.apply(&docs, AUTHOR, &body.message, body.dry_run) {
        Ok(outcome) => Json(outcome).into_response(),
        Err(e) => e.into_response(),
    }
}

fn docs_json(ctrl: &Controller, kind: Option<Kind>, name: Option<&str>) -> Vec<serde_json::Value> {
    let state = ctrl.current();
    state
        .resources
        .iter()
        .filter(|((k, n), _)| kind.is_none_or(|want| *k == want) && name.is_none_or(|want| n == want))
        .map(|(_, r)| json!({"kind": r.kind.name(), "metadata": r.doc.metadata, "spec": r.doc.spec, "version": r.version}))
        .collect()
}

async fn list(State(ctrl): State<Arc<Controller>>) -> Response {
    Json(json!({"revision": ctrl.current().revision, "items": docs_json(&ctrl, None, None)})).into_response()
}

fn parse_kind(kind: &str) -> Result<Kind, Box<Response>> {
    Kind::parse(kind)
        .ok_or_else(|| Box::new(error(StatusCode::BAD_REQUEST, "kind", format!("unknown kind '{kind}'"), json!([]))))
}

async fn list_kind(State(ctrl): State<Arc<Controller>>, Path(kind): Path<String>) -> Response {
    match parse_kind(&kind) {
        Ok(k) => {
            Json(json!({"revision": ctrl.current().revision, "items": docs_json(&ctrl, Some(k), None)})).into_response()
        }
        Err(r) => *r,
    }
}

async fn get_one(State(ctrl): State<Arc<Controller>>, Path((kind, name)): Path<(String, String)>) -> Response {
    let k = match parse_kind(&kind) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    match docs_json(&ctrl, Some(k), Some(&name)).pop() {
        Some(d) => Json(d).into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", format!("{}/{name} not found", k.name()), json!([])),
    }
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    message: String,
}

async fn delete_one(
    State(ctrl): State<Arc<Controller>>,
    Path((kind, name)): Path<(String, String)>,
    Query(q): Query<DeleteQuery>,
) -> Response {
    let k = match parse_kind(&kind) {
        Ok(k) => k,
        Err(r) => return *r,
    };
    match ctrl.delete(k, &name, AUTHOR, &q.message) {
        Ok(o) => Json(o).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn proxies(State(ctrl): State<Arc<Controller>>) -> Response {
    Json(json!({"proxies": ctrl.fleet.list()})).into_response()
}

#[derive(Deserialize)]
struct DiffQuery {
    from: u64,
    to: Option<u64>,
}

async fn diff(State(ctrl): State<Arc<Controller>>, Query(q): Query<DiffQuery>) -> Response {
    match ctrl.diff(q.from, q.to) {
        Ok(d) => Json(json!({"from": q.from, "to": q.to, "changes": d})).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct RollbackBody {
    revision: u64,
    #[serde(default)]
    message: String,
}

async fn rollback(State(ctrl): State<Arc<Controller>>, Json(body): Json<RollbackBody>) -> Response {
    match ctrl.rollback(body.revision, AUTHOR, &body.message) {
        Ok(o) => Json(o).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn revisions(State(ctrl): State<Arc<Controller>>) -> Response {
    match ctrl.history(100) {
        Ok(h) => Json(json!({"revisions": h})).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string(), json!([])),
    }
}
