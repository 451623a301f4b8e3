//! A cluster's upstream HTTP protocol: HTTP/2 or HTTP/1.1 (from the
//! deprecated cluster fields or the `HttpProtocolOptions` extension), and
//! `common_http_protocol_options` for its connections.

use legate_api::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use legate_api::pb::envoy::config::core::v3::Http2ProtocolOptions;
use legate_api::pb::envoy::extensions::upstreams::http::v3::{http_protocol_options, HttpProtocolOptions};
use std::time::Duration;

pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// A cluster's `common_http_protocol_options` for its upstream connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnOptions {
    /// Close a connection idle this long (default 1 h; `None`: never).
    pub idle_timeout: Option<Duration>,
    /// Close a connection after this many requests.
    pub max_requests: Option<u32>,
    /// Give up on a request whose response has not come in this long.
    pub max_stream_duration: Option<Duration>,
}

impl Default for ConnOptions {
    fn default() -> Self {
        Self { idle_timeout: Some(IDLE_TIMEOUT), max_requests: None, max_stream_duration: None }
    }
}

/// How long an idle pool may keep connections (Envoy's default upstream idle timeout is 1h).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// A cluster's `http2_protocol_options` for its HTTP/2 connections.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct H2Options {
    /// `connection_keepalive`: a PING every `interval` (plus up to
    /// `jitter` of it, drawn per connection), the connection closed when
    /// no answer comes within `timeout`.
    pub keepalive: Option<Keepalive>,
    /// `initial_stream_window_size` (the SETTINGS initial window).
    pub stream_window: Option<u32>,
    /// `initial_connection_window_size`.
    pub connection_window: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
    /// A share of `interval` (Envoy's default 15%).
    pub jitter: f64,
}

impl Keepalive {
    /// This connection's interval: `interval` plus a random share of the jitter.
    pub fn jittered_interval(&self) -> Duration {
        self.interval + self.interval.mul_f64(self.jitter * rand::random::<f64>())
    }
}

impl H2Options {
    fn compile(o: &Http2ProtocolOptions) -> Self {
        let keepalive = o.connection_keepalive.as_ref().map(|k| Keepalive {
            interval: k.interval.as_ref().map_or(Duration::ZERO, legate_api::duration::from_pb),
            timeout: k.timeout.as_ref().map_or(Duration::ZERO, legate_api::duration::from_pb),
            jitter: k.interval_jitter.as_ref().map_or(15.0, |p| p.value) / 100.0,
        });
        Self {
            // Without an interval Envoy sends no PING on its own.
            keepalive: keepalive.filter(|k| !k.interval.is_zero()),
            stream_window: o.initial_stream_window_size.map(|v| v.value),
            connection_window: o.initial_connection_window_size.map(|v| v.value),
        }
    }
}

/// How a cluster talks to its hosts.
#[derive(Debug, Clone, Copy)]
pub struct HttpProtocol {
    pub http2: bool,
    pub h2: H2Options,
    pub conn_options: ConnOptions,
}

impl HttpProtocol {
    // Envoy still accepts the deprecated cluster-level protocol fields
    // (http2_protocol_options, max_requests_per_connection), so Legate reads them.
    #[allow(deprecated)]
    pub fn compile(c: &PbCluster) -> Result<Self, String> {
        let mut http2 = c.http2_protocol_options.is_some();
        let mut h2 = c.http2_protocol_options.as_ref().map(H2Options::compile).unwrap_or_default();
        // The deprecated cluster-level fields first; the protocol options
        // extension, when present, wins.
        let mut common = c.common_http_protocol_options;
        let legacy_max_requests = c.max_requests_per_connection.map(|v| v.value);
        if let Some(any) = c.typed_extension_protocol_options.get(HTTP_PROTOCOL_OPTIONS) {
            let opts: HttpProtocolOptions = legate_api::any::unpack(any)?;
            if opts.common_http_protocol_options.is_some() {
                common = opts.common_http_protocol_options;
            }
            match &opts.upstream_protocol_options {
                Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(e)) => {
                    use http_protocol_options::explicit_http_config::ProtocolConfig;
                    http2 = matches!(e.protocol_config, Some(ProtocolConfig::Http2ProtocolOptions(_)));
                    if let Some(ProtocolConfig::Http2ProtocolOptions(o)) = &e.protocol_config {
                        h2 = H2Options::compile(o);
                    }
                }
                Some(_) => {
                    return Err("typed_extension_protocol_options: only explicit_http_config is supported".into())
                }
                None => {}
            }
        }
        let conn_options = {
            let d = ConnOptions::default();
            let common = common.as_ref();
            ConnOptions {
                idle_timeout: match common.and_then(|o| o.idle_timeout.as_ref()) {
                    Some(t) => Some(legate_api::duration::from_pb(t)).filter(|t| !t.is_zero()),
                    None => d.idle_timeout,
                },
                max_requests: common
                    .and_then(|o| o.max_requests_per_connection.map(|v| v.value))
                    .or(legacy_max_requests)
                    .filter(|n| *n > 0),
                max_stream_duration: common
                    .and_then(|o| o.max_stream_duration.as_ref())
                    .map(legate_api::duration::from_pb)
                    .filter(|t| !t.is_zero()),
            }
        };
        Ok(Self { http2, h2, conn_options })
    }
}
