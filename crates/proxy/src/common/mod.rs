//! Small pieces of Envoy's config language that every part uses: config and
//! data sources, the `%OPERATOR%` formatter, the global connection limit, fractions, string and header matchers, token buckets.
//!
//! A leaf: nothing here imports another part of the proxy.

pub mod cidr;
pub mod config_source;
pub mod conn_limit;
pub mod datasource;
pub mod format;
pub mod fraction;
pub mod local_address;
pub mod match_tree;
pub mod matcher;
pub mod metadata;
pub mod overload;
pub mod runtime;
pub mod token_bucket;
pub mod version;
