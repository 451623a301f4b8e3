//! A cluster's background tasks on the main thread — DNS re-resolution,
//! active health checks, the outlier-detection timer — and when they start:
//! at startup the first DNS resolution and health-check round finish before
//! traffic (Envoy's init manager waits for them); a cluster from CDS takes
//! traffic at once and runs them in the background.

use crate::upstream::cluster::{Cluster, Discovery};
use std::sync::{Arc, Weak};

/// Starts a bootstrap cluster's tasks; returns once its first DNS
/// resolution and first health-check round are done.
pub async fn start_before_traffic(cluster: &Arc<Cluster>) {
    // Every cluster that is not STATIC, EDS included, resolves the
    // endpoints of its load assignment, now and on each refresh.
    if cluster.discovery != Discovery::Static {
        cluster.dns.resolve_once(&cluster.name, &cluster.hosts).await;
        tokio::spawn(refresh_dns(cluster.clone()));
    }
    if let Some(hc) = &cluster.health_check {
        hc.round(&cluster.hosts).await;
    }
    spawn_checks(cluster, true);
}

/// Starts the tasks of a cluster that CDS just put in service.
pub fn start(cluster: &Arc<Cluster>) {
    if cluster.discovery.uses_dns() {
        let c = cluster.clone();
        tokio::spawn(async move {
            c.dns.resolve_once(&c.name, &c.hosts).await;
            refresh_dns(c).await;
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

/// Re-resolves a DNS cluster every `dns_refresh_rate`, forever.
async fn refresh_dns(cluster: Arc<Cluster>) {
    loop {
        tokio::time::sleep(cluster.dns.refresh).await;
        cluster.dns.resolve_once(&cluster.name, &cluster.hosts).await;
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
            hc.round(&c.hosts).await;
            first = false;
        }
        let wait = hc.next_wait(&c.stats);
        drop(c);
        tokio::time::sleep(wait).await;
        let Some(c) = cluster.upgrade() else { return };
        let Some(hc) = &c.health_check else { return };
        hc.round(&c.hosts).await;
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
