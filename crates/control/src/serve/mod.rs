//! What the control plane serves: xDS (with CSDS) to the proxies, and the
//! REST API with its dashboard to people and tools, optionally over TLS; HDS
//! (health checks delegated to proxies) beside xDS; `peers` asks the other
//! replicas for their part of the fleet's figures.

pub mod api;
pub mod csds;
pub mod hds;
pub mod metrics;
pub mod tls;
pub mod xds;
