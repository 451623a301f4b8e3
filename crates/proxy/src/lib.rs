//! Legate's data plane: an Envoy-compatible proxy, as a library.
//!
//! `server` turns a bootstrap into running workers; `listener` accepts;
//! `hcm` serves HTTP with the router; `route` matches; `cluster` picks hosts;
//! `upstream` pools connections; `stats` and `admin` speak Envoy's names.

// Envoy still accepts its deprecated fields (and so must we), so reading them is
// deliberate.
#![allow(deprecated)]

pub mod access_log;
pub mod admin;
pub mod body;
pub mod breakers;
pub mod cluster;
pub mod datasource;
pub mod dns;
pub mod filter_chain;
pub mod filters;
pub mod format;
pub mod fraction;
pub mod h1_errors;
pub mod hash_lb;
pub mod hcm;
pub mod headers;
pub mod health;
pub mod http_inspector;
pub mod lb_config;
pub mod listener;
pub mod listener_manager;
pub mod matcher;
pub mod memory;
pub mod net_ratelimit;
pub mod net_rbac;
pub mod outlier;
pub mod peer;
pub mod rds;
pub mod retry;
pub mod route;
pub mod sds;
pub mod server;
pub mod stats;
pub mod tcp_proxy;
pub mod tls;
pub mod tls_inspector;
pub mod token_bucket;
pub mod upstream;
pub mod xds_client;
