//! A cluster's background tasks on the main thread — DNS re-resolution,
//! active health checks, the outlier-detection timer — and when they start:
//! at startup the first DNS resolution and health-check round finish before
//! traffic (Envoy's init manager waits for them); a cluster from CDS takes
//! traffic at once and runs them in the background.

use crate::upstream::cluster::Cluster;
use std::sync::{Arc, Weak};

/// Starts a bootstrap cluster's tasks; returns once its first DNS
/// resolution and first health-check round are done.
pub async fn start_before_traffic(cluster: &Arc<Cluster>) {
    // Only DNS clusters resolve: an EDS cluster's hosts come from EDS, and a
    // resolution of its (empty) load assignment would wipe them.
    if cluster.discovery.uses_dns() {
        let ttl = cluster.dns.resolve_once(&cluster.name, &cluster.hosts).await;
        tokio::spawn(refresh_dns(Arc::downgrade(cluster), ttl));
    }
    if let Some(hc) = &cluster.health_check {
        hc.round(&cluster.hosts, cluster.stats.upstream_cx_total.value() > 0).await;
    }
    spawn_checks(cluster, true);
}

/// Starts the tasks of a cluster that CDS just put in service.
pub fn start(cluster: &Arc<Cluster>) {
    if cluster.discovery.uses_dns() {
        let c = cluster.clone();
        tokio::spawn(async move {
            let ttl = c.dns.resolve_once(&c.name, &c.hosts).await;
            let cluster = Arc::downgrade(&c);
            drop(c);
            refresh_dns(cluster, ttl).await;
        });
    }
    spawn_checks(cluster, false);
}

/// Health checks and outlier detection, which end with the cluster.
/// `checked`: a first health-check round has already run.
fn spawn_checks(cluster: &Arc<Cluster>, checked: bool) {
    if cluster.health_check.is_some() {
        tokio::spawn(check_health(Arc::downgrade(cluster), checked));
    }
    if cluster.outlier.is_some() {
        tokio::spawn(detect_outliers(Arc::downgrade(cluster)));
    }
}

/// Re-resolves a DNS cluster every `dns_refresh_rate` (or, with
/// `respect_dns_ttl`, after the last answers' TTL) until the cluster is
/// gone (removed or replaced by CDS).
async fn refresh_dns(cluster: Weak<Cluster>, mut ttl: Option<std::time::Duration>) {
    loop {
        let Some(wait) = cluster.upgrade().map(|c| c.dns.next_wait(ttl)) else { return };
        tokio::time::sleep(wait).await;
        let Some(c) = cluster.upgrade() else { return };
        ttl = c.dns.resolve_once(&c.name, &c.hosts).await;
    }
}

/// Checks a cluster until it is gone. `checked` says a first round has
/// already run (at startup), so the loop begins with the wait.
async fn check_health(cluster: Weak<Cluster>, checked: bool) {
    let mut first = !checked;
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let Some(hc) = &c.health_check else { return };
        if first {
            hc.round(&c.hosts, c.stats.upstream_cx_total.value() > 0).await;
            first = false;
        }
        let wait = hc.next_wait(&c.hosts);
        drop(c);
        tokio::time::sleep(wait).await;
        let Some(c) = cluster.upgrade() else { return };
        let Some(hc) = &c.health_check else { return };
        hc.round(&c.hosts, c.stats.upstream_cx_total.value() > 0).await;
    }
}

/// The interval timer of a cluster's outlier detection, until the cluster is gone.
async fn detect_outliers(cluster: Weak<Cluster>) {
    loop {
        let Some(interval) = cluster.upgrade().and_then(|c| c.outlier.as_ref().map(|o| o.interval)) else { return };
        tokio::time::sleep(interval).await;
        let Some(c) = cluster.upgrade() else { return };
        if let Some(o) = &c.outlier {
            o.tick(&c.hosts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Store;
    use legate_api::pb::envoy::config::cluster::v3::Cluster as PbCluster;

    fn compile(yaml: &str) -> Arc<Cluster> {
        let (pb, _) = legate_api::load::decode_typed::<PbCluster>(legate_api::load::parse_text(yaml).expect("yaml"))
            .expect("cluster");
        Cluster::compile(&pb, &Arc::new(Store::default()), 1, &Default::default()).expect("compiles")
    }

    #[test]
    fn a_bootstrap_eds_cluster_keeps_the_hosts_eds_sent() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let c = compile(
                "name: e\nconnect_timeout: 1s\ntype: EDS\ndns_refresh_rate: 0.01s\neds_cluster_config: {eds_config: {ads: {}}}",
            );
            start_before_traffic(&c).await;
            let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().expect("addr");
            c.hosts.update(vec![(addr, "127.0.0.1".into(), 1, Default::default(), Default::default())]);
            // Several refresh periods: nothing may resolve the EDS cluster's
            // empty load assignment over what EDS delivered.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            assert_eq!(c.hosts.load().all.len(), 1);
        });
    }

    #[test]
    fn a_dropped_dns_cluster_stops_resolving() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let c = compile(
                "name: d\nconnect_timeout: 1s\ntype: STRICT_DNS\ndns_refresh_rate: 0.01s\nload_assignment: {cluster_name: d, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: localhost, port_value: 80}}}}]}]}",
            );
            start(&c);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let weak = Arc::downgrade(&c);
            drop(c);
            // The refresh loop held the cluster strongly before; now it lets go.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert!(weak.upgrade().is_none(), "the DNS refresh loop keeps a dropped cluster alive");
        });
    }
}
