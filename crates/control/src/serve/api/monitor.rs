//! The fleet's traffic: `GET /v1/top/services`, `/v1/top/routes`, `/v1/top/proxies`,
//! `/v1/series`, `/v1/load`, and `GET /metrics` (Prometheus text). Every
//! one needs the viewer role.
//!
//! With several replicas on etcd each keeps what its own proxies sent. The
//! top and series queries answer for the whole fleet (`scope=fleet`, their
//! default): the other live replicas' shards (`GET /v1/internal/monitor`)
//! merged with this one's. `/metrics` stays local by default, so that a
//! Prometheus scraping every replica and summing counts each proxy once;
//! `/metrics?scope=fleet` gives the merged totals from any one replica.

use crate::discovery::replicas::PEER_SECRET_HEADER;
use crate::monitor::{Metric, Monitor};
use crate::serve::api::access::authorize;
use crate::serve::api::auth::Role;
use crate::serve::api::reply::bad_request;
use crate::state::controller::Controller;
use axum::extract::{Query, RawQuery, State};
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
    scope: Option<String>,
}

#[derive(Deserialize)]
pub struct SeriesQuery {
    service: Option<String>,
    metric: Option<String>,
    window: Option<String>,
    step: Option<String>,
    scope: Option<String>,
}

#[derive(Deserialize)]
pub struct ScopeQuery {
    scope: Option<String>,
}

/// The monitor a query reads: this replica's own (`scope=local`, or no
/// other replica live), or one merging every live replica's shard over
/// `window` (`scope=fleet`); and the replicas that did not answer.
struct View {
    merged: Option<Monitor>,
    answered: usize,
    missing: Vec<String>,
}

impl View {
    async fn of(
        ctrl: &Controller,
        headers: &HeaderMap,
        scope: Option<&str>,
        fleet_by_default: bool,
        window: Duration,
    ) -> Result<View, Box<Response>> {
        let fleet = match scope {
            None => fleet_by_default,
            Some("fleet") => true,
            Some("local") => false,
            Some(other) => {
                return Err(Box::new(bad_request("bad_scope", format!("scope: {other:?} is not local or fleet"))))
            }
        };
        if !fleet || ctrl.replicas.peers().is_empty() {
            return Ok(View { merged: None, answered: 1, missing: Vec::new() });
        }
        let auth = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        let ask = crate::remote::shards::Ask { window, services: Vec::new() };
        let (shards, missing) =
            crate::remote::shards::shards(ctrl, crate::remote::shards::Caller::Operator(auth), &ask).await;
        Ok(View { answered: 1 + shards.len(), merged: Some(ctrl.monitor.merged(window, &shards)), missing })
    }

    fn monitor<'a>(&'a self, ctrl: &'a Controller) -> &'a Monitor {
        self.merged.as_ref().unwrap_or(&ctrl.monitor)
    }

    /// `body` with `x-legate-replicas` (how many replicas' figures it holds)
    /// and, when some did not answer, `x-legate-replicas-missing`.
    fn reply(&self, body: impl IntoResponse) -> Response {
        let mut r = body.into_response();
        let h = r.headers_mut();
        h.insert("x-legate-replicas", axum::http::HeaderValue::from(self.answered));
        if let Ok(v) = axum::http::HeaderValue::from_str(&self.missing.join(",")) {
            if !self.missing.is_empty() {
                h.insert("x-legate-replicas-missing", v);
            }
        }
        r
    }
}

/// `5m`, `1h30m`, `90s`; default `default`.
fn duration(v: Option<&str>, default: Duration, what: &str) -> Result<Duration, Box<Response>> {
    let Some(v) = v else { return Ok(default) };
    match humantime::parse_duration(v) {
        Ok(d) if !d.is_zero() && d <= MAX_WINDOW => Ok(d),
        _ => Err(Box::new(bad_request("bad_duration", format!("{what}: {v:?} is not a duration such as 5m or 1h")))),
    }
}

/// The window of a top query and the view it reads.
async fn window_view(
    ctrl: &Controller,
    headers: &HeaderMap,
    q: &WindowQuery,
) -> Result<(Duration, View), Box<Response>> {
    let w = duration(q.window.as_deref(), Duration::from_secs(300), "window")?;
    Ok((w, View::of(ctrl, headers, q.scope.as_deref(), true, w).await?))
}

pub async fn top_services(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, q: Query<WindowQuery>) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "metrics");
    match window_view(&ctrl, &headers, &q).await {
        Ok((w, view)) => view.reply(Json(view.monitor(&ctrl).services(w))),
        Err(r) => *r,
    }
}

pub async fn top_proxies(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, q: Query<WindowQuery>) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "metrics");
    match window_view(&ctrl, &headers, &q).await {
        Ok((w, view)) => view.reply(Json(view.monitor(&ctrl).proxies(w))),
        Err(r) => *r,
    }
}

pub async fn top_routes(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, q: Query<WindowQuery>) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "metrics");
    match window_view(&ctrl, &headers, &q).await {
        Ok((w, view)) => view.reply(Json(view.monitor(&ctrl).routes(w))),
        Err(r) => *r,
    }
}

/// This replica's own part, as raw mergeable data (`remote::shards` asks it).
/// `GET /v1/internal/monitor?window=W[&service=S...]`: this replica's
/// shard, for another replica (with the viewer role, or the peer secret).
pub async fn internal_shard(
    State(ctrl): State<Arc<Controller>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let peer = headers.get(PEER_SECRET_HEADER).and_then(|v| v.to_str().ok()).is_some_and(|s| ctrl.replicas.admits(s));
    if !peer {
        authorize!(ctrl, headers, Role::Viewer, "read", "metrics");
    }
    let (mut window, mut services) = (None, Vec::new());
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "window" => window = Some(v.into_owned()),
            "service" => services.push(v.into_owned()),
            _ => {}
        }
    }
    match duration(window.as_deref(), Duration::from_secs(300), "window") {
        Ok(w) => Json(ctrl.monitor.shard(w, &services)).into_response(),
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
    let view = match View::of(&ctrl, &headers, q.scope.as_deref(), true, window).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let points = view.monitor(&ctrl).series(service, metric, window, step);
    view.reply(Json(json!({"service": service, "metric": metric, "points": points})))
}

pub async fn load(State(ctrl): State<Arc<Controller>>, headers: HeaderMap) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "metrics");
    Json(json!({"clusters": ctrl.monitor.load.list()})).into_response()
}

pub async fn metrics(State(ctrl): State<Arc<Controller>>, headers: HeaderMap, q: Query<ScopeQuery>) -> Response {
    authorize!(ctrl, headers, Role::Viewer, "read", "metrics");
    // Totals are whole in every shard; one slot of series is enough.
    let view = match View::of(&ctrl, &headers, q.scope.as_deref(), false, Duration::from_secs(1)).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let text = view.monitor(&ctrl).prometheus();
    view.reply(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text))
}
