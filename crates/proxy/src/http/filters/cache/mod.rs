//! `envoy.filters.http.cache` (`CacheConfig`) with the simple in-memory
//! cache (`SimpleHttpCacheConfig`), as Envoy 1.40 runs it: GET and HEAD
//! requests without `authorization` or conditional headers are looked up;
//! a fresh entry answers (with its `age`, a HEAD's headers, one byte
//! range as 206), a stale one is validated with the origin (`if-none-match`
//! from its `etag`, `if-modified-since` from its `last-modified` or
//! `date`), and a 304 answers from the entry with the origin's new headers,
//! which the entry keeps. A GET's response is stored when its status, its
//! `cache-control` (not `no-store` or `private`; `max-age`, `s-maxage`,
//! `no-cache`, or `expires` with `date`) and its `vary` (only names
//! `allowed_vary_headers` matches, never `*`) allow it. `headers` reads the
//! directives and freshness, `store` holds the entries (an LRU bounded by
//! bytes), `serve` makes the answers.

mod headers;
mod serve;
mod store;

use crate::body::ProxyBody;
use crate::common::matcher::StringMatch;
use crate::http::filters::api::{
    FilterContext, FilterStatus, HttpFilter, Registration, RequestCtx, ResponseHooks, ResponseState, Verdict,
};
use headers::{RequestCc, ResponseCc};
use http::header::{AUTHORIZATION, HOST, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, RANGE};
use http::{HeaderMap, HeaderValue, Method};
use legate_api::pb::envoy::extensions::filters::http::cache::v3::CacheConfig;
use legate_api::pb::envoy::extensions::http::cache::simple_http_cache::v3::SimpleHttpCacheConfig;
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;
use std::time::SystemTime;
use store::{Entry, Store};

pub const TYPE: &str = "envoy.extensions.filters.http.cache.v3.CacheConfig";
pub const SIMPLE: &str = "envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig";

pub const REGISTRATION: Registration =
    Registration { type_url: TYPE, compile: Cache::compile, per_route: None, one_per_chain: None };

pub struct Cache {
    disabled: bool,
    vary_allowed: Vec<StringMatch>,
    exclude_scheme: bool,
    exclude_host: bool,
    /// The largest body stored: `max_body_bytes` (0: no limit of its own)
    /// within the store's own limit per entry.
    max_body: usize,
    ignore_request_cc: bool,
    store: Store,
}

/// What a looked-up request carries to its response.
struct Pending {
    base: String,
    head: bool,
    /// The request said `no-store`: its response is not stored.
    no_store: bool,
    /// The request's headers `allowed_vary_headers` names, for the entry's
    /// vary identifier.
    vary_request: HeaderMap,
    /// The stale entry being validated, and its key.
    validating: Option<(String, Arc<Entry>)>,
}

impl Cache {
    fn compile(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
        let c: CacheConfig = legate_api::any::unpack(any)?;
        let path = format!("http_filters[{}].typed_config", ctx.index);
        let disabled = c.disabled.is_some_and(|d| d.value);
        match &c.typed_config {
            Some(t) if legate_api::any::type_name(t) == SIMPLE => {
                let _: SimpleHttpCacheConfig = legate_api::any::unpack(t)?;
            }
            Some(t) => {
                return Err(format!("{path}.typed_config: cache {} is not supported", legate_api::any::type_name(t)))
            }
            None if disabled => {}
            None => return Err(format!("{path}.typed_config is required unless disabled")),
        }
        let vary_allowed = c
            .allowed_vary_headers
            .iter()
            .enumerate()
            .map(|(i, m)| StringMatch::new(m).map_err(|e| format!("{path}.allowed_vary_headers[{i}]: {e}")))
            .collect::<Result<_, _>>()?;
        let params = c.key_creator_params.unwrap_or_default();
        let max_body = match c.max_body_bytes {
            0 => store::MAX_ENTRY_BODY,
            n => (n as usize).min(store::MAX_ENTRY_BODY),
        };
        Ok(Box::new(Self {
            disabled,
            vary_allowed,
            exclude_scheme: params.exclude_scheme,
            exclude_host: params.exclude_host,
            max_body,
            ignore_request_cc: c.ignore_request_cache_control_header,
            store: Store::default(),
        }))
    }

    /// Whether Envoy's cache looks this request up at all.
    fn cacheable_request(rq: &RequestCtx<'_>) -> bool {
        let h = &*rq.headers;
        (*rq.method == Method::GET || *rq.method == Method::HEAD)
            && !h.contains_key(AUTHORIZATION)
            && ![IF_NONE_MATCH, IF_MODIFIED_SINCE, IF_RANGE].iter().any(|c| h.contains_key(c))
            && (!rq.pseudo.authority.is_empty() || h.contains_key(HOST))
            && matches!(rq.pseudo.scheme, "http" | "https")
    }

    fn base_key(&self, rq: &RequestCtx<'_>) -> String {
        let scheme = if self.exclude_scheme { "" } else { rq.pseudo.scheme };
        let host = if self.exclude_host { "" } else { rq.pseudo.authority };
        format!("{scheme}\n{host}\n{}", rq.pseudo.path)
    }

    fn vary_allowed(&self, name: &str) -> bool {
        self.vary_allowed.iter().any(|m| m.matches(name))
    }

    /// The vary identifier of a request for these vary names: each name with
    /// the request's values; None when a name is not allowed.
    fn vary_id(&self, names: &[String], rq: &HeaderMap) -> Option<String> {
        let mut id = String::new();
        for n in names {
            if !self.vary_allowed(n) {
                return None;
            }
            let values: Vec<&str> = rq.get_all(n.as_str()).iter().filter_map(|v| v.to_str().ok()).collect();
            id.push_str(&format!("{n}\r{}\n", values.join("\r")));
        }
        Some(id)
    }

    fn lookup(&self, base: &str, rq: &HeaderMap) -> Option<(String, Arc<Entry>)> {
        let names = self.store.vary_of(base)?;
        let key = format!("{base}\0{}", self.vary_id(&names, rq)?);
        let e = self.store.get(&key)?;
        Some((key, e))
    }

    /// A response to a looked-up request: a 304 to a validation answered
    /// from the entry, or a response stored when it may be.
    async fn on_origin_response(&self, p: &Pending, resp: &mut http::Response<ProxyBody>) {
        let now = SystemTime::now();
        if let Some((key, e)) = &p.validating {
            if resp.status() == http::StatusCode::NOT_MODIFIED {
                let stored = serve::merged(&e.headers, resp.headers());
                // The client gets the 304's fields, then the stored ones it
                // did not carry.
                let mut sent = resp.headers().clone();
                for (k, v) in e.headers.iter().filter(|(k, _)| !resp.headers().contains_key(*k)) {
                    sent.append(k.clone(), v.clone());
                }
                sent.insert(http::header::CONTENT_LENGTH, HeaderValue::from(e.body.len()));
                *resp.headers_mut() = sent;
                *resp.status_mut() = http::StatusCode::from_u16(e.status).unwrap_or(http::StatusCode::OK);
                *resp.body_mut() = if p.head { ProxyBody::Empty } else { ProxyBody::full(e.body.clone()) };
                let names = headers::vary_names(&stored);
                let entry = Entry { status: e.status, headers: stored, body: e.body.clone(), stored: now };
                self.store.insert(&p.base, names, key.clone(), entry);
                return;
            }
        }
        if p.head || p.no_store || !self.storable(resp.headers(), resp.status().as_u16()) {
            return;
        }
        let names = headers::vary_names(resp.headers());
        let Some(id) = self.vary_id(&names, &p.vary_request) else { return };
        let length = resp.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        if length.is_some_and(|n: usize| n > self.max_body) {
            return;
        }
        let body = std::mem::replace(resp.body_mut(), ProxyBody::Empty);
        let Ok((read, rest)) = crate::body::read_prefix(body, self.max_body as u64, true).await else {
            return;
        };
        *resp.body_mut() = rest;
        if read.partial {
            return;
        }
        let entry =
            Entry { status: resp.status().as_u16(), headers: resp.headers().clone(), body: read.bytes, stored: now };
        self.store.insert(&p.base, names, format!("{}\0{id}", p.base), entry);
    }

    /// Whether a response may be stored (Envoy's rules).
    fn storable(&self, h: &HeaderMap, status: u16) -> bool {
        let cc = ResponseCc::parse(h);
        let validation_data = cc.no_cache
            || cc.max_age.is_some()
            || (h.contains_key(http::header::DATE) && h.contains_key(http::header::EXPIRES));
        let names = headers::vary_names(h);
        !cc.no_store
            && headers::cacheable_status(status)
            && validation_data
            && names.iter().all(|n| n != "*" && self.vary_allowed(n))
    }
}

impl HttpFilter for Cache {
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, state: &'r mut ResponseState) -> FilterStatus<'r> {
        if self.disabled || !Self::cacheable_request(rq) {
            return FilterStatus::Continue;
        }
        let now = SystemTime::now();
        let base = self.base_key(rq);
        let cc = if self.ignore_request_cc { RequestCc::default() } else { RequestCc::parse(rq.headers) };
        let head = *rq.method == Method::HEAD;
        let found = self.lookup(&base, rq.headers);
        if let Some((_, e)) = &found {
            let age = headers::age(&e.headers, e.stored, now);
            if !headers::needs_validation(&e.headers, age, now, &cc) {
                return FilterStatus::Done(Verdict::Serve(serve::hit(e, age, head, rq.headers.get(RANGE))));
            }
            let validator = e.headers.get(http::header::LAST_MODIFIED).or(e.headers.get(http::header::DATE));
            if let Some(etag) = e.headers.get(http::header::ETAG) {
                rq.headers.insert(IF_NONE_MATCH, etag.clone());
            }
            if let Some(v) = validator {
                rq.headers.insert(IF_MODIFIED_SINCE, v.clone());
            }
        }
        let vary_request = rq
            .headers
            .iter()
            .filter(|(k, _)| self.vary_allowed(k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let p = Pending { base, head, no_store: cc.no_store, vary_request, validating: found };
        state.carried.push(Arc::new(p));
        FilterStatus::Continue
    }

    fn response_hooks(&self) -> ResponseHooks {
        ResponseHooks { wait: true, ..ResponseHooks::default() }
    }

    fn on_response_wait<'r>(
        &'r self,
        state: &'r mut ResponseState,
        resp: &'r mut http::Response<ProxyBody>,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'r>>> {
        let p = state.carried.iter().find_map(|c| c.clone().downcast::<Pending>().ok())?;
        Some(Box::pin(async move { self.on_origin_response(&p, resp).await }))
    }
}
