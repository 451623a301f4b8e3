//! The alert rules' states and the history of what fired and resolved.

use crate::serve::api::access::authorize;
use crate::serve::api::auth::Role;
use crate::state::controller::Controller;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// `{rules: [...], history: [...]}`, history oldest first.
pub async fn alerts(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "alerts");
    let counts = &ctrl.alerts.notifier.counts;
    Json(json!({
        "rules": ctrl.alerts.rules(),
        "history": ctrl.alerts.history.list(),
        "leader": ctrl.is_leader(),
        "notifications": {
            "sent": counts.sent.load(Ordering::Relaxed),
            "failed": counts.failed.load(Ordering::Relaxed),
            "dropped": counts.dropped.load(Ordering::Relaxed),
        },
    }))
    .into_response()
}
