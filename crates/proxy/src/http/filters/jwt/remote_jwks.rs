//! `remote_jwks`: keys fetched over a cluster, cached, refetched when
//! stale, with Envoy's retry policy; `async_fetch` starts them before
//! traffic.

use super::keys::{parse_jwks, Keys};
use crate::stats::Counter;
use crate::upstream::cluster::ClusterMap;
use arc_swap::ArcSwap;
use http::HeaderValue;
use std::sync::{Arc, Mutex, Weak};

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
    pub(super) async_fetch: Option<(bool, std::time::Duration)>,
    retry: Option<JwksRetry>,
    /// `host[:port]` of the URI, sent as Host / :authority.
    authority: String,
    /// Path and query of the URI.
    path: String,
    timeout: std::time::Duration,
    cache_duration: std::time::Duration,
    clusters: Arc<ArcSwap<ClusterMap>>,
    /// The keys and when they expire.
    cached: arc_swap::ArcSwapOption<(std::time::Instant, Arc<Keys>)>,
    fetching: tokio::sync::Mutex<()>,
    fetch_success: Arc<Counter>,
    fetch_failed: Arc<Counter>,
}

impl RemoteJwks {
    pub(super) fn new(
        r: &legate_api::pb::envoy::extensions::filters::http::jwt_authn::v3::RemoteJwks,
        ctx: &FetchContext<'_>,
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

    pub(super) fn fresh(&self) -> Option<Arc<Keys>> {
        let c = self.cached.load();
        c.as_ref().filter(|c| c.0 > std::time::Instant::now()).map(|c| c.1.clone())
    }

    /// The keys, fetched first when missing or stale. None: the fetch failed.
    pub(super) async fn keys(&self) -> Option<Arc<Keys>> {
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
        use crate::upstream::error::UpstreamError as E;
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
pub async fn start_async_fetches(pending: &Mutex<Vec<Weak<RemoteJwks>>>) {
    let pending: Vec<_> = std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()));
    for w in pending {
        if let Some(r) = w.upgrade() {
            RemoteJwks::start(r).await;
        }
    }
}

/// What remote JWKS need from around the filter: the clusters to fetch
/// over, the list `async_fetch` ones wait in, and the fetch counters.
pub struct FetchContext<'a> {
    pub clusters: &'a Arc<ArcSwap<ClusterMap>>,
    pub jwks_async: &'a Arc<Mutex<Vec<Weak<RemoteJwks>>>>,
    pub fetch_success: Arc<Counter>,
    pub fetch_failed: Arc<Counter>,
}
