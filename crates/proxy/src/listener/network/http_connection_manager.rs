//! `envoy.filters.network.http_connection_manager` as a chain's terminal
//! network filter: the compiled connection manager with the HTTP server
//! settings its connections are served with (the listener serves them).

use crate::http::conn_manager::{Codec, Hcm};
use crate::http::context::CompileContext;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use legate_api::pb::envoy::config::core::v3::Http2ProtocolOptions;
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use legate_api::pb::google::protobuf::Any;
use std::borrow::Cow;
use std::sync::Arc;

pub const TYPE: &str = legate_api::semantic::HCM_TYPE;

pub struct HttpChain {
    pub hcm: Arc<Hcm>,
    /// The HTTP server settings for this chain's connections.
    pub builder: auto::Builder<TokioExecutor>,
    /// What a head the HTTP/1 parser refuses as too large counts: Envoy's
    /// codec had begun its stream, so a request begun and completed with a
    /// 4xx. Built once; each connection shares it.
    pub refused_head: Arc<[Arc<crate::stats::Counter>]>,
}

impl HttpChain {
    /// The terminal filter from its `typed_config`; `path` names it in errors.
    pub fn compile_filter(any: &Any, ctx: &CompileContext, path: &str) -> Result<Self, String> {
        let pb: HttpConnectionManager = legate_api::any::unpack(any)?;
        let hcm = Hcm::compile(&pb, ctx).map_err(|e| format!("{path}.{e}"))?;
        let hcm = Arc::new(hcm);
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // The header limits are the parsers' own: no request pays for them.
        let (max_headers, h1_buffer, h2_list) = hcm.parser_limits();
        builder
            .http1()
            .timer(TokioTimer::new())
            .keep_alive(true)
            // `request_headers_timeout` is the connection's reader's (Envoy's
            // 408, timed from a head's first byte), not hyper's.
            .header_read_timeout(None)
            .max_headers(max_headers)
            .max_buf_size(h1_buffer);
        h2_settings(&mut builder, pb.http2_protocol_options.as_ref());
        builder.http2().max_header_list_size(h2_list);
        // The listener's buffer limit bounds what an HTTP/2 connection queues to send.
        builder.http2().max_send_buf_size(usize::try_from(hcm.buffer_limit).unwrap_or(usize::MAX));
        if hcm.allow_connect {
            builder.http2().enable_connect_protocol();
        }
        let builder = match hcm.codec {
            Codec::Auto => builder,
            Codec::Http1 => builder.http1_only(),
            Codec::Http2 => builder.http2_only(),
        };
        let st = &hcm.stats;
        let refused_head = Arc::new([
            st.downstream_rq_total.clone(),
            st.downstream_rq_http1_total.clone(),
            st.downstream_rq_completed.clone(),
            st.downstream_rq_class.by_class[3].clone(),
        ]);
        Ok(Self { hcm, builder, refused_head })
    }

    /// The server settings for a connection whose TLS ALPN said `h2`
    /// (`Some(true)`) or something else: with AUTO, ALPN decides the codec
    /// (Envoy: `h2` is HTTP/2, anything else HTTP/1.1); a plain connection
    /// is sniffed for the h2 preface. Cloning the builder costs a few
    /// reference counts.
    pub fn builder_for(&self, alpn_h2: Option<bool>) -> Cow<'_, auto::Builder<TokioExecutor>> {
        match (self.hcm.codec, alpn_h2) {
            (Codec::Auto, Some(true)) => Cow::Owned(self.builder.clone().http2_only()),
            (Codec::Auto, Some(false)) => Cow::Owned(self.builder.clone().http1_only()),
            _ => Cow::Borrowed(&self.builder),
        }
    }
}

/// `http2_protocol_options` a connection manager's HTTP/2 connections are
/// served with: `max_concurrent_streams` (Envoy 1.40's default, 1024, when
/// unset) and, when set, `initial_stream_window_size` (the SETTINGS
/// initial window) and `initial_connection_window_size` (the connection
/// window, opened with a WINDOW_UPDATE after the preface), as Envoy sends
/// them. The PGV rules have bounded the values already.
/// The SETTINGS_MAX_CONCURRENT_STREAMS Envoy 1.40 sends when
/// `max_concurrent_streams` is unset (its API still documents 2^31 - 1).
const DEFAULT_MAX_STREAMS: u32 = 1024;

fn h2_settings(builder: &mut auto::Builder<TokioExecutor>, options: Option<&Http2ProtocolOptions>) {
    let max_streams = options.and_then(|o| o.max_concurrent_streams).map_or(DEFAULT_MAX_STREAMS, |v| v.value);
    let mut h2 = builder.http2();
    h2.timer(TokioTimer::new()).max_concurrent_streams(Some(max_streams));
    if let Some(w) = options.and_then(|o| o.initial_stream_window_size) {
        h2.initial_stream_window_size(Some(w.value));
    }
    if let Some(w) = options.and_then(|o| o.initial_connection_window_size) {
        h2.initial_connection_window_size(Some(w.value));
    }
}
