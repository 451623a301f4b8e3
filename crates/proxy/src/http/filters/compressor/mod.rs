//! `envoy.filters.http.compressor` with the gzip, brotli or zstd library:
//! responses are compressed as they stream when the client accepts the
//! encoding and the response qualifies (content type, length, no
//! `content-encoding`, no `cache-control: no-transform`, status), following
//! Envoy's checks. The encoders and the compressed body are in this folder;
//! `ProxyBody` carries the body boxed, without naming it.

mod accept_encoding;
mod body;
mod encoder;
mod gzip;

use crate::body::ProxyBody;
use crate::http::filters::api::{
    FilterContext, FilterStatus, HttpFilter, Registration, RequestCtx, ResponseHooks, ResponseState,
};
use accept_encoding::{add_vary, choose, Choice};
use body::{ByteTotals, CompressedBody};
use encoder::Encoder;
use http::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG};
use http::{HeaderMap, HeaderValue, Response};
use legate_api::pb::envoy::extensions::filters::http::compressor::v3::Compressor as PbCompressor;
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;

pub const TYPE: &str = "envoy.extensions.filters.http.compressor.v3.Compressor";

/// Envoy negotiates among all compressors of a chain; Legate does not yet,
/// so a chain takes one.
pub const REGISTRATION: Registration = Registration {
    type_url: TYPE,
    compile: Compressor::compile_any,
    per_route: None,
    one_per_chain: Some("compressor"),
};

pub const GZIP_TYPE: &str = "envoy.extensions.compression.gzip.compressor.v3.Gzip";
pub const BROTLI_TYPE: &str = "envoy.extensions.compression.brotli.compressor.v3.Brotli";
pub const ZSTD_TYPE: &str = "envoy.extensions.compression.zstd.compressor.v3.Zstd";

/// The library and its settings.
#[derive(Clone, Copy)]
enum Library {
    Gzip(gzip::GzipSettings),
    Brotli { quality: u32, window_bits: u32 },
    Zstd { level: i32, checksum: bool, strategy: u32 },
}

/// Envoy's default compressible content types.
const DEFAULT_TYPES: &[&str] = &[
    "text/html",
    "text/plain",
    "text/css",
    "application/javascript",
    "application/x-javascript",
    "text/javascript",
    "text/x-javascript",
    "text/ecmascript",
    "text/js",
    "text/jscript",
    "text/x-js",
    "application/ecmascript",
    "application/x-json",
    "application/xml",
    "application/json",
    "image/svg+xml",
    "text/xml",
    "application/xhtml+xml",
];

type C = Arc<crate::stats::Counter>;

/// `http.<prefix>.compressor.<library name>.<gzip|brotli>.*`, with Envoy 1.40's
/// names: the `accept-encoding` outcomes at the top, the rest per direction.
struct Stats {
    compressed: C,
    not_compressed: C,
    request_not_compressed: C,
    no_accept_header: C,
    header_identity: C,
    header_compressor_used: C,
    header_wildcard: C,
    header_not_valid: C,
    content_length_too_small: C,
    not_compressed_etag: C,
    /// `total_uncompressed_bytes` and `total_compressed_bytes`, shared with
    /// the compressed bodies.
    totals: Arc<ByteTotals>,
}

pub struct Compressor {
    /// `response_direction_config.common_config.enabled`.
    enabled: crate::common::runtime::RuntimeFlag,
    min_length: u64,
    /// Lowercased media types (no parameters).
    content_types: Vec<String>,
    disable_on_etag: bool,
    weaken_etag: bool,
    remove_accept_encoding: bool,
    uncompressible: Vec<u16>,
    library: Library,
    /// The `content-encoding` token: `gzip` or `br`.
    encoding: &'static str,
    stats: Stats,
}

impl Compressor {
    fn compile_any(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
        let c: PbCompressor = legate_api::any::unpack(any)?;
        let c = Self::compile(&c, ctx.server.store, ctx.stat_prefix)
            .map_err(|e| format!("http_filters[{}].typed_config.{e}", ctx.index))?;
        Ok(Box::new(c))
    }

    #[allow(deprecated)] // Envoy still accepts this deprecated field, so Legate reads it.
    pub fn compile(c: &PbCompressor, store: &crate::stats::Store, stat_prefix: &str) -> Result<Self, String> {
        use legate_api::pb::envoy::extensions::compression::brotli::compressor::v3::Brotli;
        use legate_api::pb::envoy::extensions::compression::gzip::compressor::v3::Gzip;
        let lib = c.compressor_library.as_ref().ok_or("compressor_library is required")?;
        let any = lib.typed_config.as_ref().ok_or("compressor_library.typed_config is required")?;
        let (library, encoding, lib_stats) = match legate_api::any::type_name(any) {
            GZIP_TYPE => {
                let gz: Gzip = legate_api::any::unpack(any)?;
                let settings =
                    gzip::GzipSettings::compile(&gz).map_err(|e| format!("compressor_library.typed_config.{e}"))?;
                (Library::Gzip(settings), "gzip", "gzip")
            }
            BROTLI_TYPE => {
                let br: Brotli = legate_api::any::unpack(any)?;
                let quality = br.quality.map_or(3, |q| q.value.min(11));
                let window_bits = br.window_bits.map_or(18, |w| w.value.clamp(10, 24));
                (Library::Brotli { quality, window_bits }, "br", "brotli")
            }
            ZSTD_TYPE => {
                let z: legate_api::pb::envoy::extensions::compression::zstd::compressor::v3::Zstd =
                    legate_api::any::unpack(any)?;
                let level = match z.compression_level.map_or(0, |v| v.value) {
                    0 => 3,
                    n => n.min(22) as i32,
                };
                let strategy = z.strategy.max(0) as u32;
                // Refuse now what zstd would refuse per response.
                if Encoder::zstd(level, z.enable_checksum, strategy).is_none() {
                    return Err("compressor_library.typed_config: zstd refuses these settings".into());
                }
                (Library::Zstd { level, checksum: z.enable_checksum, strategy }, "zstd", "zstd")
            }
            other => return Err(format!("compressor_library: {other} is not supported (gzip, brotli and zstd are)")),
        };
        let rd = c.response_direction_config.clone().unwrap_or_default();
        let common = rd.common_config.clone().unwrap_or_default();
        let types: Vec<String> = if common.content_type.is_empty() {
            DEFAULT_TYPES.iter().map(|s| s.to_string()).collect()
        } else {
            common.content_type.iter().map(|s| s.trim().to_ascii_lowercase()).collect()
        };
        let p = format!("http.{stat_prefix}.compressor.{}.{lib_stats}.", lib.name);
        let counter = |n: &str| store.counter(&format!("{p}{n}"));
        // Envoy names the response counters `response.*` when the config
        // has a response_direction_config, and without the direction otherwise.
        let dir = if c.response_direction_config.is_some() { "response." } else { "" };
        let response_counter = |n: &str| counter(&format!("{dir}{n}"));
        Ok(Self {
            enabled: crate::common::runtime::RuntimeFlag::flag(common.enabled.as_ref(), true),
            min_length: common.min_content_length.as_ref().map_or(30, |v| u64::from(v.value)),
            content_types: types,
            disable_on_etag: rd.disable_on_etag_header,
            weaken_etag: rd.weaken_etag_on_compress,
            remove_accept_encoding: rd.remove_accept_encoding_header,
            uncompressible: rd
                .uncompressible_response_codes
                .iter()
                .map(|c| u16::try_from(*c).map_err(|_| format!("uncompressible_response_codes: {c} out of range")))
                .collect::<Result<_, _>>()?,
            library,
            encoding,
            stats: Stats {
                compressed: response_counter("compressed"),
                not_compressed: response_counter("not_compressed"),
                request_not_compressed: counter("request.not_compressed"),
                no_accept_header: counter("no_accept_header"),
                header_identity: counter("header_identity"),
                header_compressor_used: counter("header_compressor_used"),
                header_wildcard: counter("header_wildcard"),
                header_not_valid: counter("header_not_valid"),
                content_length_too_small: response_counter("content_length_too_small"),
                not_compressed_etag: counter("not_compressed_etag"),
                totals: Arc::new(ByteTotals {
                    uncompressed: response_counter("total_uncompressed_bytes"),
                    compressed: response_counter("total_compressed_bytes"),
                }),
            },
        })
    }

    /// On the request: keeps what the response decision needs (the
    /// client's `accept-encoding`), and drops it from the request if asked.
    fn keep_accept_encoding(&self, headers: &mut HeaderMap) -> Option<HeaderValue> {
        // Request bodies are never compressed (request_direction_config is refused).
        self.stats.request_not_compressed.inc();
        let ae = headers.get(http::header::ACCEPT_ENCODING).cloned();
        if self.remove_accept_encoding {
            headers.remove(http::header::ACCEPT_ENCODING);
        }
        ae
    }

    fn content_type_allowed(&self, h: &HeaderMap) -> bool {
        let Some(ct) = h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return true };
        let media = ct.split(';').next().unwrap_or("").trim();
        self.content_types.iter().any(|t| t.eq_ignore_ascii_case(media))
    }

    fn long_enough(&self, h: &HeaderMap, body: &ProxyBody) -> bool {
        match h.get(CONTENT_LENGTH) {
            Some(v) => {
                let ok =
                    v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).is_some_and(|n| n >= self.min_length);
                if !ok {
                    self.stats.content_length_too_small.inc();
                }
                ok
            }
            // A streamed body of unknown length (chunked) qualifies.
            None => !http_body::Body::is_end_stream(body),
        }
    }

    /// The client accepts gzip: Envoy's choice of the highest q-value among
    /// gzip, `identity` and `*` (the first listed wins a tie). As in Envoy,
    /// gzip is not on offer for a content type it does not compress.
    fn accepts_gzip(&self, ae: Option<&HeaderValue>, type_ok: bool) -> bool {
        let Some(ae) = ae.and_then(|v| v.to_str().ok()) else {
            self.stats.no_accept_header.inc();
            return false;
        };
        let (choice, allowed) = choose(ae, self.encoding);
        let allowed = allowed && type_ok;
        let choice = match choice {
            Choice::Ours if !allowed => Choice::None,
            other => other,
        };
        match choice {
            Choice::Ours => self.stats.header_compressor_used.inc(),
            Choice::Wildcard if allowed => self.stats.header_wildcard.inc(),
            Choice::Identity => self.stats.header_identity.inc(),
            _ => self.stats.header_not_valid.inc(),
        }
        matches!(choice, Choice::Ours) || (matches!(choice, Choice::Wildcard) && allowed)
    }

    /// On the response: compresses it when it qualifies, and marks it
    /// `vary: accept-encoding` whenever it could have been.
    fn compress(&self, ae: Option<&HeaderValue>, resp: &mut Response<ProxyBody>) {
        let (parts, body) = (resp.headers(), resp.body());
        let status = resp.status().as_u16();
        let etag_ok = !(self.disable_on_etag && !self.weaken_etag && parts.contains_key(ETAG));
        // Envoy's order: length, then the accept-encoding choice (which
        // counts its stats), then the other checks.
        let long_enough = self.enabled.value() && self.long_enough(parts, body);
        let type_ok = self.content_type_allowed(parts);
        let accepted = long_enough && self.accepts_gzip(ae, type_ok);
        let compressible = long_enough
            && type_ok
            && !parts
                .get_all(CACHE_CONTROL)
                .iter()
                .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("no-transform"))))
            && {
                if !etag_ok {
                    self.stats.not_compressed_etag.inc();
                }
                etag_ok
            }
            && !parts.contains_key(CONTENT_ENCODING)
            && !self.uncompressible.contains(&status);
        let end = http_body::Body::is_end_stream(body);
        if !end && compressible && accepted {
            // Checked when the config was compiled, so zstd does not refuse here.
            let encoder = match self.library {
                Library::Gzip(settings) => Encoder::gzip(settings),
                Library::Brotli { quality, window_bits } => Encoder::brotli(quality, window_bits),
                Library::Zstd { level, checksum, strategy } => match Encoder::zstd(level, checksum, strategy) {
                    Some(e) => e,
                    None => return,
                },
            };
            self.stats.compressed.inc();
            let h = resp.headers_mut();
            h.remove(CONTENT_LENGTH);
            h.insert(CONTENT_ENCODING, HeaderValue::from_static(self.encoding));
            // A strong validator no longer holds for the changed bytes.
            if let Some(tag) = h.get(ETAG).cloned() {
                if !tag.as_bytes().starts_with(b"W/") {
                    h.remove(ETAG);
                    if self.weaken_etag {
                        let mut weak = b"W/".to_vec();
                        weak.extend_from_slice(tag.as_bytes());
                        if let Ok(v) = HeaderValue::from_bytes(&weak) {
                            h.insert(ETAG, v);
                        }
                    }
                }
            }
            let inner = std::mem::replace(resp.body_mut(), ProxyBody::Empty);
            let compressed = CompressedBody::new(inner, encoder, self.stats.totals.clone());
            *resp.body_mut() = ProxyBody::Rewritten { body: Box::new(compressed) };
        } else {
            self.stats.not_compressed.inc();
        }
        if compressible {
            add_vary(resp.headers_mut());
        }
    }
}

impl HttpFilter for Compressor {
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, state: &'r mut ResponseState) -> FilterStatus<'r> {
        state.accept_encoding = self.keep_accept_encoding(rq.headers);
        FilterStatus::Continue
    }

    fn response_hooks(&self) -> ResponseHooks {
        ResponseHooks { on_response: true, ..ResponseHooks::default() }
    }

    fn on_response(&self, state: &ResponseState, resp: &mut Response<ProxyBody>) {
        self.compress(state.accept_encoding.as_ref(), resp);
    }
}
