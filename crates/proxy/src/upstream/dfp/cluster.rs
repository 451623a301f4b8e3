//! The `envoy.clusters.dynamic_forward_proxy` cluster type: its
//! `ClusterConfig` compiled, and the cache its picks read (a request goes
//! to the host its `host` names, once the cache has resolved it).

use super::DnsCache;
use crate::stats::Store;
use legate_api::pb::envoy::config::cluster::v3::cluster::{CustomClusterType, LbPolicy};
use legate_api::pb::envoy::config::cluster::v3::{cluster, Cluster as PbCluster};
use legate_api::pb::envoy::extensions::clusters::dynamic_forward_proxy::v3::{cluster_config, ClusterConfig};
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use std::sync::Arc;

/// The cluster type's name.
pub const NAME: &str = "envoy.clusters.dynamic_forward_proxy";
const TYPE: &str = "envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig";
const TLS: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// A dynamic forward proxy cluster's part.
pub struct DfpCluster {
    pub cache: Arc<DnsCache>,
    /// The port of a name without one: 443 with TLS, else 80.
    pub default_port: u16,
}

/// Whether a `cluster_type` is the dynamic forward proxy.
pub fn is_dfp(t: &CustomClusterType) -> bool {
    t.name == NAME || t.typed_config.as_ref().is_some_and(|a| legate_api::any::type_name(a) == TYPE)
}

impl DfpCluster {
    /// A cluster's dynamic forward proxy part, when its type is one.
    pub fn compile(c: &PbCluster, store: &Arc<Store>) -> Result<Option<Self>, String> {
        let Some(cluster::ClusterDiscoveryType::ClusterType(t)) = &c.cluster_discovery_type else { return Ok(None) };
        if !is_dfp(t) {
            return Ok(None);
        }
        let any = t.typed_config.as_ref().ok_or("cluster_type.typed_config: a ClusterConfig is required")?;
        let cfg: ClusterConfig = legate_api::any::unpack(any).map_err(|e| format!("cluster_type.typed_config: {e}"))?;
        let path = "cluster_type.typed_config.dns_cache_config";
        let dns = match &cfg.cluster_implementation_specifier {
            Some(cluster_config::ClusterImplementationSpecifier::DnsCacheConfig(d)) => d,
            Some(_) => return Err("cluster_type.typed_config.sub_clusters_config is not implemented by Legate".into()),
            None => return Err(format!("{path} is required")),
        };
        if LbPolicy::try_from(c.lb_policy) != Ok(LbPolicy::ClusterProvided) || c.load_balancing_policy.is_some() {
            return Err(format!("lb_policy: a {NAME} cluster needs CLUSTER_PROVIDED"));
        }
        if c.load_assignment.as_ref().is_some_and(|la| !la.endpoints.is_empty()) {
            return Err(format!("load_assignment: a {NAME} cluster takes its hosts from its DNS cache"));
        }
        let tls = tls_context(c)?;
        if let Some(t) = &tls {
            // Envoy makes every connection of the cluster send the host's
            // name as SNI and check the certificate against it (auto_sni,
            // auto_san_validation) unless the cluster allows otherwise.
            if !(cfg.allow_insecure_cluster_options || (t.auto_host_sni && t.auto_sni_san_validation)) {
                return Err(format!(
                    "transport_socket: a {NAME} cluster's TLS must set auto_host_sni and auto_sni_san_validation in Legate (Envoy's implied auto_sni and auto_san_validation), unless allow_insecure_cluster_options is set"
                ));
            }
        }
        Ok(Some(Self {
            cache: super::cache_for(dns, store, path)?,
            default_port: if tls.is_some() { 443 } else { 80 },
        }))
    }
}

/// The cluster's `UpstreamTlsContext`, when its transport socket is TLS.
fn tls_context(c: &PbCluster) -> Result<Option<UpstreamTlsContext>, String> {
    let Some(ts) = &c.transport_socket else { return Ok(None) };
    let Some(legate_api::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type
    else {
        return Ok(None);
    };
    if legate_api::any::type_name(any) != TLS {
        return Ok(None);
    }
    legate_api::any::unpack(any).map(Some).map_err(|e| format!("transport_socket.typed_config: {e}"))
}
