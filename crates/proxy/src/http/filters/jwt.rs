//! `envoy.filters.http.jwt_authn` with local JWKS: rules pick a requirement
//! by path (and headers); a requirement names providers; a provider says
//! where the token is, who must have issued it and for whom, and the keys
//! that sign it. Failures are answered as Envoy does: 401 (403 for an
//! audience not allowed) with the reason as body and `www-authenticate`.
//!
//! Cost per request under a rule: the token is split and base64url-decoded,
//! its header and payload parsed as JSON, and its signature checked (one RSA
//! or ECDSA verification); nothing is cached between requests.

use crate::common::matcher::{compile_regex, HeaderMatch, Pseudo};
use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use legate_api::pb::envoy::config::route::v3::{route_match::PathSpecifier, RouteMatch};
use legate_api::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider::JwksSourceSpecifier, jwt_requirement::RequiresType, requirement_rule::RequirementType,
    JwtAuthentication, JwtProvider, JwtRequirement,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a token was refused, with Envoy's wording.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Failure {
    Missing,
    BadFormat,
    HeaderParse,
    PayloadParse,
    BadAlg,
    UnknownIssuer,
    Expired,
    NotYetValid,
    AudienceNotAllowed,
    NoKey,
    VerificationFails,
    /// The remote JWKS could not be fetched (or was not a JWKS).
    JwksFetchFail,
}

impl Failure {
    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => "Jwt is missing",
            Self::BadFormat => "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
            Self::HeaderParse => "Jwt header is an invalid JSON",
            Self::PayloadParse => "Jwt payload is an invalid JSON",
            Self::BadAlg => "Jwt header [alg] is not supported",
            Self::UnknownIssuer => "Jwt issuer is not configured",
            Self::Expired => "Jwt is expired",
            Self::NotYetValid => "Jwt not yet valid",
            Self::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            Self::NoKey => "Jwks doesn't have key to match kid or alg from Jwt",
            Self::VerificationFails => "Jwt verification fails",
            Self::JwksFetchFail => "Jwks remote fetch is failed",
        }
    }

    pub fn status(self) -> u16 {
        if self == Self::AudienceNotAllowed {
            403
        } else {
            401
        }
    }

    /// The access log's response code details, Envoy's `jwt_authn_access_denied{...}`.
    pub fn details(self) -> &'static str {
        match self {
            Self::Missing => "jwt_authn_access_denied{Jwt_is_missing}",
            Self::Expired => "jwt_authn_access_denied{Jwt_is_expired}",
            Self::AudienceNotAllowed => "jwt_authn_access_denied{Audiences_in_Jwt_are_not_allowed}",
            Self::UnknownIssuer => "jwt_authn_access_denied{Jwt_issuer_is_not_configured}",
            Self::JwksFetchFail => "jwt_authn_access_denied{Jwks_remote_fetch_is_failed}",
            _ => "jwt_authn_access_denied{Jwt_verification_fails}",
        }
    }
}

/// Where a provider looks for its token.
struct Location {
    header: HeaderName,
    prefix: String,
}

/// Verification keys: key id, key, key family.
type Keys = Vec<(Option<String>, DecodingKey, &'static str)>;

/// Where a provider's keys come from.
enum Jwks {
    Local(Keys),
    Remote(Arc<RemoteJwks>),
}

struct Provider {
    issuer: String,
    audiences: Vec<String>,
    jwks: Jwks,
    locations: Vec<Location>,
    /// Query parameters that may carry the token (`access_token` by default).
    query_params: Vec<String>,
    forward: bool,
    payload_header: Option<HeaderName>,
    claim_headers: Vec<(HeaderName, Vec<String>)>,
    clock_skew: u64,
}

/// The key family an algorithm needs.
fn family(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => "RSA",
        Algorithm::ES256 | Algorithm::ES384 => "EC",
        Algorithm::EdDSA => "OKP",
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => "oct",
    }
}

/// The keys of a JWKS document.
fn parse_jwks(body: &[u8]) -> Result<Keys, String> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for (i, k) in set.keys.iter().enumerate() {
        let fam = match &k.algorithm {
            AlgorithmParameters::RSA(_) => "RSA",
            AlgorithmParameters::EllipticCurve(_) => "EC",
            AlgorithmParameters::OctetKeyPair(_) => "OKP",
            AlgorithmParameters::OctetKey(_) => "oct",
        };
        let key = DecodingKey::from_jwk(k).map_err(|e| format!("keys[{i}]: {e}"))?;
        keys.push((k.common.key_id.clone(), key, fam));
    }
    if keys.is_empty() {
        return Err("no keys".into());
    }
    Ok(keys)
}

/// `remote_jwks`: keys fetched over a cluster with a GET of `http_uri.uri`,
/// kept for `cache_duration` (Envoy's default 10 minutes). Requests that
/// need the keys wait for the fetch, as Envoy's do without `async_fetch`;
/// a failed fetch answers them 401 and is tried again by the next request.
///
/// Cost per request: one `ArcSwap` load and a clock read while the keys are
/// fresh. A fetch is single-flight across workers (one mutex, taken only
/// when the keys are missing or stale).
pub struct RemoteJwks {
    cluster: String,
    /// `async_fetch`: (`fast_listener`, `failed_refetch_duration`).
    async_fetch: Option<(bool, std::time::Duration)>,
    retry: Option<JwksRetry>,
    /// `host[:port]` of the URI, sent as Host / :authority.
    authority: String,
    /// Path and query of the URI.
    path: String,
    timeout: std::time::Duration,
    cache_duration: std::time::Duration,
    clusters: Arc<arc_swap::ArcSwap<crate::upstream::cluster::ClusterMap>>,
    /// The keys and when they expire.
    cached: arc_swap::ArcSwapOption<(std::time::Instant, Arc<Keys>)>,
    fetching: tokio::sync::Mutex<()>,
    fetch_success: Arc<crate::stats::Counter>,
    fetch_failed: Arc<crate::stats::Counter>,
}

impl RemoteJwks {
    fn new(
        r: &legate_api::pb::envoy::extensions::filters::http::jwt_authn::v3::RemoteJwks,
        ctx: &JwtContext<'_>,
    ) -> Result<Self, String> {
        let retry = r.retry_policy.as_ref().map(JwksRetry::new).transpose()?;
        let h = r.http_uri.as_ref().ok_or("remote_jwks.http_uri is required")?;
        let uri: http::Uri = h.uri.parse().map_err(|_| format!("remote_jwks.http_uri.uri: invalid URI '{}'", h.uri))?;
        let authority = uri.authority().map(|a| a.as_str().to_string()).ok_or("remote_jwks.http_uri.uri: no host")?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let cluster = match &h.http_upstream_type {
            Some(legate_api::pb::envoy::config::core::v3::http_uri::HttpUpstreamType::Cluster(c)) => c.clone(),
            None => return Err("remote_jwks.http_uri.cluster is required".into()),
        };
        let dur = |d: &legate_api::pb::google::protobuf::Duration| legate_api::duration::from_pb(d);
        let async_fetch = r.async_fetch.as_ref().map(|a| {
            (a.fast_listener, a.failed_refetch_duration.as_ref().map(dur).unwrap_or(std::time::Duration::from_secs(1)))
        });
        Ok(Self {
            cluster,
            async_fetch,
            retry,
            authority,
            path,
            timeout: h.timeout.as_ref().map(dur).ok_or("remote_jwks.http_uri.timeout is required")?,
            cache_duration: r.cache_duration.as_ref().map(dur).unwrap_or(std::time::Duration::from_secs(600)),
            clusters: ctx.clusters.clone(),
            cached: arc_swap::ArcSwapOption::empty(),
            fetching: tokio::sync::Mutex::new(()),
            fetch_success: ctx.fetch_success.clone(),
            fetch_failed: ctx.fetch_failed.clone(),
        })
    }

    fn fresh(&self) -> Option<Arc<Keys>> {
        let c = self.cached.load();
        c.as_ref().filter(|c| c.0 > std::time::Instant::now()).map(|c| c.1.clone())
    }

    /// The keys, fetched first when missing or stale. None: the fetch failed.
    async fn keys(&self) -> Option<Arc<Keys>> {
        if let Some(k) = self.fresh() {
            return Some(k);
        }
        let _one = self.fetching.lock().await;
        if let Some(k) = self.fresh() {
            return Some(k);
        }
        self.fetch_and_store().await
    }

    /// `async_fetch`: fetches now, then again after `cache_duration` (after
    /// `failed_refetch_duration` when a fetch fails), while the config lives.
    /// The first fetch is awaited unless `fast_listener`.
    async fn start(this: Arc<Self>) {
        let Some((fast, retry)) = this.async_fetch else { return };
        let first = async move {
            let ok = {
                let _one = this.fetching.lock().await;
                this.fetch_and_store().await.is_some()
            };
            (Arc::downgrade(&this), if ok { this.cache_duration } else { retry })
        };
        let refresh = move |(weak, mut wait): (std::sync::Weak<Self>, std::time::Duration)| async move {
            loop {
                tokio::time::sleep(wait).await;
                let Some(r) = weak.upgrade() else { return };
                let _one = r.fetching.lock().await;
                wait = if r.fetch_and_store().await.is_some() { r.cache_duration } else { retry };
            }
        };
        if fast {
            tokio::spawn(async move { refresh(first.await).await });
        } else {
            let next = first.await;
            tokio::spawn(refresh(next));
        }
    }

    /// One fetch (the caller holds `fetching`), counted and cached when it works.
    async fn fetch_and_store(&self) -> Option<Arc<Keys>> {
        match tokio::time::timeout(self.timeout, self.fetch()).await {
            Ok(Some(keys)) => {
                self.fetch_success.inc();
                let keys = Arc::new(keys);
                let until = std::time::Instant::now() + self.cache_duration;
                self.cached.store(Some(Arc::new((until, keys.clone()))));
                Some(keys)
            }
            _ => {
                self.fetch_failed.inc();
                None
            }
        }
    }

    /// GETs the JWKS, retrying as `retry_policy` says; the whole is bounded
    /// by the caller's `http_uri.timeout`, as Envoy's request timeout covers
    /// the retries.
    async fn fetch(&self) -> Option<Keys> {
        let cluster = self.clusters.load().get(&self.cluster).cloned()?;
        let retries = self.retry.as_ref().map_or(0, |r| r.num_retries);
        let mut attempt = 0;
        loop {
            let failure = match self.attempt(&cluster).await {
                Ok(body) => {
                    if attempt > 0 {
                        cluster.stats.upstream_rq_retry_success.inc();
                    }
                    return parse_jwks(&body).ok();
                }
                Err(f) => f,
            };
            let r = self.retry.as_ref().filter(|r| attempt < retries && r.when.retries(&failure))?;
            attempt += 1;
            cluster.stats.upstream_rq_retry.inc();
            tokio::time::sleep(r.backoff(attempt)).await;
        }
    }

    /// One GET: the body of a 200, or how it failed.
    async fn attempt(&self, cluster: &Arc<crate::upstream::cluster::Cluster>) -> Result<bytes::Bytes, AttemptFailure> {
        let Some(host) = cluster.pick() else { return Err(AttemptFailure::Final) };
        let uri = if cluster.http2 { format!("http://{}{}", self.authority, self.path) } else { self.path.clone() };
        let (Ok(uri), Ok(authority)) = (uri.parse::<http::Uri>(), HeaderValue::from_str(&self.authority)) else {
            return Err(AttemptFailure::Final);
        };
        let mut req = http::Request::new(crate::body::ProxyBody::full(bytes::Bytes::new()));
        *req.uri_mut() = uri;
        if !cluster.http2 {
            req.headers_mut().insert(http::header::HOST, authority);
        }
        let mut held = crate::upstream::pool::Held::default();
        cluster.stats.upstream_rq_active.inc();
        let result = crate::upstream::pool::send(cluster, &host, req, &mut held).await;
        use crate::upstream::pool::UpstreamError as E;
        let out = match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                cluster.stats.record_status(status);
                let body = http_body_util::BodyExt::collect(resp.into_body()).await;
                match (status, body) {
                    (200, Ok(b)) => Ok(b.to_bytes()),
                    (200, Err(_)) => Err(AttemptFailure::Reset),
                    _ => Err(AttemptFailure::Status(status)),
                }
            }
            Err(E::ConnectFailure(_) | E::ConnectTimeout | E::Tls(_)) => Err(AttemptFailure::Connect),
            Err(E::Overflow | E::PoolOverflow) => Err(AttemptFailure::Final),
            Err(_) => Err(AttemptFailure::Reset),
        };
        cluster.stats.upstream_rq_active.dec();
        cluster.stats.upstream_rq_completed.inc();
        drop(held);
        cluster.pools.release();
        out
    }
}

/// `remote_jwks.retry_policy` (`envoy.config.core.v3.RetryPolicy`) as Envoy
/// converts it: `num_retries` (default 1), back-off from `base_interval`
/// (default 1 s) up to `max_interval` (default 10 × base), retrying on
/// `5xx,gateway-error,connect-failure,reset`.
struct JwksRetry {
    num_retries: u32,
    base: std::time::Duration,
    max: std::time::Duration,
    when: RetryOn,
}

/// The `retry_on` conditions a JWKS fetch honours.
#[derive(Default)]
struct RetryOn {
    five_xx: bool,
    gateway_error: bool,
    connect_failure: bool,
    reset: bool,
}

/// How a fetch attempt failed.
enum AttemptFailure {
    Status(u16),
    Connect,
    Reset,
    /// Not retried (no host, overflow, a bad URI).
    Final,
}

impl RetryOn {
    /// As Envoy's router: `5xx` covers every 5xx, connect failures and
    /// resets; `gateway-error` 502/503/504 and connect failures.
    fn retries(&self, f: &AttemptFailure) -> bool {
        match f {
            AttemptFailure::Status(s) => (self.five_xx && *s >= 500) || (self.gateway_error && matches!(s, 502..=504)),
            AttemptFailure::Connect => self.five_xx || self.gateway_error || self.connect_failure,
            AttemptFailure::Reset => self.five_xx || self.reset,
            AttemptFailure::Final => false,
        }
    }
}

impl JwksRetry {
    fn new(r: &legate_api::pb::envoy::config::core::v3::RetryPolicy) -> Result<Self, String> {
        let on = if r.retry_on.is_empty() { "5xx,gateway-error,connect-failure,reset" } else { r.retry_on.as_str() };
        let mut when = RetryOn::default();
        for t in on.split(',').map(str::trim) {
            match t {
                "5xx" => when.five_xx = true,
                "gateway-error" => when.gateway_error = true,
                "connect-failure" => when.connect_failure = true,
                "reset" => when.reset = true,
                other => return Err(format!("remote_jwks.retry_policy.retry_on: '{other}' is not supported")),
            }
        }
        let dur = |d: &legate_api::pb::google::protobuf::Duration| legate_api::duration::from_pb(d);
        let (base, max) = match &r.retry_back_off {
            Some(b) => {
                let base = b
                    .base_interval
                    .as_ref()
                    .map(dur)
                    .ok_or("remote_jwks.retry_policy.retry_back_off.base_interval is required")?;
                let max = b.max_interval.as_ref().map(dur).unwrap_or(base * 10);
                if max < base {
                    return Err("remote_jwks.retry_policy.retry_back_off: max_interval must be greater than or equal to the base_interval".into());
                }
                (base, max)
            }
            None => (std::time::Duration::from_secs(1), std::time::Duration::from_secs(10)),
        };
        Ok(Self { num_retries: r.num_retries.as_ref().map_or(1, |n| n.value), base, max, when })
    }

    /// Envoy's jittered back-off before retry `n` (1-based): uniform in
    /// [0, min(base × 2^(n-1), max)].
    fn backoff(&self, n: u32) -> std::time::Duration {
        let cap = self.base.saturating_mul(1u32 << n.saturating_sub(1).min(16)).min(self.max);
        cap.mul_f64(rand::random::<f64>())
    }
}

/// Starts the `async_fetch` JWKS compiled since the last call: awaits the
/// first fetch of each (unless `fast_listener`) and leaves their refreshes
/// running on the current runtime.
pub async fn start_async_fetches(ctx: &crate::http::context::CompileContext) {
    let pending: Vec<_> = std::mem::take(&mut *ctx.jwks_async.lock().unwrap_or_else(|e| e.into_inner()));
    for w in pending {
        if let Some(r) = w.upgrade() {
            RemoteJwks::start(r).await;
        }
    }
}

/// What providers need from the config around the filter.
pub struct JwtContext<'a> {
    pub clusters: &'a Arc<arc_swap::ArcSwap<crate::upstream::cluster::ClusterMap>>,
    jwks_async: &'a Arc<std::sync::Mutex<Vec<std::sync::Weak<RemoteJwks>>>>,
    fetch_success: Arc<crate::stats::Counter>,
    fetch_failed: Arc<crate::stats::Counter>,
}

impl Provider {
    fn new(p: &JwtProvider, ctx: &JwtContext<'_>) -> Result<Self, String> {
        let jwks = match &p.jwks_source_specifier {
            Some(JwksSourceSpecifier::LocalJwks(ds)) => {
                Jwks::Local(parse_jwks(&crate::common::datasource::read(ds)?).map_err(|e| format!("local_jwks: {e}"))?)
            }
            Some(JwksSourceSpecifier::RemoteJwks(r)) => {
                let r = Arc::new(RemoteJwks::new(r, ctx)?);
                if r.async_fetch.is_some() {
                    ctx.jwks_async.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&r));
                }
                Jwks::Remote(r)
            }
            None => return Err("local_jwks or remote_jwks is required".into()),
        };
        if !p.from_cookies.is_empty() {
            return Err("from_cookies is not supported".into());
        }
        let default = p.from_headers.is_empty() && p.from_params.is_empty();
        let locations = if default {
            vec![Location { header: http::header::AUTHORIZATION, prefix: "Bearer ".into() }]
        } else {
            p.from_headers
                .iter()
                .map(|h| {
                    Ok(Location {
                        header: HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                            .map_err(|_| format!("from_headers: invalid header name '{}'", h.name))?,
                        prefix: h.value_prefix.clone(),
                    })
                })
                .collect::<Result<_, String>>()?
        };
        let header = |s: &str| {
            HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes()).map_err(|_| format!("invalid header name '{s}'"))
        };
        Ok(Self {
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            jwks,
            locations,
            query_params: if default { vec!["access_token".into()] } else { p.from_params.clone() },
            forward: p.forward,
            payload_header: (!p.forward_payload_header.is_empty())
                .then(|| header(&p.forward_payload_header))
                .transpose()?,
            claim_headers: p
                .claim_to_headers
                .iter()
                .map(|c| Ok((header(&c.header_name)?, c.claim_name.split('.').map(str::to_string).collect())))
                .collect::<Result<_, String>>()?,
            clock_skew: if p.clock_skew_seconds == 0 { 60 } else { u64::from(p.clock_skew_seconds) },
        })
    }

    /// The token and where it came from.
    fn extract<'h>(&'h self, headers: &'h HeaderMap, path: &'h str) -> Option<(&'h str, From<'h>)> {
        for loc in &self.locations {
            for v in headers.get_all(&loc.header) {
                let Ok(v) = v.to_str() else { continue };
                let rest = if loc.prefix.is_empty() {
                    Some(v)
                } else if v.len() >= loc.prefix.len() && v[..loc.prefix.len()].eq_ignore_ascii_case(&loc.prefix) {
                    Some(&v[loc.prefix.len()..])
                } else {
                    None
                };
                if let Some(t) = rest.map(str::trim).filter(|t| !t.is_empty()) {
                    return Some((t, From::Header(&loc.header)));
                }
            }
        }
        let query = path.split_once('?').map(|(_, q)| q)?;
        for name in &self.query_params {
            for pair in query.split('&') {
                let value = pair.strip_prefix(name.as_str()).and_then(|r| r.strip_prefix('='));
                if let Some(t) = value.filter(|t| !t.is_empty()) {
                    return Some((t, From::Query(name)));
                }
            }
        }
        None
    }

    /// Checks a token in Envoy's order: form, issuer, time, audience, then
    /// (with the keys, which may have been fetched) key and signature.
    fn verify(&self, token: &str, remote_keys: Option<&Keys>) -> Result<serde_json::Value, Failure> {
        let pre = self.precheck(token)?;
        let keys = match &self.jwks {
            Jwks::Local(k) => k,
            Jwks::Remote(_) => remote_keys.ok_or(Failure::JwksFetchFail)?,
        };
        let (alg, kid, payload, message_len, sig) = pre;
        let fam = family(alg);
        let candidates = keys
            .iter()
            .filter(|(k, _, f)| *f == fam && (kid.is_none() || k.is_none() || k.as_deref() == kid.as_deref()));
        let message = &token[..message_len];
        let mut any = false;
        for (_, key, _) in candidates {
            any = true;
            if jsonwebtoken::crypto::verify(sig, message.as_bytes(), key, alg).unwrap_or(false) {
                return Ok(payload);
            }
        }
        Err(if any { Failure::VerificationFails } else { Failure::NoKey })
    }

    /// Everything that needs no key: form, issuer, time, audience. Gives the
    /// algorithm, key id, payload, signed length and signature.
    #[allow(clippy::type_complexity)]
    fn precheck<'t>(
        &self,
        token: &'t str,
    ) -> Result<(Algorithm, Option<String>, serde_json::Value, usize, &'t str), Failure> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(Failure::BadFormat);
        };
        let header: serde_json::Value = b64
            .decode(h.trim_end_matches('='))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(Failure::HeaderParse)?;
        let payload: serde_json::Value = b64
            .decode(p.trim_end_matches('='))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(serde_json::Value::is_object)
            .ok_or(Failure::PayloadParse)?;
        let alg: Algorithm = header["alg"].as_str().and_then(|a| a.parse().ok()).ok_or(Failure::BadAlg)?;
        if !self.issuer.is_empty() && payload["iss"].as_str() != Some(self.issuer.as_str()) {
            return Err(Failure::UnknownIssuer);
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if let Some(nbf) = payload["nbf"].as_u64() {
            if nbf > now + self.clock_skew {
                return Err(Failure::NotYetValid);
            }
        }
        if let Some(exp) = payload["exp"].as_u64() {
            if exp + self.clock_skew < now {
                return Err(Failure::Expired);
            }
        }
        if !self.audiences.is_empty() {
            let aud = &payload["aud"];
            let ok = match aud {
                serde_json::Value::String(s) => self.audiences.contains(s),
                serde_json::Value::Array(a) => {
                    a.iter().filter_map(|v| v.as_str()).any(|s| self.audiences.iter().any(|x| x == s))
                }
                _ => false,
            };
            if !ok {
                return Err(Failure::AudienceNotAllowed);
            }
        }
        let kid = header["kid"].as_str().map(str::to_string);
        Ok((alg, kid, payload, h.len() + 1 + p.len(), sig))
    }
}

/// Where a token was found.
enum From<'a> {
    Header(&'a HeaderName),
    Query(&'a str),
}

/// A compiled `JwtRequirement`.
enum Requirement {
    Provider(usize),
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    /// Satisfied without a token; a token present must verify.
    AllowMissing,
    /// Always satisfied; a token that verifies is still used.
    AllowMissingOrFailed,
}

/// A rule's match: path (prefix, exact or regex) and headers.
enum PathTest {
    Prefix(String),
    Exact(String),
    Regex(regex::Regex),
}

struct Rule {
    path: PathTest,
    headers: Vec<HeaderMatch>,
    /// None: the rule matches and asks for nothing.
    requires: Option<Requirement>,
}

pub struct JwtAuthn {
    providers: Vec<Provider>,
    /// Some provider has `remote_jwks`.
    has_remote: bool,
    rules: Vec<Rule>,
    allowed: Arc<crate::stats::Counter>,
    denied: Arc<crate::stats::Counter>,
}

/// What a verified request gets: headers to set and to remove.
#[derive(Default)]
struct Outcome {
    remove: Vec<HeaderName>,
    /// The token came in this query parameter and is not forwarded.
    strip_query: Option<String>,
    set: Vec<(HeaderName, HeaderValue)>,
}

fn claim_value(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl JwtAuthn {
    pub fn compile(
        c: &JwtAuthentication,
        store: &crate::stats::Store,
        stat_prefix: &str,
        compile: &crate::http::context::CompileContext,
    ) -> Result<Self, String> {
        let p = format!("http.{stat_prefix}.jwt_authn.");
        let ctx = JwtContext {
            clusters: &compile.clusters,
            jwks_async: &compile.jwks_async,
            fetch_success: store.counter(&format!("{p}jwks_fetch_success")),
            fetch_failed: store.counter(&format!("{p}jwks_fetch_failed")),
        };
        let mut names: Vec<&String> = c.providers.keys().collect();
        names.sort();
        let mut index = HashMap::new();
        let mut providers = Vec::new();
        for n in names {
            let p = Provider::new(&c.providers[n], &ctx).map_err(|e| format!("providers[\"{n}\"].{e}"))?;
            index.insert(n.clone(), providers.len());
            providers.push(p);
        }
        fn req(r: &JwtRequirement, index: &HashMap<String, usize>) -> Result<Requirement, String> {
            match &r.requires_type {
                Some(RequiresType::ProviderName(n)) => {
                    index.get(n).map(|i| Requirement::Provider(*i)).ok_or(format!("unknown provider '{n}'"))
                }
                Some(RequiresType::RequiresAny(l)) => {
                    Ok(Requirement::Any(l.requirements.iter().map(|r| req(r, index)).collect::<Result<_, _>>()?))
                }
                Some(RequiresType::RequiresAll(l)) => {
                    Ok(Requirement::All(l.requirements.iter().map(|r| req(r, index)).collect::<Result<_, _>>()?))
                }
                Some(RequiresType::AllowMissing(_)) => Ok(Requirement::AllowMissing),
                Some(RequiresType::AllowMissingOrFailed(_)) => Ok(Requirement::AllowMissingOrFailed),
                Some(_) => Err(
                    "only provider_name, requires_any, requires_all, allow_missing and allow_missing_or_failed are supported"
                        .into(),
                ),
                None => Err("a requirement is required".into()),
            }
        }
        let rules = c
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let m = r.r#match.as_ref().ok_or(format!("rules[{i}].match is required"))?;
                let requires = match &r.requirement_type {
                    Some(RequirementType::Requires(q)) => {
                        Some(req(q, &index).map_err(|e| format!("rules[{i}].requires: {e}"))?)
                    }
                    Some(RequirementType::RequirementName(_)) => {
                        return Err(format!("rules[{i}].requirement_name is not supported"))
                    }
                    None => None,
                };
                Ok(Rule {
                    path: path_test(m).map_err(|e| format!("rules[{i}].match: {e}"))?,
                    headers: m.headers.iter().map(HeaderMatch::new).collect::<Result<_, _>>()?,
                    requires,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            has_remote: providers.iter().any(|p| matches!(p.jwks, Jwks::Remote(_))),
            providers,
            rules,
            allowed: store.counter(&format!("{p}allowed")),
            denied: store.counter(&format!("{p}denied")),
        })
    }

    /// `remote`: per provider, the remote keys fetched for this request.
    fn check(
        &self,
        r: &Requirement,
        headers: &HeaderMap,
        path: &str,
        remote: &[Option<Arc<Keys>>],
        out: &mut Outcome,
    ) -> Result<(), Failure> {
        match r {
            Requirement::Provider(i) => {
                let p = &self.providers[*i];
                let (token, from) = p.extract(headers, path).ok_or(Failure::Missing)?;
                let payload = p.verify(token, remote.get(*i).and_then(|k| k.as_deref()))?;
                if !p.forward {
                    match from {
                        From::Header(h) => out.remove.push(h.clone()),
                        From::Query(name) => out.strip_query = Some(name.to_string()),
                    }
                }
                if let Some(h) = &p.payload_header {
                    // The payload exactly as the token carries it (base64url).
                    let seg = token.split('.').nth(1).unwrap_or("");
                    if let Ok(v) = HeaderValue::from_str(seg) {
                        out.set.push((h.clone(), v));
                    }
                }
                for (h, path) in &p.claim_headers {
                    let v = path.iter().try_fold(&payload, |v, k| v.get(k));
                    if let Some(s) = v.and_then(claim_value) {
                        if let Ok(v) = HeaderValue::from_str(&s) {
                            out.set.push((h.clone(), v));
                        }
                    }
                }
                Ok(())
            }
            Requirement::Any(list) => {
                let mut first_error = None;
                for r in list {
                    let mut o = Outcome::default();
                    match self.check(r, headers, path, remote, &mut o) {
                        Ok(()) => {
                            out.remove.extend(o.remove);
                            out.set.extend(o.set);
                            if o.strip_query.is_some() {
                                out.strip_query = o.strip_query;
                            }
                            return Ok(());
                        }
                        Err(Failure::Missing) => {}
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                Err(first_error.unwrap_or(Failure::Missing))
            }
            Requirement::All(list) => list.iter().try_for_each(|r| self.check(r, headers, path, remote, out)),
            Requirement::AllowMissing | Requirement::AllowMissingOrFailed => {
                // The first provider that finds a token verifies it.
                // As Envoy: a token found in any provider's locations is
                // verified by the provider of its issuer.
                let found: Vec<(usize, &str)> = (0..self.providers.len())
                    .filter_map(|i| self.providers[i].extract(headers, path).map(|(t, _)| (i, t)))
                    .collect();
                let by_issuer = found.iter().find(|(i, t)| {
                    let issuer = &self.providers[*i].issuer;
                    issuer.is_empty() || token_issuer(t).as_deref() == Some(issuer.as_str())
                });
                let result = match by_issuer.or(found.first()) {
                    Some((i, _)) => self.check(&Requirement::Provider(*i), headers, path, remote, out),
                    None => Ok(()),
                };
                match r {
                    Requirement::AllowMissingOrFailed => Ok(()),
                    _ => result,
                }
            }
        }
    }

    /// Runs the first rule that matches the request. `Err`: answer with it.
    /// `new_path` receives the path without its `access_token` parameter when
    /// a token taken from there is not forwarded.
    pub async fn on_request(
        &self,
        headers: &mut HeaderMap,
        pseudo: &Pseudo<'_>,
        new_path: &mut Option<String>,
    ) -> Result<(), Failure> {
        let path_only = pseudo.path.split(['?', '#']).next().unwrap_or(pseudo.path);
        let Some(rule) = self.rules.iter().find(|r| {
            (match &r.path {
                PathTest::Prefix(p) => path_only.starts_with(p.as_str()),
                PathTest::Exact(p) => path_only == p,
                PathTest::Regex(re) => re.is_match(path_only),
            }) && r.headers.iter().all(|m| m.matches(headers, pseudo))
        }) else {
            // Envoy counts a request no rule asks anything of as allowed.
            self.allowed.inc();
            return Ok(());
        };
        let Some(requires) = &rule.requires else {
            self.allowed.inc();
            return Ok(());
        };
        // Remote keys are fetched (or read from the cache) for the providers
        // that hold a token passing the checks that need no key, before the
        // requirement is evaluated. Nothing is allocated without remote JWKS.
        let mut remote: Vec<Option<Arc<Keys>>> = Vec::new();
        if self.has_remote {
            remote.resize(self.providers.len(), None);
            for (i, p) in self.providers.iter().enumerate() {
                let Jwks::Remote(r) = &p.jwks else { continue };
                let Some((token, _)) = p.extract(headers, pseudo.path) else { continue };
                if p.precheck(token).is_ok() {
                    remote[i] = r.keys().await;
                }
            }
        }
        let mut out = Outcome::default();
        match self.check(requires, headers, pseudo.path, &remote, &mut out) {
            Ok(()) => {
                self.allowed.inc();
                for h in out.remove {
                    headers.remove(h);
                }
                for (k, v) in out.set {
                    headers.insert(k, v);
                }
                if let Some(name) = out.strip_query {
                    *new_path = Some(without_param(pseudo.path, &name));
                }
                Ok(())
            }
            Err(e) => {
                self.denied.inc();
                Err(e)
            }
        }
    }
}

/// The `iss` claim of a token, read without verifying it.
fn token_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["iss"].as_str().map(str::to_string)
}

/// The path with the query parameter `name` taken out.
fn without_param(path: &str, name: &str) -> String {
    let Some((p, q)) = path.split_once('?') else { return path.to_string() };
    let kept: Vec<&str> = q.split('&').filter(|kv| kv.strip_prefix(name).is_none_or(|r| !r.starts_with('='))).collect();
    if kept.is_empty() {
        p.to_string()
    } else {
        format!("{p}?{}", kept.join("&"))
    }
}

fn path_test(m: &RouteMatch) -> Result<PathTest, String> {
    if m.case_sensitive.is_some_and(|b| !b.value) || !m.query_parameters.is_empty() {
        return Err("case_sensitive and query_parameters are not supported in jwt_authn rules".into());
    }
    Ok(match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathTest::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => PathTest::Exact(p.clone()),
        Some(PathSpecifier::SafeRegex(r)) => PathTest::Regex(compile_regex(r)?),
        _ => return Err("only prefix, path and safe_regex are supported".into()),
    })
}

/// Envoy's `www-authenticate` for a refused request: the realm is the
/// request's URL, query included.
pub fn www_authenticate(f: Failure, authority: &str, path: &str) -> Option<HeaderValue> {
    let mut v = format!("Bearer realm=\"http://{authority}{path}\"");
    if f != Failure::Missing {
        v.push_str(", error=\"invalid_token\"");
    }
    HeaderValue::from_str(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_parameter_is_taken_out_of_the_query() {
        assert_eq!(without_param("/a?access_token=x", "access_token"), "/a");
        assert_eq!(without_param("/a?b=1&access_token=x&c=2", "access_token"), "/a?b=1&c=2");
        assert_eq!(without_param("/a", "access_token"), "/a");
    }

    #[test]
    fn realm_and_error() {
        let v = www_authenticate(Failure::Missing, "h", "/p?q=1").expect("value");
        assert_eq!(v, "Bearer realm=\"http://h/p?q=1\"");
        let v = www_authenticate(Failure::Expired, "h", "/p").expect("value");
        assert_eq!(v, "Bearer realm=\"http://h/p\", error=\"invalid_token\"");
        assert_eq!(Failure::AudienceNotAllowed.status(), 403);
    }
}
