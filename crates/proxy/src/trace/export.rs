//! Finished spans leave the request path through a bounded queue; a task
//! batches them and sends each batch to the tracer's collector cluster, as
//! Envoy's tracers buffer spans and flush them when `min_flush_spans` (5)
//! have gathered or every `flush_interval` (5 s; Datadog's: every 2 s
//! whatever has gathered). A full queue drops the
//! span and counts it; nothing on the request path waits for a collector.

use super::span::Span;
use crate::body::ProxyBody;
use crate::stats::{Counter, Store};
use crate::upstream::cluster::{Cluster, ClusterMap};
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use http_body_util::BodyExt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Spans waiting to be sent, at most (beyond: dropped and counted).
pub const QUEUE: usize = 10_000;
/// When a batch goes: once `min_spans` have gathered (never when 0), and
/// every `interval`.
#[derive(Debug, Clone, Copy)]
pub struct Flush {
    pub min_spans: usize,
    pub interval: Duration,
}

/// Envoy's `min_flush_spans` (5) and flush interval (5 s) for Zipkin and
/// OpenTelemetry.
pub const DEFAULT_FLUSH: Flush = Flush { min_spans: 5, interval: Duration::from_secs(5) };

/// How one batch's request went.
enum Sent {
    /// A response: its status, gRPC status and body.
    Answered(u16, Option<String>, Bytes),
    /// None came (no host, connect failure, time limit).
    NoResponse,
    /// The response was cut off.
    Reset,
}

/// A span and when it ended.
pub struct Finished {
    pub span: Span,
    pub end: SystemTime,
}

/// How a tracer's batch goes on the wire.
pub trait Encode: Send + Sync + 'static {
    /// The request path, content type and body for a batch.
    fn encode(&self, spans: &[Finished]) -> Encoded;
    /// Whether a response (status, gRPC status when gRPC) means the
    /// collector took the batch.
    fn accepted(&self, status: u16, grpc_status: Option<&str>) -> bool;
    /// The collector's answer to an accepted batch (Datadog's agent sends
    /// its sampling rates back).
    fn answered(&self, _body: &Bytes) {}
}

pub struct Encoded {
    pub path: String,
    pub content_type: &'static str,
    pub body: Bytes,
    pub grpc: bool,
    /// More request headers (SkyWalking's `authentication` token).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// `tracing.<tracer>.*`, Envoy's names, and `spans_dropped` (Legate's own:
/// spans a full queue could not take).
pub struct ExportStats {
    pub spans_sent: Arc<Counter>,
    pub timer_flushed: Arc<Counter>,
    pub reports_sent: Arc<Counter>,
    pub reports_dropped: Arc<Counter>,
    pub reports_failed: Arc<Counter>,
    pub reports_skipped_no_cluster: Arc<Counter>,
    pub spans_dropped: Arc<Counter>,
}

impl ExportStats {
    pub fn new(store: &Store, tracer: &str) -> Self {
        Self::named(store, tracer, "spans_sent", "spans_dropped")
    }

    /// With the counters of what was sent and what a full queue dropped
    /// named `sent` and `dropped` (SkyWalking's `segments_sent` and
    /// `segments_dropped`).
    pub fn named(store: &Store, tracer: &str, sent: &str, dropped: &str) -> Self {
        let c = |n: &str| store.counter(&format!("tracing.{tracer}.{n}"));
        Self {
            spans_sent: c(sent),
            timer_flushed: c("timer_flushed"),
            reports_sent: c("reports_sent"),
            reports_dropped: c("reports_dropped"),
            reports_failed: c("reports_failed"),
            reports_skipped_no_cluster: c("reports_skipped_no_cluster"),
            spans_dropped: c(dropped),
        }
    }
}

/// Where batches go: a cluster, the authority to name, a time limit.
pub struct Target {
    pub cluster: String,
    pub authority: String,
    pub timeout: Duration,
    pub clusters: Arc<ArcSwap<ClusterMap>>,
}

/// The sending half the task owns (not the queue's sender, so the task
/// ends when the last `Exporter` is dropped).
struct Sender {
    target: Target,
    encoder: Box<dyn Encode>,
    stats: ExportStats,
    flush: Flush,
}

/// A tracer's queue of finished spans.
pub struct Exporter {
    tx: mpsc::Sender<Finished>,
    rx: Mutex<Option<mpsc::Receiver<Finished>>>,
    sender: Arc<Sender>,
}

impl Exporter {
    /// A new exporter, listed in `pending` for the server to start.
    pub fn new(
        target: Target,
        encoder: Box<dyn Encode>,
        stats: ExportStats,
        pending: &Mutex<Vec<Weak<Exporter>>>,
    ) -> Arc<Self> {
        Self::bounded(target, encoder, stats, pending, QUEUE)
    }

    /// One whose queue holds at most `capacity` (at least one).
    pub fn bounded(
        target: Target,
        encoder: Box<dyn Encode>,
        stats: ExportStats,
        pending: &Mutex<Vec<Weak<Exporter>>>,
        capacity: usize,
    ) -> Arc<Self> {
        Self::flushing(target, encoder, stats, pending, capacity, DEFAULT_FLUSH)
    }

    /// One whose batches go as `flush` says.
    pub fn flushing(
        target: Target,
        encoder: Box<dyn Encode>,
        stats: ExportStats,
        pending: &Mutex<Vec<Weak<Exporter>>>,
        capacity: usize,
        flush: Flush,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let sender = Arc::new(Sender { target, encoder, stats, flush });
        let e = Arc::new(Self { tx, rx: Mutex::new(Some(rx)), sender });
        if let Ok(mut p) = pending.lock() {
            p.push(Arc::downgrade(&e));
        }
        e
    }

    /// A finished span joins the queue, or is counted as dropped.
    pub fn push(&self, f: Finished) {
        if self.tx.try_send(f).is_err() {
            self.sender.stats.spans_dropped.inc();
        }
    }

    /// Starts the sending task on the current runtime (once).
    fn start(&self) {
        let rx = self.rx.lock().ok().and_then(|mut r| r.take());
        if let Some(rx) = rx {
            tokio::spawn(run(self.sender.clone(), rx));
        }
    }
}

/// Starts the exporters compiled since the last call (on the main thread's
/// runtime, beside the other background tasks).
pub fn start_exporters(pending: &Mutex<Vec<Weak<Exporter>>>) {
    let list = pending.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
    for e in list.iter().filter_map(Weak::upgrade) {
        e.start();
    }
}

async fn run(sender: Arc<Sender>, mut rx: mpsc::Receiver<Finished>) {
    let mut buffer = Vec::new();
    let every = sender.flush.interval;
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            next = rx.recv() => match next {
                Some(f) => {
                    buffer.push(f);
                    if sender.flush.min_spans > 0 && buffer.len() >= sender.flush.min_spans {
                        sender.flush(std::mem::take(&mut buffer)).await;
                    }
                }
                None => break,
            },
            _ = timer.tick() => {
                sender.stats.timer_flushed.inc();
                if !buffer.is_empty() {
                    sender.flush(std::mem::take(&mut buffer)).await;
                }
            }
        }
    }
    if !buffer.is_empty() {
        sender.flush(buffer).await;
    }
}

impl Sender {
    async fn flush(&self, spans: Vec<Finished>) {
        let clusters = self.target.clusters.load();
        let Some(cluster) = clusters.get(&self.target.cluster).cloned() else {
            self.stats.reports_skipped_no_cluster.inc();
            return;
        };
        let encoded = self.encoder.encode(&spans);
        self.stats.spans_sent.add(spans.len() as u64);
        // No response at all (no host, refused, timed out) is Envoy's
        // async client's local 503/504: a dropped report, as a refusing
        // collector's; a response cut off is a failed one.
        match self.send(&cluster, encoded).await {
            Sent::Answered(status, grpc, body) if self.encoder.accepted(status, grpc.as_deref()) => {
                self.stats.reports_sent.inc();
                self.encoder.answered(&body);
            }
            Sent::Answered(..) | Sent::NoResponse => self.stats.reports_dropped.inc(),
            Sent::Reset => self.stats.reports_failed.inc(),
        }
    }

    /// One request to a host of the cluster.
    async fn send(&self, cluster: &Arc<Cluster>, e: Encoded) -> Sent {
        let Some(host) = cluster.pick() else { return Sent::NoResponse };
        let t = &self.target;
        let uri = if cluster.http2 { format!("http://{}{}", t.authority, e.path) } else { e.path.clone() };
        let (Ok(uri), Ok(authority)) = (uri.parse::<http::Uri>(), HeaderValue::from_str(&t.authority)) else {
            return Sent::NoResponse;
        };
        let mut req = http::Request::new(ProxyBody::full(e.body));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(e.content_type));
        if e.grpc {
            h.insert(http::header::TE, HeaderValue::from_static("trailers"));
        }
        for (k, v) in e.headers {
            h.insert(k, v);
        }
        if !cluster.http2 {
            h.insert(HOST, authority);
        }
        let mut held = crate::upstream::pool::Held::default();
        cluster.stats.upstream_rq_active.inc();
        let sent = tokio::time::timeout(t.timeout, async {
            let Ok(resp) = crate::upstream::pool::send(cluster, &host, req, &mut held).await else {
                return Sent::NoResponse;
            };
            let status = resp.status().as_u16();
            cluster.stats.record_status(status);
            let header = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let Ok(body) = resp.into_body().collect().await else { return Sent::Reset };
            let trailer =
                body.trailers().and_then(|t| t.get("grpc-status")).and_then(|v| v.to_str().ok()).map(str::to_owned);
            Sent::Answered(status, header.or(trailer), body.to_bytes())
        })
        .await
        .unwrap_or(Sent::NoResponse);
        cluster.stats.upstream_rq_active.dec();
        cluster.stats.upstream_rq_completed.inc();
        drop(held);
        cluster.pools.release();
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::span::{Kind, SpanContext};

    struct Nothing;
    impl Encode for Nothing {
        fn encode(&self, _: &[Finished]) -> Encoded {
            Encoded { path: "/".into(), content_type: "x", body: Bytes::new(), grpc: false, headers: Vec::new() }
        }
        fn accepted(&self, _: u16, _: Option<&str>) -> bool {
            true
        }
    }

    fn finished() -> Finished {
        let span = Span {
            name: "s".into(),
            kind: Kind::Server,
            context: SpanContext::default(),
            shared: false,
            start: SystemTime::now(),
            tags: Vec::new(),
            tracestate: None,
            b3_single: false,
            ext: None,
        };
        Finished { span, end: SystemTime::now() }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let store = Arc::new(Store::default());
        let target = Target {
            cluster: "none".into(),
            authority: "none".into(),
            timeout: Duration::from_secs(1),
            clusters: Default::default(),
        };
        let pending = Mutex::new(Vec::new());
        let e = Exporter::new(target, Box::new(Nothing), ExportStats::new(&store, "test"), &pending);
        // Never started: nothing drains the queue.
        for _ in 0..QUEUE + 7 {
            e.push(finished());
        }
        assert_eq!(store.counter("tracing.test.spans_dropped").value(), 7);
        assert_eq!(pending.lock().map(|p| p.len()).unwrap_or(0), 1);
    }
}
