//! Load reports (LRS) as Envoy's `LoadStatsReporter` sends them: a
//! `LoadStatsRequest` with the node opens the stream; each
//! `LoadStatsResponse` names the clusters to report (or all of them), the
//! interval, and whether to break localities down by endpoint; every
//! interval a report per cluster with what its hosts did since the last
//! one. Hosts count on relaxed atomics the request path already keeps
//! (`rq_total`, `rq_success`, `rq_error`, `rq_active`); the reporter keeps
//! the last values it read and reports the differences.

use crate::server::instance::Shared;
use crate::server::xds::{channel, node, Target};
use crate::upstream::cluster::Cluster;
use crate::upstream::host::Host;
use legate_api::pb::envoy::config::core::v3::{address, socket_address, Address, Locality, SocketAddress};
use legate_api::pb::envoy::config::endpoint::v3::{ClusterStats, UpstreamEndpointStats, UpstreamLocalityStats};
use legate_api::pb::envoy::service::load_stats::v3::load_reporting_service_client::LoadReportingServiceClient;
use legate_api::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The shortest reporting interval honoured: a server asking for 0 would
/// otherwise have the main thread report in a loop.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Runs the reporter forever: stream, and open it again after a backoff.
pub async fn run(shared: Arc<Shared>, cluster: String) {
    let retries = Some("load_reporter.retries");
    super::keep_open(shared, cluster, "load report", "load_reporter.errors", retries, session).await;
}

async fn session(shared: &Shared, target: &Target) -> Result<(), String> {
    let mut client = LoadReportingServiceClient::new(channel(target).await?);
    let mut node = node(shared);
    node.client_features.push("envoy.lrs.supports_send_all_clusters".into());
    let (tx, rx) = mpsc::unbounded_channel();
    let mut reporter = Reporter::default();
    let send = |req: LoadStatsRequest| tx.send(req).map_err(|_| "stream closed".to_string());
    send(LoadStatsRequest { node: Some(node.clone()), cluster_stats: vec![] })?;
    let mut responses = client
        .stream_load_stats(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .map_err(|e| format!("stream: {e}"))?
        .into_inner();
    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut armed = false;
    loop {
        tokio::select! {
            r = responses.message() => {
                let resp = r.map_err(|e| e.to_string())?.ok_or("closed by the server")?;
                shared.store.counter("load_reporter.requests").inc();
                reporter.response = Some(resp);
            }
            _ = &mut timer, if armed => {
                let cluster_stats = reporter.report(shared);
                send(LoadStatsRequest { node: Some(node.clone()), cluster_stats })?;
                shared.store.counter("load_reporter.responses").inc();
            }
        }
        if let Some(interval) = reporter.start_period(shared) {
            timer.as_mut().reset(tokio::time::Instant::now() + interval);
            armed = true;
        }
    }
}

/// A host's counters as last read.
struct Latched {
    host: Weak<Host>,
    success: u64,
    error: u64,
    issued: u64,
}

#[derive(Default)]
struct Reporter {
    response: Option<LoadStatsResponse>,
    /// Clusters reported, with the start of their current interval.
    tracked: BTreeMap<String, Instant>,
    latched: HashMap<(String, SocketAddr), Latched>,
}

impl Reporter {
    /// Envoy's `startLoadReportPeriod`: the clusters to report now, keeping
    /// the interval start of those already reported; a newly reported
    /// cluster's counters start from zero. Returns the reporting interval,
    /// `None` until the server has answered.
    fn start_period(&mut self, shared: &Shared) -> Option<Duration> {
        let resp = self.response.as_ref()?;
        let map = shared.clusters.load();
        let names: Vec<String> =
            if resp.send_all_clusters { map.keys().cloned().collect() } else { resp.clusters.clone() };
        let interval = resp.load_reporting_interval.as_ref().map_or(Duration::ZERO, legate_api::duration::from_pb);
        let now = Instant::now();
        let mut tracked = BTreeMap::new();
        for name in names {
            let since = self.tracked.get(&name).copied();
            tracked.insert(name.clone(), since.unwrap_or(now));
            if let (None, Some(c)) = (since, map.get(&name)) {
                for h in c.hosts.load().all.iter() {
                    self.latch(&name, h);
                }
            }
        }
        self.tracked = tracked;
        Some(interval.max(MIN_INTERVAL))
    }

    /// The report of every tracked cluster that exists.
    fn report(&mut self, shared: &Shared) -> Vec<ClusterStats> {
        let map = shared.clusters.load();
        let by_endpoint = self.response.as_ref().is_some_and(|r| r.report_endpoint_granularity);
        let now = Instant::now();
        let mut out = Vec::new();
        for (name, since) in self.tracked.clone() {
            let Some(c) = map.get(&name) else { continue };
            let service = c.config.eds_cluster_config.as_ref().map(|e| e.service_name.clone()).unwrap_or_default();
            out.push(ClusterStats {
                cluster_name: name.clone(),
                cluster_service_name: service,
                upstream_locality_stats: self.localities(&name, c, by_endpoint),
                load_report_interval: Some(legate_api::pb::google::protobuf::Duration {
                    seconds: (now - since).as_secs() as i64,
                    nanos: ((now - since).subsec_micros() * 1000) as i32,
                }),
                ..Default::default()
            });
            self.tracked.insert(name, now);
        }
        out
    }

    /// Per priority and locality: the hosts' counts since the last report,
    /// for those localities with requests issued or in progress.
    fn localities(&mut self, name: &str, c: &Cluster, by_endpoint: bool) -> Vec<UpstreamLocalityStats> {
        let set = c.hosts.load();
        let names = c.localities.load();
        let mut groups: BTreeMap<(u32, usize), Vec<&Arc<Host>>> = BTreeMap::new();
        for h in set.all.iter() {
            let locality = names.get(h.locality as usize).cloned().unwrap_or_default();
            // Envoy groups hosts by locality value: equal localities are one.
            let first = names.iter().position(|l| *l == locality).unwrap_or(h.locality as usize);
            groups.entry((h.priority, first)).or_default().push(h);
        }
        let mut out = Vec::new();
        for ((priority, li), hosts) in groups {
            let mut stats = UpstreamLocalityStats {
                locality: Some(names.get(li).cloned().unwrap_or_else(Locality::default)),
                priority,
                ..Default::default()
            };
            for h in hosts {
                let (success, error, issued) = self.latch(name, h);
                let active = h.rq_active.load(Relaxed);
                if success + error + active + issued == 0 {
                    continue;
                }
                stats.total_successful_requests += success;
                stats.total_error_requests += error;
                stats.total_requests_in_progress += active;
                stats.total_issued_requests += issued;
                if by_endpoint {
                    stats.upstream_endpoint_stats.push(UpstreamEndpointStats {
                        address: Some(address_of(h.addr)),
                        total_successful_requests: success,
                        total_error_requests: error,
                        total_requests_in_progress: active,
                        total_issued_requests: issued,
                        ..Default::default()
                    });
                }
            }
            if stats.total_issued_requests != 0 || stats.total_requests_in_progress != 0 {
                out.push(stats);
            }
        }
        out
    }

    /// A host's successes, errors and issued requests since the last read.
    fn latch(&mut self, cluster: &str, h: &Arc<Host>) -> (u64, u64, u64) {
        let now = (h.rq_success.load(Relaxed), h.rq_error.load(Relaxed), h.rq_total.load(Relaxed));
        let entry = Latched { host: Arc::downgrade(h), success: now.0, error: now.1, issued: now.2 };
        let last = self.latched.insert((cluster.to_string(), h.addr), entry);
        match last {
            // The same host read before: what it did since.
            Some(l) if l.host.as_ptr() == Arc::as_ptr(h) => {
                (now.0.saturating_sub(l.success), now.1.saturating_sub(l.error), now.2.saturating_sub(l.issued))
            }
            _ => now,
        }
    }
}

fn address_of(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(addr.port() as u32)),
            ..Default::default()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Store;
    use legate_api::pb::envoy::config::cluster::v3::Cluster as PbCluster;

    /// Zone `a` with 127.0.0.1 and .2, zone `b` with .3.
    fn cluster() -> Arc<Cluster> {
        let ep =
            |i: u32| format!("{{endpoint: {{address: {{socket_address: {{address: 127.0.0.{i}, port_value: 80}}}}}}}}");
        let yaml = format!(
            "name: c\nconnect_timeout: 1s\nload_assignment: {{cluster_name: c, endpoints: [{{locality: {{zone: a}}, lb_endpoints: [{}, {}]}}, {{locality: {{zone: b}}, lb_endpoints: [{}]}}]}}",
            ep(1),
            ep(2),
            ep(3)
        );
        let text = legate_api::load::parse_text(&yaml).expect("yaml");
        let (pb, _) = legate_api::load::decode_typed::<PbCluster>(text).expect("cluster");
        Cluster::compile(&pb, &Arc::new(Store::default()), 1, &Default::default()).expect("compile")
    }

    fn served(h: &Host, ok: u64, err: u64) {
        h.rq_total.fetch_add(ok + err, Relaxed);
        h.rq_success.fetch_add(ok, Relaxed);
        h.rq_error.fetch_add(err, Relaxed);
    }

    #[test]
    fn reports_are_deltas_per_locality_and_endpoint() {
        let c = cluster();
        let hosts = c.hosts.load().all.clone();
        let mut r = Reporter::default();
        served(&hosts[0], 5, 1);
        for h in hosts.iter() {
            r.latch("c", h);
        }
        served(&hosts[0], 3, 1);
        served(&hosts[1], 2, 0);
        hosts[1].rq_active.store(1, Relaxed);
        let report = r.localities("c", &c, true);
        // Zone b had nothing: left out. Zone a: what happened since the latch.
        assert_eq!(report.len(), 1);
        let a = &report[0];
        assert_eq!(a.locality.as_ref().map(|l| l.zone.as_str()), Some("a"));
        let totals = (a.total_successful_requests, a.total_error_requests, a.total_issued_requests);
        assert_eq!((totals, a.total_requests_in_progress), ((5, 1, 6), 1));
        assert_eq!(a.upstream_endpoint_stats.len(), 2);
        assert_eq!(a.upstream_endpoint_stats[0].address, Some(address_of(hosts[0].addr)));
        assert_eq!(a.upstream_endpoint_stats[0].total_issued_requests, 4);
        // Next report: only the request still in progress, no endpoint breakdown.
        let report = r.localities("c", &c, false);
        assert_eq!(report.len(), 1);
        assert_eq!((report[0].total_issued_requests, report[0].total_requests_in_progress), (0, 1));
        assert!(report[0].upstream_endpoint_stats.is_empty());
        // A new host at a known address counts from its own zero.
        let fresh = Arc::new(Host::new(hosts[2].addr, String::new(), 1, hosts[2].placement()));
        served(&fresh, 1, 0);
        assert_eq!(r.latch("c", &fresh), (1, 0, 1));
    }
}
