//! DNS for STRICT_DNS and LOGICAL_DNS clusters, on the main thread: what a
//! cluster resolves, and one resolution of it into the cluster's hosts.

use crate::upstream::endpoints::{Endpoint, HostEntry};
use crate::upstream::membership::Membership;
use legate_api::pb::envoy::config::cluster::v3::{cluster::DnsLookupFamily, Cluster as PbCluster};
use std::net::SocketAddr;
use std::time::Duration;

/// A cluster's DNS settings.
pub struct Dns {
    /// The endpoints to resolve (hostnames, or addresses).
    pub targets: Vec<Endpoint>,
    /// `dns_refresh_rate`: how often the targets are resolved again.
    pub refresh: Duration,
    /// `dns_lookup_family`.
    pub family: i32,
    /// LOGICAL_DNS: only the first address of each name is used.
    pub first_address_only: bool,
}

impl Dns {
    // Envoy still reads the deprecated cluster-level `dns_refresh_rate`.
    #[allow(deprecated)]
    pub fn compile(c: &PbCluster, targets: Vec<Endpoint>, first_address_only: bool) -> Self {
        Self {
            targets,
            refresh: legate_api::duration::or(c.dns_refresh_rate.as_ref(), Duration::from_secs(5)),
            family: c.dns_lookup_family,
            first_address_only,
        }
    }

    /// Resolves every target once and installs the result in `hosts`.
    pub async fn resolve_once(&self, cluster: &str, hosts: &Membership) {
        let family = DnsLookupFamily::try_from(self.family).unwrap_or(DnsLookupFamily::Auto);
        let mut resolved: Vec<HostEntry> = Vec::new();
        for (name, port, weight, placement, named) in &self.targets {
            let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((name.as_str(), *port)).await {
                Ok(a) => a.collect(),
                Err(e) => {
                    tracing::warn!(cluster = %cluster, host = %name, "DNS resolution failed: {e}");
                    continue;
                }
            };
            let picked = pick_family(addrs, family);
            let picked = if self.first_address_only { picked.into_iter().take(1).collect() } else { picked };
            for a in picked {
                if !resolved.iter().any(|(h, ..)| *h == a) {
                    // Envoy names a resolved host by its `Endpoint.hostname`,
                    // else by the name it resolved.
                    let hostname = if named.hostname.is_empty() { name } else { &named.hostname };
                    resolved.push((a, hostname.clone(), *weight, *placement, named.extra.clone()));
                }
            }
        }
        hosts.update(resolved);
    }
}

/// Envoy's lookup families: AUTO prefers IPv6 and falls back to IPv4.
pub(crate) fn pick_family(addrs: Vec<SocketAddr>, family: DnsLookupFamily) -> Vec<SocketAddr> {
    let (v4, v6): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|a| a.is_ipv4());
    match family {
        DnsLookupFamily::V4Only => v4,
        DnsLookupFamily::V6Only => v6,
        DnsLookupFamily::Auto => {
            if v6.is_empty() {
                v4
            } else {
                v6
            }
        }
        DnsLookupFamily::V4Preferred => {
            if v4.is_empty() {
                v6
            } else {
                v4
            }
        }
        DnsLookupFamily::All => v4.into_iter().chain(v6).collect(),
    }
}
