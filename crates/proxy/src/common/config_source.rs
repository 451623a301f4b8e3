//! Envoy's `ConfigSource`: where a resource comes from. Legate follows only
//! the ADS stream, so the one question asked of it is whether it says ADS.

use legate_api::pb::envoy::config::core::v3::{config_source::ConfigSourceSpecifier, ConfigSource};

/// True when a config source says "over the ADS stream".
pub fn is_ads(cs: &ConfigSource) -> bool {
    matches!(cs.config_source_specifier, Some(ConfigSourceSpecifier::Ads(_)))
}
