//! The Zipkin tracer (`envoy.tracers.zipkin`): B3 propagation (the
//! `x-b3-*` headers, or the single `b3` header when the request came with
//! one) and spans as Zipkin's JSON v2, POSTed to `collector_endpoint` on
//! `collector_cluster` (Jaeger's Zipkin endpoint takes the same).

use super::driver::{DriverContext, Operation, Registration, Upstream};
use super::export::{Encode, Encoded, ExportStats, Exporter, Finished, Target};
use super::span::{micros, random_id, Kind, Parent, Span, SpanContext};
use crate::common::local_address::local_address;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use legate_api::pb::envoy::config::trace::v3::ZipkinConfig;
use legate_api::pb::google::protobuf::Any;
use serde_json::{json, Map, Value};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const REGISTRATION: Registration = Registration {
    type_url: "envoy.config.trace.v3.ZipkinConfig",
    compile: |any, ctx| Ok(Arc::new(Zipkin::compile(any, ctx)?)),
};

static X_B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
static X_B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
static X_B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static B3: HeaderName = HeaderName::from_static("b3");

pub struct Zipkin {
    trace_id_128bit: bool,
    shared_span_context: bool,
    exporter: Arc<Exporter>,
}

impl Zipkin {
    fn compile(any: &Any, ctx: &DriverContext<'_>) -> Result<Self, String> {
        let c: ZipkinConfig = legate_api::any::unpack(any)?;
        if !ctx.clusters.load().contains_key(&c.collector_cluster) {
            // Envoy checks the cluster when the config is loaded.
            return Err(format!("collector_cluster: envoy.tracers.zipkin: unknown cluster '{}'", c.collector_cluster));
        }
        let authority =
            if c.collector_hostname.is_empty() { c.collector_cluster.clone() } else { c.collector_hostname.clone() };
        let target = Target {
            cluster: c.collector_cluster.clone(),
            authority,
            timeout: Duration::from_secs(5),
            clusters: ctx.clusters.clone(),
        };
        let ip = local_address(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let encoder = JsonV2 { path: c.collector_endpoint.clone(), service: ctx.local_cluster.to_string(), ip };
        Ok(Self {
            trace_id_128bit: c.trace_id_128bit,
            shared_span_context: c.shared_span_context.as_ref().is_none_or(|b| b.value),
            exporter: Exporter::new(target, Box::new(encoder), ExportStats::new(ctx.store, "zipkin"), ctx.exporters),
        })
    }
}

impl super::Driver for Zipkin {
    fn start(&self, h: &HeaderMap, op: &Operation<'_>, traced: bool, start: SystemTime) -> Option<Span> {
        let parent = extract(h).ok()?;
        let kind = if op.egress { Kind::Client } else { Kind::Server };
        let sampled = parent.sampled.unwrap_or(traced);
        let shared = kind == Kind::Server && self.shared_span_context;
        let context = match &parent.context {
            None => {
                let id = random_id();
                SpanContext {
                    trace_id_high: if self.trace_id_128bit { random_id() } else { 0 },
                    trace_id: id,
                    trace_id_128: self.trace_id_128bit,
                    span_id: id,
                    parent_id: None,
                    sampled,
                }
            }
            Some(p) if shared => SpanContext { sampled, ..p.clone() },
            Some(p) => SpanContext { span_id: random_id(), parent_id: Some(p.span_id), sampled, ..p.clone() },
        };
        // Zipkin names the span after the host until a decorator renames it.
        Some(Span { shared, b3_single: parent.b3_single, ..Span::new(op.host.to_string(), kind, context, start) })
    }

    /// Envoy's Zipkin child is started as its parent was, from the
    /// parent's context: on an ingress listener a server span that shares
    /// the parent's id (with `shared_span_context`), on egress a client
    /// span whose parent is the connection manager's.
    fn child(&self, parent: &Span, name: String, start: SystemTime) -> Span {
        let p = &parent.context;
        let shared = parent.kind == Kind::Server && self.shared_span_context;
        let context = if shared {
            p.clone()
        } else {
            SpanContext { span_id: random_id(), parent_id: Some(p.span_id), ..p.clone() }
        };
        Span { shared, b3_single: parent.b3_single, ..Span::new(name, parent.kind, context, start) }
    }

    fn inject(&self, span: &mut Span, h: &mut HeaderMap, _: &Upstream<'_>) {
        let c = &span.context;
        let flag = if c.sampled { "1" } else { "0" };
        if span.b3_single {
            let mut v = format!("{}-{:016x}-{flag}", c.trace_hex(), c.span_id);
            if let Some(p) = c.parent_id {
                v.push_str(&format!("-{p:016x}"));
            }
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(B3.clone(), v);
            }
            return;
        }
        let set = |h: &mut HeaderMap, k: &HeaderName, v: String| {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(k.clone(), v);
            }
        };
        set(h, &X_B3_TRACE_ID, c.trace_hex());
        set(h, &X_B3_SPAN_ID, format!("{:016x}", c.span_id));
        match c.parent_id {
            Some(p) => set(h, &X_B3_PARENT_SPAN_ID, format!("{p:016x}")),
            None => {
                h.remove(&X_B3_PARENT_SPAN_ID);
            }
        }
        h.insert(X_B3_SAMPLED.clone(), HeaderValue::from_static(flag));
    }

    fn finish(&self, span: Span, end: SystemTime) {
        if span.context.sampled {
            self.exporter.push(Finished { span, end });
        }
    }
}

/// The request's B3 context: the single `b3` header when there is one,
/// else the `x-b3-*` headers. Err when they are malformed (no span).
fn extract(h: &HeaderMap) -> Result<Parent, ()> {
    let get = |k: &HeaderName| h.get(k).map(|v| v.to_str().map_err(|_| ())).transpose();
    if let Some(b3) = get(&B3)? {
        return single(b3);
    }
    let sampled = get(&X_B3_SAMPLED)?.map(sampled_flag).transpose()?;
    let (trace, span) = (get(&X_B3_TRACE_ID)?, get(&X_B3_SPAN_ID)?);
    let context = match (trace, span) {
        (None, None) => None,
        (Some(t), Some(s)) => {
            let (high, low, is128) = trace_id(t)?;
            let parent_id = get(&X_B3_PARENT_SPAN_ID)?.map(hex64).transpose()?;
            Some(SpanContext {
                trace_id_high: high,
                trace_id: low,
                trace_id_128: is128,
                span_id: hex64(s)?,
                parent_id,
                sampled: sampled.unwrap_or(false),
            })
        }
        _ => return Err(()),
    };
    Ok(Parent { context, sampled, tracestate: None, b3_single: false })
}

/// `b3: {trace}-{span}[-{sampled}[-{parent}]]`, or the decision alone.
fn single(v: &str) -> Result<Parent, ()> {
    let parts: Vec<&str> = v.split('-').collect();
    if parts.len() == 1 {
        return Ok(Parent { sampled: Some(sampled_flag(parts[0])?), ..Default::default() });
    }
    if parts.len() > 4 {
        return Err(());
    }
    let (high, low, is128) = trace_id(parts[0])?;
    let sampled = parts.get(2).map(|s| sampled_flag(s)).transpose()?;
    let parent_id = parts.get(3).map(|p| hex64(p)).transpose()?;
    let context = SpanContext {
        trace_id_high: high,
        trace_id: low,
        trace_id_128: is128,
        span_id: hex64(parts[1])?,
        parent_id,
        sampled: sampled.unwrap_or(false),
    };
    Ok(Parent { context: Some(context), sampled, tracestate: None, b3_single: true })
}

fn sampled_flag(v: &str) -> Result<bool, ()> {
    match v {
        "1" | "d" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        _ => Err(()),
    }
}

fn hex64(v: &str) -> Result<u64, ()> {
    if v.len() != 16 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(());
    }
    u64::from_str_radix(v, 16).map_err(|_| ())
}

/// A 64- or 128-bit trace id: (high, low, was 128).
fn trace_id(v: &str) -> Result<(u64, u64, bool), ()> {
    match v.len() {
        16 => Ok((0, hex64(v)?, false)),
        32 => Ok((hex64(&v[..16])?, hex64(&v[16..])?, true)),
        _ => Err(()),
    }
}

/// Zipkin's JSON v2 (`HTTP_JSON`).
struct JsonV2 {
    path: String,
    service: String,
    ip: IpAddr,
}

impl JsonV2 {
    fn span(&self, f: &Finished) -> Value {
        let s = &f.span;
        let c = &s.context;
        let (kind, end_annotation) = match s.kind {
            Kind::Server => ("SERVER", "ss"),
            Kind::Client => ("CLIENT", "cr"),
        };
        let start = micros(s.start);
        let end = micros(f.end);
        let mut endpoint = Map::new();
        endpoint.insert("serviceName".into(), json!(self.service));
        match self.ip {
            IpAddr::V4(ip) => endpoint.insert("ipv4".into(), json!(ip.to_string())),
            IpAddr::V6(ip) => endpoint.insert("ipv6".into(), json!(ip.to_string())),
        };
        endpoint.insert("port".into(), json!(0));
        let tags: Map<String, Value> =
            s.tags.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.clone(), json!(v))).collect();
        let mut out = Map::new();
        out.insert("traceId".into(), json!(c.trace_hex()));
        if let Some(p) = c.parent_id {
            out.insert("parentId".into(), json!(format!("{p:016x}")));
        }
        out.insert("id".into(), json!(format!("{:016x}", c.span_id)));
        out.insert("kind".into(), json!(kind));
        out.insert("name".into(), json!(s.name));
        out.insert("timestamp".into(), json!(start));
        out.insert("duration".into(), json!(end.saturating_sub(start)));
        out.insert("localEndpoint".into(), Value::Object(endpoint));
        out.insert("annotations".into(), json!([{ "timestamp": end, "value": end_annotation }]));
        out.insert("tags".into(), Value::Object(tags));
        if s.shared {
            out.insert("shared".into(), json!(true));
        }
        Value::Object(out)
    }
}

impl Encode for JsonV2 {
    fn encode(&self, spans: &[Finished]) -> Encoded {
        let body = Value::Array(spans.iter().map(|f| self.span(f)).collect());
        Encoded {
            path: self.path.clone(),
            content_type: "application/json",
            body: serde_json::to_vec(&body).unwrap_or_default().into(),
            grpc: false,
            headers: Vec::new(),
        }
    }

    /// Envoy counts a report as sent on 202 only.
    fn accepted(&self, status: u16, _: Option<&str>) -> bool {
        status == 202
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b3_single_and_multi_are_read() {
        let p = single("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90").unwrap();
        let c = p.context.unwrap();
        assert_eq!(c.trace_hex(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert_eq!((c.span_id, c.parent_id, p.sampled), (0xe457b5a2e4d86bd1, Some(0x05e3ac9a4f6e3b90), Some(true)));
        assert_eq!(single("0").unwrap().sampled, Some(false));
        assert!(single("nothex-e457b5a2e4d86bd1").is_err());
        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", HeaderValue::from_static("0000000000000001"));
        h.insert("x-b3-spanid", HeaderValue::from_static("0000000000000002"));
        h.insert("x-b3-sampled", HeaderValue::from_static("0"));
        let p = extract(&h).unwrap();
        assert_eq!(p.context.unwrap().trace_hex(), "0000000000000001");
        assert_eq!(p.sampled, Some(false));
        h.remove("x-b3-spanid");
        assert!(extract(&h).is_err());
    }
}
