//! Every HTTP filter Legate runs, by the type of its config. Adding a filter
//! is its own module, one line here, and its fields in the api crate's
//! support table; the chain and the connection manager do not change.

use crate::http::filters::api::Registration;
use crate::http::filters::{
    buffer, cache, compressor, cors, csrf, decompressor, dynamic_forward_proxy, ext_authz, ext_proc, fault,
    grpc_http1_bridge, grpc_web, header_to_metadata, health_check, jwt, local_ratelimit, lua, ratelimit, rbac, wasm,
};
use crate::http::route::per_filter::PerRouteConfig;
use legate_api::pb::google::protobuf::Any;

/// The filters, each with its config type and compile functions. The router,
/// always last, is not one of them: the chain handles it.
pub static HTTP_FILTERS: &[Registration] = &[
    health_check::REGISTRATION,
    fault::REGISTRATION,
    local_ratelimit::REGISTRATION,
    ratelimit::REGISTRATION,
    rbac::REGISTRATION,
    ext_authz::REGISTRATION,
    ext_proc::REGISTRATION,
    cors::REGISTRATION,
    grpc_web::REGISTRATION,
    csrf::REGISTRATION,
    grpc_http1_bridge::REGISTRATION,
    compressor::REGISTRATION,
    decompressor::REGISTRATION,
    jwt::REGISTRATION,
    lua::REGISTRATION,
    buffer::REGISTRATION,
    header_to_metadata::REGISTRATION,
    cache::REGISTRATION,
    dynamic_forward_proxy::REGISTRATION,
    wasm::REGISTRATION,
];

/// The filter whose config has this type.
pub fn find(type_url: &str) -> Option<&'static Registration> {
    HTTP_FILTERS.iter().find(|r| r.type_url == type_url)
}

/// Compiles one `typed_per_filter_config` entry (`name` is its key) with
/// the filter that reads configs of its type.
pub fn compile_per_route(name: &str, any: &Any) -> Result<PerRouteConfig, String> {
    let path = format!("typed_per_filter_config[\"{name}\"]");
    let type_url = legate_api::any::type_name(any);
    let per_route = HTTP_FILTERS.iter().filter_map(|r| r.per_route.as_ref()).find(|p| p.type_url == type_url);
    match per_route {
        Some(p) => (p.compile)(any, &path),
        None => Err(format!("{path}: per-route config {type_url} is not supported")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_api::support::SUPPORTED_EXTENSIONS;

    #[test]
    fn every_config_type_is_supported_and_registered_once() {
        let mut seen = Vec::new();
        for r in HTTP_FILTERS {
            assert!(SUPPORTED_EXTENSIONS.contains(&r.type_url), "{} is not in the support table", r.type_url);
            assert!(!seen.contains(&r.type_url), "{} is registered twice", r.type_url);
            seen.push(r.type_url);
            if let Some(p) = &r.per_route {
                assert!(SUPPORTED_EXTENSIONS.contains(&p.type_url), "{} is not in the support table", p.type_url);
            }
        }
    }

    #[test]
    fn an_unknown_per_route_config_is_named() {
        let any = legate_api::any::pack(&legate_api::pb::google::protobuf::UInt32Value { value: 1 });
        let e = compile_per_route("x", &any).err().unwrap_or_default();
        assert_eq!(e, "typed_per_filter_config[\"x\"]: per-route config google.protobuf.UInt32Value is not supported");
    }
}
