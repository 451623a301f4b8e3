//! Network filters: what a filter chain runs on a connection. The filters
//! in front (`local_ratelimit`, `rbac`) are `ConnectionFilter`s (`api`); the
//! last one, the terminal filter, serves the connection (`tcp_proxy`, or the
//! HTTP connection manager). `registry` finds each by its config type.

pub mod api;
pub mod ext_authz;
pub mod http_connection_manager;
pub mod local_ratelimit;
pub mod rbac;
pub mod read_gate;
pub mod registry;
pub mod tcp_proxy;

/// What a filter chain's terminal filter is. An enum rather than a trait
/// object: serving is generic over the stream, so a plain connection is
/// served without boxing its stream.
pub enum NetFilter {
    Http(http_connection_manager::HttpChain),
    Tcp(tcp_proxy::TcpProxyConfig),
}
