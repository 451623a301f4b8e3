//! A route's or virtual host's settings for the HTTP filters: its
//! `typed_per_filter_config`, compiled by the filters that read it (through
//! their registry entries) and kept by type, and its `rate_limits`.

use crate::http::route::rate_limit::DescriptorPolicy;
use std::any::Any;
use std::sync::Arc;

/// One compiled per-route config; the filter that reads it downcasts it.
pub type PerRouteConfig = Arc<dyn Any + Send + Sync>;

/// The per-filter settings of a route or virtual host.
#[derive(Default)]
pub struct PerFilter {
    /// Per-route configs, one per type (each filter reads its own). A
    /// handful at most: a linear scan.
    configs: Vec<PerRouteConfig>,
    /// The route's or virtual host's `rate_limits`: the descriptors the
    /// local rate limit matches against.
    pub rate_limits: Vec<DescriptorPolicy>,
    /// The route's `metadata.filter_metadata`, by filter name, as JSON
    /// (what a Lua script's `metadata()` reads).
    pub filter_metadata: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}

impl PerFilter {
    pub fn new(rate_limits: Vec<DescriptorPolicy>) -> Self {
        Self { configs: Vec::new(), rate_limits, filter_metadata: None }
    }

    /// Keeps a route's `metadata.filter_metadata` (none when empty).
    pub fn set_metadata(&mut self, m: Option<&legate_api::pb::envoy::config::core::v3::Metadata>) {
        let Some(m) = m.filter(|m| !m.filter_metadata.is_empty()) else { return };
        let map = m.filter_metadata.iter().map(|(k, s)| (k.clone(), struct_json(s))).collect();
        self.filter_metadata = Some(Arc::new(map));
    }

    /// Adds a compiled per-route config; one of the same type is replaced.
    pub fn insert(&mut self, config: PerRouteConfig) {
        let kind = (*config).type_id();
        match self.configs.iter_mut().find(|c| (***c).type_id() == kind) {
            Some(slot) => *slot = config,
            None => self.configs.push(config),
        }
    }

    /// The per-route config of type `T`, if there is one.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.configs.iter().find_map(|c| c.downcast_ref::<T>())
    }
}

pub use crate::common::metadata::struct_json;

impl std::fmt::Debug for PerFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerFilter")
            .field("configs", &self.configs.len())
            .field("rate_limits", &self.rate_limits)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_config_per_type_the_last_wins() {
        let mut p = PerFilter::default();
        p.insert(Arc::new(1u32));
        p.insert(Arc::new("x"));
        p.insert(Arc::new(2u32));
        assert_eq!(p.get::<u32>(), Some(&2));
        assert_eq!(p.get::<&str>(), Some(&"x"));
        assert_eq!(p.get::<u64>(), None);
    }
}
