//! The xDS server: ADS and the per-type services, state of the world and delta.
//!
//! Each stream is one task. It holds what it sent per type (version, nonce,
//! per-resource versions for delta) and wakes on two things: a request from the
//! proxy (subscription, ACK, NACK) and a new published revision. Pushes go out
//! in make-before-break order: runtime layers (RTDS), secrets, clusters, endpoints, listeners, routes.
//! What one client can make the server hold is bounded (`limits`).

pub mod delta;
pub mod incoming;
pub mod limits;
pub mod server;
pub mod sotw;
pub mod stream;
