//! A collector for what proxies send on their own: a MetricsService and a
//! LoadReportingService (tonic, on a thread of the test) that record every
//! message, by stream, and answer each load-report stream with a set
//! `LoadStatsResponse` after its first request (or, held, only once
//! released). Stopped when dropped.

use super::process::free_port;
use legate_api::pb::envoy::service::load_stats::v3::load_reporting_service_server::{
    LoadReportingService, LoadReportingServiceServer,
};
use legate_api::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};
use legate_api::pb::envoy::service::metrics::v3::metrics_service_server::{MetricsService, MetricsServiceServer};
use legate_api::pb::envoy::service::metrics::v3::{StreamMetricsMessage, StreamMetricsResponse};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// Messages as they arrived: (stream number, message).
pub type Log<T> = Arc<Mutex<Vec<(usize, T)>>>;

#[derive(Clone)]
struct Recorder {
    metrics: Log<StreamMetricsMessage>,
    loads: Log<LoadStatsRequest>,
    streams: Arc<AtomicUsize>,
    answer: LoadStatsResponse,
    /// While set, load-report streams wait for their answer.
    held: Arc<AtomicBool>,
}

#[tonic::async_trait]
impl MetricsService for Recorder {
    async fn stream_metrics(
        &self,
        request: tonic::Request<tonic::Streaming<StreamMetricsMessage>>,
    ) -> Result<tonic::Response<StreamMetricsResponse>, tonic::Status> {
        let id = self.streams.fetch_add(1, Ordering::Relaxed);
        let mut stream = request.into_inner();
        while let Some(m) = stream.message().await? {
            self.metrics.lock().unwrap_or_else(|e| e.into_inner()).push((id, m));
        }
        Ok(tonic::Response::new(StreamMetricsResponse {}))
    }
}

#[tonic::async_trait]
impl LoadReportingService for Recorder {
    type StreamLoadStatsStream = UnboundedReceiverStream<Result<LoadStatsResponse, tonic::Status>>;

    async fn stream_load_stats(
        &self,
        request: tonic::Request<tonic::Streaming<LoadStatsRequest>>,
    ) -> Result<tonic::Response<Self::StreamLoadStatsStream>, tonic::Status> {
        let id = self.streams.fetch_add(1, Ordering::Relaxed);
        let mut stream = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (loads, answer, held) = (self.loads.clone(), self.answer.clone(), self.held.clone());
        tokio::spawn(async move {
            if let Ok(Some(m)) = stream.message().await {
                loads.lock().unwrap_or_else(|e| e.into_inner()).push((id, m));
                // Bounded: a held answer goes out within a minute anyway.
                for _ in 0..3000 {
                    if !held.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = tx.send(Ok(answer.clone()));
            }
            while let Ok(Some(m)) = stream.message().await {
                loads.lock().unwrap_or_else(|e| e.into_inner()).push((id, m));
            }
        });
        Ok(tonic::Response::new(UnboundedReceiverStream::new(rx)))
    }
}

/// The running collector.
pub struct Receiver {
    pub port: u16,
    pub metrics: Log<StreamMetricsMessage>,
    pub loads: Log<LoadStatsRequest>,
    held: Arc<AtomicBool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Starts both services on a fresh port; load-report streams are
    /// answered with `answer` after their first request.
    pub fn start(answer: LoadStatsResponse) -> Receiver {
        Self::start_on(free_port(), answer)
    }

    /// The same on `port` (a collector coming back where one was).
    pub fn start_on(port: u16, answer: LoadStatsResponse) -> Receiver {
        Self::start_with(port, answer, false)
    }

    /// The same, its load-report streams unanswered until [`Receiver::release`].
    pub fn start_held(answer: LoadStatsResponse) -> Receiver {
        Self::start_with(free_port(), answer, true)
    }

    /// Answers the load-report streams held so far, and every later one at once.
    pub fn release(&self) {
        self.held.store(false, Ordering::Relaxed);
    }

    fn start_with(port: u16, answer: LoadStatsResponse, held: bool) -> Receiver {
        let held = Arc::new(AtomicBool::new(held));
        let recorder = Recorder {
            metrics: Default::default(),
            loads: Default::default(),
            streams: Default::default(),
            answer,
            held: held.clone(),
        };
        let (metrics, loads) = (recorder.metrics.clone(), recorder.loads.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind collector");
                let _ = ready_tx.send(());
                let serve = tonic::transport::Server::builder()
                    .add_service(MetricsServiceServer::new(recorder.clone()))
                    .add_service(LoadReportingServiceServer::new(recorder))
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
                // Not graceful: the proxies' streams never end on their own;
                // the runtime's end drops them.
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("collector started");
        Receiver { port, metrics, loads, held, stop: Some(stop), thread: Some(thread) }
    }

    /// The metrics messages of the streams whose first message names node `id`.
    pub fn metrics_of(&self, id: &str) -> Vec<(usize, StreamMetricsMessage)> {
        let all = self.metrics.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mine: std::collections::BTreeSet<usize> = all
            .iter()
            .filter(|(_, m)| m.identifier.as_ref().and_then(|i| i.node.as_ref()).is_some_and(|n| n.id == id))
            .map(|(s, _)| *s)
            .collect();
        all.into_iter().filter(|(s, _)| mine.contains(s)).collect()
    }

    /// The load reports from node `id`.
    pub fn loads_of(&self, id: &str) -> Vec<LoadStatsRequest> {
        let all = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().filter(|(_, r)| r.node.as_ref().is_some_and(|n| n.id == id)).map(|(_, r)| r.clone()).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
