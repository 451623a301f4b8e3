//! The connection manager's part of tracing (Envoy's
//! `ActiveStream::traceRequest` and its span's end): the sampling decision
//! once the route is known, the span with the request's tags, the route's
//! decorator, the context written into the upstream request, and at the
//! stream's end the response's tags and the span reported.

use super::stream::Stream;
use super::stream_trace::StreamTrace;
use super::{Found, Hcm};
use crate::trace::{tags, Operation, Span, Upstream};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use std::time::SystemTime;

static X_ENVOY_DECORATOR_OPERATION: HeaderName = HeaderName::from_static("x-envoy-decorator-operation");
static X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER: HeaderName = HeaderName::from_static("x-envoy-downstream-service-cluster");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

impl Hcm {
    /// Envoy's `traceRequest`, once the request's headers are the
    /// connection manager's and its route is found.
    pub(super) fn start_trace(&self, stream: &mut Stream, h: &mut HeaderMap, found: Found<'_>) {
        let Some(t) = &self.tracing else { return };
        let reason = t.decide(h);
        let op = Operation {
            egress: t.egress,
            host: &stream.authority,
            path: &stream.path,
            spawn_upstream_span: t.spawn_upstream_span,
        };
        let mut span = t.driver.start(h, &op, reason.traced(), stream.start_time);
        let mut decorated = None;
        if let Some(d) = found.and_then(|(_, r)| r.decorator.as_ref()) {
            if let Some(s) = span.as_mut() {
                t.driver.rename(s, &d.operation);
            }
            if d.propagate {
                decorated = Some(d.operation.clone());
            }
        }
        if t.egress {
            // The decorator's name goes to the service upstream, for its server span.
            if let Some(v) = decorated.as_deref().and_then(|d| HeaderValue::from_str(d).ok()) {
                h.insert(X_ENVOY_DECORATOR_OPERATION.clone(), v);
            }
        } else if let Some(v) = h.remove(&X_ENVOY_DECORATOR_OPERATION) {
            // An ingress request may name its own operation.
            if let (Some(s), Ok(name)) = (span.as_mut(), v.to_str()) {
                if !name.is_empty() {
                    t.driver.rename(s, name);
                    decorated = None;
                }
            }
        }
        if let Some(s) = span.as_mut() {
            self.request_tags(s, stream, h);
            let up = Upstream { address: None, authority: &stream.authority, path: &stream.path };
            t.driver.inject(s, h, &up);
        }
        let custom = t.custom_tags.iter().filter_map(|c| c.value(h).map(|v| (c.tag.clone(), v.to_string()))).collect();
        stream.trace = Some(Box::new(StreamTrace { span, upstream: None, decorated, custom }));
    }

    /// What Envoy tags a span with from the request.
    fn request_tags(&self, s: &mut Span, stream: &Stream, h: &HeaderMap) {
        let Some(t) = &self.tracing else { return };
        let header = |name: &HeaderName| h.get(name).and_then(|v| v.to_str().ok());
        s.set_tag(tags::NODE_ID, t.node_id.as_str());
        s.set_tag(tags::ZONE, t.zone.as_str());
        if let Some(id) = header(&crate::trace::X_REQUEST_ID) {
            s.set_tag(tags::GUID_X_REQUEST_ID, id);
        }
        let path = stream.path.get(..t.max_path_tag_length.min(stream.path.len())).unwrap_or(&stream.path);
        let scheme = header(&X_FORWARDED_PROTO).unwrap_or("");
        s.set_tag(tags::HTTP_URL, format!("{scheme}://{}{path}", stream.authority));
        s.set_tag(tags::HTTP_METHOD, stream.method.as_str());
        s.set_tag(tags::DOWNSTREAM_CLUSTER, header(&X_ENVOY_DOWNSTREAM_SERVICE_CLUSTER).unwrap_or("-"));
        s.set_tag(tags::USER_AGENT, header(&http::header::USER_AGENT).unwrap_or("-"));
        s.set_tag(tags::HTTP_PROTOCOL, stream.protocol);
        s.set_tag(tags::PEER_ADDRESS, stream.conn.remote.ip().to_string());
        if let Some(id) = header(&crate::trace::X_CLIENT_TRACE_ID) {
            s.set_tag(tags::GUID_X_CLIENT_TRACE_ID, id);
        }
    }

    /// The router's span for the upstream request to `cluster`, when the
    /// connection manager spawns one: its context replaces the stream's in
    /// the upstream request (`up`: the host picked, the path sent).
    pub(in crate::http) fn start_upstream_span(
        &self,
        stream: &mut Stream,
        h: &mut HeaderMap,
        cluster: &str,
        up: &Upstream<'_>,
    ) {
        let (Some(t), Some(st)) = (&self.tracing, stream.trace.as_mut()) else { return };
        if !t.child_spans {
            return;
        }
        let Some(parent) = &st.span else { return };
        let mut child = t.driver.child(parent, format!("router {cluster} egress"), SystemTime::now());
        t.driver.inject(&mut child, h, up);
        st.upstream = Some(child);
    }

    /// The response on its way downstream: an ingress response names the
    /// decorator's operation; an egress response may rename the span.
    pub(super) fn trace_response(&self, stream: &mut Stream, resp: &mut HeaderMap) {
        let (Some(t), Some(st)) = (&self.tracing, stream.trace.as_mut()) else { return };
        if !t.egress {
            if let Some(v) = st.decorated.as_deref().and_then(|d| HeaderValue::from_str(d).ok()) {
                resp.insert(X_ENVOY_DECORATOR_OPERATION.clone(), v);
            }
        } else if let Some(v) = resp.remove(&X_ENVOY_DECORATOR_OPERATION) {
            if let (Some(s), Ok(name)) = (st.span.as_mut(), v.to_str()) {
                if !name.is_empty() {
                    t.driver.rename(s, name);
                }
            }
        }
    }
}

impl Stream {
    /// The upstream span's own tags: the upstream's protocol and address,
    /// and, when no response came, status 0 and why (Envoy's reset reason).
    fn upstream_tags(&self, up: &mut Span, flags: &str) {
        let reason = match flags {
            "UF" => Some("remote connection failure"),
            "UO" => Some("overflow"),
            "UC" => Some("connection termination"),
            "UR" => Some("remote reset"),
            _ => None,
        };
        let http2 = self.cluster.as_ref().is_some_and(|c| c.http2);
        match reason {
            Some(r) => {
                up.set_tag(tags::HTTP_PROTOCOL, "-");
                up.set_tag(tags::HTTP_STATUS_CODE, "0");
                up.set_tag(tags::ERROR_REASON, r);
            }
            None => up.set_tag(tags::HTTP_PROTOCOL, if http2 { "HTTP/2" } else { "HTTP/1.1" }),
        }
        if let Some((_, host, _)) = &self.upstream {
            up.set_tag(tags::UPSTREAM_ADDRESS, host.address_string());
            up.set_tag(tags::PEER_ADDRESS, host.address_string());
        }
    }

    /// The stream has ended: its spans get the response's tags and go to
    /// the tracer.
    pub(super) fn finish_trace(&mut self, bytes_received: u64, bytes_sent: u64, complete: bool) {
        let Some(st) = self.trace.take() else { return };
        let StreamTrace { span, upstream, custom, .. } = *st;
        let Some(t) = &self.hcm.tracing else { return };
        let end = SystemTime::now();
        let flags = if !complete && self.flags.is_empty() { "DC" } else { self.flags };
        let failed = self.status == 0 || self.status >= 500 || !flags.is_empty();
        let cluster = self.cluster.as_ref().map(|c| c.name.as_str());
        let common = |s: &mut Span| {
            s.set_tag(tags::COMPONENT, tags::PROXY);
            s.set_tag(tags::HTTP_STATUS_CODE, self.status.to_string());
            s.set_tag(tags::RESPONSE_FLAGS, if flags.is_empty() { "-" } else { flags });
            if let Some(c) = cluster {
                s.set_tag(tags::UPSTREAM_CLUSTER, c);
                s.set_tag(tags::UPSTREAM_CLUSTER_NAME, c);
            }
            if failed {
                s.set_tag(tags::ERROR, tags::TRUE);
            }
            for (k, v) in &custom {
                s.set_tag(k, v.as_str());
            }
        };
        if let Some(mut up) = upstream {
            common(&mut up);
            self.upstream_tags(&mut up, flags);
            t.driver.finish(up, end);
        }
        if let Some(mut s) = span {
            common(&mut s);
            s.set_tag(tags::REQUEST_SIZE, bytes_received.to_string());
            s.set_tag(tags::RESPONSE_SIZE, bytes_sent.to_string());
            t.driver.finish(s, end);
        }
    }
}
