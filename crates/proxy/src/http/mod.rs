//! HTTP: the connection manager, its filter chain, the route tables and the router.

pub mod conn_manager;
pub mod context;
pub mod filters;
pub mod grpc;
pub mod h1_errors;
pub mod h1_framing;
pub mod h2_frames;
pub mod header_mutation;
pub mod route;
pub mod router;
