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
/// `checks`: every endpoint's last result from the proxies checking it (HDS);
/// `checkers`: the proxies offering to check (HDS streams) with their locality.
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
    let checkers: Vec<serde_json::Value> =
        ctrl.checks.checkers().into_values().map(|n| json!({"node": n.id, "locality": n.locality})).collect();
    let body =
        json!({"nodes": nodes, "repairs": repairs, "checks": checks, "checkers": checkers, "leader": ctrl.is_leader()});
    Json(body).into_response()
}
