//! What a traced stream carries (kept apart from `tracing`, which reads and
//! writes the stream, so the stream does not import the code that uses it).

use crate::trace::Span;

/// A traced stream's spans and what its response needs.
pub(in crate::http) struct StreamTrace {
    /// None when the request carried a context the tracer could not read.
    pub(in crate::http) span: Option<Span>,
    /// The router's span for the upstream request (`spawn_upstream_span`).
    pub(in crate::http) upstream: Option<Span>,
    /// The decorator's operation, sent back on an ingress response.
    pub(in crate::http) decorated: Option<String>,
    /// Custom tags are read from the request as it went upstream.
    pub(in crate::http) custom: Vec<(String, String)>,
}
