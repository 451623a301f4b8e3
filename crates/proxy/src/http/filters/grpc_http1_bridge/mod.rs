//! `envoy.filters.http.grpc_http1_bridge`: a gRPC request that arrives over
//! HTTP/1 (whose clients cannot read trailers) gets its response whole: the
//! router reads the body and trailers first, then `grpc-status` and
//! `grpc-message` move from the trailers into the headers, the status
//! becomes 503 when `grpc-status` is not 0, and `content-length` is the
//! body's. Envoy 1.40 charges no per-method stats here. Follows Envoy's
//! http1_bridge_filter;
//! `upgrade_protobuf_to_grpc` and `ignore_query_parameters` stay refused by
//! the support table.

use crate::body::ProxyBody;
use crate::http::filters::api::{
    FilterContext, FilterStatus, HttpFilter, Registration, RequestCtx, ResponseHooks, ResponseState, WholeResponse,
};
use crate::http::grpc::grpc_content_type;
use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Response, StatusCode};
use http_body::Body as _;
use legate_api::pb::envoy::extensions::filters::http::grpc_http1_bridge::v3::Config;
use legate_api::pb::google::protobuf::Any;

pub mod state;

use state::Bridged;

pub const TYPE: &str = "envoy.extensions.filters.http.grpc_http1_bridge.v3.Config";

pub const REGISTRATION: Registration =
    Registration { type_url: TYPE, compile: Bridge::compile, per_route: None, one_per_chain: None };

pub struct Bridge;

impl Bridge {
    fn compile(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
        let _: Config = legate_api::any::unpack(any).map_err(|e| format!("http_filters[{}]: {e}", ctx.index))?;
        Ok(Box::new(Self))
    }

    /// The trailers' status and message in the headers, the status 503
    /// unless `grpc-status` is 0, the length of the body read whole.
    fn bridge(resp: &mut Response<ProxyBody>, t: &http::HeaderMap) {
        if let Some(status) = t.get("grpc-status") {
            if status.as_bytes() != b"0" {
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            resp.headers_mut().insert("grpc-status", status.clone());
        }
        if let Some(message) = t.get("grpc-message") {
            resp.headers_mut().insert("grpc-message", message.clone());
        }
        let len = resp.body().size_hint().exact().unwrap_or(0);
        resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
    }
}

impl HttpFilter for Bridge {
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, state: &'r mut ResponseState) -> FilterStatus<'r> {
        if rq.version < http::Version::HTTP_2 && grpc_content_type(rq.headers) {
            state.whole_response = Some(|_| true);
            state.grpc_bridge = Some(Bridged);
        }
        FilterStatus::Continue
    }

    fn response_hooks(&self) -> ResponseHooks {
        ResponseHooks { on_response: true, ..ResponseHooks::default() }
    }

    fn on_response(&self, state: &ResponseState, resp: &mut Response<ProxyBody>) {
        if state.grpc_bridge.is_none() {
            return;
        }
        // Without trailers (or read in part) the response passes as it came.
        if let Some(t) = resp.extensions_mut().remove::<WholeResponse>().and_then(|w| w.trailers) {
            Self::bridge(resp, &t);
        }
    }
}
