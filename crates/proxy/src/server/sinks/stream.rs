//! The metrics service sink's stream: every flush interval one
//! `StreamMetricsMessage` on a long-lived `StreamMetrics` client stream,
//! the node in its identifier on the first message of each stream, as
//! Envoy's `GrpcMetricsStreamerImpl` sends it. A broken stream is opened
//! again at a later flush, after a jittered backoff; what is flushed
//! meanwhile is dropped (counter deltas included), as in Envoy.

use super::metrics::Flusher;
use super::{Backoff, MetricsSink};
use crate::server::instance::Shared;
use crate::server::xds::{channel, node, Target};
use legate_api::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use legate_api::pb::envoy::service::metrics::v3::{stream_metrics_message::Identifier, StreamMetricsMessage};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// Messages waiting to go out on a stream the server is slow to read; past
/// that, flushes are dropped rather than held.
const QUEUE: usize = 4;

/// An open stream: where messages go, whether the identifier went, and the
/// call, which ends when the stream does.
struct Open {
    tx: mpsc::Sender<StreamMetricsMessage>,
    call: tokio::task::JoinHandle<()>,
    identified: bool,
    since: Instant,
}

/// Runs the sink forever.
pub async fn run(shared: Arc<Shared>, sink: MetricsSink, every: Duration) {
    let mut flusher = Flusher::new(sink.deltas, sink.mode);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open: Option<Open> = None;
    let mut backoff = Backoff::new();
    let mut retry_at = Instant::now();
    loop {
        tick.tick().await;
        let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        // Envoy flushes its uptime with the other stats; a collector tells
        // from it whether it saw the proxy's counters from their start.
        shared.store.gauge("server.uptime").set(shared.started_instant.elapsed().as_secs() as i64);
        let families = flusher.flush(&shared.store, now_ms);
        if open.as_ref().is_some_and(|o| o.call.is_finished()) {
            open = None;
            retry_at = Instant::now() + backoff.failed();
        }
        if open.is_none() && Instant::now() >= retry_at {
            match start(&shared, &sink.cluster).await {
                Ok(o) => open = Some(o),
                Err(e) => {
                    tracing::warn!("metrics service stream to cluster '{}': {e}", sink.cluster);
                    retry_at = Instant::now() + backoff.failed();
                }
            }
        }
        let Some(o) = open.as_mut() else { continue };
        if o.since.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        let identifier = (!o.identified).then(|| Identifier { node: Some(node(&shared)) });
        let msg = StreamMetricsMessage { identifier, envoy_metrics: families };
        match o.tx.try_send(msg) {
            Ok(()) => o.identified = true,
            Err(mpsc::error::TrySendError::Full(_)) => tracing::debug!("metrics service stream is full: flush dropped"),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                open = None;
                retry_at = Instant::now() + backoff.failed();
            }
        }
    }
}

/// Opens a stream to a host of `cluster`.
async fn start(shared: &Shared, cluster: &str) -> Result<Open, String> {
    let target = Target::pick(shared, cluster).ok_or("the cluster has no host")?;
    let mut client = MetricsServiceClient::new(channel(&target).await?);
    let (tx, rx) = mpsc::channel(QUEUE);
    let addr = target.addr;
    let call = tokio::spawn(async move {
        match client.stream_metrics(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
            Ok(_) => tracing::debug!("metrics service stream to {addr} closed by the server"),
            Err(e) => tracing::warn!("metrics service stream to {addr} ended: {e}"),
        }
    });
    Ok(Open { tx, call, identified: false, since: Instant::now() })
}
