//! The admin listener's access logs: `admin.access_log_path` (a file in
//! Envoy's default format) and `admin.access_log` (any access logger Legate
//! implements). One line per admin request, with what Envoy 1.40's admin
//! connection manager records for it.

use crate::access_log::AccessLogger;
use crate::common::format::Context;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::Full;
use legate_api::pb::envoy::config::bootstrap::v3::Admin;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

/// The address Envoy's admin connection manager appends to
/// `x-forwarded-for` (it treats admin requests as coming from an address of
/// the documentation range, whatever the peer), as Envoy 1.40 logs it.
const ADMIN_XFF: &str = "192.0.2.2";

/// The admin's loggers.
pub struct AdminLogs {
    loggers: Vec<AccessLogger>,
}

/// What is kept of a request until its response is known.
pub struct Seen {
    headers: HeaderMap,
    received: u64,
    method: String,
    path: String,
    authority: String,
    start: SystemTime,
    started: Instant,
}

impl AdminLogs {
    /// The admin's loggers, or None when it has none. Errors name the field.
    pub fn compile(admin: &Admin) -> Result<Option<Self>, String> {
        let mut loggers = Vec::new();
        #[allow(deprecated)] // Envoy 1.40 still honours this deprecated field.
        let path = &admin.access_log_path;
        if !path.is_empty() {
            loggers
                .push(AccessLogger::file_with_default_format(path).map_err(|e| format!("admin.access_log_path: {e}"))?);
        }
        for (i, a) in admin.access_log.iter().enumerate() {
            loggers.push(AccessLogger::compile(a).map_err(|e| format!("admin.access_log[{i}]: {e}"))?);
        }
        Ok((!loggers.is_empty()).then_some(Self { loggers }))
    }

    /// Notes what the log needs from the request before it is handled.
    pub fn seen<B: Body>(req: &Request<B>) -> Seen {
        let mut headers = req.headers().clone();
        let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prior) if !prior.is_empty() => format!("{prior},{ADMIN_XFF}"),
            _ => ADMIN_XFF.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert("x-forwarded-for", v);
        }
        let authority = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
            .unwrap_or_default();
        Seen {
            headers,
            received: req.body().size_hint().exact().unwrap_or(0),
            method: req.method().to_string(),
            path: req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
            authority,
            start: SystemTime::now(),
            started: Instant::now(),
        }
    }

    /// Writes one line per logger for a handled request.
    pub fn log(&self, seen: &Seen, resp: &Response<Full<Bytes>>, remote: SocketAddr, local: SocketAddr) {
        let ctx = Context {
            request: Some(&seen.headers),
            method: &seen.method,
            path: &seen.path,
            authority: &seen.authority,
            protocol: "HTTP/1.1",
            response: Some(resp.headers()),
            status: Some(resp.status().as_u16()),
            response_flags: "",
            response_code_details: "admin_filter_response",
            bytes_received: seen.received,
            bytes_sent: resp.body().size_hint().exact().unwrap_or(0),
            duration: Some(seen.started.elapsed()),
            start_time: Some(seen.start),
            upstream_host: None,
            upstream_cluster: "",
            route_name: "",
            downstream_remote: Some(remote),
            downstream_local: Some(local),
            ..Default::default()
        };
        for l in &self.loggers {
            l.log(&ctx);
        }
    }
}
