//! The connection manager's request header limits, as Envoy's codecs apply
//! them: `max_request_headers_kb` (default 60 KiB of header names and
//! values), `common_http_protocol_options.max_headers_count` (default 100)
//! and `headers_with_underscores_action`.
//!
//! The count, and a bound on the head's bytes, are the HTTP server's own
//! parser limits (set once per chain, see `listener/network`); hyper answers
//! a head past them with 431, written in Envoy's form by `h1_errors`. What
//! the parser cannot tell exactly (Envoy counts names and values only, not
//! the request line or separators) is checked here, once per request, with
//! no allocation unless headers are dropped. Over HTTP/2 a request that
//! breaks a limit is not answered: its stream is reset, as Envoy's codec
//! resets it.

use crate::stats::{Counter, Store};
use http::request::Parts;
use http::{HeaderMap, Version};
use legate_api::pb::envoy::config::core::v3::http_protocol_options::HeadersWithUnderscoresAction as Action;
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use std::sync::Arc;

/// Envoy's default `max_request_headers_kb`.
const DEFAULT_KB: u32 = 60;
/// Envoy's default `max_headers_count`.
const DEFAULT_COUNT: u32 = 100;

/// The least header list the HTTP/2 codec decodes before refusing a
/// request itself: Envoy resets a stream with INTERNAL_ERROR whatever the
/// size of its header block (seen up to 18 MB), Legate up to this. The
/// codec keeps at most this much of one block at a time per connection, and
/// allows `this / 16 KiB` x 1.25 CONTINUATION frames before a GOAWAY.
const H2_DECODED_FLOOR: usize = 1024 * 1024;

/// Marks a response that is not to be sent: the HTTP/2 server resets the
/// request's stream instead, with this code.
#[derive(Debug, Clone, Copy)]
pub struct ResetStream(pub h2::Reason);

/// What a request's headers broke, if anything.
pub(in crate::http) enum Breach {
    /// Over `max_request_headers_kb`: 431.
    TooLarge,
    /// Over `max_headers_count`: 431 (the HTTP/1 parser's own), over
    /// HTTP/2 a reset counted as `http2.header_overflow`.
    TooMany,
    /// A name with an underscore under `REJECT_REQUEST`: 400.
    Underscore,
}

/// The codec counters Envoy keeps per protocol (`http1.*`, `http2.*`).
struct CodecStats {
    rejected_underscores: Arc<Counter>,
    dropped_underscores: Arc<Counter>,
}

impl CodecStats {
    fn new(store: &Store, codec: &str) -> Self {
        Self {
            rejected_underscores: store.counter(&format!("{codec}.requests_rejected_with_underscores_in_headers")),
            dropped_underscores: store.counter(&format!("{codec}.dropped_headers_with_underscores")),
        }
    }
}

pub(in crate::http) struct HeaderLimits {
    /// `max_request_headers_kb` in bytes of names and values.
    pub max_bytes: usize,
    /// `max_headers_count`.
    pub max_count: usize,
    action: Action,
    http1: CodecStats,
    http2: CodecStats,
    /// `http2.header_overflow`: requests over `max_headers_count` (the
    /// HTTP/1 parser refuses those itself).
    h2_header_overflow: Arc<Counter>,
    /// `http2.tx_reset`: streams reset for a breach.
    h2_tx_reset: Arc<Counter>,
}

impl HeaderLimits {
    pub(super) fn compile(c: &HttpConnectionManager, store: &Store) -> Self {
        let common = c.common_http_protocol_options.as_ref();
        // The PGV rules bound both (1..=8192 KiB, at least 1 header).
        let kb = c.max_request_headers_kb.map_or(DEFAULT_KB, |v| v.value);
        let count = common.and_then(|o| o.max_headers_count).map_or(DEFAULT_COUNT, |v| v.value);
        let action = common
            .map_or(Action::Allow, |o| Action::try_from(o.headers_with_underscores_action).unwrap_or(Action::Allow));
        Self {
            max_bytes: kb as usize * 1024,
            max_count: count as usize,
            action,
            http1: CodecStats::new(store, "http1"),
            http2: CodecStats::new(store, "http2"),
            h2_header_overflow: store.counter("http2.header_overflow"),
            h2_tx_reset: store.counter("http2.tx_reset"),
        }
    }

    /// The HTTP/1 parser's buffer: room for every head Envoy would accept
    /// (names and values up to the limit, and per header its separators,
    /// plus a request line), never under hyper's minimum.
    pub fn h1_buffer(&self) -> usize {
        (self.max_bytes + 4 * self.max_count + 64 * 1024).max(8192)
    }

    /// HTTP/2's `SETTINGS_MAX_HEADER_LIST_SIZE`: names and values plus the
    /// 32 bytes a header counts for there (RFC 9113), pseudo-headers too,
    /// and at least `H2_DECODED_FLOOR`. Far past the limit, so that the
    /// connection manager sees (and resets with INTERNAL_ERROR, as Envoy
    /// does) every request up to this size; the HTTP/2 codec would answer a
    /// larger one 431 and reset it with another code.
    pub fn h2_list_size(&self) -> u32 {
        let size = (self.max_bytes + 32 * (self.max_count + 4) + 64 * 1024).max(H2_DECODED_FLOOR);
        u32::try_from(size).unwrap_or(u32::MAX)
    }

    /// Checks a request's headers (dropping those with an underscore in
    /// their name under `DROP_HEADER`).
    pub(in crate::http) fn check(&self, parts: &mut Parts) -> Result<(), Breach> {
        let stats = if parts.version == Version::HTTP_2 { &self.http2 } else { &self.http1 };
        if self.action != Action::Allow && parts.headers.keys().any(|k| k.as_str().contains('_')) {
            if self.action == Action::RejectRequest {
                stats.rejected_underscores.inc();
                return Err(Breach::Underscore);
            }
            let dropped = drop_underscored(&mut parts.headers);
            stats.dropped_underscores.add(dropped as u64);
        }
        let mut bytes: usize = parts.headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
        if parts.version == Version::HTTP_2 {
            // Envoy's HTTP/2 header map holds the pseudo-headers too, and
            // the cookie crumbs joined into one header. The HTTP/1 parser
            // counted its headers itself.
            bytes += pseudo_bytes(parts);
            if h2_count(parts) > self.max_count {
                self.h2_header_overflow.inc();
                return Err(Breach::TooMany);
            }
        }
        if bytes > self.max_bytes {
            return Err(Breach::TooLarge);
        }
        Ok(())
    }
}

impl super::Hcm {
    /// Envoy's answer to an HTTP/2 request over the limits: its stream
    /// reset (`downstream_rq_rx_reset`), no status counted.
    pub(in crate::http) fn reset_stream(
        &self,
        mut stream: Box<super::stream::Stream>,
        breach: Breach,
    ) -> super::ProxyResponse {
        use crate::body::Finish;
        self.stats.downstream_rq_rx_reset.inc();
        self.header_limits.h2_tx_reset.inc();
        stream.details = match breach {
            Breach::TooLarge | Breach::TooMany => "http2.too_many_headers",
            Breach::Underscore => "http2.unexpected_underscore",
        };
        stream.finish(0, false);
        let mut resp =
            http::Response::new(crate::body::TrackedBody::new(crate::body::ProxyBody::full(bytes::Bytes::new()), None));
        // Envoy's code for both, as its HTTP/2 codec sends it.
        resp.extensions_mut().insert(ResetStream(h2::Reason::INTERNAL_ERROR));
        resp
    }
}

/// Removes every header whose name has an underscore; how many values went.
fn drop_underscored(headers: &mut HeaderMap) -> usize {
    let names: Vec<http::HeaderName> = headers.keys().filter(|k| k.as_str().contains('_')).cloned().collect();
    let mut dropped = 0;
    for name in &names {
        if let http::header::Entry::Occupied(e) = headers.entry(name) {
            dropped += e.remove_entry_mult().1.count();
        }
    }
    dropped
}

/// How many headers Envoy's HTTP/2 codec counts: the pseudo-headers a
/// request has, every value of every header, the cookies as one.
fn h2_count(parts: &Parts) -> usize {
    let cookies = parts.headers.get_all(http::header::COOKIE).iter().count();
    let uri = &parts.uri;
    let pseudo = 1
        + usize::from(uri.scheme().is_some())
        + usize::from(uri.path_and_query().is_some())
        + usize::from(uri.authority().is_some())
        + usize::from(parts.extensions.get::<hyper::ext::Protocol>().is_some());
    parts.headers.len() - cookies.saturating_sub(1) + pseudo
}

/// `:method`, `:path`, `:scheme` and `:authority`, names and values.
fn pseudo_bytes(parts: &Parts) -> usize {
    let uri = &parts.uri;
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    let scheme = uri.scheme_str().map_or(0, str::len);
    let authority = uri.authority().map_or(0, |a| a.as_str().len());
    ":method".len()
        + parts.method.as_str().len()
        + ":path".len()
        + path
        + ":scheme".len()
        + scheme
        + ":authority".len()
        + authority
}
