//! The SkyWalking collector's service: `TraceSegmentReportService/collect`,
//! a client stream of `SegmentObject`s, written as tonic's generated code
//! would be (the messages are the proxy's own prost copies of SkyWalking's
//! protocol). Each segment is recorded as it arrives (Envoy keeps its
//! stream open), one `Recorded` per span:
//! `id` is `<segment>/<span>`, `parent_id` the parent span in this segment
//! or, for an entry span, the caller's span its reference names; `kind`
//! ENTRY or EXIT; `resource` the segment's instance and the span's peer,
//! layer, component, error and references.

use super::trace_collector::{Recorded, Shared};
use legate_proxy::trace::skywalking::proto::{Commands, SegmentObject, SpanObject, COLLECT_PATH};
use std::collections::BTreeMap;
use std::convert::Infallible;
use tonic::codegen::{http, BoxFuture, Service as TowerService};

#[derive(Clone)]
pub struct Service(pub Shared);

impl tonic::server::NamedService for Service {
    const NAME: &'static str = "skywalking.v3.TraceSegmentReportService";
}

impl TowerService<http::Request<tonic::body::Body>> for Service {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            if req.uri().path() != COLLECT_PATH {
                return Ok(tonic::Status::unimplemented(req.uri().path().to_string()).into_http());
            }
            let token = req.headers().get("authentication").and_then(|v| v.to_str().ok()).map(str::to_owned);
            if let Some(t) = token {
                shared.lock().unwrap_or_else(|e| e.into_inner()).tokens.push(t);
            }
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<Commands, SegmentObject>::default());
            Ok(grpc.client_streaming(Collect(shared), req).await)
        })
    }
}

struct Collect(Shared);

impl tonic::server::ClientStreamingService<SegmentObject> for Collect {
    type Response = Commands;
    type Future = BoxFuture<tonic::Response<Commands>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<SegmentObject>>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            let mut stream = request.into_inner();
            while let Some(segment) = stream.message().await? {
                let mut got = shared.lock().unwrap_or_else(|e| e.into_inner());
                got.requests.push((COLLECT_PATH.to_string(), "application/grpc".into()));
                got.spans.extend(segment.spans.iter().map(|s| recorded(&segment, s)));
            }
            Ok(tonic::Response::new(Commands::default()))
        })
    }
}

fn recorded(segment: &SegmentObject, s: &SpanObject) -> Recorded {
    let mut resource = BTreeMap::new();
    resource.insert("instance".to_string(), segment.service_instance.clone());
    resource.insert("peer".to_string(), s.peer.clone());
    resource.insert("layer".to_string(), s.span_layer.to_string());
    resource.insert("component".to_string(), s.component_id.to_string());
    resource.insert("is_error".to_string(), s.is_error.to_string());
    resource.insert("skip_analysis".to_string(), s.skip_analysis.to_string());
    resource.insert("parent_span_id".to_string(), s.parent_span_id.to_string());
    for (i, r) in s.refs.iter().enumerate() {
        let text = format!(
            "type={} trace={} span={} service={} instance={} endpoint={} peer={}",
            r.ref_type,
            r.trace_id,
            r.parent_span_id,
            r.parent_service,
            r.parent_service_instance,
            r.parent_endpoint,
            r.network_address_used_at_peer
        );
        resource.insert(format!("ref{i}"), text);
    }
    let parent_id = if s.parent_span_id >= 0 {
        Some(format!("{}/{}", segment.trace_segment_id, s.parent_span_id))
    } else {
        s.refs.first().map(|r| format!("{}/{}", r.parent_trace_segment_id, r.parent_span_id))
    };
    Recorded {
        service: segment.service.clone(),
        trace_id: segment.trace_id.clone(),
        id: format!("{}/{}", segment.trace_segment_id, s.span_id),
        parent_id,
        name: s.operation_name.clone(),
        kind: if s.span_type == 0 { "ENTRY".into() } else { "EXIT".into() },
        tags: s.tags.iter().map(|t| (t.key.clone(), t.value.clone())).collect(),
        shared: false,
        annotations: Vec::new(),
        start_us: s.start_time.max(0) as u64 * 1000,
        duration_us: (s.end_time - s.start_time).max(0) as u64 * 1000,
        resource,
    }
}
