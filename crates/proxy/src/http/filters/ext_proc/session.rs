//! One HTTP request's exchange with the processor (Envoy's `Filter` and
//! its two `ProcessorState`s): the stream, opened on the first message;
//! the processing mode in force; each message sent and its answer awaited
//! within `message_timeout`; what a failure, a timeout, a close by the
//! processor or an out-of-order answer does, counted as Envoy counts it.

use super::mutation::{self, HeaderList, How};
use super::stream::{Event, Stream, OK};
use super::{Mode, Namespaces, RouteCache, Shared};
use crate::common::metadata::{self, Map};
use bytes::Bytes;
use legate_api::pb::envoy::service::ext_proc::v3::processing_response::Response;
use legate_api::pb::envoy::service::ext_proc::v3::{
    common_response::ResponseStatus, CommonResponse, ImmediateResponse, ProcessingRequest, ProcessingResponse,
};
use std::sync::{Arc, Mutex};

/// Which message an answer is awaited for.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Phase {
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
    RequestTrailers,
    ResponseTrailers,
}

impl Phase {
    fn headers(self) -> bool {
        matches!(self, Phase::RequestHeaders | Phase::ResponseHeaders)
    }

    /// A message of the response.
    pub(super) fn response(self) -> bool {
        matches!(self, Phase::ResponseHeaders | Phase::ResponseBody | Phase::ResponseTrailers)
    }
}

/// What the request or response does after an answer.
pub(super) enum Outcome {
    /// On, with whatever the answer changed.
    Continue,
    /// Answered locally: status, headers, body, and the gRPC status for a
    /// gRPC request.
    Immediate { status: u16, headers: HeaderList, body: Bytes, grpc_status: Option<u32> },
}

/// The message a stage sends and what its answer may change.
pub(super) struct Stage<'a> {
    pub phase: Phase,
    /// The headers (the trailers in a trailers phase).
    pub headers: &'a mut HeaderList,
    /// The body read whole (body phases), or none.
    pub body: &'a mut Option<Bytes>,
    /// The headers message says the message has no body.
    pub end_of_stream: bool,
}

/// The exchange of one HTTP request.
pub(super) struct Session {
    shared: Arc<Shared>,
    stream: Option<Stream>,
    pub mode: Mode,
    /// Nothing more goes to the processor (Envoy's `processing_complete_`).
    pub complete: bool,
    /// An answer asked for the route to be found again.
    pub clear_route_cache: bool,
    /// `metadata_options` in force for the request.
    namespaces: Arc<Namespaces>,
    /// The stream's dynamic metadata, when namespaces are read or written.
    dynamic: Option<Arc<Mutex<Map>>>,
    /// The most of a body BUFFERED or BUFFERED_PARTIAL holds (the
    /// listener's buffer limit).
    pub buffer_limit: u64,
}

impl Drop for Session {
    /// The request ended with the stream still open: it is closed
    /// (Envoy's `onDestroy`).
    fn drop(&mut self) {
        self.close();
    }
}

impl Session {
    pub(super) fn new(shared: Arc<Shared>, mode: Mode) -> Self {
        let namespaces = shared.namespaces.clone();
        Self {
            shared,
            stream: None,
            mode,
            complete: false,
            clear_route_cache: false,
            namespaces,
            dynamic: None,
            buffer_limit: crate::body::RESEND_BUFFER_LIMIT,
        }
    }

    /// The request's `metadata_options` (the route's, over the filter's),
    /// and its dynamic metadata when they read or write any.
    pub(super) fn with_metadata(mut self, namespaces: Arc<Namespaces>, dynamic: &metadata::Dynamic) -> Self {
        if !namespaces.is_empty() {
            self.dynamic = Some(dynamic.shared());
        }
        self.namespaces = namespaces;
        self
    }

    /// Envoy's `addDynamicMetadata`: the forwarded namespaces the stream's
    /// metadata holds (typed ones: Legate's filters write none).
    fn metadata_context(&self) -> legate_api::pb::envoy::config::core::v3::Metadata {
        let mut out = legate_api::pb::envoy::config::core::v3::Metadata::default();
        let Some(store) = &self.dynamic else { return out };
        let all = metadata::lock(store);
        for ns in &self.namespaces.forward {
            if let Some(serde_json::Value::Object(o)) = all.get(ns) {
                out.filter_metadata.insert(ns.clone(), metadata::json_struct(o));
            }
        }
        out
    }

    /// Envoy's `setDynamicMetadata`: an answer's `dynamic_metadata` in the
    /// receiving namespaces is merged into the stream's (a value that is not
    /// a struct as an empty one).
    fn receive_metadata(&self, answer: &ProcessingResponse) {
        let (Some(store), Some(dm)) = (&self.dynamic, &answer.dynamic_metadata) else { return };
        let mut all = metadata::lock(store);
        for (ns, v) in dm.fields.iter().filter(|(ns, _)| self.namespaces.receive.contains(ns)) {
            let fields = match &v.kind {
                Some(legate_api::pb::google::protobuf::value::Kind::StructValue(s)) => match metadata::struct_json(s) {
                    serde_json::Value::Object(o) => o,
                    _ => Map::new(),
                },
                _ => Map::new(),
            };
            metadata::merge_into(&mut all, ns, fields);
        }
    }

    /// Closes the stream from this side, counted when it was open.
    fn close(&mut self) {
        if self.stream.take().is_some() {
            self.shared.stats.streams_closed.inc();
        }
    }

    /// Processing stops for the rest of the request; the stream is closed.
    fn finish(&mut self) {
        self.complete = true;
        self.close();
    }

    /// Sends the stage's message and applies its answer.
    pub(super) async fn run(&mut self, stage: Stage<'_>) -> Outcome {
        if self.complete {
            return Outcome::Continue;
        }
        let mut msg = request(&stage, &self.shared.forward);
        msg.metadata_context = Some(self.metadata_context());
        if self.stream.is_none() {
            msg.protocol_config = Some(self.mode.protocol_config());
        }
        match self.exchange(&msg).await {
            Ok(answer) => self.apply(*answer, stage),
            Err(Some(status)) => self.error(status),
            Err(None) => Outcome::Continue,
        }
    }

    /// A local reply for a failure (`status_on_error`, 504 on a timeout).
    fn error(&mut self, status: u16) -> Outcome {
        self.shared.stats.immediate_responses_sent.inc();
        Outcome::Immediate { status, headers: Vec::new(), body: Bytes::new(), grpc_status: None }
    }

    /// Sends `msg` (opening the stream first if need be) and waits for the
    /// answer within `message_timeout`. A failure is `Err`: with the status
    /// to answer, or `None` when the request goes on (`failure_mode_allow`,
    /// or the processor closed the stream cleanly).
    async fn exchange(&mut self, msg: &ProcessingRequest) -> Result<Box<ProcessingResponse>, Option<u16>> {
        let shared = self.shared.clone();
        let st = &shared.stats;
        let stream = match &mut self.stream {
            Some(s) => s,
            None => {
                st.streams_started.inc();
                self.stream.insert(Stream::open(&shared.clusters, &shared.cluster))
            }
        };
        stream.send(msg);
        st.stream_msgs_sent.inc();
        let deadline = tokio::time::Instant::now() + shared.message_timeout;
        loop {
            let event = match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(e) => e,
                Err(_) => return Err(self.timed_out()),
            };
            match event {
                // A longer timeout is taken only up to `max_message_timeout`,
                // which Legate does not read: it is ignored, as Envoy
                // ignores one out of range.
                Event::Message(m) if m.override_message_timeout.is_some() => {
                    st.override_message_timeout_ignored.inc();
                }
                Event::Message(m) => return Ok(m),
                Event::Closed(status) => return Err(self.closed(status)),
            }
        }
    }

    /// No answer within `message_timeout` (Envoy's `onMessageTimeout`).
    fn timed_out(&mut self) -> Option<u16> {
        let st = &self.shared.stats;
        st.message_timeouts.inc();
        self.finish();
        if self.shared.failure_mode_allow {
            self.shared.stats.failure_mode_allowed.inc();
            return None;
        }
        Some(504)
    }

    /// The processor ended the stream (Envoy's `onGrpcClose`, `onGrpcError`).
    fn closed(&mut self, status: u32) -> Option<u16> {
        let st = &self.shared.stats;
        st.server_half_closed.inc();
        // The stream is over on both sides: closing it is not counted.
        self.stream = None;
        self.complete = true;
        if status == OK {
            st.streams_closed.inc();
            return None;
        }
        st.streams_failed.inc();
        if self.shared.failure_mode_allow {
            // Taken as a clean close, counted again as one.
            st.server_half_closed.inc();
            st.streams_closed.inc();
            st.failure_mode_allowed.inc();
            return None;
        }
        Some(self.shared.status_on_error)
    }

    /// Applies an answer to the stage it came for; an answer for another
    /// stage is spurious and ends processing.
    fn apply(&mut self, answer: ProcessingResponse, stage: Stage<'_>) -> Outcome {
        let st = self.shared.stats.clone();
        if self.shared.allow_mode_override && stage.phase.headers() {
            if let Some(m) = &answer.mode_override {
                let m = super::effective_override(m, &self.shared.configured);
                if super::override_allowed(&self.shared.allowed_overrides, &m) {
                    self.mode = Mode::from_pb(&m);
                }
            }
        }
        // Written before the answer is looked at, whatever it then does.
        match &answer.response {
            None => {}
            Some(Response::ImmediateResponse(_)) if self.shared.disable_immediate_response => {}
            Some(_) => self.receive_metadata(&answer),
        }
        let common = match (stage.phase, answer.response) {
            (Phase::RequestHeaders, Some(Response::RequestHeaders(h)))
            | (Phase::ResponseHeaders, Some(Response::ResponseHeaders(h))) => h.response.unwrap_or_default(),
            (Phase::RequestBody, Some(Response::RequestBody(b)))
            | (Phase::ResponseBody, Some(Response::ResponseBody(b))) => b.response.unwrap_or_default(),
            (Phase::RequestTrailers, Some(Response::RequestTrailers(t)))
            | (Phase::ResponseTrailers, Some(Response::ResponseTrailers(t))) => {
                st.stream_msgs_received.inc();
                return self.trailers(t.header_mutation.as_ref(), stage.headers);
            }
            (_, Some(Response::ImmediateResponse(i))) if !self.shared.disable_immediate_response => {
                st.stream_msgs_received.inc();
                self.finish();
                st.immediate_responses_sent.inc();
                return immediate(&i, &st.rejected_header_mutations);
            }
            // Out of order: Envoy 1.40 stops processing and answers as
            // on a failed stream.
            _ => {
                st.spurious_msgs_received.inc();
                self.finish();
                return self.error(self.shared.status_on_error);
            }
        };
        st.stream_msgs_received.inc();
        match self.common(&common, stage) {
            Ok(()) => Outcome::Continue,
            Err(_) => {
                self.finish();
                self.error(500)
            }
        }
    }

    /// A `CommonResponse`: header mutation, then (a body's answer, or one
    /// replacing the whole message) the body mutation.
    fn common(&mut self, c: &CommonResponse, stage: Stage<'_>) -> Result<(), &'static str> {
        let replacing = c.status == ResponseStatus::ContinueAndReplace as i32;
        let how =
            How { replacing, skip_content_length: self.mode.drops_length(stage.phase), rules: &self.shared.rules };
        if let Some(m) = &c.header_mutation {
            mutation::apply_headers(m, stage.headers, how, &self.shared.stats.rejected_header_mutations)?;
        }
        if matches!(stage.phase, Phase::RequestHeaders | Phase::RequestBody) {
            self.route_cache(c);
        }
        let Some(bm) = &c.body_mutation else { return Ok(()) };
        if stage.phase.headers() {
            if replacing {
                // The whole message replaced: the body too, and no body
                // goes to the processor after it.
                stage.headers.retain(|(k, _)| k != "content-length");
                *stage.body = mutation::apply_body(bm).or(Some(Bytes::new()));
                self.mode.stop_body(stage.phase);
            }
            return Ok(());
        }
        let new = mutation::apply_body(bm);
        if let Some(len) = content_length(stage.headers) {
            let mutated = match &bm.mutation {
                Some(legate_api::pb::envoy::service::ext_proc::v3::body_mutation::Mutation::Body(b)) => b.len(),
                _ => 0,
            };
            if len != mutated as u64 {
                return Err("mismatch between content length and the length of the mutated body");
            }
        }
        if let Some(b) = new {
            *stage.body = Some(b);
        }
        Ok(())
    }
}

impl Session {
    /// A trailers' answer: its header mutation on the trailers.
    fn trailers(
        &mut self,
        m: Option<&legate_api::pb::envoy::service::ext_proc::v3::HeaderMutation>,
        list: &mut HeaderList,
    ) -> Outcome {
        let Some(m) = m else { return Outcome::Continue };
        let how = How { rules: &self.shared.rules, ..How::default() };
        match mutation::apply_headers(m, list, how, &self.shared.stats.rejected_header_mutations) {
            Ok(()) => Outcome::Continue,
            Err(_) => {
                self.finish();
                self.error(500)
            }
        }
    }

    /// Envoy's `DecodingProcessorState::clearRouteCache`.
    fn route_cache(&mut self, c: &CommonResponse) {
        let st = &self.shared.stats;
        if c.header_mutation.is_none() {
            if c.clear_route_cache {
                st.clear_route_cache_ignored.inc();
            }
            return;
        }
        match self.shared.route_cache {
            RouteCache::Default => self.clear_route_cache |= c.clear_route_cache,
            RouteCache::Clear => self.clear_route_cache = true,
            RouteCache::Retain if c.clear_route_cache => st.clear_route_cache_disabled.inc(),
            RouteCache::Retain => {}
        }
    }
}

fn content_length(list: &HeaderList) -> Option<u64> {
    list.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse().ok())
}

/// An `ImmediateResponse` as the reply it makes: its status (200 when unset
/// or below 200), its headers by the permissive rules, its body.
fn immediate(i: &ImmediateResponse, rejected: &crate::stats::Counter) -> Outcome {
    let status = i.status.as_ref().map_or(200, |s| s.code);
    let status = if (200..1000).contains(&status) { status as u16 } else { 200 };
    let mut headers = HeaderList::new();
    if let Some(m) = &i.headers {
        let how = How { rules: &mutation::Rules::PERMISSIVE, ..How::default() };
        if mutation::apply_headers(m, &mut headers, how, rejected).is_err() {
            headers.clear();
        }
    }
    Outcome::Immediate {
        status,
        headers,
        body: Bytes::from(i.body.clone()),
        grpc_status: i.grpc_status.as_ref().map(|g| g.status),
    }
}

/// The `ProcessingRequest` of a stage.
fn request(stage: &Stage<'_>, forward: &super::Forward) -> ProcessingRequest {
    use legate_api::pb::envoy::service::ext_proc::v3::processing_request::Request;
    use legate_api::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, HttpTrailers};
    let headers = || HttpHeaders {
        headers: Some(mutation::to_proto(stage.headers, |k| forward.sends(k))),
        end_of_stream: stage.end_of_stream,
        ..Default::default()
    };
    let body = || HttpBody {
        body: stage.body.as_ref().map(|b| b.to_vec()).unwrap_or_default(),
        end_of_stream: stage.end_of_stream,
        ..Default::default()
    };
    let trailers = || HttpTrailers { trailers: Some(mutation::to_proto(stage.headers, |k| forward.sends(k))) };
    let request = match stage.phase {
        Phase::RequestTrailers => Request::RequestTrailers(trailers()),
        Phase::ResponseTrailers => Request::ResponseTrailers(trailers()),
        Phase::RequestHeaders => Request::RequestHeaders(headers()),
        Phase::ResponseHeaders => Request::ResponseHeaders(headers()),
        Phase::RequestBody => Request::RequestBody(body()),
        Phase::ResponseBody => Request::ResponseBody(body()),
    };
    ProcessingRequest { request: Some(request), ..Default::default() }
}
