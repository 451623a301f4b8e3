//! The descriptor pool for Envoy's API, decoded when needed and dropped when
//! idle.
//!
//! The pool describes every message of Envoy's v3 API (plus xds/udpa and the
//! well-known types): decoded, it is about 26 MiB of heap, nearly all the heap
//! a proxy would otherwise keep after startup. It is needed only while a
//! config is read, validated or dumped, so it is decoded on first use, kept
//! while it is being used, and dropped by [`release_if_idle`] (the proxy calls
//! it after startup and periodically). A later use decodes it again, which
//! costs tens of milliseconds of CPU; what is read and how it is validated is
//! the same every time.
//!
//! The set itself is stored zstd-compressed in the binary, so that the
//! uncompressed bytes (about 3 MiB) are never resident file pages: they are
//! decompressed onto the heap for the decode and freed right after.

use prost_reflect::{DescriptorPool, MessageDescriptor};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static DESCRIPTOR_SET_ZST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptor.bin.zst"));

struct Cached {
    pool: DescriptorPool,
    last_used: Instant,
}

static CACHE: Mutex<Option<Cached>> = Mutex::new(None);

fn decode() -> DescriptorPool {
    let bytes = zstd::stream::decode_all(DESCRIPTOR_SET_ZST).expect("descriptor set compressed by build.rs is valid");
    DescriptorPool::decode(bytes.as_slice()).expect("descriptor set built by build.rs is valid")
}

/// The pool of every message in Envoy's API. A clone is cheap (the pool is
/// reference-counted inside); it stays alive while any clone, descriptor or
/// message read through it does.
pub fn pool() -> DescriptorPool {
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    match cache.as_mut() {
        Some(c) => {
            c.last_used = now;
            c.pool.clone()
        }
        None => {
            let pool = decode();
            *cache = Some(Cached { pool: pool.clone(), last_used: now });
            pool
        }
    }
}

/// Drops the kept pool when it has not been asked for during `idle` (zero:
/// drop it now). Its memory goes when the last descriptor or message read
/// through it does. Returns whether a pool was dropped.
pub fn release_if_idle(idle: Duration) -> bool {
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    match cache.as_ref() {
        Some(c) if c.last_used.elapsed() >= idle => {
            *cache = None;
            true
        }
        _ => false,
    }
}

/// Whether a decoded pool is kept now.
pub fn is_kept() -> bool {
    CACHE.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}

/// The message named by a type URL (`type.googleapis.com/envoy.config.cluster.v3.Cluster`)
/// or by a full name.
pub fn message_by_type_url(type_url: &str) -> Option<MessageDescriptor> {
    message_in(&pool(), type_url)
}

/// The message named by a type URL or full name, in `pool` (the pool a
/// message being read came from, so one reading never mixes two pools).
pub fn message_in(pool: &DescriptorPool, type_url: &str) -> Option<MessageDescriptor> {
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    pool.get_message_by_name(name)
}

pub const TYPE_URL_PREFIX: &str = "type.googleapis.com/";
