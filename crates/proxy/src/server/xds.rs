//! The proxy's xDS client: ADS over gRPC, state of the world or delta.
//!
//! It runs on the main thread. What it receives is validated with the same
//! loader rules as a bootstrap, compiled off the request path, and swapped in:
//! clusters into the cluster map, endpoints into host sets, route tables into
//! RDS slots, listeners through the listener manager. What cannot be applied is
//! NACKed with the reason and the last good config keeps serving. The stream
//! reconnects with jittered backoff; traffic keeps flowing meanwhile.

use crate::http::route::RouteTable;
use crate::listener::ListenerConfig;
use crate::server::instance::Shared;
use crate::upstream::cluster::{Cluster, ClusterMap, Discovery};
use crate::upstream::endpoints::eds_hosts;
use legate_api::pb::envoy::config::bootstrap::v3::Bootstrap;
use legate_api::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use legate_api::pb::envoy::config::core::v3::{api_config_source::ApiType, grpc_service::TargetSpecifier, Node};
use legate_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use legate_api::pb::envoy::config::listener::v3::Listener as PbListener;
use legate_api::pb::envoy::config::route::v3::RouteConfiguration;
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use legate_api::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest, DiscoveryRequest,
};
use legate_api::pb::google::protobuf::Any;
use legate_api::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SDS: &str = crate::tls::sds::SECRET_TYPE;

/// Where and how to reach the management server.
#[derive(Debug, Clone)]
pub struct AdsConfig {
    pub delta: bool,
    /// The first management server's cluster.
    pub cluster: String,
    /// Every listed management server's cluster (`grpc_services` in order,
    /// the first is `cluster`): a failed stream moves on to the next, as
    /// Envoy cycles through them.
    pub clusters: Vec<String>,
    pub cds: bool,
    pub lds: bool,
    pub initial_fetch_timeout: Duration,
}

/// Reads `dynamic_resources` from the bootstrap. `None` when there is none.
pub fn ads_config(b: &Bootstrap) -> Result<Option<AdsConfig>, String> {
    let Some(dr) = &b.dynamic_resources else { return Ok(None) };
    let Some(ads) = &dr.ads_config else {
        if dr.cds_config.is_some() || dr.lds_config.is_some() {
            return Err("dynamic_resources: only ads_config (ADS) is supported".into());
        }
        return Ok(None);
    };
    let delta = match ApiType::try_from(ads.api_type) {
        Ok(ApiType::Grpc) | Ok(ApiType::AggregatedGrpc) => false,
        Ok(ApiType::DeltaGrpc) | Ok(ApiType::AggregatedDeltaGrpc) => true,
        _ => return Err("dynamic_resources.ads_config.api_type: only GRPC and DELTA_GRPC are supported".into()),
    };
    let mut clusters = Vec::with_capacity(ads.grpc_services.len());
    for (i, g) in ads.grpc_services.iter().enumerate() {
        match g.target_specifier.as_ref() {
            Some(TargetSpecifier::EnvoyGrpc(e)) if !e.cluster_name.is_empty() => clusters.push(e.cluster_name.clone()),
            _ => {
                return Err(format!(
                    "dynamic_resources.ads_config.grpc_services[{i}]: envoy_grpc with a cluster_name is required"
                ))
            }
        }
    }
    let Some(cluster) = clusters.first().cloned() else {
        return Err("dynamic_resources.ads_config.grpc_services[0]: envoy_grpc with a cluster_name is required".into());
    };
    let check =
        |cs: &Option<legate_api::pb::envoy::config::core::v3::ConfigSource>, what: &str| -> Result<bool, String> {
            match cs {
                None => Ok(false),
                Some(cs) if crate::common::config_source::is_ads(cs) => Ok(true),
                Some(_) => Err(format!("dynamic_resources.{what}: only ads is supported")),
            }
        };
    let initial_fetch_timeout = dr
        .cds_config
        .as_ref()
        .and_then(|c| c.initial_fetch_timeout.as_ref())
        .map_or(Duration::from_secs(15), legate_api::duration::from_pb);
    Ok(Some(AdsConfig {
        delta,
        cluster,
        clusters,
        cds: check(&dr.cds_config, "cds_config")?,
        lds: check(&dr.lds_config, "lds_config")?,
        initial_fetch_timeout,
    }))
}

/// The dynamic config the proxy holds (survives reconnects).
#[derive(Default)]
struct Dynamic {
    clusters: BTreeMap<String, PbCluster>,
    assignments: HashMap<String, ClusterLoadAssignment>,
    listeners: BTreeMap<String, PbListener>,
    routes: BTreeMap<String, RouteConfiguration>,
    /// Listeners compiled but waiting for their route configuration (warming).
    warming: BTreeMap<String, (ListenerConfig, String, Instant)>,
    /// New EDS clusters waiting for their first endpoints (cluster warming):
    /// not used for traffic until then, or until the initial fetch timeout.
    warming_clusters: BTreeMap<String, (Arc<Cluster>, Instant)>,
    /// SotW: last accepted version per type. Delta: name -> version per type.
    versions: HashMap<&'static str, String>,
    delta_versions: HashMap<&'static str, BTreeMap<String, String>>,
    /// Named subscriptions last sent.
    subscribed: HashMap<&'static str, BTreeSet<String>>,
}

/// Runs the client forever: connect, stream, and reconnect with backoff.
pub async fn run(shared: Arc<Shared>, cfg: AdsConfig) {
    let connected = shared.store.gauge("control_plane.connected_state");
    let mut dynamic = Dynamic::default();
    let mut backoff = Duration::from_millis(500);
    // Which of the listed management servers to try next.
    let mut next = 0usize;
    loop {
        let cluster = cfg.clusters.get(next % cfg.clusters.len().max(1)).unwrap_or(&cfg.cluster);
        next = (next + 1) % cfg.clusters.len().max(1);
        let target = {
            let map = shared.clusters.load();
            map.get(cluster).and_then(|c| c.pick().map(|h| Target { addr: h.addr, cluster: c.clone() }))
        };
        let started = Instant::now();
        match target {
            Some(target) => {
                let addr = target.addr;
                let result = if cfg.delta {
                    delta_session(&shared, &cfg, &target, &mut dynamic, &connected).await
                } else {
                    sotw_session(&shared, &cfg, &target, &mut dynamic, &connected).await
                };
                // A stream that was up and then broke (its server died) fails
                // over to the next server without the grown backoff.
                if connected.value() == 1 && cfg.clusters.len() > 1 {
                    backoff = Duration::from_millis(200);
                }
                connected.set(0);
                if let Err(e) = result {
                    tracing::warn!("xDS stream to {addr} ended: {e}");
                }
            }
            None => tracing::warn!("xDS cluster '{cluster}' has no host"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        // Full jitter: anywhere up to the current backoff.
        let wait = backoff.mul_f64(rand::random_range(0.5..1.0));
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

fn node(shared: &Shared) -> Node {
    let mut n = shared.bootstrap.bootstrap.node.clone().unwrap_or_default();
    n.user_agent_name = "legate".into();
    n.user_agent_version_type =
        Some(legate_api::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        ));
    n
}

/// A management server to stream from: a host of the xDS cluster, and the
/// cluster (its `transport_socket` says whether to speak TLS).
struct Target {
    addr: SocketAddr,
    cluster: Arc<Cluster>,
}

/// A gRPC channel to the management server: plaintext HTTP/2, or over TLS
/// when the xDS cluster has an `UpstreamTlsContext` (its CA, SNI and client
/// certificate, as for any upstream).
async fn connect(target: &Target) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, String> {
    let addr = target.addr;
    // `http` even for TLS: the connector below does the TLS (tonic would
    // insist on its own TLS settings for an `https` URI).
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30));
    let channel = match &target.cluster.tls {
        None => endpoint.connect().await.map_err(|e| format!("connect: {e}"))?,
        Some(tls) => {
            let connector = tls.connector().ok_or("the xDS cluster's TLS secrets are not available")?;
            let name = tls.server_name(addr.ip());
            let tls_connect = tower::service_fn(move |_uri: http::Uri| {
                let (connector, name) = (connector.clone(), name.clone());
                async move {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    let _ = tcp.set_nodelay(true);
                    let stream = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            });
            endpoint.connect_with_connector(tls_connect).await.map_err(|e| format!("connect over TLS: {e:?}"))?
        }
    };
    Ok(AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20))
}

fn decode_all<T: Message + Default>(resources: &[Any], want: &str) -> Result<Vec<T>, String> {
    resources
        .iter()
        .map(|a| {
            if a.type_url != want {
                return Err(format!("resource type {} does not match {want}", a.type_url));
            }
            T::decode(a.value.as_slice()).map_err(|e| format!("cannot decode {want}: {e}"))
        })
        .collect()
}

/// One validator for bootstrap and xDS: schema rules, then what Legate implements.
fn check<T: Message + prost::Name>(msg: &T, name: &str) -> Result<(), String> {
    let Some(dynamic) = legate_api::load::to_dynamic(msg) else {
        return Err(format!("{name}: cannot read as {}", T::full_name()));
    };
    let mut problems: Vec<String> =
        legate_api::validate::validate(&dynamic, "").iter().map(|e| format!("{name}: {e}")).collect();
    problems.extend(legate_api::support::unsupported(&dynamic).iter().map(|e| format!("{name}: {e}")));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

// ------------------------------------------------------------------ applying

impl Dynamic {
    /// Installs the full set of dynamic clusters.
    fn apply_clusters(&mut self, shared: &Shared, clusters: Vec<PbCluster>, version: &str) -> Result<(), String> {
        let old_map = shared.clusters.load_full();
        let statics: BTreeSet<String> = shared
            .bootstrap
            .bootstrap
            .static_resources
            .as_ref()
            .map(|s| s.clusters.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default();
        let mut next: ClusterMap =
            old_map.iter().filter(|(n, _)| statics.contains(*n)).map(|(n, c)| (n.clone(), c.clone())).collect();
        let mut configs = BTreeMap::new();
        let mut warming = BTreeMap::new();
        for c in clusters {
            if statics.contains(&c.name) {
                return Err(format!("cluster '{}': a static cluster of that name exists", c.name));
            }
            check(&c, &c.name)?;
            let reuse = self.clusters.get(&c.name).filter(|old| **old == c).and_then(|_| old_map.get(&c.name));
            let cluster = match reuse {
                Some(existing) => existing.clone(),
                None => {
                    let fresh = Cluster::compile(&c, &shared.store, shared.options.concurrency, &shared.ctx.secrets)
                        .map_err(|e| format!("cluster '{}': {e}", c.name))?;
                    if fresh.tls.as_ref().is_some_and(|t| !t.ready()) {
                        // A cluster warms until its TLS secrets arrive; the
                        // version it replaces, if any, serves meanwhile.
                        let since = self.warming_clusters.get(&c.name).map_or_else(Instant::now, |w| w.1);
                        warming.insert(c.name.clone(), (fresh, since));
                        if let Some(old) = old_map.get(&c.name) {
                            next.insert(c.name.clone(), old.clone());
                        }
                        configs.insert(c.name.clone(), c);
                        continue;
                    }
                    if fresh.discovery == Discovery::Eds {
                        if let Some(la) = self.assignments.get(&fresh.eds_service_name) {
                            fresh.update_hosts(eds_hosts(la).map_err(|e| format!("cluster '{}': {e}", c.name))?);
                        } else if let Some(prev) = old_map.get(&c.name) {
                            // Keep serving the old endpoints until EDS says otherwise.
                            fresh.hosts.store(prev.hosts.load_full());
                        } else {
                            // A new cluster warms until its endpoints arrive.
                            let since = self.warming_clusters.get(&c.name).map_or_else(Instant::now, |w| w.1);
                            warming.insert(c.name.clone(), (fresh, since));
                            configs.insert(c.name.clone(), c);
                            continue;
                        }
                    }
                    fresh
                }
            };
            next.insert(c.name.clone(), cluster);
            configs.insert(c.name.clone(), c);
        }
        for (name, c) in &next {
            if !old_map.contains_key(name) {
                shared.store.counter("cluster_manager.cluster_added").inc();
            } else if !Arc::ptr_eq(c, &old_map[name]) {
                shared.store.counter("cluster_manager.cluster_modified").inc();
            }
        }
        for name in old_map.keys() {
            if !next.contains_key(name) {
                shared.store.counter("cluster_manager.cluster_removed").inc();
            }
        }
        for (name, c) in &next {
            if old_map.get(name).is_none_or(|old| !Arc::ptr_eq(old, c)) {
                crate::upstream::tasks::start(c);
            }
        }
        shared.store.gauge("cluster_manager.active_clusters").set(next.len() as i64);
        shared.store.gauge("cluster_manager.warming_clusters").set(warming.len() as i64);
        self.warming_clusters = warming;
        shared.clusters.store(Arc::new(next));
        {
            let mut dump = shared.dynamic_clusters.lock().unwrap_or_else(|e| e.into_inner());
            let now = chrono::Utc::now();
            let mut fresh = BTreeMap::new();
            for (name, c) in &configs {
                let kept = dump.remove(name).filter(|(_, _, old)| old == c);
                fresh.insert(name.clone(), kept.unwrap_or_else(|| (version.to_string(), now, c.clone())));
            }
            *dump = fresh;
        }
        self.clusters = configs;
        Ok(())
    }

    fn eds_names(&self, shared: &Shared) -> BTreeSet<String> {
        let map = shared.clusters.load();
        map.values()
            .chain(self.warming_clusters.values().map(|(c, _)| c))
            .filter(|c| c.discovery == Discovery::Eds)
            .map(|c| c.eds_service_name.clone())
            .collect()
    }

    /// Puts warmed clusters into service: their endpoints arrived, or they
    /// waited `timeout` (then they serve with what they have, as in Envoy).
    fn activate_clusters(&mut self, shared: &Shared, timeout: Option<Duration>) {
        let ready: Vec<String> = self
            .warming_clusters
            .iter()
            .filter(|(_, (c, since))| {
                let endpoints = c.discovery != Discovery::Eds || self.assignments.contains_key(&c.eds_service_name);
                let secrets = c.tls.as_ref().is_none_or(|t| t.settled());
                (endpoints && secrets) || timeout.is_some_and(|t| since.elapsed() >= t)
            })
            .map(|(n, _)| n.clone())
            .collect();
        if ready.is_empty() {
            return;
        }
        let mut map = (*shared.clusters.load_full()).clone();
        for name in ready {
            if let Some((c, _)) = self.warming_clusters.remove(&name) {
                if let Some(la) = self.assignments.get(&c.eds_service_name) {
                    if let Ok(hosts) = eds_hosts(la) {
                        c.update_hosts(hosts);
                    }
                }
                crate::upstream::tasks::start(&c);
                let replaced = map.insert(name, c).is_some();
                shared
                    .store
                    .counter(if replaced {
                        "cluster_manager.cluster_modified"
                    } else {
                        "cluster_manager.cluster_added"
                    })
                    .inc();
            }
        }
        shared.store.gauge("cluster_manager.active_clusters").set(map.len() as i64);
        shared.store.gauge("cluster_manager.warming_clusters").set(self.warming_clusters.len() as i64);
        shared.clusters.store(Arc::new(map));
    }

    fn apply_assignments(&mut self, shared: &Shared, items: Vec<ClusterLoadAssignment>) -> Result<(), String> {
        let mut parsed = Vec::new();
        for la in items {
            check(&la, &la.cluster_name)?;
            let hosts = eds_hosts(&la).map_err(|e| format!("{}: {e}", la.cluster_name))?;
            parsed.push((la, hosts));
        }
        let map = shared.clusters.load();
        for (la, hosts) in parsed {
            for c in map.values().filter(|c| c.discovery == Discovery::Eds && c.eds_service_name == la.cluster_name) {
                c.update_hosts(hosts.clone());
            }
            self.assignments.insert(la.cluster_name.clone(), la);
        }
        self.activate_clusters(shared, None);
        Ok(())
    }

    /// Installs the full set of dynamic listeners; those whose routes have not
    /// arrived wait (warm) until they do or the initial fetch timeout passes.
    fn apply_listeners(&mut self, shared: &Shared, listeners: Vec<PbListener>, version: &str) -> Result<(), String> {
        let mut compiled = Vec::new();
        for l in &listeners {
            check(l, &l.name)?;
            if self.listeners.get(&l.name) == Some(l) {
                continue;
            }
            let lc = ListenerConfig::compile(l, &shared.ctx).map_err(|e| format!("listener '{}': {e}", l.name))?;
            compiled.push(lc);
        }
        // JWKS with async_fetch start fetching now (their listeners do not
        // wait for them: Envoy's warming would).
        let ctx = shared.ctx.clone();
        tokio::spawn(async move { crate::http::filters::jwt::start_async_fetches(&ctx.jwks_async).await });
        let keep: BTreeSet<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
        for name in shared.listeners.names() {
            if self.listeners.contains_key(&name) && !keep.contains(name.as_str()) {
                shared.listeners.remove(&name);
                shared.store.counter("listener_manager.listener_removed").inc();
            }
        }
        self.warming.retain(|n, _| keep.contains(n.as_str()));
        for lc in compiled {
            let name = lc.name.clone();
            self.warming.insert(name, (lc, version.to_string(), Instant::now()));
        }
        self.listeners = listeners.into_iter().map(|l| (l.name.clone(), l)).collect();
        self.activate_warm(shared, None)
    }

    /// Moves warmed listeners into service: their route table is there, or
    /// they have waited `timeout`.
    fn activate_warm(&mut self, shared: &Shared, timeout: Option<Duration>) -> Result<(), String> {
        let ready: Vec<String> = self
            .warming
            .iter()
            .filter(|(_, (lc, _, since))| {
                (lc.hcms().all(|h| h.rds_name().is_none_or(|r| shared.ctx.rds.is_ready(r))) && lc.tls_ready())
                    || timeout.is_some_and(|t| since.elapsed() >= t)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in ready {
            let Some((lc, version, _)) = self.warming.remove(&name) else { continue };
            let existed = shared.listeners.names().contains(&name);
            shared.listeners.apply(lc, Some(version))?;
            shared
                .store
                .counter(if existed { "listener_manager.listener_modified" } else { "listener_manager.listener_added" })
                .inc();
        }
        shared.store.gauge("listener_manager.total_listeners_active").set(shared.listeners.names().len() as i64);
        shared.store.gauge("listener_manager.total_listeners_warming").set(self.warming.len() as i64);
        Ok(())
    }

    fn apply_routes(&mut self, shared: &Shared, routes: Vec<RouteConfiguration>, version: &str) -> Result<(), String> {
        let mut compiled = Vec::new();
        for rc in routes {
            check(&rc, &rc.name)?;
            let table = RouteTable::compile(&rc).map_err(|e| format!("route configuration '{}': {e}", rc.name))?;
            compiled.push((rc, table));
        }
        for (rc, table) in compiled {
            self.routes.insert(rc.name.clone(), rc.clone());
            for prefix in shared.ctx.rds.install(rc.clone(), table, version) {
                shared.store.counter(&format!("http.{prefix}.rds.{}.update_success", rc.name)).inc();
            }
        }
        self.activate_warm(shared, None)
    }

    /// Installs secrets from SDS: every TLS context using one rebuilds its
    /// config for new connections; listeners and clusters waiting for them
    /// warm up. A secret that would not build is refused (NACK) whole.
    fn apply_secrets(&mut self, shared: &Shared, secrets: Vec<Secret>, version: &str) -> Result<(), String> {
        for s in &secrets {
            let checked = check(s, &s.name)
                .and_then(|_| crate::tls::sds::check_secret(s).map_err(|e| format!("secret '{}': {e}", s.name)));
            if let Err(e) = checked {
                shared.ctx.secrets.count(&s.name, "update_rejected");
                return Err(e);
            }
        }
        for s in secrets {
            let name = s.name.clone();
            if let Some(slot) = shared.ctx.secrets.ads_slot(&name) {
                slot.set(s, version);
                shared.ctx.secrets.count(&name, "update_success");
            }
        }
        self.activate_clusters(shared, None);
        self.activate_warm(shared, None)
    }

    fn rds_names(&self, shared: &Shared) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for v in shared.listeners.list() {
            for n in v.config.hcms().filter_map(|h| h.rds_name()) {
                names.insert(n.to_string());
            }
        }
        for (lc, _, _) in self.warming.values() {
            for n in lc.hcms().filter_map(|h| h.rds_name()) {
                names.insert(n.to_string());
            }
        }
        names
    }

    /// Applies one response's resources of `type_url` (the full set for
    /// wildcard types); `Err` is the NACK reason.
    fn apply(&mut self, shared: &Shared, type_url: &str, resources: &[Any], version: &str) -> Result<(), String> {
        let (stat, result) = match type_url {
            CDS => (
                "cluster_manager.cds",
                decode_all::<PbCluster>(resources, CDS).and_then(|c| self.apply_clusters(shared, c, version)),
            ),
            EDS => (
                "cluster_manager.eds",
                decode_all::<ClusterLoadAssignment>(resources, EDS).and_then(|c| self.apply_assignments(shared, c)),
            ),
            LDS => (
                "listener_manager.lds",
                decode_all::<PbListener>(resources, LDS).and_then(|l| self.apply_listeners(shared, l, version)),
            ),
            RDS => (
                "rds",
                decode_all::<RouteConfiguration>(resources, RDS).and_then(|r| self.apply_routes(shared, r, version)),
            ),
            SDS => ("sds", decode_all::<Secret>(resources, SDS).and_then(|r| self.apply_secrets(shared, r, version))),
            other => return Err(format!("unexpected type {other}")),
        };
        if type_url == SDS {
            // Counted per secret (`sds.<name>.*`), as Envoy does.
            if let Err(e) = &result {
                tracing::warn!("rejecting {type_url} version {version}: {e}");
            }
            return result;
        }
        shared.store.counter(&format!("{stat}.update_attempt")).inc();
        match &result {
            Ok(()) => shared.store.counter(&format!("{stat}.update_success")).inc(),
            Err(e) => {
                tracing::warn!("rejecting {type_url} version {version}: {e}");
                shared.store.counter(&format!("{stat}.update_rejected")).inc();
            }
        }
        result
    }
}

// ------------------------------------------------------------------ SotW

async fn sotw_session(
    shared: &Arc<Shared>,
    cfg: &AdsConfig,
    target: &Target,
    d: &mut Dynamic,
    connected: &crate::stats::Gauge,
) -> Result<(), String> {
    let mut client = connect(target).await?;
    let (tx, rx) = mpsc::unbounded_channel::<DiscoveryRequest>();
    let node = node(shared);
    let mut first = true;
    let mut send = |type_url: &str, version: String, nonce: String, names: Vec<String>, error: Option<String>| {
        let req = DiscoveryRequest {
            version_info: version,
            node: if first { Some(node.clone()) } else { None },
            resource_names: names,
            type_url: type_url.to_string(),
            response_nonce: nonce,
            error_detail: error.map(|m| RpcStatus { code: 3, message: m, details: vec![] }),
            ..Default::default()
        };
        first = false;
        let _ = tx.send(req);
    };
    // Initial requests: the wildcard types, then any named subscriptions held.
    if cfg.cds {
        send(CDS, d.versions.get(CDS).cloned().unwrap_or_default(), String::new(), vec![], None);
    }
    if cfg.lds {
        send(LDS, d.versions.get(LDS).cloned().unwrap_or_default(), String::new(), vec![], None);
    }
    for (ty, names) in [(SDS, shared.ctx.secrets.ads_names()), (EDS, d.eds_names(shared)), (RDS, d.rds_names(shared))] {
        if !names.is_empty() {
            d.subscribed.insert(ty, names.clone());
            send(ty, d.versions.get(ty).cloned().unwrap_or_default(), String::new(), names.into_iter().collect(), None);
        }
    }
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .map_err(|e| format!("stream: {e}"))?
        .into_inner();
    connected.set(1);
    let mut nonces: HashMap<&'static str, String> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        let resp = tokio::select! {
            r = responses.message() => match r {
                Ok(Some(r)) => r,
                Ok(None) => return Err("closed by the server".into()),
                Err(e) => return Err(e.to_string()),
            },
            _ = tick.tick() => {
                d.activate_clusters(shared, Some(cfg.initial_fetch_timeout));
                let _ = d.activate_warm(shared, Some(cfg.initial_fetch_timeout));
                continue;
            }
        };
        let ty: &'static str = match resp.type_url.as_str() {
            CDS => CDS,
            EDS => EDS,
            LDS => LDS,
            RDS => RDS,
            SDS => SDS,
            _ => continue,
        };
        nonces.insert(ty, resp.nonce.clone());
        let names = d.subscribed.get(ty).map(|s| s.iter().cloned().collect()).unwrap_or_default();
        match d.apply(shared, ty, &resp.resources, &resp.version_info) {
            Ok(()) => {
                d.versions.insert(ty, resp.version_info.clone());
                send(ty, resp.version_info.clone(), resp.nonce.clone(), names, None);
            }
            Err(e) => {
                let last = d.versions.get(ty).cloned().unwrap_or_default();
                send(ty, last, resp.nonce.clone(), names, Some(e));
            }
        }
        // New named subscriptions follow from clusters and listeners.
        for (sub_ty, names) in
            [(SDS, shared.ctx.secrets.ads_names()), (EDS, d.eds_names(shared)), (RDS, d.rds_names(shared))]
        {
            if d.subscribed.get(sub_ty) != Some(&names) && (!names.is_empty() || d.subscribed.contains_key(sub_ty)) {
                d.subscribed.insert(sub_ty, names.clone());
                let version = d.versions.get(sub_ty).cloned().unwrap_or_default();
                let nonce = nonces.get(sub_ty).cloned().unwrap_or_default();
                send(sub_ty, version, nonce, names.into_iter().collect(), None);
            }
        }
    }
}

// ------------------------------------------------------------------ delta

async fn delta_session(
    shared: &Arc<Shared>,
    cfg: &AdsConfig,
    target: &Target,
    d: &mut Dynamic,
    connected: &crate::stats::Gauge,
) -> Result<(), String> {
    let mut client = connect(target).await?;
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    let node = node(shared);
    let mut first = true;
    let mut send = |req: DeltaDiscoveryRequest| {
        let mut req = req;
        if first {
            req.node = Some(node.clone());
            first = false;
        }
        let _ = tx.send(req);
    };
    for (enabled, ty) in [(cfg.cds, CDS), (cfg.lds, LDS)] {
        if enabled {
            send(DeltaDiscoveryRequest {
                type_url: ty.into(),
                initial_resource_versions: d.delta_versions.get(ty).cloned().unwrap_or_default().into_iter().collect(),
                ..Default::default()
            });
        }
    }
    for (ty, names) in [(SDS, shared.ctx.secrets.ads_names()), (EDS, d.eds_names(shared)), (RDS, d.rds_names(shared))] {
        if !names.is_empty() {
            d.subscribed.insert(ty, names.clone());
            send(DeltaDiscoveryRequest {
                type_url: ty.into(),
                resource_names_subscribe: names.into_iter().collect(),
                initial_resource_versions: d.delta_versions.get(ty).cloned().unwrap_or_default().into_iter().collect(),
                ..Default::default()
            });
        }
    }
    let mut responses = client
        .delta_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await
        .map_err(|e| format!("stream: {e}"))?
        .into_inner();
    connected.set(1);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        let resp = tokio::select! {
            r = responses.message() => match r {
                Ok(Some(r)) => r,
                Ok(None) => return Err("closed by the server".into()),
                Err(e) => return Err(e.to_string()),
            },
            _ = tick.tick() => {
                d.activate_clusters(shared, Some(cfg.initial_fetch_timeout));
                let _ = d.activate_warm(shared, Some(cfg.initial_fetch_timeout));
                continue;
            }
        };
        let ty: &'static str = match resp.type_url.as_str() {
            CDS => CDS,
            EDS => EDS,
            LDS => LDS,
            RDS => RDS,
            SDS => SDS,
            _ => continue,
        };
        // The full set after this response, for the wildcard types; the
        // changed ones for the named types.
        let mut held: BTreeMap<String, (String, Any)> = BTreeMap::new();
        let current: Vec<(String, Any)> = match ty {
            CDS => d.clusters.values().map(|c| (c.name.clone(), legate_api::any::pack(c))).collect(),
            LDS => d.listeners.values().map(|l| (l.name.clone(), legate_api::any::pack(l))).collect(),
            _ => vec![],
        };
        let versions = d.delta_versions.get(ty).cloned().unwrap_or_default();
        for (name, any) in current {
            let v = versions.get(&name).cloned().unwrap_or_default();
            held.insert(name, (v, any));
        }
        for n in &resp.removed_resources {
            held.remove(n);
        }
        let mut changed = Vec::new();
        for r in &resp.resources {
            if let Some(any) = &r.resource {
                held.insert(r.name.clone(), (r.version.clone(), any.clone()));
                changed.push(any.clone());
            }
        }
        let to_apply: Vec<Any> =
            if ty == CDS || ty == LDS { held.values().map(|(_, a)| a.clone()).collect() } else { changed };
        let result = d.apply(shared, ty, &to_apply, &resp.system_version_info);
        let ack = match result {
            Ok(()) => {
                let entry = d.delta_versions.entry(ty).or_default();
                for n in &resp.removed_resources {
                    entry.remove(n);
                }
                for r in &resp.resources {
                    entry.insert(r.name.clone(), r.version.clone());
                }
                DeltaDiscoveryRequest { type_url: ty.into(), response_nonce: resp.nonce.clone(), ..Default::default() }
            }
            Err(e) => DeltaDiscoveryRequest {
                type_url: ty.into(),
                response_nonce: resp.nonce.clone(),
                error_detail: Some(RpcStatus { code: 3, message: e, details: vec![] }),
                ..Default::default()
            },
        };
        send(ack);
        for (sub_ty, names) in
            [(SDS, shared.ctx.secrets.ads_names()), (EDS, d.eds_names(shared)), (RDS, d.rds_names(shared))]
        {
            let old = d.subscribed.get(sub_ty).cloned().unwrap_or_default();
            if old != names {
                let subscribe: Vec<String> = names.difference(&old).cloned().collect();
                let unsubscribe: Vec<String> = old.difference(&names).cloned().collect();
                d.subscribed.insert(sub_ty, names);
                send(DeltaDiscoveryRequest {
                    type_url: sub_ty.into(),
                    resource_names_subscribe: subscribe,
                    resource_names_unsubscribe: unsubscribe,
                    ..Default::default()
                });
            }
        }
    }
}
