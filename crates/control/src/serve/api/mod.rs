//! The REST API under `/v1`: JSON in and out, errors as `{code, message, errors}`.
//! Every call is authorized by role (see `auth`); every change, and every
//! denied call, lands in the audit log with who made it.

mod access;
mod admin;
mod agents;
mod alerts;
pub mod auth;
mod faults;
pub mod guard;
mod instances;
mod monitor;
mod releases;
mod reply;
mod resources;
mod revisions;
mod rollouts;
mod status;
mod ui;

use crate::state::controller::Controller;
use admin::{audit_log, create_token, list_tokens, revoke_token};
use agents::{agent_command, agent_report, bootstrap};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use instances::{deregister_instance, heartbeat, list_instances, register_instance};
use monitor::{internal_shard, load, metrics, series, top_proxies, top_routes, top_services};
use resources::{apply, delete_one, envoy_resources, get_one, list, list_kind};
use revisions::{diff, revisions, rollback};
use status::{proxies, replica, whoami};
use std::sync::Arc;

/// The API, with token guessing slowed by `lockout` (the server must pass
/// each connection's peer address as `ConnectInfo<SocketAddr>`).
pub fn router(ctrl: Arc<Controller>, lockout: guard::Lockout) -> Router {
    let guard = Arc::new(guard::Guard::new(lockout));
    ui::routes(Router::new())
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/apply", post(apply))
        .route("/v1/resources", get(list))
        .route("/v1/resources/{kind}", get(list_kind))
        .route("/v1/resources/{kind}/{name}", get(get_one))
        .route("/v1/resources/{kind}/{name}", delete(delete_one))
        .route("/v1/proxies", get(proxies))
        .route("/v1/alerts", get(alerts::alerts))
        .route("/v1/abnormal", get(faults::abnormal))
        .route("/v1/releases", get(releases::list).post(releases::start))
        .route("/v1/releases/{name}", get(releases::get_one))
        .route("/v1/releases/{name}/{action}", post(releases::act))
        .route("/v1/rollouts", get(rollouts::list))
        .route("/v1/rollouts/{revision}", get(rollouts::get_one))
        .route("/v1/whoami", get(whoami))
        .route("/v1/bootstrap", get(bootstrap))
        .route("/v1/agents/{node}", put(agent_report))
        .route("/v1/agents/{node}/commands", post(agent_command))
        .route("/v1/revisions", get(revisions))
        .route("/v1/diff", get(diff))
        .route("/v1/rollback", post(rollback))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}", delete(revoke_token))
        .route("/v1/audit", get(audit_log))
        .route("/v1/instances", get(list_instances))
        .route("/v1/replica", get(replica))
        .route("/v1/top/services", get(top_services))
        .route("/v1/top/proxies", get(top_proxies))
        .route("/v1/top/routes", get(top_routes))
        .route("/v1/series", get(series))
        .route("/v1/internal/monitor", get(internal_shard))
        .route("/v1/load", get(load))
        .route("/metrics", get(metrics))
        .route("/v1/envoy/{kind}", get(envoy_resources))
        .route("/v1/services/{svc}/instances", post(register_instance))
        .route("/v1/services/{svc}/instances/{id}", delete(deregister_instance))
        .route("/v1/services/{svc}/instances/{id}/heartbeat", put(heartbeat))
        .layer(axum::middleware::from_fn_with_state((ctrl.clone(), guard), guard::limit))
        .with_state(ctrl)
}

async fn openapi() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], include_str!("openapi.json")).into_response()
}
