//! The table of tracers: one line per tracer, and the provider's driver
//! compiled from it. Adding a tracer touches its module and this table.

use super::driver::{Driver, DriverContext, Registration};
use legate_api::pb::envoy::config::trace::v3::tracing::{http::ConfigType, Http as ProviderPb};
use std::sync::Arc;

/// Every tracer Legate drives.
pub const DRIVERS: &[Registration] = &[
    super::zipkin::REGISTRATION,
    super::otel::REGISTRATION,
    super::skywalking::REGISTRATION,
    super::datadog::REGISTRATION,
];

/// The provider's driver; errors name the field under `provider`.
pub fn compile(p: &ProviderPb, ctx: &DriverContext<'_>) -> Result<Arc<dyn Driver>, String> {
    let Some(ConfigType::TypedConfig(any)) = &p.config_type else {
        return Err("typed_config is required".into());
    };
    let ty = any.type_url.rsplit('/').next().unwrap_or_default();
    let Some(r) = DRIVERS.iter().find(|r| r.type_url == ty) else {
        return Err(format!("typed_config: tracer {ty} is not implemented by Legate"));
    };
    (r.compile)(any, ctx).map_err(|e| format!("typed_config.{e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_driver_is_in_the_support_table() {
        for r in super::DRIVERS {
            assert!(legate_api::support_tracing::TRACING_EXTENSIONS.contains(&r.type_url), "{}", r.type_url);
        }
    }
}
