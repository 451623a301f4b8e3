//! What the proxy sends to collectors on its own: stats through the
//! `envoy.stat_sinks.metrics_service` sink (`metrics`: one flush's metric
//! families; `stream`: the `StreamMetrics` stream, every
//! `stats_flush_interval`; `tags`: Envoy's default tag extraction for
//! `emit_tags_as_labels`), and load reports to the server named by
//! `cluster_manager.load_stats_config` (`lrs`), and endpoints' health to
//! the server named by `hds_config` (`hds`: health checks it delegates).
//!
//! Both run on the main thread's runtime and read what the workers count
//! (sharded stats, host atomics); nothing here runs on a worker or waits on
//! the request path.

pub mod hds;
pub mod lrs;
pub mod metrics;
pub mod stream;
pub mod tags;

use crate::server::instance::Shared;
use legate_api::pb::envoy::config::bootstrap::v3::Bootstrap;
use legate_api::pb::envoy::config::core::v3::{api_config_source::ApiType, grpc_service::TargetSpecifier, ApiVersion};
use legate_api::pb::envoy::config::core::v3::{ApiConfigSource, GrpcService};
use legate_api::pb::envoy::config::metrics::v3::{HistogramEmitMode, MetricsServiceConfig};
use metrics::EmitMode;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;

pub const METRICS_SERVICE: &str = "type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig";

/// A bootstrap's sink settings that Legate cannot follow, with the field.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct SinkConfigError {
    pub path: String,
    pub reason: String,
}

fn err(path: impl Into<String>, reason: impl Into<String>) -> SinkConfigError {
    SinkConfigError { path: path.into(), reason: reason.into() }
}

/// One `envoy.stat_sinks.metrics_service` sink.
#[derive(Debug, Clone)]
pub struct MetricsSink {
    pub cluster: String,
    pub deltas: bool,
    pub mode: EmitMode,
    /// At most this many metric families in one message (0: one message a flush).
    pub batch_size: u32,
    /// `emit_tags_as_labels`: tag-extracted names, tags as labels (`tags`).
    pub labels: bool,
}

/// The bootstrap's sinks and load reporting, read once at start.
#[derive(Debug, Clone, Default)]
pub struct SinksConfig {
    pub flush_interval: Duration,
    pub metrics: Vec<MetricsSink>,
    /// `cluster_manager.load_stats_config`'s cluster.
    pub lrs_cluster: Option<String>,
    /// `hds_config`'s cluster.
    pub hds_cluster: Option<String>,
}

impl SinksConfig {
    pub fn read(b: &Bootstrap) -> Result<Self, SinkConfigError> {
        let flush_interval =
            b.stats_flush_interval.as_ref().map_or(Duration::from_secs(5), legate_api::duration::from_pb);
        let mut metrics = Vec::new();
        for (i, sink) in b.stats_sinks.iter().enumerate() {
            metrics.push(metrics_sink(sink, &format!("stats_sinks[{i}]"))?);
        }
        let lrs_cluster = match b.cluster_manager.as_ref().and_then(|cm| cm.load_stats_config.as_ref()) {
            Some(source) => Some(grpc_source(source, "cluster_manager.load_stats_config")?),
            None => None,
        };
        let hds_cluster = b.hds_config.as_ref().map(|s| grpc_source(s, "hds_config")).transpose()?;
        Ok(Self { flush_interval, metrics, lrs_cluster, hds_cluster })
    }

    /// Every gRPC client cluster named here, with its field.
    pub fn clusters(&self) -> Vec<(String, &str)> {
        let mut out: Vec<(String, &str)> = self
            .metrics
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("stats_sinks[{i}].typed_config.grpc_service"), m.cluster.as_str()))
            .collect();
        if let Some(c) = &self.lrs_cluster {
            out.push(("cluster_manager.load_stats_config".into(), c.as_str()));
        }
        if let Some(c) = &self.hds_cluster {
            out.push(("hds_config".into(), c.as_str()));
        }
        out
    }
}

fn metrics_sink(
    sink: &legate_api::pb::envoy::config::metrics::v3::StatsSink,
    path: &str,
) -> Result<MetricsSink, SinkConfigError> {
    use legate_api::pb::envoy::config::metrics::v3::stats_sink::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &sink.config_type else {
        return Err(err(path, "typed_config is required"));
    };
    if any.type_url != METRICS_SERVICE {
        return Err(err(format!("{path}.typed_config"), format!("stats sink {} is not implemented", any.type_url)));
    }
    let c = MetricsServiceConfig::decode(any.value.as_slice())
        .map_err(|e| err(format!("{path}.typed_config"), format!("cannot decode: {e}")))?;
    let path = format!("{path}.typed_config");
    if c.transport_api_version != ApiVersion::V3 as i32 {
        return Err(err(format!("{path}.transport_api_version"), "only V3 is supported (as in Envoy)"));
    }
    let cluster = envoy_grpc_cluster(c.grpc_service.as_ref(), &format!("{path}.grpc_service"))?;
    let mode = match HistogramEmitMode::try_from(c.histogram_emit_mode) {
        Ok(HistogramEmitMode::SummaryAndHistogram) => EmitMode { summary: true, histogram: true },
        Ok(HistogramEmitMode::Summary) => EmitMode { summary: true, histogram: false },
        Ok(HistogramEmitMode::Histogram) => EmitMode { summary: false, histogram: true },
        Err(_) => return Err(err(format!("{path}.histogram_emit_mode"), "unknown value")),
    };
    let deltas = c.report_counters_as_deltas.is_some_and(|b| b.value);
    Ok(MetricsSink { cluster, deltas, mode, batch_size: c.batch_size, labels: c.emit_tags_as_labels })
}

fn envoy_grpc_cluster(g: Option<&GrpcService>, path: &str) -> Result<String, SinkConfigError> {
    match g.and_then(|g| g.target_specifier.as_ref()) {
        Some(TargetSpecifier::EnvoyGrpc(e)) if !e.cluster_name.is_empty() => Ok(e.cluster_name.clone()),
        _ => Err(err(path, "envoy_grpc with a cluster_name is required")),
    }
}

/// The cluster of a GRPC `ApiConfigSource` at `path` (load reports, HDS).
fn grpc_source(s: &ApiConfigSource, path: &str) -> Result<String, SinkConfigError> {
    if ApiType::try_from(s.api_type) != Ok(ApiType::Grpc) {
        return Err(err(format!("{path}.api_type"), "only GRPC is supported"));
    }
    if s.transport_api_version != ApiVersion::V3 as i32 {
        return Err(err(format!("{path}.transport_api_version"), "only V3 is supported (as in Envoy)"));
    }
    if s.grpc_services.len() != 1 {
        return Err(err(format!("{path}.grpc_services"), "exactly one gRPC service is required"));
    }
    envoy_grpc_cluster(s.grpc_services.first(), &format!("{path}.grpc_services[0]"))
}

/// Starts the sinks and the load reporter on the calling (main) runtime.
/// Every cluster they name must be a static cluster, as Envoy requires of
/// a gRPC client's cluster.
pub fn start(shared: &Arc<Shared>, cfg: SinksConfig) -> Result<(), SinkConfigError> {
    {
        let map = shared.clusters.load();
        for (path, cluster) in cfg.clusters() {
            if !map.contains_key(cluster) {
                return Err(err(path, format!("unknown gRPC client cluster '{cluster}'")));
            }
        }
    }
    for sink in cfg.metrics {
        tokio::spawn(stream::run(shared.clone(), sink, cfg.flush_interval));
    }
    if let Some(cluster) = cfg.lrs_cluster {
        tokio::spawn(lrs::run(shared.clone(), cluster));
    }
    if let Some(cluster) = cfg.hds_cluster {
        tokio::spawn(hds::run(shared.clone(), cluster));
    }
    Ok(())
}

/// Keeps one client stream open to a host of `cluster` (`what` names it in
/// the log): `session` runs it; when it ends, `errors` is counted and it is
/// opened again after a jittered backoff (reset after a stream that lived
/// 30 s), counting `retries` when given. Runs forever.
pub(crate) async fn keep_open<F>(
    shared: Arc<Shared>,
    cluster: String,
    what: &str,
    errors: &str,
    retries: Option<&str>,
    session: F,
) where
    F: AsyncFn(&Shared, &crate::server::xds::Target) -> Result<(), String>,
{
    let mut backoff = Backoff::new();
    loop {
        let started = std::time::Instant::now();
        match crate::server::xds::Target::pick(&shared, &cluster) {
            Some(target) => {
                if let Err(e) = session(&shared, &target).await {
                    tracing::warn!("{what} stream to {} ended: {e}", target.address());
                }
            }
            None => tracing::warn!("{what} cluster '{cluster}' has no host"),
        }
        shared.store.counter(errors).inc();
        if started.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        tokio::time::sleep(backoff.failed()).await;
        if let Some(r) = retries {
            shared.store.counter(r).inc();
        }
    }
}

/// Jittered exponential backoff between reconnects, as the xDS client's.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Self { next: Duration::from_millis(500) }
    }
    pub(crate) fn reset(&mut self) {
        self.next = Duration::from_millis(500);
    }
    /// The wait before the next attempt; the one after is twice as long (up to 30 s).
    pub(crate) fn failed(&mut self) -> Duration {
        let wait = self.next.mul_f64(rand::random_range(0.5..1.0));
        self.next = (self.next * 2).min(Duration::from_secs(30));
        wait
    }
}
