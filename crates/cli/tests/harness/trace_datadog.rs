//! A Datadog agent's trace endpoint: `/v0.4/traces` over HTTP/1.1, a
//! MessagePack array of trace chunks decoded with `rmpv`. Each span is
//! recorded as a `Recorded`: `name` is its resource (Envoy's operation),
//! `kind` its Datadog name and type (`envoy.proxy/web`), ids in decimal,
//! `tags` its `meta`, `resource` its `error` and its metrics
//! (`metric:<name>`). Each request's headers are kept; the agent answers
//! 200 with `{}` or what the test set (`set_answer`). Also what of a
//! span and of the context sent upstream must agree between two proxies.

use super::trace_collector::{start, Collector, Recorded, Shared};
use http_body_util::BodyExt;
use rmpv::Value;
use std::collections::BTreeMap;

impl Collector {
    /// A Datadog agent.
    pub fn datadog() -> Collector {
        start(move |listener, received, mut stopped| async move {
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = &mut stopped => return,
                };
                let Ok((io, _)) = accepted else { continue };
                let received = received.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| agent_request(req, received.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                        .await;
                });
            }
        })
    }
}

async fn agent_request(
    req: hyper::Request<hyper::body::Incoming>,
    received: Shared,
) -> Result<hyper::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let chunks = rmpv::decode::read_value(&mut body.as_ref()).unwrap_or(Value::Nil);
    let mut got = received.lock().unwrap_or_else(|e| e.into_inner());
    got.requests.push((path, headers.get("content-type").cloned().unwrap_or_default()));
    got.headers.push(headers);
    for chunk in chunks.as_array().into_iter().flatten() {
        for span in chunk.as_array().into_iter().flatten() {
            got.spans.push(recorded(span));
        }
    }
    let answer = got.answer.clone().unwrap_or_else(|| "{}".into());
    Ok(hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(answer))))
}

/// A map's entries by their string keys.
fn entries(v: &Value) -> BTreeMap<String, &Value> {
    v.as_map().into_iter().flatten().filter_map(|(k, v)| k.as_str().map(|k| (k.to_string(), v))).collect()
}

fn recorded(span: &Value) -> Recorded {
    let f = entries(span);
    let text = |k: &str| f.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let int = |k: &str| f.get(k).and_then(|v| v.as_u64().or_else(|| v.as_i64().map(|i| i as u64))).unwrap_or(0);
    let meta = f.get("meta").map(|m| entries(m)).unwrap_or_default();
    let mut resource = BTreeMap::from([("error".to_string(), int("error").to_string())]);
    for (k, v) in f.get("metrics").map(|m| entries(m)).unwrap_or_default() {
        resource.insert(format!("metric:{k}"), v.as_f64().map_or_else(|| v.to_string(), |x| x.to_string()));
    }
    let parent = int("parent_id");
    Recorded {
        service: text("service"),
        trace_id: int("trace_id").to_string(),
        id: int("span_id").to_string(),
        parent_id: (parent != 0).then(|| parent.to_string()),
        name: text("resource"),
        kind: format!("{}/{}", text("name"), text("type")),
        tags: meta.into_iter().map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string())).collect(),
        shared: false,
        annotations: Vec::new(),
        start_us: int("start") / 1000,
        duration_us: int("duration") / 1000,
        resource,
    }
}

/// What must agree between Envoy's and Legate's Datadog spans: all but
/// ids, times, the request id and each tracer's own process (runtime id,
/// version, pid) and the response's size (the echoed decimal ids vary in
/// length); a new trace id's high half (the epoch seconds) by length.
pub fn comparable(s: &Recorded) -> String {
    let mut tags = s.tags.clone();
    for own in ["guid:x-request-id", "runtime-id", "version", "response_size"] {
        tags.remove(own);
    }
    if let Some(tid) = tags.get_mut("_dd.p.tid") {
        *tid = format!("{} hex digits", tid.len());
    }
    let mut resource = s.resource.clone();
    resource.remove("metric:process_id");
    format!(
        "name={} kind={} parent={} service={} {resource:?} tags={tags:?}",
        s.name,
        s.kind,
        s.parent_id.is_some(),
        s.service
    )
}

/// The propagation headers the upstream saw, the ids masked (checked
/// against each side's spans instead).
pub fn upstream_context(up: &BTreeMap<String, String>) -> String {
    let mask = |v: &str| {
        v.split(',')
            .map(|p| if p.starts_with("_dd.p.tid=") { "_dd.p.tid=(id)" } else { p })
            .collect::<Vec<_>>()
            .join(",")
    };
    let state =
        up.get("tracestate").map(|s| s.split(';').filter(|p| !p.starts_with("p:")).collect::<Vec<_>>().join(";"));
    format!(
        "priority={:?} origin={:?} tags={:?} flag={:?} state={state:?}",
        up.get("x-datadog-sampling-priority"),
        up.get("x-datadog-origin"),
        up.get("x-datadog-tags").map(|t| mask(t)),
        up.get("traceparent").and_then(|t| t.rsplit('-').next()),
    )
}
