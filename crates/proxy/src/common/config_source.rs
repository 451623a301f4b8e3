//! Envoy's `ConfigSource`: where a resource comes from. Legate follows one
//! management server, over ADS, over one stream per type (an
//! `api_config_source` of GRPC or DELTA_GRPC through an `envoy_grpc`
//! cluster) or polled over REST (`api_type: REST` with `cluster_names`);
//! the xDS client refuses a config source that names another.

use std::time::Duration;

use legate_api::pb::envoy::config::core::v3::{
    api_config_source::ApiType, config_source::ConfigSourceSpecifier, grpc_service::TargetSpecifier, ApiConfigSource,
    ConfigSource,
};

/// True when a config source says "over the ADS stream".
pub fn is_ads(cs: &ConfigSource) -> bool {
    matches!(cs.config_source_specifier, Some(ConfigSourceSpecifier::Ads(_)))
}

/// True when the resource comes from the management server: ADS, or a
/// gRPC or REST `api_config_source` (see [`api_source`]).
pub fn is_dynamic(cs: &ConfigSource) -> bool {
    is_ads(cs)
        || matches!(&cs.config_source_specifier, Some(ConfigSourceSpecifier::ApiConfigSource(a)) if api_source(a).is_ok())
}

/// How a per-type source is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A gRPC stream per type, delta or state of the world.
    Grpc { delta: bool },
    /// REST-JSON polling.
    Rest(RestTiming),
}

/// A REST source's timing, as Envoy reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestTiming {
    /// `refresh_delay` (required): a poll comes between one and two of it
    /// after the last one ended (Envoy adds up to one more as jitter).
    pub refresh: Duration,
    /// `request_timeout`, 1 s by default.
    pub timeout: Duration,
}

/// A per-type source, gRPC or REST, with its management servers' clusters.
pub fn api_source(a: &ApiConfigSource) -> Result<(Transport, Vec<String>), String> {
    if ApiType::try_from(a.api_type) != Ok(ApiType::Rest) {
        return grpc_source(a).map(|(delta, clusters)| (Transport::Grpc { delta }, clusters));
    }
    // Envoy: a REST source names exactly one cluster and no gRPC service.
    if !a.grpc_services.is_empty() {
        return Err("grpc_services: a REST source takes cluster_names, not grpc_services".into());
    }
    if a.cluster_names.len() != 1 || a.cluster_names[0].is_empty() {
        return Err("cluster_names: a REST source names exactly one cluster".into());
    }
    let Some(refresh) = a.refresh_delay.as_ref().map(legate_api::duration::from_pb) else {
        return Err("refresh_delay: required for REST API configuration sources".into());
    };
    if refresh.is_zero() {
        return Err("refresh_delay: must be more than zero".into());
    }
    let timeout = legate_api::duration::or(a.request_timeout.as_ref(), Duration::from_secs(1));
    Ok((Transport::Rest(RestTiming { refresh, timeout }), a.cluster_names.clone()))
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
