//! The descriptor pool for Envoy's API, decoded once per process.

use prost_reflect::{DescriptorPool, MessageDescriptor};
use std::sync::OnceLock;

static DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor.bin"));

/// The pool of every message in Envoy's v3 API (plus xds/udpa and the
/// well-known types). Decoding it costs a few milliseconds, once.
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTOR_SET).expect("descriptor set built by build.rs is valid"))
}

/// The message named by a type URL (`type.googleapis.com/envoy.config.cluster.v3.Cluster`)
/// or by a full name.
pub fn message_by_type_url(type_url: &str) -> Option<MessageDescriptor> {
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    pool().get_message_by_name(name)
}

pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";
