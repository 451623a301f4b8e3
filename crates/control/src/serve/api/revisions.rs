//! The revision history: list it, diff two revisions, roll back to one.

use crate::serve::api::access::authorize;
use crate::serve::api::auth::Role;
use crate::serve::api::reply::store_error;
use crate::state::apply::ApplyError;
use crate::state::controller::Controller;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

#[derive(Deserialize)]
pub struct DiffQuery {
    from: u64,
    to: Option<u64>,
}

pub async fn diff(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, Query(q): Query<DiffQuery>) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "revisions");
    match ctrl.diff(q.from, q.to) {
        Ok(d) => Json(json!({"from": q.from, "to": q.to, "changes": d})).into_response(),
        Err(e) => ApplyError::Store(e).into_response(),
    }
}

/// The role a rollback needs (the console shows its button to this role and above).
pub const ROLLBACK_ROLE: Role = Role::Admin;

#[derive(Deserialize)]
pub struct RollbackBody {
    revision: u64,
    #[serde(default)]
    message: String,
}

pub async fn rollback(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    Json(body): Json<RollbackBody>,
) -> Response {
    let target = format!("revision {}", body.revision);
    let actor = authorize!(ctrl, headers, ROLLBACK_ROLE, "rollback", &target);
    match ctrl.rollback(body.revision, &actor.name, &body.message) {
        Ok(o) => {
            let _ =
                ctrl.store().audit(&actor.name, "rollback", &target, true, &format!("new revision {:?}", o.revision));
            Json(o).into_response()
        }
        Err(e) => e.into_response(),
    }
}

pub async fn revisions(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "revisions");
    match ctrl.history(100) {
        Ok(h) => Json(json!({"revisions": h})).into_response(),
        Err(e) => store_error(e),
    }
}
