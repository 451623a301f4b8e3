//! The SkyWalking tracer (`envoy.tracers.skywalking`), as Envoy's (built on
//! cpp2sky) behaves: the connection manager's span is the segment's entry
//! span, named after the request's path (decorators do not rename it); the
//! router's upstream span is an exit span that takes the upstream path as
//! its name, the upstream host as its peer, and writes the `sw8` header
//! (an entry span writes none). A request's spans go as one
//! `SegmentObject` once the entry span ends, over
//! `TraceSegmentReportService/collect` to the `grpc_service` cluster.

pub mod proto;
pub mod sw8;

use super::driver::{DriverContext, Operation, Registration, Upstream};
use super::export::{Encode, Encoded, ExportStats, Exporter, Finished, Target};
use super::span::{millis, Ext, Kind, Span, SpanContext};
use super::tags;
use bytes::{BufMut, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use legate_api::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use legate_api::pb::envoy::config::trace::v3::client_config::BackendTokenSpecifier;
use legate_api::pb::envoy::config::trace::v3::SkyWalkingConfig;
use legate_api::pb::google::protobuf::Any;
use prost::Message;
use proto::{KeyStringValuePair, SegmentObject, SegmentReference, SpanObject};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub const REGISTRATION: Registration = Registration {
    type_url: "envoy.config.trace.v3.SkyWalkingConfig",
    compile: |any, ctx| Ok(Arc::new(SkyWalking::compile(any, ctx)?)),
};

static SW8: HeaderName = HeaderName::from_static("sw8");
static AUTHENTICATION: HeaderName = HeaderName::from_static("authentication");
/// Envoy's name when neither the config nor the node names the service.
const DEFAULT_NAME: &str = "EnvoyProxy";
/// Envoy's `max_cache_size` default: segments held while they cannot go.
const DEFAULT_CACHE: usize = 1024;
/// The component id cpp2sky gives every span (its C++ range's first).
const COMPONENT_ID: i32 = 9000;

pub struct SkyWalking {
    service: String,
    instance: String,
    exporter: Arc<Exporter>,
}

/// One request's segment: what its spans share.
struct Segment {
    trace_id: String,
    segment_id: String,
    /// The caller's context, from the request's `sw8`.
    parent: Option<sw8::Context>,
    /// The entry span's operation (the caller's `endpoint` downstream).
    endpoint: String,
    next_id: AtomicI32,
    /// Exit spans that ended, waiting for the entry span.
    done: Mutex<Vec<SpanObject>>,
}

/// A span's place in its segment (the span's `ext`).
struct SegmentSpan {
    segment: Arc<Segment>,
    id: i32,
    parent_id: i32,
    exit: bool,
}

impl SkyWalking {
    fn compile(any: &Any, ctx: &DriverContext<'_>) -> Result<Self, String> {
        let c: SkyWalkingConfig = legate_api::any::unpack(any)?;
        let Some(grpc) = &c.grpc_service else { return Err("grpc_service is required".into()) };
        let Some(TargetSpecifier::EnvoyGrpc(eg)) = &grpc.target_specifier else {
            return Err("grpc_service.envoy_grpc is required".into());
        };
        let client = c.client_config.unwrap_or_default();
        let or_default = |given: &str, node: &str| {
            [given, node].into_iter().find(|s| !s.is_empty()).unwrap_or(DEFAULT_NAME).to_string()
        };
        let authority = if eg.authority.is_empty() { eg.cluster_name.clone() } else { eg.authority.clone() };
        let timeout = grpc.timeout.as_ref().map(legate_api::duration::from_pb).filter(|d| !d.is_zero());
        let target = Target {
            cluster: eg.cluster_name.clone(),
            authority,
            timeout: timeout.unwrap_or(Duration::from_secs(30)),
            clusters: ctx.clusters.clone(),
        };
        let token = match &client.backend_token_specifier {
            Some(BackendTokenSpecifier::BackendToken(t)) if !t.is_empty() => Some(
                HeaderValue::from_str(t).map_err(|_| "client_config.backend_token: not a header value".to_string())?,
            ),
            _ => None,
        };
        let cache = client.max_cache_size.as_ref().map_or(DEFAULT_CACHE, |v| v.value as usize);
        let stats = ExportStats::named(ctx.store, "skywalking", "segments_sent", "segments_dropped");
        let exporter = Exporter::bounded(target, Box::new(Segments { token }), stats, ctx.exporters, cache);
        Ok(Self {
            service: or_default(&client.service_name, ctx.local_cluster),
            instance: or_default(&client.instance_name, ctx.node_id),
            exporter,
        })
    }
}

fn place(span: &Span) -> Option<&SegmentSpan> {
    span.ext.as_ref().and_then(|e| e.get::<SegmentSpan>())
}

impl super::Driver for SkyWalking {
    /// An `sw8` header continues the caller's trace; without one (or with
    /// one that does not parse) a request Envoy does not sample is not
    /// traced at all, as in Envoy (SkyWalking has no unsampled spans).
    fn start(&self, h: &HeaderMap, op: &Operation<'_>, traced: bool, start: SystemTime) -> Option<Span> {
        let parent = h.get(&SW8).and_then(|v| v.to_str().ok()).and_then(sw8::parse);
        if parent.is_none() && !traced {
            return None;
        }
        let new_id = || uuid::Uuid::new_v4().to_string();
        let segment = Arc::new(Segment {
            trace_id: parent.as_ref().map_or_else(new_id, |p| p.trace_id.clone()),
            segment_id: new_id(),
            parent,
            endpoint: op.path.to_string(),
            next_id: AtomicI32::new(1),
            done: Mutex::default(),
        });
        let context = SpanContext { sampled: true, ..Default::default() };
        let mut span = Span::new(op.path.to_string(), Kind::Server, context, start);
        span.ext = Some(Ext(Arc::new(SegmentSpan { segment, id: 0, parent_id: -1, exit: false })));
        Some(span)
    }

    /// An exit span under `parent`, first named as it is.
    fn child(&self, parent: &Span, _: String, start: SystemTime) -> Span {
        let mut span = Span::new(parent.name.clone(), Kind::Client, parent.context.clone(), start);
        if let Some(p) = place(parent) {
            let id = p.segment.next_id.fetch_add(1, Ordering::Relaxed);
            let segment = p.segment.clone();
            span.ext = Some(Ext(Arc::new(SegmentSpan { segment, id, parent_id: p.id, exit: true })));
        }
        span
    }

    /// Only an exit span is propagated (cpp2sky writes no `sw8` for an
    /// entry span); it then takes the upstream path as its operation.
    fn inject(&self, span: &mut Span, h: &mut HeaderMap, up: &Upstream<'_>) {
        let Some(p) = place(span).filter(|p| p.exit) else { return };
        let s = &p.segment;
        let context = sw8::Context {
            trace_id: s.trace_id.clone(),
            segment_id: s.segment_id.clone(),
            span_id: p.id,
            service: self.service.clone(),
            instance: self.instance.clone(),
            endpoint: s.endpoint.clone(),
            target: up.address.clone().unwrap_or_else(|| up.authority.to_string()),
        };
        if let Ok(v) = HeaderValue::from_str(&sw8::encode(&context)) {
            h.insert(SW8.clone(), v);
            span.name = up.path.to_string();
        }
    }

    fn rename(&self, _: &mut Span, _: &str) {}

    /// An exit span waits for its entry span; the entry span's end sends
    /// the segment.
    fn finish(&self, span: Span, end: SystemTime) {
        let Some(p) = place(&span) else { return };
        let object = span_object(&span, p, end);
        let segment = p.segment.clone();
        let Ok(mut done) = segment.done.lock() else { return };
        if p.exit {
            done.push(object);
            return;
        }
        let mut spans = vec![object];
        spans.append(&mut done);
        spans.sort_by_key(|s| s.span_id);
        let object = SegmentObject {
            trace_id: segment.trace_id.clone(),
            trace_segment_id: segment.segment_id.clone(),
            spans,
            service: self.service.clone(),
            service_instance: self.instance.clone(),
            is_size_limited: false,
        };
        drop(done);
        let carrier = Span { ext: Some(Ext(Arc::new(object))), ..span };
        self.exporter.push(Finished { span: carrier, end });
    }
}

/// A finished span as SkyWalking's `SpanObject`, its tags renamed as
/// Envoy's SkyWalking span renames them.
fn span_object(span: &Span, p: &SegmentSpan, end: SystemTime) -> SpanObject {
    let mut o = SpanObject {
        span_id: p.id,
        parent_span_id: p.parent_id,
        start_time: millis(span.start),
        end_time: millis(end),
        operation_name: span.name.clone(),
        span_type: if p.exit { proto::SPAN_TYPE_EXIT } else { proto::SPAN_TYPE_ENTRY },
        span_layer: proto::SPAN_LAYER_HTTP,
        component_id: COMPONENT_ID,
        ..Default::default()
    };
    for (k, v) in &span.tags {
        let key = match k.as_str() {
            tags::HTTP_URL => "url",
            tags::HTTP_STATUS_CODE => "status_code",
            tags::PEER_ADDRESS => {
                o.peer.clone_from(v);
                continue;
            }
            tags::ERROR => {
                o.is_error = true;
                tags::ERROR
            }
            other => other,
        };
        o.tags.push(KeyStringValuePair { key: key.to_string(), value: v.clone() });
    }
    // The caller's reference is the entry span's only (as Envoy 1.40 sends it).
    if let Some(c) = p.segment.parent.as_ref().filter(|_| !p.exit) {
        o.refs.push(SegmentReference {
            ref_type: proto::REF_TYPE_CROSS_PROCESS,
            trace_id: c.trace_id.clone(),
            parent_trace_segment_id: c.segment_id.clone(),
            parent_span_id: c.span_id,
            parent_service: c.service.clone(),
            parent_service_instance: c.instance.clone(),
            parent_endpoint: c.endpoint.clone(),
            network_address_used_at_peer: c.target.clone(),
        });
    }
    o
}

/// Segments as `collect`'s client stream: one gRPC message each.
struct Segments {
    token: Option<HeaderValue>,
}

impl Encode for Segments {
    fn encode(&self, spans: &[Finished]) -> Encoded {
        let mut body = BytesMut::new();
        for object in spans.iter().filter_map(|f| f.span.ext.as_ref().and_then(|e| e.get::<SegmentObject>())) {
            let message = object.encode_to_vec();
            body.put_u8(0);
            body.put_u32(message.len() as u32);
            body.put_slice(&message);
        }
        Encoded {
            path: proto::COLLECT_PATH.to_string(),
            content_type: "application/grpc",
            body: body.freeze(),
            grpc: true,
            headers: self.token.iter().map(|t| (AUTHENTICATION.clone(), t.clone())).collect(),
        }
    }

    fn accepted(&self, status: u16, grpc_status: Option<&str>) -> bool {
        status == 200 && grpc_status == Some("0")
    }
}
