//! Envoy's standard span tags (`Tracing::Tags`) and the connection
//! manager's `custom_tags`.

use http::HeaderMap;
use legate_api::pb::envoy::r#type::tracing::v3::{custom_tag, CustomTag as CustomTagPb};

pub const COMPONENT: &str = "component";
pub const PROXY: &str = "proxy";
pub const NODE_ID: &str = "node_id";
pub const ZONE: &str = "zone";
pub const GUID_X_REQUEST_ID: &str = "guid:x-request-id";
pub const GUID_X_CLIENT_TRACE_ID: &str = "guid:x-client-trace-id";
pub const HTTP_URL: &str = "http.url";
pub const HTTP_METHOD: &str = "http.method";
pub const HTTP_PROTOCOL: &str = "http.protocol";
pub const HTTP_STATUS_CODE: &str = "http.status_code";
pub const DOWNSTREAM_CLUSTER: &str = "downstream_cluster";
pub const USER_AGENT: &str = "user_agent";
pub const REQUEST_SIZE: &str = "request_size";
pub const RESPONSE_SIZE: &str = "response_size";
pub const UPSTREAM_CLUSTER: &str = "upstream_cluster";
pub const UPSTREAM_CLUSTER_NAME: &str = "upstream_cluster.name";
pub const UPSTREAM_ADDRESS: &str = "upstream_address";
pub const PEER_ADDRESS: &str = "peer.address";
pub const RESPONSE_FLAGS: &str = "response_flags";
pub const ERROR: &str = "error";
pub const ERROR_REASON: &str = "error.reason";
pub const TRUE: &str = "true";

/// One of `custom_tags`: a literal, an environment variable (read once,
/// when the config is compiled, as Envoy does) or a request header.
pub struct CustomTag {
    pub tag: String,
    value: Value,
}

enum Value {
    Fixed(String),
    Header { name: http::HeaderName, default: String },
}

impl CustomTag {
    pub fn compile(c: &CustomTagPb) -> Result<Self, String> {
        let value = match &c.r#type {
            Some(custom_tag::Type::Literal(l)) => Value::Fixed(l.value.clone()),
            Some(custom_tag::Type::Environment(e)) => Value::Fixed(
                std::env::var(&e.name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| e.default_value.clone()),
            ),
            Some(custom_tag::Type::RequestHeader(h)) => Value::Header {
                name: http::HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| format!("request_header.name: '{}' is not a header name", h.name))?,
                default: h.default_value.clone(),
            },
            Some(_) => return Err("type: metadata tags are not implemented by Legate".into()),
            None => return Err("type is required".into()),
        };
        Ok(Self { tag: c.tag.clone(), value })
    }

    /// The tag's value for a request; an empty value sets no tag, as in Envoy.
    pub fn value<'a>(&'a self, request: &'a HeaderMap) -> Option<&'a str> {
        let v = match &self.value {
            Value::Fixed(v) => v.as_str(),
            Value::Header { name, default } => {
                request.get(name).and_then(|v| v.to_str().ok()).unwrap_or(default.as_str())
            }
        };
        (!v.is_empty()).then_some(v)
    }
}
