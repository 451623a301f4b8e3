//! `envoy.filters.http.buffer`: the whole request body is read (at most
//! `max_request_bytes`) before the request goes upstream; the connection
//! manager reads it when the chain's `buffer_limit` says so.

use crate::http::filters::api::{FilterContext, FilterStatus, HttpFilter, Registration, RequestCtx, ResponseState};
use legate_api::pb::envoy::extensions::filters::http::buffer::v3::Buffer as PbBuffer;
use legate_api::pb::google::protobuf::Any;

pub const TYPE: &str = "envoy.extensions.filters.http.buffer.v3.Buffer";

pub const REGISTRATION: Registration =
    Registration { type_url: TYPE, compile: Buffer::compile, per_route: None, one_per_chain: None };

pub struct Buffer {
    max_request_bytes: u64,
}

impl Buffer {
    fn compile(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
        let b: PbBuffer = legate_api::any::unpack(any)?;
        let max = b
            .max_request_bytes
            .as_ref()
            .ok_or(format!("http_filters[{}].typed_config.max_request_bytes is required", ctx.index))?;
        Ok(Box::new(Self { max_request_bytes: u64::from(max.value) }))
    }
}

impl HttpFilter for Buffer {
    fn on_request<'r>(&'r self, _: &'r mut RequestCtx<'_>, _: &'r mut ResponseState) -> FilterStatus<'r> {
        FilterStatus::Continue
    }

    fn buffer_limit(&self) -> Option<u64> {
        Some(self.max_request_bytes)
    }
}
