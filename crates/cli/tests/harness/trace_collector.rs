//! Collectors for the spans proxies send, decoding the real wire formats:
//! an OTLP `TraceService` over gRPC (tonic, with the OpenTelemetry
//! project's messages), a Zipkin HTTP endpoint reading JSON v2 and a
//! SkyWalking `TraceSegmentReportService` (`collect`, a client stream of
//! segments: one `Recorded` per span) and (`trace_datadog`) a Datadog
//! agent's `/v0.4/traces` (MessagePack). All
//! record spans in one shape ([`Recorded`]) so a test compares Envoy's and
//! Legate's alike. Each runs on a thread of the test until dropped.

use super::process::free_port;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One span as a collector received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    /// Zipkin's `localEndpoint.serviceName`, OTLP's `service.name`.
    pub service: String,
    pub trace_id: String,
    pub id: String,
    pub parent_id: Option<String>,
    pub name: String,
    /// SERVER or CLIENT.
    pub kind: String,
    pub tags: BTreeMap<String, String>,
    /// Zipkin's `shared`.
    pub shared: bool,
    /// Zipkin's annotation values.
    pub annotations: Vec<String>,
    pub start_us: u64,
    pub duration_us: u64,
    /// The OTLP resource's other attributes, Zipkin's other endpoint fields.
    pub resource: BTreeMap<String, String>,
}

impl Recorded {
    pub fn tag(&self, k: &str) -> Option<&str> {
        self.tags.get(k).map(String::as_str)
    }
}

/// What a collector has received: spans, and the requests that carried
/// them (path and content type).
#[derive(Default)]
pub struct Received {
    pub spans: Vec<Recorded>,
    pub requests: Vec<(String, String)>,
    /// SkyWalking streams' `authentication` metadata.
    pub tokens: Vec<String>,
    /// The request headers of each batch (the Datadog agent's).
    pub headers: Vec<BTreeMap<String, String>>,
    /// The Datadog agent's answer (JSON), `{}` when None.
    pub answer: Option<String>,
}

pub(super) type Shared = Arc<Mutex<Received>>;

/// A collector running on a thread of the test.
pub struct Collector {
    pub port: u16,
    received: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Collector {
    pub fn spans(&self) -> Vec<Recorded> {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).spans.clone()
    }

    pub fn requests(&self) -> Vec<(String, String)> {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).requests.clone()
    }

    pub fn tokens(&self) -> Vec<String> {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).tokens.clone()
    }

    pub fn headers(&self) -> Vec<BTreeMap<String, String>> {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).headers.clone()
    }

    /// What the collector answers from now on (the Datadog agent's JSON).
    pub fn set_answer(&self, answer: &str) {
        self.received.lock().unwrap_or_else(|e| e.into_inner()).answer = Some(answer.to_string());
    }

    /// Waits (at most `limit`) until `n` spans have come; the spans then.
    pub fn wait_spans(&self, n: usize, limit: Duration) -> Vec<Recorded> {
        let end = std::time::Instant::now() + limit;
        loop {
            let spans = self.spans();
            if spans.len() >= n || std::time::Instant::now() > end {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// An OTLP/gRPC trace collector.
    pub fn otlp() -> Collector {
        start(|listener, received, stopped| async move {
            let serve = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Otlp(received)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
            tokio::select! {
                _ = serve => {}
                _ = stopped => {}
            }
        })
    }

    /// A SkyWalking OAP's trace segment service (gRPC).
    pub fn skywalking() -> Collector {
        start(|listener, received, stopped| async move {
            let serve = tonic::transport::Server::builder()
                .add_service(super::trace_skywalking::Service(received))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
            tokio::select! {
                _ = serve => {}
                _ = stopped => {}
            }
        })
    }

    /// A Zipkin collector (JSON v2 over HTTP/1.1), answering 202 as Zipkin does.
    pub fn zipkin() -> Collector {
        Self::zipkin_answering(202)
    }

    /// A port where no collector listens (a collector that is down).
    pub fn absent() -> Collector {
        Collector { port: free_port(), received: Default::default(), stop: None, thread: None }
    }

    /// A Zipkin collector that records what comes and answers `status`.
    pub fn zipkin_answering(status: u16) -> Collector {
        start(move |listener, received, mut stopped| async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = &mut stopped => return,
                };
                let Ok((io, _)) = accepted else { continue };
                let received = received.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| zipkin_request(req, received.clone(), status));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                        .await;
                });
            }
        })
    }
}

type Stopped = tokio::sync::oneshot::Receiver<()>;

pub(super) fn start<F, Fut>(serve: F) -> Collector
where
    F: FnOnce(tokio::net::TcpListener, Shared, Stopped) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let port = free_port();
    let received: Shared = Default::default();
    let shared = received.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind collector");
            let _ = ready_tx.send(());
            serve(listener, shared, stopped).await;
        });
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("collector started");
    Collector { port, received, stop: Some(stop), thread: Some(thread) }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Otlp(Shared);

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Otlp {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap_or_else(|e| e.into_inner());
        got.requests
            .push(("/opentelemetry.proto.collector.trace.v1.TraceService/Export".into(), "application/grpc".into()));
        for rs in &request.get_ref().resource_spans {
            let mut resource = rs.resource.as_ref().map(|r| attrs(&r.attributes)).unwrap_or_default();
            let service = resource.remove("service.name").unwrap_or_default();
            for ss in &rs.scope_spans {
                if let Some(scope) = &ss.scope {
                    resource.insert("scope.name".into(), scope.name.clone());
                }
                for s in &ss.spans {
                    got.spans.push(Recorded {
                        service: service.clone(),
                        trace_id: hex(&s.trace_id),
                        id: hex(&s.span_id),
                        parent_id: (!s.parent_span_id.is_empty()).then(|| hex(&s.parent_span_id)),
                        name: s.name.clone(),
                        kind: match s.kind {
                            2 => "SERVER".into(),
                            3 => "CLIENT".into(),
                            k => format!("KIND_{k}"),
                        },
                        tags: attrs(&s.attributes),
                        shared: false,
                        annotations: s.events.iter().map(|e| e.name.clone()).collect(),
                        start_us: s.start_time_unix_nano / 1000,
                        duration_us: s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) / 1000,
                        resource: resource.clone(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn zipkin_request(
    req: hyper::Request<hyper::body::Incoming>,
    received: Shared,
    status: u16,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let ct = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let spans: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
    let mut got = received.lock().unwrap_or_else(|e| e.into_inner());
    got.requests.push((path, ct));
    for s in &spans {
        got.spans.push(zipkin_span(s));
    }
    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::ACCEPTED);
    Ok(resp)
}

fn zipkin_span(s: &serde_json::Value) -> Recorded {
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let ep = &s["localEndpoint"];
    let mut resource = BTreeMap::new();
    for (k, v) in ep.as_object().into_iter().flatten() {
        if k != "serviceName" {
            resource.insert(k.clone(), v.to_string());
        }
    }
    Recorded {
        service: text(&ep["serviceName"]).unwrap_or_default(),
        trace_id: text(&s["traceId"]).unwrap_or_default(),
        id: text(&s["id"]).unwrap_or_default(),
        parent_id: text(&s["parentId"]),
        name: text(&s["name"]).unwrap_or_default(),
        kind: text(&s["kind"]).unwrap_or_default(),
        tags: s["tags"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default(),
        shared: s["shared"].as_bool().unwrap_or(false),
        annotations: s["annotations"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| text(&x["value"])).collect())
            .unwrap_or_default(),
        start_us: s["timestamp"].as_u64().unwrap_or(0),
        duration_us: s["duration"].as_u64().unwrap_or(0),
        resource,
    }
}
