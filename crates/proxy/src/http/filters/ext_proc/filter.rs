//! The filter on a request and its response: the headers (and, BUFFERED,
//! the whole body) sent in each direction, the answers written back, an
//! immediate response made the reply. The session goes from the request to
//! the response in `ResponseState::carried`, and closes the stream when the
//! request ends.

use super::bodies::{self, Next};
use super::mutation::{to_map, HeaderList};
use super::session::{Outcome, Phase, Session, Stage};
use super::streamed::{self, Slot};
use super::{Mode, Namespaces, PerRoute, Shared};
use crate::body::{ProxyBody, ReadError};
use crate::http::filters::api::{FilterStatus, HttpFilter, RequestCtx, ResponseHooks, ResponseState, Verdict};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

static NEXT_FILTER: AtomicU64 = AtomicU64::new(1);

pub(super) struct ExtProc {
    /// Tells this filter's carried session from another ext_proc filter's.
    id: u64,
    shared: Arc<Shared>,
    mode: Mode,
}

/// What a request leaves for its response (a streamed request body's task
/// puts the session back when the body has ended).
struct Carried {
    filter: u64,
    session: Slot,
}

impl ExtProc {
    pub(super) fn new(shared: Arc<Shared>, mode: Mode) -> Self {
        Self { id: NEXT_FILTER.fetch_add(1, Relaxed), shared, mode }
    }

    /// The mode for this request: the route's, merged as Envoy merges them
    /// (the most specific `disabled` wins; a processing mode from the most
    /// specific level that sets one).
    fn mode_for(&self, rq: &RequestCtx<'_>) -> Mode {
        let levels: Vec<&PerRoute> = rq.route.iter().flatten().filter_map(|p| p.get::<PerRoute>()).collect();
        match levels.first() {
            Some(p) if p.disabled => Mode::OFF,
            _ => levels.iter().find_map(|p| p.mode).unwrap_or(self.mode),
        }
    }

    /// The request's `metadata_options`: each list from the most specific
    /// level that sets it, else the filter's (Envoy's `mergePerRouteConfig`).
    fn namespaces_for(&self, rq: &RequestCtx<'_>) -> Arc<Namespaces> {
        let levels = || rq.route.iter().flatten().filter_map(|p| p.get::<PerRoute>());
        let forward = levels().find_map(|p| p.forward.clone());
        let receive = levels().find_map(|p| p.receive.clone());
        if forward.is_none() && receive.is_none() {
            return self.shared.namespaces.clone();
        }
        let base = &self.shared.namespaces;
        let (forward, forward_typed) = forward.unwrap_or_else(|| (base.forward.clone(), base.forward_typed.clone()));
        Arc::new(Namespaces { forward, forward_typed, receive: receive.unwrap_or_else(|| base.receive.clone()) })
    }

    /// A session for this request in `mode`, with its metadata options.
    fn session(&self, rq: &RequestCtx<'_>, state: &ResponseState, mode: Mode) -> Session {
        let mut s =
            Session::new(self.shared.clone(), mode).with_metadata(self.namespaces_for(rq), &state.dynamic_metadata);
        s.buffer_limit = rq.buffer_limit;
        s
    }

    fn carry(&self, state: &mut ResponseState, session: Option<Session>) -> Slot {
        let slot = Arc::new(Mutex::new(session));
        state.carried.push(Arc::new(Carried { filter: self.id, session: slot.clone() }));
        slot
    }

    async fn request(&self, rq: &mut RequestCtx<'_>, state: &mut ResponseState) -> Verdict {
        let mut s = self.session(rq, state, self.mode_for(rq));
        let more = match self.process_request(&mut s, rq).await {
            Ok(more) => more,
            Err(v) => return v,
        };
        if s.complete {
            return Verdict::Continue;
        }
        let keep = s.mode.on_response();
        if more {
            let slot = if keep { self.carry(state, None) } else { Arc::default() };
            let body = std::mem::replace(rq.body, ProxyBody::Empty);
            *rq.body = streamed::body(s, body, false, slot, keep);
        } else if keep {
            self.carry(state, Some(s));
        }
        Verdict::Continue
    }

    /// The request's headers and body as the mode sends them; `Ok(true)`
    /// when the rest of the body still goes through the processor.
    async fn process_request(&self, s: &mut Session, rq: &mut RequestCtx<'_>) -> Result<bool, Verdict> {
        let mut headers = request_headers(rq);
        let has_body = !http_body::Body::is_end_stream(&*rq.body);
        let mut body = None;
        // Envoy drops the length by the mode the headers came with.
        let drop_length = s.mode.drops_length(Phase::RequestHeaders);
        if s.mode.request_headers {
            let stage = Stage {
                phase: Phase::RequestHeaders,
                headers: &mut headers,
                body: &mut body,
                end_of_stream: !has_body,
            };
            if let Outcome::Immediate { status, headers, body, grpc_status } = s.run(stage).await {
                return Err(local(status, headers, body, grpc_status, rq.headers));
            }
        }
        if drop_length {
            headers.retain(|(k, _)| k != "content-length");
        }
        let mut more = false;
        if body.is_none() && has_body {
            match bodies::process(s, false, &mut headers, rq.body, s.buffer_limit).await {
                Next::Go(m) => more = m,
                Next::Answer(Outcome::Immediate { status, headers, body, grpc_status }) => {
                    return Err(local(status, headers, body, grpc_status, rq.headers))
                }
                Next::Answer(Outcome::Continue) => {}
                Next::TooLarge => return Err(read_failed(ReadError::TooLarge)),
                Next::Broken => return Err(read_failed(ReadError::Disconnected)),
            }
        }
        rq.clear_route_cache |= s.clear_route_cache;
        write_request(rq, headers, body);
        Ok(more)
    }

    async fn response(&self, state: &mut ResponseState, resp: &mut http::Response<ProxyBody>) {
        let carried = state
            .carried
            .iter()
            .find_map(|c| (**c).downcast_ref::<Carried>().filter(|c| c.filter == self.id))
            .and_then(|c| c.session.lock().unwrap_or_else(|p| p.into_inner()).take());
        let Some(mut s) = carried else { return };
        let mut headers = response_headers(resp);
        let has_body = !http_body::Body::is_end_stream(resp.body());
        let mut body = None;
        let drop_length = !s.complete && s.mode.drops_length(Phase::ResponseHeaders);
        if s.mode.response_headers && !s.complete {
            let stage = Stage {
                phase: Phase::ResponseHeaders,
                headers: &mut headers,
                body: &mut body,
                end_of_stream: !has_body,
            };
            if let Outcome::Immediate { status, headers, body, .. } = s.run(stage).await {
                return replace(resp, status, headers, body);
            }
        }
        if drop_length {
            headers.retain(|(k, _)| k != "content-length");
        }
        let mut more = false;
        if body.is_none() && has_body {
            let limit = s.buffer_limit;
            match bodies::process(&mut s, true, &mut headers, resp.body_mut(), limit).await {
                Next::Go(m) => more = m,
                Next::Answer(Outcome::Immediate { status, headers, body, .. }) => {
                    return replace(resp, status, headers, body)
                }
                Next::Answer(Outcome::Continue) => {}
                Next::TooLarge | Next::Broken => return replace(resp, 500, Vec::new(), Bytes::new()),
            }
        }
        write_response(resp, headers, body);
        if more && !s.complete {
            let body = std::mem::replace(resp.body_mut(), ProxyBody::Empty);
            *resp.body_mut() = streamed::body(s, body, true, Arc::default(), false);
        }
    }
}

impl HttpFilter for ExtProc {
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, state: &'r mut ResponseState) -> FilterStatus<'r> {
        let mode = self.mode_for(rq);
        if mode.on_request() {
            return FilterStatus::Wait(Box::pin(self.request(rq, state)));
        }
        if mode.on_response() {
            let s = self.session(rq, state, mode);
            self.carry(state, Some(s));
        }
        FilterStatus::Continue
    }

    /// A filter before this one answered: Envoy's encoder side still sends
    /// that reply's headers (and body) to the processor.
    fn on_request_skipped(&self, rq: &RequestCtx<'_>, state: &mut ResponseState) {
        let mode = self.mode_for(rq);
        if mode.on_response() {
            let s = self.session(rq, state, mode);
            self.carry(state, Some(s));
        }
    }

    fn response_hooks(&self) -> ResponseHooks {
        ResponseHooks { wait: true, ..ResponseHooks::default() }
    }

    fn on_response_wait<'r>(
        &'r self,
        state: &'r mut ResponseState,
        resp: &'r mut http::Response<ProxyBody>,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'r>>> {
        if state.carried.is_empty() {
            return None;
        }
        Some(Box::pin(self.response(state, resp)))
    }
}

/// The request's headers as Envoy's header map holds them: the
/// pseudo-headers, then the rest (`host` is `:authority`).
fn request_headers(rq: &RequestCtx<'_>) -> HeaderList {
    let p = &rq.pseudo;
    let mut list: HeaderList = vec![
        (":authority".into(), p.authority.as_bytes().to_vec()),
        (":path".into(), rq.new_path.as_deref().unwrap_or(p.path).as_bytes().to_vec()),
        (":method".into(), p.method.as_bytes().to_vec()),
        (":scheme".into(), p.scheme.as_bytes().to_vec()),
    ];
    let hop = |k: &str| matches!(k, "host" | "connection" | "keep-alive" | "proxy-connection");
    list.extend(
        rq.headers
            .iter()
            .filter(|(k, _)| !hop(k.as_str()))
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())),
    );
    list
}

fn response_headers(resp: &http::Response<ProxyBody>) -> HeaderList {
    let mut list: HeaderList = vec![(":status".into(), resp.status().as_str().as_bytes().to_vec())];
    list.extend(resp.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())));
    list
}

fn pseudo<'a>(list: &'a HeaderList, name: &str) -> Option<&'a [u8]> {
    list.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
}

/// The processor's changes back into the request: headers, a new path,
/// a new body. Routing headers (`:authority`, `:method`, `:scheme`) stay:
/// the default mutation rules never change them.
fn write_request(rq: &mut RequestCtx<'_>, list: HeaderList, body: Option<Bytes>) {
    let host = rq.headers.get(http::header::HOST).cloned();
    let mut map = to_map(&list);
    if let Some(h) = host {
        map.insert(http::header::HOST, h);
    }
    *rq.headers = map;
    if let Some(path) = pseudo(&list, ":path").map(|p| String::from_utf8_lossy(p).into_owned()) {
        if path != rq.new_path.as_deref().unwrap_or(rq.pseudo.path) {
            rq.new_path = Some(path);
        }
    }
    if let Some(b) = body {
        *rq.body = bodies::rebuild(b, None, None, &list);
    }
}

fn write_response(resp: &mut http::Response<ProxyBody>, list: HeaderList, body: Option<Bytes>) {
    let status = pseudo(&list, ":status")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u16>().ok())
        .and_then(|s| http::StatusCode::from_u16(s).ok());
    if let Some(s) = status {
        *resp.status_mut() = s;
    }
    *resp.headers_mut() = to_map(&list);
    if let Some(b) = body {
        *resp.body_mut() = bodies::rebuild(b, None, None, &list);
    }
}

/// A response replaced by the processor's immediate response (or an
/// error's): Envoy's local reply, `text/plain` when it has a body, the
/// processor's headers over the reply's own.
fn replace(resp: &mut http::Response<ProxyBody>, status: u16, headers: HeaderList, body: Bytes) {
    *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    let h = resp.headers_mut();
    h.clear();
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if !body.is_empty() {
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    overlay(h, &headers);
    *resp.body_mut() = ProxyBody::full(body);
}

/// Headers replacing those of the same name; a name given twice keeps both.
fn overlay(h: &mut HeaderMap, headers: &HeaderList) {
    let mut seen: Vec<&str> = Vec::new();
    for (k, v) in headers.iter().filter(|(k, _)| !k.starts_with(':')) {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_bytes(v)) else {
            continue;
        };
        if seen.contains(&k.as_str()) {
            h.append(name, value);
        } else {
            seen.push(k);
            h.insert(name, value);
        }
    }
}

/// The request answered locally: the processor's status, headers and body
/// (a gRPC request's `grpc-status` from its `grpc_status`).
fn local(status: u16, headers: HeaderList, body: Bytes, grpc_status: Option<u32>, rq: &HeaderMap) -> Verdict {
    let mut out: Vec<(HeaderName, HeaderValue)> = Vec::new();
    let mut map = HeaderMap::new();
    overlay(&mut map, &headers);
    let grpc = crate::http::grpc::grpc_content_type(rq);
    if let (true, Some(g)) = (grpc, grpc_status) {
        map.insert("grpc-status", HeaderValue::from(g));
    }
    for (k, v) in map.iter() {
        out.push((k.clone(), v.clone()));
    }
    Verdict::Local {
        status,
        headers: out,
        body: (!body.is_empty()).then_some(body),
        details: "ext_proc_immediate_response",
    }
}

fn read_failed(e: ReadError) -> Verdict {
    match e {
        ReadError::TooLarge => Verdict::Reply {
            status: 413,
            body: "Payload Too Large",
            details: "request_payload_too_large",
            flag: "",
            headers: Vec::new(),
        },
        ReadError::Disconnected => Verdict::Reply {
            status: 400,
            body: "",
            details: "downstream_remote_disconnect",
            flag: "",
            headers: Vec::new(),
        },
    }
}
