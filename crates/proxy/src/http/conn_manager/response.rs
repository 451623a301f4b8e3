//! What every response gets on its way downstream, proxied or generated
//! (Envoy's `encodeHeaders`): the `server` header, the route levels'
//! response header mutations, `x-request-id`, the filters' response
//! headers, `connection: close` where the connection must end; and the
//! stream records its status (and headers, for the access log).

use super::headers::{apply_levels, X_REQUEST_ID};
use super::stream::Stream;
use super::{Hcm, Matched};
use crate::body::ProxyBody;
use http::header::{HeaderValue, SERVER};
use http::{HeaderMap, Response};
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::ServerHeaderTransformation;
use std::sync::atomic::Ordering::Relaxed;

impl Hcm {
    pub(in crate::http) fn finish_response(
        &self,
        stream: &mut Stream,
        resp: &mut Response<ProxyBody>,
        matched: Option<Matched<'_>>,
    ) {
        self.set_server_header(resp.headers_mut());
        if let Some((table, vh, route)) = matched {
            let mut ctx = stream.context(None);
            ctx.status = Some(resp.status().as_u16());
            let levels = [&route.response_headers, &vh.response_headers, &table.response_headers];
            let mut hm = std::mem::take(resp.headers_mut());
            apply_levels(levels, table.most_specific_wins, &mut hm, &ctx);
            *resp.headers_mut() = hm;
        }
        // The request id goes back with `always_set_request_id_in_response`
        // or when the request forced its trace (Envoy's `mutateResponseHeaders`).
        if let Some(id) = &stream.response_request_id {
            resp.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
        }
        if let Some(via) = &self.via {
            super::headers::append_via(resp.headers_mut(), via);
        }
        if let Some((k, v)) = self.filters.response_header() {
            resp.headers_mut().insert(k, HeaderValue::from_static(v));
        }
        for (k, v) in &stream.filter_state.headers {
            resp.headers_mut().insert(k.clone(), v.clone());
        }
        for (k, v) in &stream.filter_state.appended {
            resp.headers_mut().append(k.clone(), v.clone());
        }
        if !self.filters.is_empty() {
            self.filters.on_response(&stream.filter_state, resp);
        }
        if self.tracing.is_some() {
            self.trace_response(stream, resp.headers_mut());
        }
        if closes_connection(stream) {
            resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        stream.status = resp.status().as_u16();
        if !self.access_logs.is_empty() {
            stream.response_headers = Some(resp.headers().clone());
        }
    }

    /// `server_header_transformation`.
    fn set_server_header(&self, h: &mut HeaderMap) {
        match self.server_transformation {
            ServerHeaderTransformation::Overwrite => {
                h.insert(SERVER, self.server_name.clone());
            }
            ServerHeaderTransformation::AppendIfAbsent => {
                if !h.contains_key(SERVER) {
                    h.insert(SERVER, self.server_name.clone());
                }
            }
            ServerHeaderTransformation::PassThrough => {}
        }
    }
}

/// An HTTP/1 connection closes after this response when its config drains,
/// when the request asked for an upgrade, or when the request body has not
/// all been read: Envoy does not wait for the rest of a request it has
/// already answered.
fn closes_connection(stream: &Stream) -> bool {
    let body_unread = stream.has_body && stream.request_progress.as_ref().is_none_or(|p| !p.done.load(Relaxed));
    (body_unread || stream.upgrade_requested || stream.conn.draining.load(Relaxed)) && stream.protocol != "HTTP/2"
}
