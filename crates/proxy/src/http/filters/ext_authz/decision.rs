//! What the authorization service decided, from either transport, and how
//! an allowed request's headers change (Envoy's `ExtAuthz::Response` and
//! the filter's `onComplete`).

use http::{HeaderMap, HeaderName, HeaderValue};
use legate_api::pb::envoy::config::core::v3::{header_value_option::HeaderAppendAction, HeaderValueOption};
use legate_api::pb::envoy::service::auth::v3::{check_response::HttpResponse, CheckResponse};

pub(crate) type Headers = Vec<(HeaderName, HeaderValue)>;

/// The decision on one request.
pub(crate) enum Decision {
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
pub(crate) struct Allowed {
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
    /// Query parameters given this one value, and taken out.
    pub query_set: Vec<(String, String)>,
    pub query_remove: Vec<String>,
}

impl Allowed {
    /// The request's new path when the service changed its query (Envoy's
    /// `QueryParamsMulti`: parameters by name, in name order, values raw).
    pub fn new_path(&self, path: &str) -> Option<String> {
        if self.query_set.is_empty() && self.query_remove.is_empty() {
            return None;
        }
        let (base, query) = path.split_once('?').unwrap_or((path, ""));
        let mut params: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            params.entry(k).or_default().push(v);
        }
        for (k, v) in &self.query_set {
            params.insert(k, vec![v]);
        }
        for k in &self.query_remove {
            params.remove(k.as_str());
        }
        let query: Vec<String> = params.iter().flat_map(|(k, vs)| vs.iter().map(move |v| format!("{k}={v}"))).collect();
        Some(if query.is_empty() { base.to_string() } else { format!("{base}?{}", query.join("&")) })
    }

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
        // Envoy's `appendCopy`: joined to the header's first value.
        for (k, v) in &self.append {
            let mut values: Vec<HeaderValue> = h.get_all(k).iter().cloned().collect();
            let Some(first) = values.first_mut() else { continue };
            let mut joined = first.as_bytes().to_vec();
            joined.push(b',');
            joined.extend_from_slice(v.as_bytes());
            let Ok(j) = HeaderValue::from_bytes(&joined) else { continue };
            *first = j;
            h.remove(k);
            for value in values {
                h.append(k, value);
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
                a.query_set = ok.query_parameters_to_set.iter().map(|q| (q.key.clone(), q.value.clone())).collect();
                a.query_remove = ok.query_parameters_to_remove.clone();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn h(k: &'static str, v: &'static str) -> (HeaderName, HeaderValue) {
        (HeaderName::from_static(k), HeaderValue::from_static(v))
    }

    #[test]
    fn query_rebuilt_in_name_order() {
        let a = Allowed {
            query_set: vec![("q".into(), "2".into()), ("set".into(), "1".into())],
            query_remove: vec!["drop".into()],
            ..Default::default()
        };
        assert_eq!(a.new_path("/p?q=1&z=3&drop=x&a=0").as_deref(), Some("/p?a=0&q=2&set=1&z=3"));
        assert_eq!(Allowed::default().new_path("/p?b=1"), None);
        let only_remove = Allowed { query_remove: vec!["a".into()], ..Default::default() };
        assert_eq!(only_remove.new_path("/p?a=1").as_deref(), Some("/p"));
    }

    #[test]
    fn append_joins_only_an_existing_header_and_host_stays() {
        let mut m = HeaderMap::new();
        m.insert("x-a", HeaderValue::from_static("first"));
        m.insert("host", HeaderValue::from_static("h"));
        let a = Allowed {
            append: vec![h("x-a", "more"), h("x-absent", "more")],
            add: vec![h("x-a", "added")],
            remove: vec![HeaderName::from_static("host")],
            ..Default::default()
        };
        a.apply(&mut m);
        let all: Vec<_> = m.get_all("x-a").iter().map(|v| v.to_str().unwrap_or_default().to_string()).collect();
        assert_eq!(all, ["first,more", "added"]);
        assert!(!m.contains_key("x-absent"));
        assert!(m.contains_key("host"));
    }

    #[test]
    fn a_denial_without_status_is_403() {
        let r = CheckResponse {
            status: Some(legate_api::pb::google::rpc::Status { code: 7, ..Default::default() }),
            ..Default::default()
        };
        assert!(matches!(from_grpc(r), Decision::Denied { status: 403, .. }));
    }
}
