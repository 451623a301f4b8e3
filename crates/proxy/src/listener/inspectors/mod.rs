//! Listener filters: they peek at a new connection's first bytes, before a filter
//! chain is chosen (`tls_inspector`, `http_inspector`).

pub mod http;
pub mod tls;
