//! What a bridged request leaves for its response (kept in the chain's
//! per-request `ResponseState`).

/// A gRPC request over HTTP/1 whose response the bridge rewrites.
#[derive(Clone, Copy, Debug)]
pub struct Bridged;
