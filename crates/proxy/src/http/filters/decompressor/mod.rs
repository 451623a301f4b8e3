//! `envoy.filters.http.decompressor` with the gzip, brotli or zstd library,
//! as Envoy 1.40's: a request or response whose `content-encoding` starts
//! with the library's coding (and has no `cache-control: no-transform`,
//! unless told to ignore it) is decompressed as it streams; that coding is
//! taken off `content-encoding` and `content-length` is removed. With
//! response decompression on, the request advertises the coding upstream in
//! `accept-encoding`. The decoders are in `decoder.rs`, the body in `body.rs`.

mod body;
mod decoder;

use crate::body::ProxyBody;
use crate::common::runtime::RuntimeFlag;
use crate::http::filters::api::{
    FilterContext, FilterStatus, HttpFilter, Registration, RequestCtx, ResponseHooks, ResponseState,
};
use body::{DecompressedBody, Totals};
use decoder::{Inflater, Library, LibraryErrors};
use http::header::{ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH};
use http::{HeaderMap, HeaderName, HeaderValue, Response};
use legate_api::pb::envoy::extensions::filters::http::decompressor::v3::decompressor::CommonDirectionConfig;
use legate_api::pb::envoy::extensions::filters::http::decompressor::v3::Decompressor as PbDecompressor;
use legate_api::pb::google::protobuf::Any;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

pub const TYPE: &str = "envoy.extensions.filters.http.decompressor.v3.Decompressor";
pub const GZIP_TYPE: &str = "envoy.extensions.compression.gzip.decompressor.v3.Gzip";
pub const BROTLI_TYPE: &str = "envoy.extensions.compression.brotli.decompressor.v3.Brotli";
pub const ZSTD_TYPE: &str = "envoy.extensions.compression.zstd.decompressor.v3.Zstd";

/// A chain may hold several (one per coding), as in Envoy.
pub const REGISTRATION: Registration =
    Registration { type_url: TYPE, compile: Decompressor::compile_any, per_route: None, one_per_chain: None };

/// Envoy's ratio for brotli and zstd, and gzip's default.
const MAX_INFLATE_RATIO: u64 = 100;
const CHUNK_SIZE: usize = 4096;

static NEXT_FILTER: AtomicU64 = AtomicU64::new(1);

type C = Arc<crate::stats::Counter>;

/// One direction: whether it is on, and its stats
/// (`<prefix>decompressor.<name>.<library>.<request|response>.*`).
struct Direction {
    enabled: RuntimeFlag,
    ignore_no_transform: bool,
    decompressed: C,
    not_decompressed: C,
    totals: Arc<Totals>,
}

pub struct Decompressor {
    /// Tells this filter's request mark from another decompressor's.
    id: u64,
    library: Library,
    chunk_size: usize,
    max_ratio: u64,
    /// `gzip`, `br` or `zstd`.
    encoding: &'static str,
    advertise: bool,
    request: Direction,
    response: Direction,
    errors: Arc<LibraryErrors>,
}

/// Left on a request whose body this filter decompresses.
struct Marked(u64);

/// The library from `decompressor_library.typed_config`: its settings, its
/// coding and the word its stats use.
fn library(any: &Any) -> Result<(Library, usize, u64, &'static str, &'static str), String> {
    use legate_api::pb::envoy::extensions::compression as c;
    let chunk = |v: Option<u32>| v.map_or(CHUNK_SIZE, |v| v as usize);
    Ok(match legate_api::any::type_name(any) {
        GZIP_TYPE => {
            let g: c::gzip::decompressor::v3::Gzip = legate_api::any::unpack(any)?;
            let window_bits = g.window_bits.map_or(15, |v| v.value);
            let window_bits = u8::try_from(window_bits)
                .ok()
                .filter(|w| (9..=15).contains(w))
                .ok_or(format!("typed_config.window_bits: {window_bits} is not within 9 and 15"))?;
            let ratio = g.max_inflate_ratio.map_or(MAX_INFLATE_RATIO, |v| u64::from(v.value));
            (Library::Gzip { window_bits }, chunk(g.chunk_size.map(|v| v.value)), ratio, "gzip", "gzip")
        }
        BROTLI_TYPE => {
            let b: c::brotli::decompressor::v3::Brotli = legate_api::any::unpack(any)?;
            let lib = Library::Brotli { disable_ring_buffer_reallocation: b.disable_ring_buffer_reallocation };
            (lib, chunk(b.chunk_size.map(|v| v.value)), MAX_INFLATE_RATIO, "br", "brotli")
        }
        ZSTD_TYPE => {
            let z: c::zstd::decompressor::v3::Zstd = legate_api::any::unpack(any)?;
            (Library::Zstd, chunk(z.chunk_size.map(|v| v.value)), MAX_INFLATE_RATIO, "zstd", "zstd")
        }
        other => return Err(format!("{other} is not supported (gzip, brotli and zstd are)")),
    })
}

impl Direction {
    fn compile(
        c: Option<&CommonDirectionConfig>,
        store: &crate::stats::Store,
        prefix: &str,
        trailers: &(HeaderName, HeaderName),
    ) -> Self {
        let counter = |n: &str| store.counter(&format!("{prefix}{n}"));
        Self {
            enabled: RuntimeFlag::flag(c.and_then(|c| c.enabled.as_ref()), true),
            ignore_no_transform: c.is_some_and(|c| c.ignore_no_transform_header),
            decompressed: counter("decompressed"),
            not_decompressed: counter("not_decompressed"),
            totals: Arc::new(Totals {
                compressed: counter("total_compressed_bytes"),
                uncompressed: counter("total_uncompressed_bytes"),
                compressed_trailer: trailers.0.clone(),
                uncompressed_trailer: trailers.1.clone(),
            }),
        }
    }
}

impl Decompressor {
    fn compile_any(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
        let c: PbDecompressor = legate_api::any::unpack(any)?;
        let d = Self::compile(&c, ctx.server.store, ctx.stat_prefix)
            .map_err(|e| format!("http_filters[{}].typed_config.{e}", ctx.index))?;
        Ok(Box::new(d))
    }

    pub fn compile(c: &PbDecompressor, store: &crate::stats::Store, stat_prefix: &str) -> Result<Self, String> {
        let lib = c.decompressor_library.as_ref().ok_or("decompressor_library is required")?;
        let any = lib.typed_config.as_ref().ok_or("decompressor_library.typed_config is required")?;
        let (library, chunk_size, max_ratio, encoding, word) =
            library(any).map_err(|e| format!("decompressor_library.{e}"))?;
        let prefix = format!("http.{stat_prefix}.decompressor.{}.{word}.", lib.name);
        let name = |n: &str| {
            HeaderName::from_bytes(format!("x-envoy-decompressor-{}-{n}", lib.name).to_ascii_lowercase().as_bytes())
                .map_err(|_| format!("decompressor_library.name: {:?} cannot name a trailer", lib.name))
        };
        let trailers = (name("compressed-bytes")?, name("uncompressed-bytes")?);
        let rq = c.request_direction_config.as_ref();
        let errors = Arc::new(LibraryErrors {
            error: store.counter(&format!(
                "{prefix}decompressor_library.{}",
                match library {
                    Library::Gzip { .. } => "zlib_data_error",
                    Library::Brotli { .. } => "brotli_error",
                    Library::Zstd => "zstd_generic_error",
                }
            )),
            checksum: matches!(library, Library::Zstd)
                .then(|| store.counter(&format!("{prefix}decompressor_library.zstd_checksum_wrong_error"))),
        });
        Ok(Self {
            id: NEXT_FILTER.fetch_add(1, Relaxed),
            library,
            chunk_size,
            max_ratio,
            encoding,
            advertise: rq.and_then(|r| r.advertise_accept_encoding).is_none_or(|v| v.value),
            request: Direction::compile(
                rq.and_then(|r| r.common_config.as_ref()),
                store,
                &format!("{prefix}request."),
                &trailers,
            ),
            response: Direction::compile(
                c.response_direction_config.as_ref().and_then(|r| r.common_config.as_ref()),
                store,
                &format!("{prefix}response."),
                &trailers,
            ),
            errors,
        })
    }

    /// Envoy's check: on, no `no-transform` (unless ignored), and the first
    /// coding of `content-encoding` is ours. When it holds, the headers are
    /// changed for what goes on and the direction counts it.
    fn take_coding(&self, d: &Direction, h: &mut HeaderMap) -> bool {
        let no_transform = h
            .get_all(CACHE_CONTROL)
            .iter()
            .any(|v| v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case("no-transform"))));
        let ce = h.get(CONTENT_ENCODING).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let matches =
            ce.as_deref().is_some_and(|v| v.split(',').next().unwrap_or("").trim().eq_ignore_ascii_case(self.encoding));
        if !(d.enabled.value() && (!no_transform || d.ignore_no_transform) && matches) {
            d.not_decompressed.inc();
            return false;
        }
        d.decompressed.inc();
        h.remove(CONTENT_LENGTH);
        let all = ce.as_deref().unwrap_or("").trim();
        match all.split_once(',') {
            Some((_, rest)) => match HeaderValue::from_str(rest.trim()) {
                Ok(v) => {
                    h.insert(CONTENT_ENCODING, v);
                }
                Err(_) => {
                    h.remove(CONTENT_ENCODING);
                }
            },
            None => {
                h.remove(CONTENT_ENCODING);
            }
        }
        true
    }

    fn inflater(&self) -> Inflater {
        Inflater::new(self.library, self.chunk_size, self.max_ratio, self.errors.clone())
    }

    /// `accept-encoding` with our coding added at full weight, as Envoy's
    /// `addEncodingToAcceptEncoding`: other codings kept, ours moved last.
    fn advertised(&self, current: Option<&HeaderValue>) -> Option<HeaderValue> {
        let current = current.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default();
        let mut kept: Vec<&str> = current
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.split(';').next().unwrap_or("").trim() != self.encoding)
            .collect();
        kept.push(self.encoding);
        HeaderValue::from_str(&kept.join(",")).ok()
    }
}

impl HttpFilter for Decompressor {
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, state: &'r mut ResponseState) -> FilterStatus<'r> {
        if self.response.enabled.value() && self.advertise {
            if let Some(v) = self.advertised(rq.headers.get(ACCEPT_ENCODING)) {
                rq.headers.insert(ACCEPT_ENCODING, v);
            }
        }
        // A request without a body is not looked at, nor counted.
        if !http_body::Body::is_end_stream(&*rq.body) && self.take_coding(&self.request, rq.headers) {
            state.carried.push(Arc::new(Marked(self.id)));
        }
        FilterStatus::Continue
    }

    fn response_hooks(&self) -> ResponseHooks {
        ResponseHooks { on_response: true, rewrites_request_body: true, ..ResponseHooks::default() }
    }

    fn on_request_body(&self, state: &ResponseState, body: ProxyBody) -> ProxyBody {
        let marked = state.carried.iter().any(|c| (**c).downcast_ref::<Marked>().is_some_and(|m| m.0 == self.id));
        if !marked {
            return body;
        }
        let inflated = DecompressedBody::new(body, self.inflater(), self.request.totals.clone());
        ProxyBody::Rewritten { body: Box::new(inflated) }
    }

    fn on_response(&self, _state: &ResponseState, resp: &mut Response<ProxyBody>) {
        if http_body::Body::is_end_stream(resp.body()) || !self.take_coding(&self.response, resp.headers_mut()) {
            return;
        }
        let inner = std::mem::replace(resp.body_mut(), ProxyBody::Empty);
        let inflated = DecompressedBody::new(inner, self.inflater(), self.response.totals.clone());
        *resp.body_mut() = ProxyBody::Rewritten { body: Box::new(inflated) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> Decompressor {
        let store = crate::stats::Store::default();
        let c = PbDecompressor {
            decompressor_library: Some(legate_api::pb::envoy::config::core::v3::TypedExtensionConfig {
                name: "up".into(),
                typed_config: Some(legate_api::any::pack(
                    &legate_api::pb::envoy::extensions::compression::gzip::decompressor::v3::Gzip::default(),
                )),
            }),
            ..Default::default()
        };
        Decompressor::compile(&c, &store, "in").expect("compiles")
    }

    #[test]
    fn accept_encoding_gets_our_coding_once_at_full_weight() {
        let f = filter();
        let adv = |v: Option<&str>| {
            f.advertised(v.map(HeaderValue::from_str).transpose().expect("value").as_ref())
                .map(|v| v.to_str().unwrap_or_default().to_string())
        };
        assert_eq!(adv(None).as_deref(), Some("gzip"));
        assert_eq!(adv(Some("br, deflate")).as_deref(), Some("br,deflate,gzip"));
        assert_eq!(adv(Some("gzip;q=0.3, br")).as_deref(), Some("br,gzip"));
    }

    #[test]
    fn only_the_first_coding_is_taken_off() {
        let f = filter();
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip, br"));
        h.insert(CONTENT_LENGTH, HeaderValue::from_static("10"));
        assert!(f.take_coding(&f.response, &mut h));
        assert_eq!(h.get(CONTENT_ENCODING).map(|v| v.as_bytes()), Some(&b"br"[..]));
        assert!(h.get(CONTENT_LENGTH).is_none());
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("br, gzip"));
        assert!(!f.take_coding(&f.response, &mut h));
        assert_eq!(f.response.decompressed.value(), 1);
        assert_eq!(f.response.not_decompressed.value(), 1);
    }
}
