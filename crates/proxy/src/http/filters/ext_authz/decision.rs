//! What the authorization service decided, from either transport, and how
//! an allowed request's headers change (Envoy's `ExtAuthz::Response` and
//! the filter's `onComplete`).

use http::{HeaderMap, HeaderName, HeaderValue};
use legate_api::pb::envoy::config::core::v3::{header_value_option::HeaderAppendAction, HeaderValueOption};
use legate_api::pb::envoy::service::auth::v3::{check_response::HttpResponse, CheckResponse};

pub(super) type Headers = Vec<(HeaderName, HeaderValue)>;

/// The decision on one request.
pub(super) enum Decision {
    Ok(Box<Allowed>),
    Denied {
        status: u16,
        body: String,
        headers: Headers,
    },
    /// The service failed (no answer, an error status, a 5xx).
    Error,
}

/// An allowed request's changes.
#[derive(Default)]
pub(super) struct Allowed {
    /// Replace the request header.
    pub set: Headers,
    /// Add another value of the request header.
    pub add: Headers,
    /// Join to an existing request header with `,` (absent: nothing).
    pub append: Headers,
    /// Add the request header when absent.
    pub add_if_absent: Headers,
    /// Replace the request header only if present.
    pub overwrite_if_exists: Headers,
    pub remove: Vec<HeaderName>,
    /// Added to the response to the client.
    pub response_add: Headers,
    /// Set on the response to the client.
    pub response_set: Headers,
}

impl Allowed {
    /// Changes the request's headers as Envoy does: set, add, append, then
    /// removals (never a pseudo-header nor `host`).
    pub fn apply(&self, h: &mut HeaderMap) {
        for (k, v) in &self.set {
            h.insert(k, v.clone());
        }
        for (k, v) in &self.add {
            h.append(k, v.clone());
        }
        for (k, v) in &self.add_if_absent {
            if !h.contains_key(k) {
                h.append(k, v.clone());
            }
        }
        for (k, v) in &self.overwrite_if_exists {
            if h.contains_key(k) {
                h.insert(k, v.clone());
            }
        }
        for (k, v) in &self.append {
            let joined = h.get_all(k).iter().map(HeaderValue::as_bytes).collect::<Vec<_>>();
            if joined.is_empty() {
                continue;
            }
            let mut value = joined.join(&b","[..]);
            value.push(b',');
            value.extend_from_slice(v.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                h.insert(k, v);
            }
        }
        for k in &self.remove {
            if k != http::header::HOST {
                h.remove(k);
            }
        }
    }
}

/// A `CheckResponse` read (Envoy's `GrpcClientImpl::onSuccess`): status OK
/// allows; an `error_response` is an error; anything else denies, 403
/// unless the denied response says otherwise.
pub(super) fn from_grpc(r: CheckResponse) -> Decision {
    let code = r.status.as_ref().map_or(0, |s| s.code);
    match r.http_response {
        _ if code == 0 => {
            let mut a = Allowed::default();
            if let Some(HttpResponse::OkResponse(ok)) = r.http_response {
                for o in &ok.headers {
                    let Some((k, v)) = pair(o) else { continue };
                    match action(o) {
                        Action::Append => a.append.push((k, v)),
                        Action::Add => a.add.push((k, v)),
                        Action::Set => a.set.push((k, v)),
                        Action::AddIfAbsent => a.add_if_absent.push((k, v)),
                        Action::OverwriteIfExists => a.overwrite_if_exists.push((k, v)),
                    }
                }
                a.remove =
                    ok.headers_to_remove.iter().filter_map(|k| HeaderName::from_bytes(k.as_bytes()).ok()).collect();
                for o in &ok.response_headers_to_add {
                    let Some((k, v)) = pair(o) else { continue };
                    match action(o) {
                        Action::Set | Action::OverwriteIfExists => a.response_set.push((k, v)),
                        _ => a.response_add.push((k, v)),
                    }
                }
            }
            Decision::Ok(Box::new(a))
        }
        Some(HttpResponse::ErrorResponse(_)) => Decision::Error,
        Some(HttpResponse::DeniedResponse(d)) => {
            let status = d.status.as_ref().map_or(0, |s| s.code as u16);
            Decision::Denied {
                status: if status == 0 { 403 } else { status },
                body: d.body,
                headers: d.headers.iter().filter_map(pair).collect(),
            }
        }
        _ => Decision::Denied { status: 403, body: String::new(), headers: Vec::new() },
    }
}

enum Action {
    Set,
    Add,
    Append,
    AddIfAbsent,
    OverwriteIfExists,
}

/// How a header option applies: the deprecated `append` (true: joined to
/// an existing header, false: replaced), else its `append_action`.
fn action(o: &HeaderValueOption) -> Action {
    #[allow(deprecated)]
    match &o.append {
        Some(b) if b.value => return Action::Append,
        Some(_) => return Action::Set,
        None => {}
    }
    match HeaderAppendAction::try_from(o.append_action) {
        Ok(HeaderAppendAction::AddIfAbsent) => Action::AddIfAbsent,
        Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => Action::Set,
        Ok(HeaderAppendAction::OverwriteIfExists) => Action::OverwriteIfExists,
        Ok(HeaderAppendAction::AppendIfExistsOrAdd) | Err(_) => Action::Add,
    }
}

fn pair(o: &HeaderValueOption) -> Option<(HeaderName, HeaderValue)> {
    let h = o.header.as_ref()?;
    let value = if h.raw_value.is_empty() { h.value.as_bytes() } else { &h.raw_value };
    Some((HeaderName::from_bytes(h.key.as_bytes()).ok()?, HeaderValue::from_bytes(value).ok()?))
}
