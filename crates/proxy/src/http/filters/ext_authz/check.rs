//! The `CheckRequest` Envoy sends the authorization service: the
//! `AttributeContext` of a request (Envoy's `CheckRequestUtils::createHttpCheck`).

use super::Settings;
use crate::http::filters::RequestCtx;
use legate_api::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
use legate_api::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use legate_api::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use std::collections::HashMap;

/// The header Envoy adds to the checked headers when a body goes with them:
/// whether it was cut at `max_request_bytes`.
pub(super) const PARTIAL_BODY: &str = "x-envoy-auth-partial-body";

/// A request's body as the check carries it: the bytes and the length of
/// the whole body read so far.
pub(super) struct CheckBody<'a> {
    pub bytes: &'a [u8],
    pub partial: bool,
    /// The bytes received so far (Envoy's `bytesReceived`), more than
    /// `bytes` when cut.
    pub received: u64,
}

/// Builds the check for a request; `extensions` are the route's merged
/// `context_extensions`.
pub(super) fn build(
    s: &Settings,
    rq: &RequestCtx<'_>,
    extensions: HashMap<String, String>,
    body: Option<CheckBody<'_>>,
) -> CheckRequest {
    let service = rq
        .headers
        .get("x-envoy-downstream-service-cluster")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut http = HttpRequest {
        id: rand::random::<u64>().to_string(),
        method: rq.pseudo.method.to_string(),
        path: rq.pseudo.path.to_string(),
        host: rq.pseudo.authority.to_string(),
        scheme: rq.pseudo.scheme.to_string(),
        protocol: protocol(rq.version).to_string(),
        headers: headers(s, rq),
        ..Default::default()
    };
    if let Some(b) = body {
        http.size = b.received as i64;
        if s.pack_as_bytes {
            http.raw_body = b.bytes.to_vec();
        } else {
            http.body = String::from_utf8_lossy(b.bytes).into_owned();
        }
        http.headers.insert(PARTIAL_BODY.into(), if b.partial { "true" } else { "false" }.into());
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let time =
        legate_api::pb::google::protobuf::Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() as i32 };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer { address: Some(address_of(rq.peer)), service, ..Default::default() }),
            destination: Some(Peer { address: Some(address_of(rq.local)), ..Default::default() }),
            request: Some(Request { time: Some(time), http: Some(http) }),
            context_extensions: extensions,
            metadata_context: Some(Default::default()),
            route_metadata_context: Some(Default::default()),
            ..Default::default()
        }),
    }
}

/// The request's headers with its pseudo-headers, values of a repeated
/// header joined by `,`; only those `allowed_headers` (if set) lets through
/// and `disallowed_headers` does not name.
fn headers(s: &Settings, rq: &RequestCtx<'_>) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::with_capacity(rq.headers.len() + 4);
    let pseudo = [
        (":authority", rq.pseudo.authority),
        (":path", rq.pseudo.path),
        (":method", rq.pseudo.method),
        (":scheme", rq.pseudo.scheme),
    ];
    for (k, v) in pseudo {
        if s.header_allowed(k) {
            out.insert(k.to_string(), v.to_string());
        }
    }
    for (k, v) in rq.headers.iter() {
        let name = k.as_str();
        // A client's own partial-body marker never reaches the check.
        // Envoy's codec keeps no connection-level headers.
        let hop = matches!(name, "connection" | "keep-alive" | "proxy-connection");
        if hop || name == "host" || name == PARTIAL_BODY || !s.header_allowed(name) {
            continue;
        }
        let v = String::from_utf8_lossy(v.as_bytes());
        out.entry(name.to_string())
            .and_modify(|e| {
                e.push(',');
                e.push_str(&v);
            })
            .or_insert_with(|| v.into_owned());
    }
    out
}

/// Envoy's names of the protocols.
fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn address_of(a: std::net::SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(a.port()))),
            ..Default::default()
        })),
    }
}

/// The check of a TCP connection (Envoy's `createTcpCheck`): its two peers.
pub(crate) fn build_tcp(remote: std::net::SocketAddr, local: std::net::SocketAddr) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer { address: Some(address_of(remote)), ..Default::default() }),
            destination: Some(Peer { address: Some(address_of(local)), ..Default::default() }),
            metadata_context: Some(Default::default()),
            ..Default::default()
        }),
    }
}
