//! DNS for STRICT_DNS and LOGICAL_DNS clusters, on the main thread.

use crate::upstream::cluster::{Cluster, Discovery};
use legate_api::pb::envoy::config::cluster::v3::cluster::DnsLookupFamily;
use std::net::SocketAddr;
use std::sync::Arc;

/// Resolves every target of a DNS cluster once and installs the result.
pub async fn resolve_once(cluster: &Cluster) {
    let family = DnsLookupFamily::try_from(cluster.dns_family).unwrap_or(DnsLookupFamily::Auto);
    let mut hosts = Vec::new();
    for (name, port, weight, placement) in &cluster.dns_targets {
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((name.as_str(), *port)).await {
            Ok(a) => a.collect(),
            Err(e) => {
                tracing::warn!(cluster = %cluster.name, host = %name, "DNS resolution failed: {e}");
                continue;
            }
        };
        let picked = pick_family(addrs, family);
        let picked =
            if cluster.discovery == Discovery::LogicalDns { picked.into_iter().take(1).collect() } else { picked };
        for a in picked {
            if !hosts.iter().any(|(h, ..): &(SocketAddr, String, u32, crate::upstream::host::Placement)| *h == a) {
                hosts.push((a, name.clone(), *weight, *placement));
            }
        }
    }
    cluster.update_hosts(hosts);
}

/// Envoy's lookup families: AUTO prefers IPv6 and falls back to IPv4.
fn pick_family(addrs: Vec<SocketAddr>, family: DnsLookupFamily) -> Vec<SocketAddr> {
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

/// Re-resolves a DNS cluster every `dns_refresh_rate`, forever.
pub async fn refresh_loop(cluster: Arc<Cluster>) {
    loop {
        tokio::time::sleep(cluster.dns_refresh).await;
        resolve_once(&cluster).await;
    }
}
