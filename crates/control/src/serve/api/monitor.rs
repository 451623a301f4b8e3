//! The fleet's traffic: `GET /v1/top/services`, `/v1/top/proxies`,
//! `/v1/series`, `/v1/load`, and `GET /metrics` (Prometheus text). Every
//! one needs the viewer role.

use crate::monitor::Metric;
use crate::serve::api::access::authorize;
use crate::serve::api::auth::Role;
use crate::serve::api::reply::bad_request;
use crate::state::controller::Controller;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The longest window a query may ask for.
const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);

#[derive(Deserialize)]
pub struct WindowQuery {
    window: Option<String>,
}

#[derive(Deserialize)]
pub struct SeriesQuery {
    service: Option<String>,
    metric: Option<String>,
    window: Option<String>,
    step: Option<String>,
}

/// `5m`, `1h30m`, `90s`; default `default`.
fn duration(v: Option<&str>, default: Duration, what: &str) -> Result<Duration, Box<Response>> {
    let Some(v) = v else { return Ok(default) };
    match humantime::parse_duration(v) {
        Ok(d) if !d.is_zero() && d <= MAX_WINDOW => Ok(d),
        _ => Err(Box::new(bad_request("bad_duration", format!("{what}: {v:?} is not a duration such as 5m or 1h")))),
    }
}

pub async fn top_services(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, q: Query<WindowQuery>) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "metrics");
    match duration(q.window.as_deref(), Duration::from_secs(300), "window") {
        Ok(w) => Json(ctrl.monitor.services(w)).into_response(),
        Err(r) => *r,
    }
}

pub async fn top_proxies(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, q: Query<WindowQuery>) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "metrics");
    match duration(q.window.as_deref(), Duration::from_secs(300), "window") {
        Ok(w) => Json(ctrl.monitor.proxies(w)).into_response(),
        Err(r) => *r,
    }
}

pub async fn series(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, q: Query<SeriesQuery>) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "metrics");
    let Some(service) = q.service.as_deref() else {
        return bad_request("missing_service", "service= is required");
    };
    let metric: Metric = match q.metric.as_deref().unwrap_or("rps").parse() {
        Ok(m) => m,
        Err(e) => return bad_request("bad_metric", e),
    };
    let window = match duration(q.window.as_deref(), Duration::from_secs(900), "window") {
        Ok(w) => w,
        Err(r) => return *r,
    };
    let step = match duration(q.step.as_deref(), Duration::from_secs(10), "step") {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let points = ctrl.monitor.series(service, metric, window, step);
    Json(json!({"service": service, "metric": metric, "points": points})).into_response()
}

pub async fn load(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "metrics");
    Json(json!({"clusters": ctrl.monitor.load.list()})).into_response()
}

pub async fn metrics(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "metrics");
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], ctrl.monitor.prometheus())
        .into_response()
}
