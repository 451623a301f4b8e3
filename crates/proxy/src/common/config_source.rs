//! Envoy's `ConfigSource`: where a resource comes from. Legate follows one
//! management server, over ADS or over one stream per type (an
//! `api_config_source` of GRPC or DELTA_GRPC through an `envoy_grpc`
//! cluster); the xDS client refuses a config source that names another.

use legate_api::pb::envoy::config::core::v3::{
    api_config_source::ApiType, config_source::ConfigSourceSpecifier, grpc_service::TargetSpecifier, ApiConfigSource,
    ConfigSource,
};

/// True when a config source says "over the ADS stream".
pub fn is_ads(cs: &ConfigSource) -> bool {
    matches!(cs.config_source_specifier, Some(ConfigSourceSpecifier::Ads(_)))
}

/// True when the resource comes from the management server: ADS, or a
/// gRPC `api_config_source` (see [`grpc_source`]).
pub fn is_dynamic(cs: &ConfigSource) -> bool {
    is_ads(cs)
        || matches!(&cs.config_source_specifier, Some(ConfigSourceSpecifier::ApiConfigSource(a)) if grpc_source(a).is_ok())
}

/// A per-type gRPC source: whether it is delta, and its management
/// servers' clusters in order. REST and other services are refused.
pub fn grpc_source(a: &ApiConfigSource) -> Result<(bool, Vec<String>), String> {
    let delta = match ApiType::try_from(a.api_type) {
        Ok(ApiType::Grpc) => false,
        Ok(ApiType::DeltaGrpc) => true,
        _ => return Err("api_type: only GRPC and DELTA_GRPC are implemented by Legate".into()),
    };
    let mut clusters = Vec::with_capacity(a.grpc_services.len());
    for (i, g) in a.grpc_services.iter().enumerate() {
        match g.target_specifier.as_ref() {
            Some(TargetSpecifier::EnvoyGrpc(e)) if !e.cluster_name.is_empty() => clusters.push(e.cluster_name.clone()),
            _ => return Err(format!("grpc_services[{i}]: envoy_grpc with a cluster_name is required")),
        }
    }
    if clusters.is_empty() {
        return Err("grpc_services[0]: envoy_grpc with a cluster_name is required".into());
    }
    Ok((delta, clusters))
}
