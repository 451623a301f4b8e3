//! What a gRPC-Web request leaves for its response (kept in the chain's
//! per-request `ResponseState`).

use super::body::Failure;
use super::stats::GrpcStats;
use std::sync::Arc;

/// What a gRPC-Web request leaves for its response.
#[derive(Clone)]
pub struct Exchange {
    /// The client asked for base64 (`accept: application/grpc-web-text`).
    pub(super) text_response: bool,
    /// A text request: whether its body failed to decode.
    pub(super) failed: Option<Arc<Failure>>,
    /// The `grpc-web` stats of the route's cluster, for a `/service/method` path.
    pub(super) stats: Option<Arc<GrpcStats>>,
}
