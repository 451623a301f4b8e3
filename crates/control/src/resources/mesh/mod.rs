//! Higher-level kinds that compile to Envoy resources, so a mesh can be run
//! without writing Envoy YAML:
//!
//! - `Service`: how to reach a service (endpoints listed, from DNS, or from the
//!   registry), its protocol, load balancing, named subsets by label, and its
//!   resilience: active health checks, outlier detection, circuit breakers,
//!   and the retries routes to it use. Compiles to a Cluster and a
//!   ClusterLoadAssignment, plus one pair per subset (`<service>.<subset>`)
//!   and, while a `Release` runs on it, one per version (`<service>~<version>`)
//!   with its routes weighted between them (see `releases`).
//! - `Gateway`: a listener address with hosts and routes to services or
//!   weighted subsets, redirects, rewrites, header changes and direct
//!   responses. Compiles to a Listener and a RouteConfiguration named
//!   `gateway.<name>`; a TCP gateway (`tcp: <service>`) compiles to a
//!   Listener with tcp_proxy to a `protocol: tcp` service.
//! - `Route`: a virtual host (hosts and routes) attached to a Gateway.
//!
//! The compiled resources go through the same Envoy loader as everything else.

pub mod check;
pub mod envoy;
pub mod gateway;
pub mod generate;
pub mod routes;
pub mod service;
pub mod spec;
