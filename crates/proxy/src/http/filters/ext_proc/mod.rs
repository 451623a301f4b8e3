//! `envoy.filters.http.ext_proc`: an external processor sees each request
//! and response over a bidirectional gRPC stream
//! (`envoy.service.ext_proc.v3.ExternalProcessor/Process`), one stream per
//! request, and may change their headers and bodies or answer in their
//! place. What is sent follows `processing_mode` (headers SEND or SKIP,
//! bodies NONE, BUFFERED, STREAMED or BUFFERED_PARTIAL, trailers SEND or
//! SKIP), per route `ExtProcPerRoute` (`disabled`,
//! `overrides.processing_mode`) and, with `allow_mode_override`, the
//! processor's `mode_override` (one of `allowed_override_modes` when they
//! are given). `metadata_options`
//! send namespaces of the stream's dynamic metadata to the processor and
//! let its answers write others.
//!
//! `stream`: the gRPC call over the cluster's HTTP/2 pool; `session`: one
//! request's exchange (timeouts, failures, spurious answers, as Envoy
//! counts them); `mutation`: header and body mutations under Envoy's
//! default rules; `config`: compiling the filter and its per-route config;
//! `bodies`: a body by its mode once its headers went through; `streamed`:
//! chunks and trailers through the processor as they arrive.
//!
//! Stats as Envoy names them: `http.<hcm>.ext_proc.[<stat_prefix>.]streams_started`,
//! `stream_msgs_sent`, `stream_msgs_received`, `spurious_msgs_received`,
//! `streams_closed`, `streams_failed`, `failure_mode_allowed`,
//! `message_timeouts`, `immediate_responses_sent`, `server_half_closed`, ...

mod bodies;
mod config;
mod filter;
mod mutation;
mod session;
mod stream;
mod streamed;

use crate::stats::Counter;
use crate::upstream::cluster::ClusterMap;
use arc_swap::ArcSwap;
use legate_api::pb::envoy::extensions::filters::http::ext_proc::v3::{processing_mode, ProcessingMode};
use session::Phase;
use std::sync::Arc;
use std::time::Duration;

pub use config::REGISTRATION;

/// The filter's stats (Envoy's `ALL_EXT_PROC_FILTER_STATS`).
pub(super) struct Stats {
    streams_started: Arc<Counter>,
    stream_msgs_sent: Arc<Counter>,
    stream_msgs_received: Arc<Counter>,
    spurious_msgs_received: Arc<Counter>,
    streams_closed: Arc<Counter>,
    streams_failed: Arc<Counter>,
    failure_mode_allowed: Arc<Counter>,
    message_timeouts: Arc<Counter>,
    rejected_header_mutations: Arc<Counter>,
    override_message_timeout_ignored: Arc<Counter>,
    immediate_responses_sent: Arc<Counter>,
    server_half_closed: Arc<Counter>,
    clear_route_cache_ignored: Arc<Counter>,
    clear_route_cache_disabled: Arc<Counter>,
}

/// What an answer to the request's messages does to the route found.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum RouteCache {
    /// Found again when the answer changes headers and asks to.
    Default,
    /// Found again whenever the answer changes headers.
    Clear,
    /// Never found again.
    Retain,
}

/// What every request's session reads of the config.
pub(super) struct Shared {
    clusters: Arc<ArcSwap<ClusterMap>>,
    /// `grpc_service.envoy_grpc.cluster_name`.
    cluster: String,
    message_timeout: Duration,
    failure_mode_allow: bool,
    allow_mode_override: bool,
    /// `allowed_override_modes` (empty: any).
    allowed_overrides: Vec<ProcessingMode>,
    /// The filter's `processing_mode`, which an override's DEFAULT header
    /// and trailer modes keep.
    configured: ProcessingMode,
    disable_immediate_response: bool,
    /// `status_on_error` (500).
    status_on_error: u16,
    /// `route_cache_action` (`disable_clear_route_cache` is RETAIN).
    route_cache: RouteCache,
    /// `forward_rules`: the headers the processor is sent.
    forward: Forward,
    /// `mutation_rules`.
    rules: mutation::Rules,
    /// `metadata_options`.
    namespaces: Arc<Namespaces>,
    stats: Arc<Stats>,
}

/// `metadata_options`: the dynamic metadata namespaces sent to the
/// processor in each message's `metadata_context`, and those an answer's
/// `dynamic_metadata` may write.
#[derive(Clone, Default, Debug, PartialEq)]
pub(super) struct Namespaces {
    /// `forwarding_namespaces.untyped`.
    forward: Vec<String>,
    /// `forwarding_namespaces.typed`: the stream's typed dynamic metadata,
    /// which no filter of Legate's writes, so none is ever sent.
    forward_typed: Vec<String>,
    /// `receiving_namespaces.untyped` (Envoy 1.40 writes no typed ones).
    receive: Vec<String>,
}

impl Namespaces {
    /// Nothing is read from or written to the stream's metadata.
    fn is_empty(&self) -> bool {
        self.forward.is_empty() && self.receive.is_empty()
    }
}

/// `forward_rules`: a header goes to the processor unless a disallowed
/// pattern matches it, and when allowed patterns are given, only if one
/// matches it (Envoy's `headerCanBeForwarded`).
#[derive(Default)]
pub(super) struct Forward {
    allowed: Vec<crate::common::matcher::StringMatch>,
    disallowed: Vec<crate::common::matcher::StringMatch>,
}

impl Forward {
    fn sends(&self, name: &str) -> bool {
        !self.disallowed.iter().any(|m| m.matches(name))
            && (self.allowed.is_empty() || self.allowed.iter().any(|m| m.matches(name)))
    }
}

/// How a body goes to the processor (Envoy's `BodySendMode`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Body {
    /// Not sent.
    None,
    /// Whole, in one message.
    Buffered,
    /// Chunk by chunk as it arrives, each chunk answered in order.
    Streamed,
    /// Held up to the buffer limit, then what is held in one message, the
    /// rest unprocessed (BUFFERED_PARTIAL).
    Partial,
}

impl Body {
    /// A configured or overriding body mode. FULL_DUPLEX_STREAMED and GRPC,
    /// which the config refuses, reach here only from a processor's
    /// `mode_override`: they are taken as BUFFERED.
    fn from_pb(v: i32) -> Body {
        use processing_mode::BodySendMode as B;
        match B::try_from(v) {
            Ok(B::None) => Body::None,
            Ok(B::Streamed) => Body::Streamed,
            Ok(B::BufferedPartial) => Body::Partial,
            _ => Body::Buffered,
        }
    }

    fn to_pb(self) -> i32 {
        use processing_mode::BodySendMode as B;
        (match self {
            Body::None => B::None,
            Body::Buffered => B::Buffered,
            Body::Streamed => B::Streamed,
            Body::Partial => B::BufferedPartial,
        }) as i32
    }
}

/// The processing mode in force for a request: which headers are sent,
/// how each body goes, whether trailers are sent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Mode {
    request_headers: bool,
    response_headers: bool,
    request_body: Body,
    response_body: Body,
    request_trailers: bool,
    response_trailers: bool,
}

/// One direction's part of the mode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Side {
    pub headers: bool,
    pub body: Body,
    pub trailers: bool,
}

impl Mode {
    /// Nothing sent (a route that disables the filter).
    const OFF: Mode = Mode {
        request_headers: false,
        response_headers: false,
        request_body: Body::None,
        response_body: Body::None,
        request_trailers: false,
        response_trailers: false,
    };

    /// A configured or overriding `ProcessingMode`. Headers DEFAULT is
    /// SEND, trailers DEFAULT is SKIP.
    fn from_pb(m: &ProcessingMode) -> Mode {
        let send = |v: i32| v != processing_mode::HeaderSendMode::Skip as i32;
        let trailers = |v: i32| v == processing_mode::HeaderSendMode::Send as i32;
        Mode {
            request_headers: send(m.request_header_mode),
            response_headers: send(m.response_header_mode),
            request_body: Body::from_pb(m.request_body_mode),
            response_body: Body::from_pb(m.response_body_mode),
            request_trailers: trailers(m.request_trailer_mode),
            response_trailers: trailers(m.response_trailer_mode),
        }
    }

    /// The request's or the response's part.
    pub(super) fn side(&self, response: bool) -> Side {
        if response {
            Side { headers: self.response_headers, body: self.response_body, trailers: self.response_trailers }
        } else {
            Side { headers: self.request_headers, body: self.request_body, trailers: self.request_trailers }
        }
    }

    /// Envoy's `shouldRemoveContentLength`: a body the processor may change
    /// after the headers went on keeps no length.
    fn drops_length(&self, phase: Phase) -> bool {
        let s = self.side(phase.response());
        matches!(s.body, Body::Streamed | Body::Partial) || (s.body == Body::Buffered && !s.headers)
    }

    /// After a `CONTINUE_AND_REPLACE`: no more body or trailers go.
    fn stop_body(&mut self, phase: Phase) {
        if phase.response() {
            self.response_body = Body::None;
            self.response_trailers = false;
        } else {
            self.request_body = Body::None;
            self.request_trailers = false;
        }
    }

    /// What the first message of a stream tells the processor of the mode.
    fn protocol_config(&self) -> legate_api::pb::envoy::service::ext_proc::v3::ProtocolConfiguration {
        legate_api::pb::envoy::service::ext_proc::v3::ProtocolConfiguration {
            request_body_mode: self.request_body.to_pb(),
            response_body_mode: self.response_body.to_pb(),
            send_body_without_waiting_for_header_response: false,
        }
    }

    /// Anything is sent on the request.
    fn on_request(&self) -> bool {
        self.request_headers || self.request_body != Body::None || self.request_trailers
    }

    /// Anything is sent on the response.
    fn on_response(&self) -> bool {
        self.response_headers || self.response_body != Body::None || self.response_trailers
    }
}

/// A processor's `mode_override` as Envoy takes it: its DEFAULT header and
/// trailer modes leave the filter's configured ones, its body modes are
/// always its own (Envoy's `effectiveModeOverride`).
fn effective_override(asked: &ProcessingMode, configured: &ProcessingMode) -> ProcessingMode {
    let pick = |asked: i32, configured: i32| if asked == 0 { configured } else { asked };
    ProcessingMode {
        request_header_mode: pick(asked.request_header_mode, configured.request_header_mode),
        response_header_mode: pick(asked.response_header_mode, configured.response_header_mode),
        request_trailer_mode: pick(asked.request_trailer_mode, configured.request_trailer_mode),
        response_trailer_mode: pick(asked.response_trailer_mode, configured.response_trailer_mode),
        request_body_mode: asked.request_body_mode,
        response_body_mode: asked.response_body_mode,
    }
}

/// `allowed_override_modes`: a processor's (effective) `mode_override` is
/// taken only when it equals one of them, `request_header_mode` aside
/// (Envoy compares the other five fields).
fn override_allowed(allowed: &[ProcessingMode], m: &ProcessingMode) -> bool {
    let key = |m: &ProcessingMode| {
        [
            m.request_body_mode,
            m.request_trailer_mode,
            m.response_header_mode,
            m.response_body_mode,
            m.response_trailer_mode,
        ]
    };
    allowed.is_empty() || allowed.iter().any(|a| key(a) == key(m))
}

/// `ExtProcPerRoute`, compiled.
pub(super) struct PerRoute {
    disabled: bool,
    /// `overrides.processing_mode`.
    mode: Option<Mode>,
    /// `overrides.metadata_options.forwarding_namespaces` (untyped, typed).
    forward: Option<(Vec<String>, Vec<String>)>,
    /// `overrides.metadata_options.receiving_namespaces.untyped`.
    receive: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_default_to_headers_only() {
        let m = Mode::from_pb(&ProcessingMode::default());
        assert_eq!(
            m,
            Mode {
                request_headers: true,
                response_headers: true,
                request_body: Body::None,
                response_body: Body::None,
                request_trailers: false,
                response_trailers: false,
            }
        );
        let skip = ProcessingMode {
            request_header_mode: processing_mode::HeaderSendMode::Skip as i32,
            response_body_mode: processing_mode::BodySendMode::BufferedPartial as i32,
            response_trailer_mode: processing_mode::HeaderSendMode::Send as i32,
            ..Default::default()
        };
        let m = Mode::from_pb(&skip);
        assert!(!m.request_headers && m.response_headers && m.request_body == Body::None);
        assert!(m.response_body == Body::Partial && m.response_trailers && !m.request_trailers);
        assert!(m.drops_length(Phase::ResponseBody) && !m.drops_length(Phase::RequestHeaders));
        assert!(!Mode::OFF.on_response() && !Mode::OFF.on_request());
    }

    #[test]
    fn overrides_are_matched_without_the_request_header_mode() {
        let buffered =
            ProcessingMode { request_body_mode: processing_mode::BodySendMode::Buffered as i32, ..Default::default() };
        let asked = ProcessingMode { request_header_mode: processing_mode::HeaderSendMode::Skip as i32, ..buffered };
        assert!(override_allowed(&[], &asked));
        assert!(override_allowed(&[buffered], &asked));
        let streamed = ProcessingMode { request_body_mode: processing_mode::BodySendMode::Streamed as i32, ..buffered };
        assert!(!override_allowed(&[buffered], &streamed));
        let configured = ProcessingMode {
            request_trailer_mode: processing_mode::HeaderSendMode::Send as i32,
            response_body_mode: processing_mode::BodySendMode::Streamed as i32,
            ..Default::default()
        };
        let e = effective_override(&streamed, &configured);
        assert_eq!(e.request_trailer_mode, processing_mode::HeaderSendMode::Send as i32);
        assert_eq!(e.response_body_mode, processing_mode::BodySendMode::None as i32);
    }
}
