//! One DNS cache: its hosts by `host:port`, each resolved on first use
//! (requests for it wait on that one resolution), refreshed while used,
//! dropped once unused for `host_ttl`; its `dns_cache.<name>.*` stats; the
//! circuit breaker on requests waiting for it. Resolution is the system's
//! (getaddrinfo, as `lookup_host` runs it), on the runtime of the request
//! that first asked for the name.

use super::Settings;
use crate::stats::{Counter, Gauge, Store};
use crate::upstream::dns::pick_family;
use crate::upstream::host::Host;
use legate_api::pb::envoy::extensions::common::dynamic_forward_proxy::v3::DnsCacheConfig;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// `dns_cache.<name>.*`, as Envoy names them.
struct Stats {
    dns_query_attempt: Arc<Counter>,
    dns_query_success: Arc<Counter>,
    dns_query_failure: Arc<Counter>,
    dns_query_timeout: Arc<Counter>,
    host_added: Arc<Counter>,
    host_removed: Arc<Counter>,
    host_address_changed: Arc<Counter>,
    host_overflow: Arc<Counter>,
    dns_rq_pending_overflow: Arc<Counter>,
    num_hosts: Arc<Gauge>,
    /// The circuit breaker's gauges: 1 while full, and the room left.
    rq_pending_open: Arc<Gauge>,
    rq_pending_remaining: Arc<Gauge>,
}

impl Stats {
    fn new(store: &Store, name: &str, max_pending: u64) -> Self {
        let c = |s: &str| store.counter(&format!("dns_cache.{name}.{s}"));
        let g = |s: &str| store.gauge(&format!("dns_cache.{name}.{s}"));
        // Envoy's cache_load counts hosts loaded from a key-value store, and
        // dns_address_filter_out addresses `resolved_address_filter` left
        // out, neither of which Legate has: always 0.
        c("cache_load");
        c("dns_address_filter_out");
        let rq_pending_remaining = g("circuit_breakers.rq_pending_remaining");
        rq_pending_remaining.set(max_pending as i64);
        Self {
            dns_query_attempt: c("dns_query_attempt"),
            dns_query_success: c("dns_query_success"),
            dns_query_failure: c("dns_query_failure"),
            dns_query_timeout: c("dns_query_timeout"),
            host_added: c("host_added"),
            host_removed: c("host_removed"),
            host_address_changed: c("host_address_changed"),
            host_overflow: c("host_overflow"),
            dns_rq_pending_overflow: c("dns_rq_pending_overflow"),
            num_hosts: g("num_hosts"),
            rq_pending_open: g("circuit_breakers.rq_pending_open"),
            rq_pending_remaining,
        }
    }
}

/// What a host's resolutions have found so far.
#[derive(Clone, Default)]
struct State {
    /// The first resolution has finished (requests waiting for it go on).
    done: bool,
    /// The address found (kept through later failures), as an upstream host.
    host: Option<Arc<Host>>,
}

/// One `host:port` of the cache.
struct Entry {
    key: String,
    /// The name resolved (an IPv6 literal without its brackets) and the port.
    name: String,
    port: u16,
    state: watch::Sender<State>,
    /// When a request last used it, in ms since the cache's epoch.
    last_used: AtomicU64,
}

/// What a request finds for its host.
pub enum Load {
    /// Resolved: the host to send to.
    Ready(Arc<Host>),
    /// The cache is full (`max_hosts`).
    Overflow,
    /// Resolving: the host, or None when the name did not resolve.
    Pending(std::pin::Pin<Box<dyn Future<Output = Option<Arc<Host>>> + Send>>),
}

/// A request waiting for a resolution holds one (the cache's circuit breaker).
pub struct PendingGuard(Arc<DnsCache>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let now = self.0.pending.fetch_sub(1, Relaxed) - 1;
        self.0.pending_changed(now);
    }
}

/// A DNS cache, shared by the filters and clusters that name it.
pub struct DnsCache {
    pub(super) config: DnsCacheConfig,
    settings: Settings,
    hosts: Mutex<HashMap<String, Arc<Entry>>>,
    pending: AtomicU64,
    stats: Stats,
    epoch: Instant,
}

impl DnsCache {
    pub(super) fn new(config: DnsCacheConfig, settings: Settings, store: &Store) -> Self {
        let stats = Stats::new(store, &config.name, settings.max_pending);
        Self { config, settings, hosts: Mutex::default(), pending: AtomicU64::new(0), stats, epoch: Instant::now() }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn hosts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Entry>>> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place among the requests waiting for resolutions, or None (counted)
    /// when `max_pending_requests` are already waiting.
    pub fn pending_slot(self: &Arc<Self>) -> Option<PendingGuard> {
        let before = self.pending.fetch_add(1, Relaxed);
        if before >= self.settings.max_pending {
            self.pending.fetch_sub(1, Relaxed);
            self.stats.dns_rq_pending_overflow.inc();
            return None;
        }
        self.pending_changed(before + 1);
        Some(PendingGuard(self.clone()))
    }

    fn pending_changed(&self, now: u64) {
        let max = self.settings.max_pending;
        self.stats.rq_pending_remaining.set(max.saturating_sub(now) as i64);
        self.stats.rq_pending_open.set(i64::from(now >= max));
    }

    /// The host a request for `authority` goes to, when it has been
    /// resolved to an address (the cluster's pick); marks it used.
    pub fn host_for(&self, authority: &str, default_port: u16) -> Option<Arc<Host>> {
        let key = normalize(authority, default_port);
        let hosts = self.hosts();
        let e = hosts.get(&key)?;
        let host = e.state.borrow().host.clone()?;
        e.last_used.store(self.now_ms(), Relaxed);
        Some(host)
    }

    /// Finds `authority` (its port, else `default_port`) in the cache, or
    /// starts resolving it. A name whose resolutions all failed is resolved
    /// again, as a new host, as Envoy does.
    pub fn load(self: &Arc<Self>, authority: &str, default_port: u16) -> Load {
        let key = normalize(authority, default_port);
        let mut hosts = self.hosts();
        let overflow = hosts.len() >= self.settings.max_hosts;
        if let Some(e) = hosts.get(&key).cloned() {
            let state = e.state.borrow().clone();
            match (state.done, state.host) {
                (true, Some(host)) => {
                    e.last_used.store(self.now_ms(), Relaxed);
                    return Load::Ready(host);
                }
                (true, None) if !overflow => self.remove(&mut hosts, &key),
                (false, _) if !overflow => return Load::Pending(Box::pin(wait(e))),
                _ => {}
            }
        }
        if overflow {
            self.stats.host_overflow.inc();
            return Load::Overflow;
        }
        let (name, port) = split_authority(&key, default_port);
        let entry = Arc::new(Entry {
            key: key.clone(),
            name,
            port,
            state: watch::Sender::new(State::default()),
            last_used: AtomicU64::new(self.now_ms()),
        });
        hosts.insert(key, entry.clone());
        self.stats.host_added.inc();
        self.stats.num_hosts.inc();
        drop(hosts);
        tokio::spawn(keep_resolved(Arc::downgrade(self), entry.clone()));
        Load::Pending(Box::pin(wait(entry)))
    }

    fn remove(&self, hosts: &mut HashMap<String, Arc<Entry>>, key: &str) {
        if hosts.remove(key).is_some() {
            self.stats.host_removed.inc();
            self.stats.num_hosts.dec();
        }
    }

    /// Whether `entry` is still the cache's host for its key.
    fn current(&self, entry: &Arc<Entry>) -> bool {
        self.hosts().get(&entry.key).is_some_and(|e| Arc::ptr_eq(e, entry))
    }

    /// One resolution of `entry`: its address kept when found (a failure
    /// keeps an earlier one). Whether it succeeded.
    async fn resolve(&self, entry: &Entry) -> bool {
        self.stats.dns_query_attempt.inc();
        let lookup = tokio::net::lookup_host((entry.name.as_str(), entry.port));
        let result = match self.settings.query_timeout {
            Some(t) => match tokio::time::timeout(t, lookup).await {
                Ok(r) => Some(r),
                Err(_) => {
                    self.stats.dns_query_timeout.inc();
                    None
                }
            },
            None => Some(lookup.await),
        };
        let found: Option<SocketAddr> = match result {
            Some(Ok(addrs)) => pick_family(addrs.collect(), self.settings.family).into_iter().next(),
            Some(Err(e)) => {
                tracing::debug!(cache = %self.name(), host = %entry.name, "DNS resolution failed: {e}");
                None
            }
            None => None,
        };
        match found {
            Some(_) => self.stats.dns_query_success.inc(),
            None => self.stats.dns_query_failure.inc(),
        }
        entry.state.send_modify(|s| {
            if let Some(addr) = found {
                if s.host.as_ref().is_none_or(|h| h.addr != addr) {
                    s.host = Some(Arc::new(Host::new(addr, entry.name.clone(), 1, 0)));
                    self.stats.host_address_changed.inc();
                }
            }
            s.done = true;
        });
        found.is_some()
    }
}

/// Waits for the entry's first resolution.
async fn wait(entry: Arc<Entry>) -> Option<Arc<Host>> {
    let mut rx = entry.state.subscribe();
    let state = rx.wait_for(|s| s.done).await.ok()?;
    state.host.clone()
}

/// Resolves a host, then again at each refresh while it stays in the cache
/// and is used; drops it once unused for `host_ttl` (checked when a
/// refresh is due, as Envoy does).
async fn keep_resolved(cache: Weak<DnsCache>, entry: Arc<Entry>) {
    let mut failures = 0u32;
    loop {
        let Some(c) = cache.upgrade() else { return };
        let ok = c.resolve(&entry).await;
        let s = &c.settings;
        let wait = if ok {
            failures = 0;
            s.refresh
        } else if s.no_refresh_on_failure {
            return;
        } else {
            // Envoy's jittered exponential backoff: a random time below an
            // interval that doubles up to the maximum.
            let interval = s.failure_base.saturating_mul(1 << failures.min(20)).min(s.failure_max);
            failures += 1;
            interval.mul_f64(rand::random::<f64>()).max(Duration::from_millis(1))
        };
        drop(c);
        tokio::time::sleep(wait).await;
        let Some(c) = cache.upgrade() else { return };
        if !c.current(&entry) {
            return;
        }
        let unused = c.now_ms().saturating_sub(entry.last_used.load(Relaxed));
        if unused > c.settings.host_ttl.as_millis() as u64 {
            let mut hosts = c.hosts();
            if hosts.get(&entry.key).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                c.remove(&mut hosts, &entry.key);
            }
            return;
        }
    }
}

/// `host` with the port it names, else `default_port` (Envoy's
/// `normalizeHostForDfp`): the cache's key.
pub fn normalize(authority: &str, default_port: u16) -> String {
    if has_port(authority) {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    }
}

fn has_port(authority: &str) -> bool {
    let tail = match authority.rfind(']') {
        Some(i) => &authority[i + 1..],
        None if authority.matches(':').count() > 1 => return false,
        None => authority,
    };
    tail.rsplit_once(':').is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A normalized key's name to resolve and port.
fn split_authority(key: &str, default_port: u16) -> (String, u16) {
    let Some((host, port)) = key.rsplit_once(':') else { return (key.to_string(), default_port) };
    let port = port.parse().unwrap_or(default_port);
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (host.to_string(), port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_take_the_default_port_when_the_host_has_none() {
        assert_eq!(normalize("example.com", 80), "example.com:80");
        assert_eq!(normalize("example.com:8080", 443), "example.com:8080");
        assert_eq!(normalize("[::1]", 443), "[::1]:443");
        assert_eq!(normalize("[::1]:9000", 443), "[::1]:9000");
        assert_eq!(normalize("::1", 80), "::1:80");
        assert_eq!(split_authority("[::1]:9000", 80), ("::1".to_string(), 9000));
        assert_eq!(split_authority("localhost:81", 80), ("localhost".to_string(), 81));
    }

    fn cache(yaml: &str) -> (Arc<DnsCache>, Arc<Store>) {
        let (c, _) =
            legate_api::load::decode_typed::<DnsCacheConfig>(legate_api::load::parse_text(yaml).unwrap()).unwrap();
        let store = Arc::new(Store::default());
        (super::super::cache_for(&c, &store, "dns_cache_config").unwrap(), store)
    }

    fn stat(store: &Store, name: &str) -> u64 {
        store.counter(&format!("dns_cache.t.{name}")).value()
    }

    #[tokio::test]
    async fn a_name_resolves_once_and_unused_hosts_expire() {
        let (c, store) = cache(
            "{name: t, dns_lookup_family: V4_ONLY, host_ttl: 0.05s, dns_refresh_rate: 1s, dns_min_refresh_rate: 1s}",
        );
        let Load::Pending(f) = c.load("localhost:8000", 80) else { panic!("not resolving") };
        let host = f.await.expect("localhost resolves");
        assert_eq!(host.addr, "127.0.0.1:8000".parse().unwrap());
        assert!(matches!(c.load("localhost:8000", 80), Load::Ready(_)));
        assert!(c.host_for("localhost:8000", 80).is_some());
        assert_eq!((stat(&store, "dns_query_attempt"), stat(&store, "host_added")), (1, 1));
        // Unused past its TTL: dropped at the next refresh.
        let deadline = Instant::now() + Duration::from_secs(3);
        while stat(&store, "host_removed") == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(stat(&store, "host_removed"), 1);
        assert!(c.host_for("localhost:8000", 80).is_none());
        assert_eq!(store.gauge("dns_cache.t.num_hosts").value(), 0);
    }

    #[tokio::test]
    async fn a_full_cache_overflows_and_a_second_config_must_match() {
        let (c, store) = cache("{name: t, max_hosts: 1, dns_cache_circuit_breaker: {max_pending_requests: 1}}");
        let Load::Pending(f) = c.load("127.0.0.1:1", 80) else { panic!("not resolving") };
        assert!(f.await.is_some());
        assert!(matches!(c.load("127.0.0.2:1", 80), Load::Overflow));
        assert_eq!(stat(&store, "host_overflow"), 1);
        let slot = c.pending_slot();
        assert!(slot.is_some() && c.pending_slot().is_none());
        assert_eq!(stat(&store, "dns_rq_pending_overflow"), 1);
        let other = legate_api::pb::envoy::extensions::common::dynamic_forward_proxy::v3::DnsCacheConfig {
            name: "t".into(),
            ..Default::default()
        };
        let e = super::super::cache_for(&other, &store, "p").err().unwrap_or_default();
        assert_eq!(e, "p: config specified DNS cache 't' with different settings");
    }
}
