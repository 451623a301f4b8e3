//! The abnormal nodes: each cause with its evidence, where the node is
//! isolated, and its repair; the endpoints' health as the proxies checking
//! them (HDS) last reported it.

use crate::serve::api::access::authorize;
use crate::serve::api::auth::Role;
use crate::state::controller::Controller;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::Arc;

/// `{nodes: [...], repairs: {started, repaired, failed}, checks: [...], leader}`;
/// `checks`: every endpoint's last result from the proxies checking it (HDS).
pub async fn abnormal(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "abnormal");
    let (nodes, repairs) = ctrl.faults.get();
    let checks: Vec<serde_json::Value> = ctrl
        .checks
        .results()
        .into_iter()
        .map(|r| {
            let mut v = serde_json::to_value(&r).unwrap_or_default();
            v["since"] = json!(crate::clock::rfc3339(r.since_ms));
            v
        })
        .collect();
    Json(json!({"nodes": nodes, "repairs": repairs, "checks": checks, "leader": ctrl.is_leader()})).into_response()
}
