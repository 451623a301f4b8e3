//! Upstreams: clusters and their hosts, load balancing, connection pools,
//! health checking, outlier detection and circuit breakers.
//!
//! Imports run one way. At the bottom, leaves: `host`, `clock`, `error`,
//! `breakers`, `cluster_stats`, `endpoints`, `protocol`. Above them the host
//! set (`host_set`, `membership`), the balancer (`lb`), and what works on a
//! cluster's hosts without knowing the cluster (`health`, `outlier`, `dns`,
//! `worker_pools`). `cluster` composes those; `connection`, `pool` (sending
//! requests) and `tasks` (a cluster's background work) sit on top, and
//! `google_grpc` (a gRPC target compiled into a private cluster) above them.

pub mod breakers;
pub mod clock;
pub mod cluster;
pub mod cluster_stats;
pub mod connection;
pub mod dfp;
pub mod dns;
pub mod dns_client;
pub mod endpoints;
pub mod error;
pub mod google_grpc;
pub mod health;
pub mod host;
pub mod host_set;
pub mod lb;
pub mod membership;
pub mod outlier;
pub mod pool;
pub mod protocol;
pub mod tasks;
pub mod worker_pools;
