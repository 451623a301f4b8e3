//! Network filters: what a filter chain runs on a connection's bytes
//! (`tcp_proxy`, `rbac`, `local_ratelimit`; the HTTP connection manager is in `http`).

pub mod local_ratelimit;
pub mod rbac;
pub mod tcp_proxy;
