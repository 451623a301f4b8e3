//! Request headers the connection manager owns, as Envoy's
//! `ConnectionManagerUtility` writes them: who the client is
//! (`x-forwarded-for`), internal or edge (the `x-envoy-*` headers an
//! external client may not send), `x-forwarded-proto`, `x-request-id`,
//! `x-forwarded-client-cert`. Also the hop-by-hop headers that never cross
//! the proxy, and the route levels' header mutations.

use super::stream::Stream;
use super::{ConnInfo, Hcm};
use crate::common::format::Context;
use crate::common::local_address::local_address;
use crate::http::header_mutation::HeaderMutations;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use std::net::{IpAddr, SocketAddr};

pub(super) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
/// Headers only an internal caller may send: removed from external requests.
const EXTERNAL_STRIPPED: &[&str] = &[
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-original-url",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
];
/// Headers a client may not set on an edge request (use_remote_address):
/// Envoy strips them there and passes them on from internal hops.
static X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER: HeaderName = HeaderName::from_static("x-envoy-downstream-service-cluster");
static X_ENVOY_DOWNSTREAM_SERVICE_NODE: HeaderName = HeaderName::from_static("x-envoy-downstream-service-node");

const EDGE_STRIPPED: &[&str] = &[
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-original-path",
];

/// `via` after what the header holds, `, `-separated (Envoy's `appendVia`).
pub(super) fn append_via(h: &mut HeaderMap, via: &HeaderValue) {
    static VIA: HeaderName = HeaderName::from_static("via");
    let joined = match h.get(&VIA).filter(|v| !v.is_empty()) {
        Some(before) => {
            let mut joined = Vec::with_capacity(before.len() + 2 + via.len());
            joined.extend_from_slice(before.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(via.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| via.clone())
        }
        None => via.clone(),
    };
    h.insert(VIA.clone(), joined);
}

/// Which port the connection manager takes off the request's host before
/// routing (Envoy's `strip_port_mode`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum StripPort {
    None,
    /// `strip_any_host_port`.
    Any,
    /// `strip_matching_host_port`: only the listener's own port.
    Matching,
}

impl StripPort {
    pub(super) fn compile(c: &HttpConnectionManager) -> Self {
        use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::StripPortMode;
        match c.strip_port_mode {
            Some(StripPortMode::StripAnyHostPort(true)) => StripPort::Any,
            _ if c.strip_matching_host_port => StripPort::Matching,
            _ => StripPort::None,
        }
    }

    /// `host` without its port, if this mode takes it off (Envoy's
    /// `stripPortFromHost`: a numeric port after the last `:` that is not
    /// inside an IPv6 literal's brackets; CONNECT keeps its port).
    pub(super) fn strip<'h>(self, host: &'h str, method: &http::Method, listener_port: u16) -> Option<&'h str> {
        if self == StripPort::None || method == http::Method::CONNECT {
            return None;
        }
        let colon = host.rfind(':')?;
        if host.rfind(']').is_some_and(|end| end > colon) {
            return None;
        }
        let port: u32 =
            host[colon + 1..].parse().ok().filter(|_| host[colon + 1..].bytes().all(|b| b.is_ascii_digit()))?;
        if self == StripPort::Matching && port != u32::from(listener_port) {
            return None;
        }
        Some(&host[..colon])
    }
}

impl Hcm {
    /// The request's host without the port `strip_*_host_port` takes off,
    /// for routing, the filters and the upstream.
    pub(super) fn strip_host_port(&self, stream: &mut Stream, parts: &mut http::request::Parts) {
        let Some(host) = self.strip_port.strip(&stream.authority, &parts.method, stream.conn.local.port()) else {
            return;
        };
        let host = host.to_string();
        if let Ok(v) = HeaderValue::from_str(&host) {
            parts.headers.insert(http::header::HOST, v);
        }
        stream.authority = host;
    }
}

impl Hcm {
    /// Who the client is: the connection's peer, or an address taken from
    /// x-forwarded-for as Envoy's use_remote_address / xff_num_trusted_hops say.
    pub(super) fn client_address(&self, peer: SocketAddr, h: &HeaderMap) -> SocketAddr {
        let mut client = peer;
        if self.use_remote_address {
            if self.xff_trusted_hops > 0 {
                if let Some(ip) = xff_from_right(h, self.xff_trusted_hops - 1) {
                    client = SocketAddr::new(ip, 0);
                }
            }
        } else if let Some(ip) = xff_from_right(h, self.xff_trusted_hops) {
            client = SocketAddr::new(ip, 0);
        }
        client
    }

    /// Whether a request is internal (headers before x-forwarded-for is
    /// appended to). Only called when internal ranges are configured.
    fn is_internal(&self, h: &HeaderMap, peer: SocketAddr) -> bool {
        // The x-forwarded-for entries, counted without collecting them.
        let mut xff = xff_entries(h).filter(|s| !s.is_empty());
        let trusted = match (self.use_remote_address, xff.next(), xff.next()) {
            // With use_remote_address: the peer, and no x-forwarded-for.
            (true, None, _) => peer.ip(),
            // Behind a trusted proxy: the one x-forwarded-for address.
            (false, Some(only), None) => match only.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => return false,
            },
            _ => return false,
        };
        self.internal_ranges.iter().any(|c| c.contains(trusted))
    }

    /// The request headers Envoy's connection manager owns, set on a
    /// request that passed the protocol checks; `stream.internal` is decided here.
    pub(super) fn set_request_headers(&self, stream: &mut Stream, h: &mut HeaderMap) {
        // Internal or external, as Envoy decides it: the trusted client
        // address must be the only one in x-forwarded-for (or there is none,
        // with use_remote_address) and inside `internal_address_config`;
        // Envoy 1.40 has no internal addresses unless that names some. An
        // external request loses the control headers only internal callers
        // may send; an edge request (use_remote_address) a few more.
        h.remove(&X_ENVOY_INTERNAL);
        stream.internal = !self.internal_ranges.is_empty() && self.is_internal(h, stream.conn.remote);
        let edge = self.use_remote_address && !stream.internal;
        if stream.internal {
            h.insert(X_ENVOY_INTERNAL.clone(), HeaderValue::from_static("true"));
        } else {
            for name in EXTERNAL_STRIPPED {
                h.remove(*name);
            }
            if edge {
                for name in EDGE_STRIPPED {
                    h.remove(*name);
                }
            }
        }
        self.set_forwarded_headers(h, &stream.conn, stream.client, edge);
        if let Some((cluster, node)) = &self.add_user_agent {
            h.insert(X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER.clone(), cluster.clone());
            if h.get(http::header::USER_AGENT).is_none_or(|v| v.is_empty()) {
                h.insert(http::header::USER_AGENT, cluster.clone());
            }
            if !node.is_empty() {
                h.insert(X_ENVOY_DOWNSTREAM_SERVICE_NODE.clone(), node.clone());
            }
        }
        self.set_request_id(h, edge);
        if let Some(via) = &self.via {
            append_via(h, via);
        }
        self.xfcc.apply(h, stream.conn.tls.as_deref());
    }

    /// `x-forwarded-for`, `x-forwarded-proto` and, on an edge request,
    /// `x-envoy-external-address`.
    fn set_forwarded_headers(&self, h: &mut HeaderMap, conn: &ConnInfo, client: SocketAddr, edge: bool) {
        if self.use_remote_address {
            if !self.skip_xff_append {
                // A loopback peer (a local sidecar) is recorded as this
                // machine's own address, as Envoy does.
                let hop =
                    if conn.remote.ip().is_loopback() { local_address(conn.remote.ip()) } else { conn.remote.ip() };
                let appended = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
                    Some(prev) => format!("{prev},{hop}"),
                    None => hop.to_string(),
                };
                h.remove(&X_FORWARDED_FOR);
                if let Ok(v) = HeaderValue::from_str(&appended) {
                    h.insert(X_FORWARDED_FOR.clone(), v);
                }
            }
            // With trusted hops, a downstream's x-forwarded-proto is kept as it
            // is (Envoy 1.40 does not check the value here); otherwise it is
            // this connection's scheme.
            if self.xff_trusted_hops == 0 || !h.contains_key(&X_FORWARDED_PROTO) {
                h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(conn.scheme()));
            }
            // An edge request is marked with its client address.
            if edge {
                if let Ok(v) = HeaderValue::from_str(&client.ip().to_string()) {
                    h.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), v);
                }
            }
        } else if !h.contains_key(&X_FORWARDED_PROTO) {
            h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(conn.scheme()));
        }
    }

    /// A new `x-request-id` when there is none, or always on an edge request
    /// unless `preserve_external_request_id`.
    fn set_request_id(&self, h: &mut HeaderMap, edge: bool) {
        if !self.generate_request_id {
            return;
        }
        let regenerate = edge && !self.preserve_external_request_id;
        if regenerate || !h.contains_key(&X_REQUEST_ID) {
            let id = uuid::Uuid::new_v4();
            let mut buf = [0u8; 36];
            let s = id.hyphenated().encode_lower(&mut buf);
            if let Ok(v) = HeaderValue::from_str(s) {
                h.insert(X_REQUEST_ID.clone(), v);
            }
        }
    }
}

/// The x-forwarded-for entries, left to right, over all its headers.
fn xff_entries(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).map(str::trim)
}

/// The n-th address from the right of the x-forwarded-for list.
fn xff_from_right(h: &HeaderMap, n: usize) -> Option<IpAddr> {
    let all: Vec<&str> = xff_entries(h).collect();
    let i = all.len().checked_sub(n + 1)?;
    all[i].parse().ok()
}

/// Headers that describe one hop and are never forwarded.
pub(in crate::http) fn strip_hop_by_hop(h: &mut HeaderMap) {
    if let Some(conn) = h.get(http::header::CONNECTION).cloned() {
        if let Ok(list) = conn.to_str() {
            for name in list.split(',') {
                let name = name.trim();
                if !name.is_empty() && !name.eq_ignore_ascii_case("close") && !name.eq_ignore_ascii_case("keep-alive") {
                    h.remove(name);
                }
            }
        }
    }
    for name in ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"] {
        h.remove(name);
    }
    if h.get(http::header::TE).is_some_and(|v| v != "trailers") {
        h.remove(http::header::TE);
    }
}

/// Applies route, virtual host and route-configuration mutations in Envoy's
/// order (most specific first, unless `most_specific_header_mutations_wins`).
pub(in crate::http) fn apply_levels(
    levels: [&HeaderMutations; 3],
    most_specific_wins: bool,
    h: &mut HeaderMap,
    ctx: &Context<'_>,
) {
    if most_specific_wins {
        for m in levels.iter().rev() {
            m.apply(h, ctx);
        }
    } else {
        for m in levels {
            m.apply(h, ctx);
        }
    }
}

#[cfg(test)]
mod strip_port_tests {
    use super::StripPort;
    use http::Method;

    #[test]
    fn the_port_comes_off_as_envoys_strip_port_from_host() {
        let get = Method::GET;
        assert_eq!(StripPort::Any.strip("a.example:8080", &get, 10000), Some("a.example"));
        assert_eq!(StripPort::Any.strip("[::1]:80", &get, 10000), Some("[::1]"));
        assert_eq!(StripPort::Any.strip("[::1]", &get, 10000), None);
        assert_eq!(StripPort::Any.strip("a.example:http", &get, 10000), None);
        assert_eq!(StripPort::Any.strip("a.example:", &get, 10000), None);
        assert_eq!(StripPort::Any.strip("a.example", &get, 10000), None);
        assert_eq!(StripPort::Any.strip("a.example:443", &Method::CONNECT, 10000), None);
        assert_eq!(StripPort::Matching.strip("a.example:10000", &get, 10000), Some("a.example"));
        assert_eq!(StripPort::Matching.strip("a.example:10001", &get, 10000), None);
        assert_eq!(StripPort::None.strip("a.example:10000", &get, 10000), None);
    }
}
