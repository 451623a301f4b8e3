//! How the API answers a failure: `{code, message, errors}` with the HTTP
//! status that fits.

use crate::state::apply::ApplyError;
use crate::store::StoreError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

pub fn error(status: StatusCode, code: &str, message: impl Into<String>, errors: serde_json::Value) -> Response {
    (status, Json(json!({"code": code, "message": message.into(), "errors": errors}))).into_response()
}

/// A store failure: 500, with the store's own words.
pub fn store_error(e: impl std::fmt::Display) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string(), json!([]))
}

/// 400 for a request that cannot be served as it is.
pub fn bad_request(code: &str, message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, code, message, json!([]))
}

/// 404, saying what was not found.
pub fn not_found(message: impl Into<String>) -> Response {
    error(StatusCode::NOT_FOUND, "not_found", message, json!([]))
}

impl IntoResponse for ApplyError {
    fn into_response(self) -> Response {
        match self {
            ApplyError::Invalid(errs) => {
                error(StatusCode::BAD_REQUEST, "invalid", "the resources are invalid; nothing was applied", json!(errs))
            }
            ApplyError::Dangling(errs) => error(
                StatusCode::BAD_REQUEST,
                "unresolved_references",
                "references no resource the receiving proxies get defines; nothing was applied (force: true, or ctl apply --force, applies it anyway)",
                json!(errs),
            ),
            ApplyError::NotFound(what) => not_found(format!("{what} not found")),
            ApplyError::Store(StoreError::NoRevision(r)) => not_found(format!("revision {r} does not exist")),
            ApplyError::Store(e) => store_error(e),
            ApplyError::Busy(why) => error(StatusCode::CONFLICT, "busy", why, json!([])),
        }
    }
}
