//! `envoy.filters.http.grpc_web`: a gRPC-Web request (`application/grpc-web`,
//! `+proto`, and the base64 `grpc-web-text` forms) goes upstream as gRPC
//! (`application/grpc`, `te: trailers`, `grpc-accept-encoding`, its text
//! body decoded), and the gRPC response comes back as gRPC-Web: its content
//! type rewritten, its trailers turned into a trailer frame (flag 0x80) at
//! the end of the body, the body in base64 when the client `accept`s text.
//! A response that is not gRPC (a local reply, say) keeps its status and
//! has its status and text turned into `grpc-status` and `grpc-message`,
//! its body dropped. Follows Envoy's grpc_web_filter.

mod body;
pub mod exchange;
mod stats;

use crate::body::ProxyBody;
use crate::http::filters::api::{
    FilterContext, FilterStatus, HttpFilter, LocalReply, Registration, RequestCtx, ResponseHooks, ResponseState,
};
use crate::http::grpc::{grpc_content_type, grpc_status_of, percent_encode};
use crate::stats::Store;
use crate::upstream::cluster::ClusterMap;
use arc_swap::ArcSwap;
use body::{Failure, TextRequestBody, WebResponseBody};
use exchange::Exchange;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use legate_api::pb::envoy::extensions::filters::http::grpc_web::v3::GrpcWeb as PbGrpcWeb;
use legate_api::pb::google::protobuf::Any;
use stats::GrpcStats;
use std::sync::Arc;

pub const TYPE: &str = "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb";

pub const REGISTRATION: Registration =
    Registration { type_url: TYPE, compile: GrpcWebFilter::compile, per_route: None, one_per_chain: None };

const GRPC_WEB: &str = "application/grpc-web";
const GRPC_WEB_PROTO: &str = "application/grpc-web+proto";
const GRPC_WEB_TEXT: &str = "application/grpc-web-text";
const GRPC_WEB_TEXT_PROTO: &str = "application/grpc-web-text+proto";
const GRPC_STATUS: &str = "grpc-status";
const GRPC_MESSAGE: &str = "grpc-message";

pub struct GrpcWebFilter {
    store: Arc<Store>,
    clusters: Arc<ArcSwap<ClusterMap>>,
}

impl GrpcWebFilter {
    fn compile(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
        let _: PbGrpcWeb = legate_api::any::unpack(any).map_err(|e| format!("http_filters[{}]: {e}", ctx.index))?;
        Ok(Box::new(Self { store: ctx.server.store.clone(), clusters: ctx.server.clusters.clone() }))
    }

    /// Envoy counts on the route's cluster when it exists.
    fn stats(&self, rq: &RequestCtx<'_>) -> Option<Arc<GrpcStats>> {
        let cluster = rq.route_cluster.filter(|c| self.clusters.load().contains_key(*c))?;
        GrpcStats::new(&self.store, "grpc-web", cluster, rq.pseudo.path).map(Arc::new)
    }
}

/// The request's gRPC-Web content type, exactly as Envoy matches it: `Some(true)` for text.
fn web_request(headers: &HeaderMap) -> Option<bool> {
    match headers.get(CONTENT_TYPE)?.as_bytes() {
        b if b == GRPC_WEB.as_bytes() || b == GRPC_WEB_PROTO.as_bytes() => Some(false),
        b if b == GRPC_WEB_TEXT.as_bytes() || b == GRPC_WEB_TEXT_PROTO.as_bytes() => Some(true),
        _ => None,
    }
}

fn is_text(v: Option<&HeaderValue>) -> bool {
    v.is_some_and(|v| v.as_bytes() == GRPC_WEB_TEXT.as_bytes() || v.as_bytes() == GRPC_WEB_TEXT_PROTO.as_bytes())
}

/// The media type of `content-type`, its parameters left out.
fn media_type(h: &HeaderMap) -> Option<&str> {
    let ct = h.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(ct.split(';').next().unwrap_or("").trim_end())
}

/// Envoy's `isGrpcResponseHeaders`: trailers-only with a `grpc-status`, or a
/// 200 with a gRPC content type (`application/grpc`, `+...`, `;...`).
fn is_grpc_response(resp: &Response<ProxyBody>, end_stream: bool) -> bool {
    if end_stream {
        return resp.headers().contains_key(GRPC_STATUS);
    }
    resp.status() == StatusCode::OK && grpc_content_type(resp.headers())
}

/// A 200 that is already gRPC-Web (binary, proto).
fn is_web_response(resp: &Response<ProxyBody>) -> bool {
    resp.status() == StatusCode::OK
        && media_type(resp.headers())
            .is_some_and(|m| m.eq_ignore_ascii_case(GRPC_WEB_PROTO) || m.eq_ignore_ascii_case(GRPC_WEB))
}

/// A buffered body's bytes (a local reply's text), none for a streamed one.
fn full_bytes(body: &mut ProxyBody) -> Option<bytes::Bytes> {
    match std::mem::replace(body, ProxyBody::Empty) {
        ProxyBody::Full { data } => Some(data.unwrap_or_default()),
        ProxyBody::Empty => Some(bytes::Bytes::new()),
        other => {
            *body = other;
            None
        }
    }
}

impl GrpcWebFilter {
    /// A local reply in place of a text request whose body failed to
    /// decode: Envoy's 400 with its text (turned into `grpc-message` below).
    fn refused_body(ex: &Exchange, resp: &mut Response<ProxyBody>) {
        if ex.failed.as_ref().and_then(|f| f.get()).is_some() && resp.extensions().get::<LocalReply>().is_some() {
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            *resp.body_mut() = ProxyBody::full(&b"Bad gRPC-web request, invalid base64 data."[..]);
        }
    }

    fn response(&self, ex: &Exchange, resp: &mut Response<ProxyBody>) {
        Self::refused_body(ex, resp);
        let end_stream = http_body::Body::is_end_stream(resp.body());
        if let Some(s) = &ex.stats {
            s.charge(resp.headers().get(GRPC_STATUS));
        }
        let transform = !is_grpc_response(resp, end_stream) && !is_web_response(resp);
        let h = resp.headers_mut();
        h.remove(CONTENT_LENGTH);
        let ct = if ex.text_response { GRPC_WEB_TEXT_PROTO } else { GRPC_WEB_PROTO };
        h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
        if end_stream {
            return;
        }
        if transform {
            // Not gRPC: its status and text (read whole by the router, at
            // most 16 KiB of it taken) become the gRPC status and message,
            // with no body.
            let text = full_bytes(resp.body_mut()).unwrap_or_default();
            let status = grpc_status_of(resp.status().as_u16());
            *resp.body_mut() = ProxyBody::Empty;
            let h = resp.headers_mut();
            h.insert(GRPC_MESSAGE, percent_encode(&text[..text.len().min(16384)]));
            h.insert(GRPC_STATUS, HeaderValue::from(status));
            h.insert(CONTENT_LENGTH, HeaderValue::from(0));
            return;
        }
        let inner = std::mem::replace(resp.body_mut(), ProxyBody::Empty);
        let body = WebResponseBody::new(inner, ex.text_response, ex.stats.clone());
        *resp.body_mut() = ProxyBody::Rewritten { body: Box::new(body) };
    }
}

impl HttpFilter for GrpcWebFilter {
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, state: &'r mut ResponseState) -> FilterStatus<'r> {
        let Some(text) = web_request(rq.headers) else { return FilterStatus::Continue };
        let stats = self.stats(rq);
        let h = &mut *rq.headers;
        h.remove(CONTENT_LENGTH);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        let text_response = is_text(h.get(ACCEPT));
        h.insert(TE, HeaderValue::from_static("trailers"));
        if !h.contains_key("grpc-accept-encoding") {
            h.insert("grpc-accept-encoding", HeaderValue::from_static("identity,deflate,gzip"));
        }
        let failed = text.then(|| Arc::new(Failure::default()));
        state.grpc_web = Some(Exchange { text_response, failed, stats });
        // A response that is not gRPC is read whole: its text becomes the
        // grpc-message header.
        state.whole_response = Some(|p| !(p.status == StatusCode::OK && grpc_content_type(&p.headers)));
        FilterStatus::Continue
    }

    fn response_hooks(&self) -> ResponseHooks {
        ResponseHooks { on_response: true, rewrites_request_body: true, ..ResponseHooks::default() }
    }

    fn on_request_body(&self, state: &ResponseState, body: ProxyBody) -> ProxyBody {
        match state.grpc_web.as_ref().and_then(|ex| ex.failed.clone()) {
            Some(failed) => ProxyBody::Rewritten { body: Box::new(TextRequestBody::new(body, failed)) },
            None => body,
        }
    }

    fn on_response(&self, state: &ResponseState, resp: &mut Response<ProxyBody>) {
        if let Some(ex) = &state.grpc_web {
            self.response(ex, resp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_requests_are_grpc_web() {
        let mut h = HeaderMap::new();
        assert_eq!(web_request(&h), None);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc-web-text"));
        assert_eq!(web_request(&h), Some(true));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc-web+proto"));
        assert_eq!(web_request(&h), Some(false));
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc-web; charset=utf-8"));
        assert_eq!(web_request(&h), None);
    }
}
