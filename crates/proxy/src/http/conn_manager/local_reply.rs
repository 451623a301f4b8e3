//! Responses the proxy writes itself (Envoy's `sendLocalReply`): local
//! replies (`text/plain` or empty), the router's replies once a route
//! matched, direct responses and redirects.

use super::stream::Stream;
use super::{Hcm, Matched, ProxyResponse};
use crate::body::{ProxyBody, TrackedBody};
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::{Response, StatusCode};

impl Hcm {
    /// Envoy's local reply: `text/plain` with the body, or no body at all.
    pub(in crate::http) fn local_reply(
        &self,
        stream: Box<Stream>,
        status: u16,
        details: &'static str,
        flags: &'static str,
        body: Option<String>,
    ) -> ProxyResponse {
        self.router_reply(stream, None, status, details, flags, body)
    }

    /// A local reply from the router, once a route matched: Envoy applies the
    /// route's (and its virtual host's and table's) response header
    /// mutations to it, as to an upstream response.
    pub(in crate::http) fn router_reply(
        &self,
        mut stream: Box<Stream>,
        matched: Option<Matched<'_>>,
        status: u16,
        details: &'static str,
        flags: &'static str,
        body: Option<String>,
    ) -> ProxyResponse {
        stream.flags = flags;
        stream.details = details;
        let mut resp = with_status(status, StatusCode::INTERNAL_SERVER_ERROR);
        if stream.grpc {
            grpc_reply(&mut resp, body);
        } else {
            set_text_body(&mut resp, body.map(bytes::Bytes::from));
        }
        resp.extensions_mut().insert(crate::http::filters::api::LocalReply);
        self.send_generated(stream, resp, matched)
    }

    /// A response a filter served whole (the cache's hits).
    pub(in crate::http) fn served_reply(
        &self,
        mut stream: Box<Stream>,
        resp: Response<ProxyBody>,
        details: &'static str,
    ) -> ProxyResponse {
        stream.details = details;
        self.send_generated(stream, resp, None)
    }

    /// A route's `direct_response`.
    pub(in crate::http) fn direct_reply(
        &self,
        mut stream: Box<Stream>,
        status: u16,
        body: Option<bytes::Bytes>,
        matched: Matched<'_>,
    ) -> ProxyResponse {
        stream.details = "direct_response";
        let mut resp = with_status(status, StatusCode::INTERNAL_SERVER_ERROR);
        // Envoy answers a direct 201 with the request's URL as its location.
        if status == 201 {
            if let Ok(v) = HeaderValue::from_str(&format!("http://{}{}", stream.authority, stream.path)) {
                resp.headers_mut().insert(LOCATION, v);
            }
        }
        set_text_body(&mut resp, body);
        self.send_generated(stream, resp, Some(matched))
    }

    /// A route's `redirect`, to `location`.
    pub(in crate::http) fn redirect_reply(
        &self,
        mut stream: Box<Stream>,
        status: u16,
        location: String,
        matched: Matched<'_>,
    ) -> ProxyResponse {
        stream.details = "direct_response";
        let mut resp = with_status(status, StatusCode::MOVED_PERMANENTLY);
        if let Ok(v) = HeaderValue::from_str(&location) {
            resp.headers_mut().insert(LOCATION, v);
        }
        self.send_generated(stream, resp, Some(matched))
    }

    /// A response the proxy made goes out: what every response gets, and
    /// the stream ends with its body.
    fn send_generated(
        &self,
        mut stream: Box<Stream>,
        mut resp: Response<ProxyBody>,
        matched: Option<Matched<'_>>,
    ) -> ProxyResponse {
        self.finish_response(&mut stream, &mut resp, matched);
        resp.map(|b| TrackedBody::new(b, Some(stream)))
    }
}

/// An empty response with `status` (`invalid` when that is no status code).
fn with_status(status: u16, invalid: StatusCode) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Empty);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(invalid);
    resp
}

/// Envoy's local reply to a gRPC request: trailers-only, 200,
/// `application/grpc`, `grpc-status` from the HTTP status and the text as a
/// percent-encoded `grpc-message`.
fn grpc_reply(resp: &mut Response<ProxyBody>, body: Option<String>) {
    use crate::http::grpc::{grpc_status_of, percent_encode};
    let status = grpc_status_of(resp.status().as_u16());
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(status));
    if let Some(text) = body.filter(|b| !b.is_empty()) {
        h.insert("grpc-message", percent_encode(text.as_bytes()));
    }
}

/// A generated body: `text/plain` with its length. An empty body gets no
/// header: HTTP/1 then says `content-length: 0` (hyper writes it, except on
/// 204 and 304) and HTTP/2 says nothing, as Envoy does.
fn set_text_body(resp: &mut Response<ProxyBody>, body: Option<bytes::Bytes>) {
    if let Some(b) = body.filter(|b| !b.is_empty()) {
        resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(b.len()));
        resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        *resp.body_mut() = ProxyBody::full(b);
    }
}
