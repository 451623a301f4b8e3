//! The abnormal nodes: each cause with its evidence, where the node is
//! isolated, and its repair.

use crate::serve::api::access::authorize;
use crate::serve::api::auth::Role;
use crate::state::controller::Controller;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;

/// `{nodes: [...], repairs: {started, repaired, failed}, leader}`.
pub async fn abnormal(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "abnormal");
    let (nodes, repairs) = ctrl.faults.get();
    Json(json!({"nodes": nodes, "repairs": repairs, "leader": ctrl.is_leader()})).into_response()
}
