//! The OpenTelemetry tracer (`envoy.tracers.opentelemetry`): W3C trace
//! context (`traceparent`, `tracestate`) and spans as OTLP, exported over
//! gRPC (`TraceService/Export`) to the `grpc_service` cluster.

use super::driver::{DriverContext, Operation, Registration, Upstream};
use super::export::{Encode, Encoded, ExportStats, Exporter, Finished, Target};
use super::span::{nanos, random_id, Kind, Parent, Span, SpanContext};
use bytes::{BufMut, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use legate_api::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use legate_api::pb::envoy::config::trace::v3::OpenTelemetryConfig;
use legate_api::pb::google::protobuf::Any;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, ResourceSpans, ScopeSpans, Span as OtlpSpan};
use prost::Message;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub const REGISTRATION: Registration = Registration {
    type_url: "envoy.config.trace.v3.OpenTelemetryConfig",
    compile: |any, ctx| Ok(Arc::new(OpenTelemetry::compile(any, ctx)?)),
};

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

pub struct OpenTelemetry {
    exporter: Arc<Exporter>,
}

impl OpenTelemetry {
    fn compile(any: &Any, ctx: &DriverContext<'_>) -> Result<Self, String> {
        let c: OpenTelemetryConfig = legate_api::any::unpack(any)?;
        let Some(grpc) = &c.grpc_service else {
            return Err("grpc_service is required (the HTTP exporter is not implemented by Legate)".into());
        };
        let Some(TargetSpecifier::EnvoyGrpc(eg)) = &grpc.target_specifier else {
            return Err("grpc_service.envoy_grpc is required".into());
        };
        // An unknown cluster is not an error (Envoy 1.40 starts with it and
        // its exports fail): batches are counted as skipped until it exists.
        let authority = if eg.authority.is_empty() { eg.cluster_name.clone() } else { eg.authority.clone() };
        let timeout = grpc.timeout.as_ref().map(legate_api::duration::from_pb).filter(|d| !d.is_zero());
        let target = Target {
            cluster: eg.cluster_name.clone(),
            authority,
            // No deadline unless the config gives one; a hung collector
            // still cannot hold the queue for longer than this.
            timeout: timeout.unwrap_or(Duration::from_secs(30)),
            clusters: ctx.clusters.clone(),
        };
        let service =
            if c.service_name.is_empty() { "unknown_service:envoy".to_string() } else { c.service_name.clone() };
        let encoder = Otlp { service };
        Ok(Self {
            exporter: Exporter::new(
                target,
                Box::new(encoder),
                ExportStats::new(ctx.store, "opentelemetry"),
                ctx.exporters,
            ),
        })
    }
}

impl super::Driver for OpenTelemetry {
    fn start(&self, h: &HeaderMap, op: &Operation<'_>, traced: bool, start: SystemTime) -> Option<Span> {
        let parent = extract(h).ok()?;
        // A span followed by its own upstream span is the server side of
        // the hop; otherwise the listener's direction decides.
        let kind = if op.spawn_upstream_span || !op.egress { Kind::Server } else { Kind::Client };
        let context = match parent.context {
            Some(p) => SpanContext { span_id: random_id(), parent_id: Some(p.span_id), ..p },
            None => SpanContext {
                trace_id_high: random_id(),
                trace_id: random_id(),
                trace_id_128: true,
                span_id: random_id(),
                parent_id: None,
                sampled: traced,
            },
        };
        Some(Span { tracestate: parent.tracestate, ..Span::new(op.name(), kind, context, start) })
    }

    fn child(&self, parent: &Span, name: String, start: SystemTime) -> Span {
        let context =
            SpanContext { span_id: random_id(), parent_id: Some(parent.context.span_id), ..parent.context.clone() };
        Span { tracestate: parent.tracestate.clone(), ..Span::new(name, Kind::Client, context, start) }
    }

    fn inject(&self, span: &mut Span, h: &mut HeaderMap, _: &Upstream<'_>) {
        let c = &span.context;
        let v = format!("00-{}-{:016x}-{}", c.trace_hex(), c.span_id, if c.sampled { "01" } else { "00" });
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(TRACEPARENT.clone(), v);
        }
        // Always written, empty when the caller sent none, as Envoy does.
        let ts = span.tracestate.as_deref().and_then(|s| HeaderValue::from_str(s).ok());
        h.insert(TRACESTATE.clone(), ts.unwrap_or_else(|| HeaderValue::from_static("")));
    }

    fn finish(&self, span: Span, end: SystemTime) {
        if span.context.sampled {
            self.exporter.push(Finished { span, end });
        }
    }
}

/// `traceparent` (`00-{trace 32}-{parent 16}-{flags 2}`) and `tracestate`.
/// Err when a `traceparent` is there but malformed (no span, as Envoy).
fn extract(h: &HeaderMap) -> Result<Parent, ()> {
    let Some(tp) = h.get(&TRACEPARENT) else { return Ok(Parent::default()) };
    let tp = tp.to_str().map_err(|_| ())?;
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if tp.len() != 55
        || parts.len() != 4
        || !hex(parts[0], 2)
        || !hex(parts[1], 32)
        || !hex(parts[2], 16)
        || !hex(parts[3], 2)
    {
        return Err(());
    }
    let num = |s: &str| u64::from_str_radix(s, 16).map_err(|_| ());
    let (high, low, span_id) = (num(&parts[1][..16])?, num(&parts[1][16..])?, num(parts[2])?);
    if (high == 0 && low == 0) || span_id == 0 {
        return Err(());
    }
    let flags = u8::from_str_radix(parts[3], 16).map_err(|_| ())?;
    let states: Vec<&str> = h.get_all(&TRACESTATE).iter().filter_map(|v| v.to_str().ok()).collect();
    let context = SpanContext {
        trace_id_high: high,
        trace_id: low,
        trace_id_128: true,
        span_id,
        parent_id: None,
        sampled: flags & 1 == 1,
    };
    Ok(Parent {
        context: Some(context),
        sampled: Some(flags & 1 == 1),
        tracestate: (!states.is_empty()).then(|| states.join(",")),
        b3_single: false,
    })
}

/// OTLP's `ExportTraceServiceRequest`, framed as one gRPC message.
struct Otlp {
    service: String,
}

fn string_kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(v.to_string())) }),
        ..Default::default()
    }
}

impl Otlp {
    fn span(f: &Finished) -> OtlpSpan {
        let s = &f.span;
        let c = &s.context;
        let mut trace_id = Vec::with_capacity(16);
        trace_id.extend_from_slice(&c.trace_id_high.to_be_bytes());
        trace_id.extend_from_slice(&c.trace_id.to_be_bytes());
        OtlpSpan {
            trace_id,
            span_id: c.span_id.to_be_bytes().to_vec(),
            trace_state: s.tracestate.clone().unwrap_or_default(),
            parent_span_id: c.parent_id.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
            name: s.name.clone(),
            kind: match s.kind {
                Kind::Server => SpanKind::Server as i32,
                Kind::Client => SpanKind::Client as i32,
            },
            start_time_unix_nano: nanos(s.start),
            end_time_unix_nano: nanos(f.end),
            attributes: s.tags.iter().map(|(k, v)| string_kv(k, v)).collect(),
            ..Default::default()
        }
    }
}

impl Encode for Otlp {
    fn encode(&self, spans: &[Finished]) -> Encoded {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                // Envoy's resource attributes, with this proxy's own SDK.
                resource: Some(Resource {
                    attributes: vec![
                        string_kv("service.name", &self.service),
                        string_kv("telemetry.sdk.language", "rust"),
                        string_kv("telemetry.sdk.name", "legate"),
                        string_kv("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
                    ],
                    ..Default::default()
                }),
                // The instrumentation scope Envoy names, so queries by scope
                // find both proxies' spans.
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope { name: "envoy".into(), ..Default::default() }),
                    spans: spans.iter().map(Self::span).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let message = request.encode_to_vec();
        let mut body = BytesMut::with_capacity(message.len() + 5);
        body.put_u8(0);
        body.put_u32(message.len() as u32);
        body.put_slice(&message);
        Encoded {
            path: EXPORT_PATH.to_string(),
            content_type: "application/grpc",
            body: body.freeze(),
            grpc: true,
            headers: Vec::new(),
        }
    }

    fn accepted(&self, status: u16, grpc_status: Option<&str>) -> bool {
        status == 200 && grpc_status == Some("0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_and_checked() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"));
        h.insert("tracestate", HeaderValue::from_static("a=1"));
        let p = extract(&h).unwrap();
        let c = p.context.unwrap();
        assert_eq!(c.trace_hex(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!((c.span_id, c.sampled, p.tracestate.as_deref()), (0xb7ad6b7169203331, true, Some("a=1")));
        h.insert("traceparent", HeaderValue::from_static("00-00000000000000000000000000000000-b7ad6b7169203331-01"));
        assert!(extract(&h).is_err());
        h.insert("traceparent", HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033-01"));
        assert!(extract(&h).is_err());
    }
}
