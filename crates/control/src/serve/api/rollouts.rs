//! Staged rollouts: the one in progress and the last finished ones, or one
//! by its staged revision.

use crate::serve::api::access::authorize;
use crate::serve::api::auth::Role;
use crate::serve::api::reply::not_found;
use crate::state::controller::Controller;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;

pub async fn list(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "rollouts");
    Json(json!({"current": ctrl.staged_rollout(), "history": ctrl.rollouts.list()})).into_response()
}

pub async fn get_one(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, Path(rev): Path<u64>) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "rollouts");
    let found = ctrl.staged_rollout().filter(|r| r.revision == rev).or_else(|| {
        let done = ctrl.rollouts.list();
        done.into_iter().rev().find(|r| r.revision == rev)
    });
    match found {
        Some(r) => Json(r).into_response(),
        None => not_found(format!("no rollout of revision {rev}")),
    }
}
