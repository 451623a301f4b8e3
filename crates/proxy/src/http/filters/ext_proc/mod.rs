//! `envoy.filters.http.ext_proc`: an external processor sees each request
//! and response over a bidirectional gRPC stream
//! (`envoy.service.ext_proc.v3.ExternalProcessor/Process`), one stream per
//! request, and may change their headers and bodies or answer in their
//! place. What is sent follows `processing_mode` (headers SEND or SKIP,
//! bodies NONE or BUFFERED, trailers SKIP), per route `ExtProcPerRoute`
//! (`disabled`, `overrides.processing_mode`) and, with
//! `allow_mode_override`, the processor's `mode_override`. `metadata_options`
//! send namespaces of the stream's dynamic metadata to the processor and
//! let its answers write others.
//!
//! `stream`: the gRPC call over the cluster's HTTP/2 pool; `session`: one
//! request's exchange (timeouts, failures, spurious answers, as Envoy
//! counts them); `mutation`: header and body mutations under Envoy's
//! default rules; `config`: compiling the filter and its per-route config.
//!
//! Stats as Envoy names them: `http.<hcm>.ext_proc.[<stat_prefix>.]streams_started`,
//! `stream_msgs_sent`, `stream_msgs_received`, `spurious_msgs_received`,
//! `streams_closed`, `streams_failed`, `failure_mode_allowed`,
//! `message_timeouts`, `immediate_responses_sent`, `server_half_closed`, ...

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

/// The processing mode in force for a request: which headers are sent,
/// which bodies are sent whole (BUFFERED), and whether the request body
/// goes chunk by chunk (STREAMED).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Mode {
    request_headers: bool,
    response_headers: bool,
    request_body: bool,
    response_body: bool,
    request_streamed: bool,
}

impl Mode {
    /// Nothing sent (a route that disables the filter).
    const OFF: Mode = Mode {
        request_headers: false,
        response_headers: false,
        request_body: false,
        response_body: false,
        request_streamed: false,
    };

    /// A configured or overriding `ProcessingMode`. Headers DEFAULT is SEND.
    /// A request body STREAMED goes chunk by chunk; any other body mode but
    /// NONE is taken as BUFFERED: the config refuses the others, and a
    /// processor's `mode_override` asking for one gets the whole body in one
    /// message (trailers are never sent).
    fn from_pb(m: &ProcessingMode) -> Mode {
        let send = |v: i32| v != processing_mode::HeaderSendMode::Skip as i32;
        let body = |v: i32| v != processing_mode::BodySendMode::None as i32;
        let streamed = m.request_body_mode == processing_mode::BodySendMode::Streamed as i32;
        Mode {
            request_headers: send(m.request_header_mode),
            response_headers: send(m.response_header_mode),
            request_body: body(m.request_body_mode) && !streamed,
            response_body: body(m.response_body_mode),
            request_streamed: streamed,
        }
    }

    /// Envoy's `shouldRemoveContentLength`: a body the processor may change
    /// after the headers went on keeps no length.
    fn drops_length(&self, phase: Phase) -> bool {
        match phase {
            Phase::RequestHeaders | Phase::RequestBody => {
                self.request_streamed || (self.request_body && !self.request_headers)
            }
            Phase::ResponseHeaders | Phase::ResponseBody => self.response_body && !self.response_headers,
        }
    }

    fn set_body(&mut self, phase: Phase, on: bool) {
        match phase {
            Phase::RequestHeaders | Phase::RequestBody => {
                self.request_body = on;
                self.request_streamed &= on;
            }
            Phase::ResponseHeaders | Phase::ResponseBody => self.response_body = on,
        }
    }

    /// What the first message of a stream tells the processor of the mode.
    fn protocol_config(&self) -> legate_api::pb::envoy::service::ext_proc::v3::ProtocolConfiguration {
        let mode = |on: bool| {
            if on {
                processing_mode::BodySendMode::Buffered as i32
            } else {
                processing_mode::BodySendMode::None as i32
            }
        };
        let request_body_mode = if self.request_streamed {
            processing_mode::BodySendMode::Streamed as i32
        } else {
            mode(self.request_body)
        };
        legate_api::pb::envoy::service::ext_proc::v3::ProtocolConfiguration {
            request_body_mode,
            response_body_mode: mode(self.response_body),
            send_body_without_waiting_for_header_response: false,
        }
    }

    /// Anything is sent on the response.
    fn on_response(&self) -> bool {
        self.response_headers || self.response_body
    }
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
                request_body: false,
                response_body: false,
                request_streamed: false
            }
        );
        let skip = ProcessingMode {
            request_header_mode: processing_mode::HeaderSendMode::Skip as i32,
            response_body_mode: processing_mode::BodySendMode::Buffered as i32,
            ..Default::default()
        };
        let m = Mode::from_pb(&skip);
        assert!(!m.request_headers && m.response_headers && !m.request_body && m.response_body);
        assert!(!Mode::OFF.on_response());
    }
}
