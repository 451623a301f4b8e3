//! The bootstrap's `overload_manager`: today its global downstream
//! connection limit (the support table refuses other resource monitors and
//! every action). The limit is exact at accept time, as Envoy's proactive
//! resource is, so `refresh_interval` has nothing to sample.

use crate::common::conn_limit::ConnLimit;
use legate_api::pb::envoy::config::bootstrap::v3::Bootstrap;
use legate_api::pb::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig;
use std::sync::Arc;

/// The limit from `overload_manager.resource_monitors` (none configured:
/// unlimited); else the field's path and what is wrong with it.
pub fn conn_limit(b: &Bootstrap) -> Result<Arc<ConnLimit>, (String, String)> {
    let mut max = None;
    let monitors = b.overload_manager.as_ref().map(|o| o.resource_monitors.as_slice()).unwrap_or_default();
    for (i, m) in monitors.iter().enumerate() {
        let path = format!("overload_manager.resource_monitors[{i}]");
        let Some(any) = m.config_type.as_ref().map(|c| match c {
            legate_api::pb::envoy::config::overload::v3::resource_monitor::ConfigType::TypedConfig(a) => a,
        }) else {
            return Err((path, "typed_config is required".into()));
        };
        let cfg: DownstreamConnectionsConfig = legate_api::any::unpack(any).map_err(|reason| (path.clone(), reason))?;
        if max.is_some() {
            return Err((path, "a second global connection limit".into()));
        }
        max = Some(usize::try_from(cfg.max_active_downstream_connections).unwrap_or(usize::MAX));
    }
    Ok(ConnLimit::new(max))
}
