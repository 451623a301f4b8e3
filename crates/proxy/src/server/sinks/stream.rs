//! The metrics service sink's stream: every flush interval one
//! `StreamMetricsMessage` on a long-lived `StreamMetrics` client stream
//! (with `batch_size`, several, each with at most that many metric
//! families, in order), the node in its identifier on the first message of
//! each stream, as Envoy's `GrpcMetricsStreamerImpl` sends it. A broken stream is opened
//! again at a later flush, after a jittered backoff; what is flushed
//! meanwhile is dropped (counter deltas included), as in Envoy.

use super::metrics::Flusher;
use super::{Backoff, MetricsSink};
use crate::server::instance::Shared;
use crate::server::xds::{channel, node, Target};
use legate_api::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use legate_api::pb::envoy::service::metrics::v3::{stream_metrics_message::Identifier, StreamMetricsMessage};
use legate_api::pb::io::prometheus::client::MetricFamily;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// Flushes waiting to go out on a stream the server is slow to read; past
/// that, flushes are dropped rather than held.
const QUEUE: usize = 4;

/// A flush's messages (one, or one per batch).
type Flush = Vec<StreamMetricsMessage>;

/// An open stream: where flushes go, whether the identifier went, and the
/// call, which ends when the stream does.
struct Open {
    tx: mpsc::Sender<Flush>,
    call: tokio::task::JoinHandle<()>,
    identified: bool,
    since: Instant,
}

/// Runs the sink forever.
pub async fn run(shared: Arc<Shared>, sink: MetricsSink, every: Duration) {
    let mut flusher = Flusher::new(sink.deltas, sink.mode).with_labels(sink.labels);
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
        match o.tx.try_send(messages(identifier, families, sink.batch_size)) {
            Ok(()) => o.identified = true,
            Err(mpsc::error::TrySendError::Full(_)) => tracing::debug!("metrics service stream is full: flush dropped"),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                open = None;
                retry_at = Instant::now() + backoff.failed();
            }
        }
    }
}

/// One flush as messages: all families in one, or (`batch_size` > 0) at
/// most `batch_size` in each; the identifier on the first only.
fn messages(mut identifier: Option<Identifier>, families: Vec<MetricFamily>, batch_size: u32) -> Flush {
    if batch_size == 0 || families.len() <= batch_size as usize {
        return vec![StreamMetricsMessage { identifier, envoy_metrics: families }];
    }
    let mut out = Vec::with_capacity(families.len().div_ceil(batch_size as usize));
    let mut rest = families.into_iter().peekable();
    while rest.peek().is_some() {
        let envoy_metrics: Vec<MetricFamily> = rest.by_ref().take(batch_size as usize).collect();
        out.push(StreamMetricsMessage { identifier: identifier.take(), envoy_metrics });
    }
    out
}

/// The request stream: each flush's messages in order.
struct Messages {
    rx: mpsc::Receiver<Flush>,
    pending: std::collections::VecDeque<StreamMetricsMessage>,
}

impl tokio_stream::Stream for Messages {
    type Item = StreamMetricsMessage;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<StreamMetricsMessage>> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return std::task::Poll::Ready(Some(m));
            }
            match self.rx.poll_recv(cx) {
                std::task::Poll::Ready(Some(flush)) => self.pending.extend(flush),
                std::task::Poll::Ready(None) => return std::task::Poll::Ready(None),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        }
    }
}

/// Opens a stream to a host of `cluster`.
async fn start(shared: &Shared, cluster: &str) -> Result<Open, String> {
    let target = Target::pick(shared, cluster).ok_or("the cluster has no host")?;
    let mut client = MetricsServiceClient::new(channel(&target).await?);
    let (tx, rx) = mpsc::channel(QUEUE);
    let addr = target.address();
    let call = tokio::spawn(async move {
        match client.stream_metrics(Messages { rx, pending: Default::default() }).await {
            Ok(_) => tracing::debug!("metrics service stream to {addr} closed by the server"),
            Err(e) => tracing::warn!("metrics service stream to {addr} ended: {e}"),
        }
    });
    Ok(Open { tx, call, identified: false, since: Instant::now() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn families(n: usize) -> Vec<MetricFamily> {
        (0..n).map(|i| MetricFamily { name: Some(format!("s{i}")), ..Default::default() }).collect()
    }

    #[test]
    fn batches_hold_at_most_batch_size_families_in_order() {
        let id = || Some(Identifier { node: None });
        let one = messages(id(), families(7), 0);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].envoy_metrics.len(), 7);
        let split = messages(id(), families(7), 3);
        let sizes: Vec<usize> = split.iter().map(|m| m.envoy_metrics.len()).collect();
        assert_eq!(sizes, vec![3, 3, 1]);
        assert!(split[0].identifier.is_some() && split[1..].iter().all(|m| m.identifier.is_none()));
        let names: Vec<String> =
            split.iter().flat_map(|m| m.envoy_metrics.iter().filter_map(|f| f.name.clone())).collect();
        assert_eq!(names, (0..7).map(|i| format!("s{i}")).collect::<Vec<_>>());
        assert_eq!(messages(None, families(3), 3).len(), 1);
    }
}
