//! A cluster's upstream HTTP protocol: HTTP/2 or HTTP/1.1 (from the
//! deprecated cluster fields or the `HttpProtocolOptions` extension), and
//! `common_http_protocol_options` for its connections.

use legate_api::pb::envoy::config::cluster::v3::Cluster as PbCluster;
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

/// How a cluster talks to its hosts.
#[derive(Debug, Clone, Copy)]
pub struct HttpProtocol {
    pub http2: bool,
    pub conn_options: ConnOptions,
}

impl HttpProtocol {
    // Envoy still accepts the deprecated cluster-level protocol fields
    // (http2_protocol_options, max_requests_per_connection), so Legate reads them.
    #[allow(deprecated)]
    pub fn compile(c: &PbCluster) -> Result<Self, String> {
        let mut http2 = c.http2_protocol_options.is_some();
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
        Ok(Self { http2, conn_options })
    }
}
