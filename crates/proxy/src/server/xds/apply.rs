//! Applying what the management server sent: clusters (warming until their
//! endpoints and secrets arrive), endpoints, listeners (warming until their
//! routes arrive), route tables and secrets, all or nothing per response.

use crate::http::route::RouteTable;
use crate::listener::ListenerConfig;
use crate::server::instance::Shared;
use crate::upstream::cluster::{Cluster, ClusterMap, Discovery};
use crate::upstream::endpoints::eds_hosts;
use legate_api::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use legate_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use legate_api::pb::envoy::config::listener::v3::Listener as PbListener;
use legate_api::pb::envoy::config::route::v3::RouteConfiguration;
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use legate_api::pb::envoy::service::runtime::v3::Runtime;
use legate_api::pb::google::protobuf::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// Binds the sockets of every new listener (or new address) now, as Envoy
/// does when a listener is added: a bind failure refuses this LDS update in
/// Envoy's words, even for a listener that would warm (waiting for RDS) and
/// be put into service later. All or nothing: what this update bound is
/// closed again when one fails.
fn reserve_sockets(shared: &Shared, compiled: &[ListenerConfig]) -> Result<(), String> {
    let mut bound = Vec::new();
    // A UDP listener binds when it is applied (it does not warm).
    for lc in compiled.iter().filter(|lc| lc.udp.is_none()) {
        match shared.listeners.reserve(&lc.name, lc.address) {
            Ok(true) => bound.push(lc.name.as_str()),
            Ok(false) => {}
            Err(e) => {
                for name in bound {
                    shared.listeners.release(name);
                }
                return Err(format!("Error adding/updating listener(s) {}: {e}\n", lc.name));
            }
        }
    }
    Ok(())
}

/// The RTDS layers' resources: each subscribed name's `Runtime` read into
/// its layer, all or nothing. As Envoy's watches: a response without a
/// layer's resource leaves a layer that never had one waiting (`None`: not
/// an update), and is refused for a layer that had one (`Unexpected RTDS
/// resource length`); resources no layer asked for are left aside.
fn apply_runtime(shared: &Shared, resources: Vec<Runtime>) -> Result<Option<()>, String> {
    let wanted = shared.runtime.rtds_names();
    let mut layers: Vec<(String, legate_api::pb::google::protobuf::Struct)> = Vec::new();
    for r in &resources {
        check(r, &r.name)?;
        if !wanted.contains(&r.name) {
            continue;
        }
        if layers.iter().any(|(n, _)| *n == r.name) {
            return Err(format!("duplicate RTDS resource '{}'", r.name));
        }
        layers.push((r.name.clone(), r.layer.clone().unwrap_or_default()));
    }
    for name in &wanted {
        if shared.runtime.rtds_received(name) && !layers.iter().any(|(n, _)| n == name) {
            return Err(format!(
                "Unexpected RTDS resource length for '{name}', number of added resources 0, number of removed resources 0"
            ));
        }
    }
    if layers.is_empty() {
        return Ok(None);
    }
    shared.runtime.set_rtds(&layers).map(Some)
}

impl Dynamic {
    /// Installs the full set of dynamic clusters.
    pub(super) fn apply_clusters(
        &mut self,
        shared: &Shared,
        clusters: Vec<PbCluster>,
        version: &str,
    ) -> Result<(), String> {
        let old_map = shared.clusters.load_full();
        let statics: BTreeSet<String> = shared
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
            foreign_sources(&c, &self.servers).map_err(|e| format!("{}: {e}", c.name))?;
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
                            fresh.set_localities(la);
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

    pub(super) fn eds_names(&self, shared: &Shared) -> BTreeSet<String> {
        let map = shared.clusters.load();
        map.values()
            .chain(self.warming_clusters.values().map(|(c, _)| c))
            .filter(|c| c.discovery == Discovery::Eds)
            .map(|c| c.eds_service_name.clone())
            .collect()
    }

    /// Puts warmed clusters into service: their endpoints arrived, or they
    /// waited `timeout` (then they serve with what they have, as in Envoy).
    pub(super) fn activate_clusters(&mut self, shared: &Shared, timeout: Option<Duration>) {
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
                        c.set_localities(la);
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

    pub(super) fn apply_assignments(
        &mut self,
        shared: &Shared,
        items: Vec<ClusterLoadAssignment>,
    ) -> Result<(), String> {
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
                c.set_localities(&la);
            }
            self.assignments.insert(la.cluster_name.clone(), la);
        }
        self.activate_clusters(shared, None);
        Ok(())
    }

    /// Installs the full set of dynamic listeners; those whose routes have not
    /// arrived wait (warm) until they do or the initial fetch timeout passes.
    pub(super) fn apply_listeners(
        &mut self,
        shared: &Shared,
        listeners: Vec<PbListener>,
        version: &str,
    ) -> Result<(), String> {
        let mut compiled = Vec::new();
        for l in &listeners {
            check(l, &l.name)?;
            foreign_sources(l, &self.servers).map_err(|e| format!("{}: {e}", l.name))?;
            if self.listeners.get(&l.name) == Some(l) {
                continue;
            }
            let lc = ListenerConfig::compile(l, &shared.ctx).map_err(|e| format!("listener '{}': {e}", l.name))?;
            compiled.push(lc);
        }
        reserve_sockets(shared, &compiled)?;
        // JWKS with async_fetch start fetching now (their listeners do not
        // wait for them: Envoy's warming would).
        let ctx = shared.ctx.clone();
        tokio::spawn(async move { crate::http::filters::jwt::start_async_fetches(&ctx.jwks_async).await });
        // Their span exporters start sending.
        crate::trace::export::start_exporters(&shared.ctx.trace_exporters);
        let keep: BTreeSet<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
        for name in shared.listeners.names() {
            if self.listeners.contains_key(&name) && !keep.contains(name.as_str()) {
                shared.listeners.remove(&name);
                shared.store.counter("listener_manager.listener_removed").inc();
            }
        }
        self.warming.retain(|n, _| {
            let kept = keep.contains(n.as_str());
            if !kept {
                shared.listeners.release(n);
            }
            kept
        });
        for lc in compiled {
            let name = lc.name.clone();
            self.warming.insert(name, (lc, version.to_string(), Instant::now()));
        }
        self.listeners = listeners.into_iter().map(|l| (l.name.clone(), l)).collect();
        self.activate_warm(shared, None)
    }

    /// Moves warmed listeners into service: their route table is there, or
    /// they have waited `timeout`.
    pub(super) fn activate_warm(&mut self, shared: &Shared, timeout: Option<Duration>) -> Result<(), String> {
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

    pub(super) fn apply_routes(
        &mut self,
        shared: &Shared,
        routes: Vec<RouteConfiguration>,
        version: &str,
    ) -> Result<(), String> {
        let mut compiled = Vec::new();
        for rc in routes {
            check(&rc, &rc.name)?;
            let table = RouteTable::compile(&rc, &shared.store)
                .map_err(|e| format!("route configuration '{}': {e}", rc.name))?;
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
    pub(super) fn apply_secrets(&mut self, shared: &Shared, secrets: Vec<Secret>, version: &str) -> Result<(), String> {
        set_secrets(shared, &crate::tls::sds::Source::Ads, secrets, version)?;
        self.activate_clusters(shared, None);
        self.activate_warm(shared, None)
    }

    pub(super) fn rds_names(&self, shared: &Shared) -> BTreeSet<String> {
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
    pub(super) fn apply(
        &mut self,
        shared: &Shared,
        type_url: &str,
        resources: &[Any],
        version: &str,
    ) -> Result<(), String> {
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
            RTDS => match decode_all::<Runtime>(resources, RTDS).and_then(|r| apply_runtime(shared, r)) {
                // Nothing for any layer: not an update (Envoy's watch is not called).
                Ok(None) => return Ok(()),
                r => ("runtime", r.map(|_| ())),
            },
            other => return Err(format!("unexpected type {other}")),
        };
        if type_url == SDS {
            // Counted per secret (`sds.<name>.*`), as Envoy does.
            if let Err(e) = &result {
                tracing::warn!("rejecting {type_url} version {version}: {e}");
            }
            return result;
        }
        // A REST poll counted its attempt when it was sent.
        if !self.rest {
            shared.store.counter(&format!("{stat}.update_attempt")).inc();
        }
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

/// Where a type's updates are counted (SDS counts per secret).
pub(super) fn stat_prefix(type_url: &str) -> Option<&'static str> {
    Some(match type_url {
        CDS => "cluster_manager.cds",
        EDS => "cluster_manager.eds",
        LDS => "listener_manager.lds",
        RDS => "rds",
        RTDS => "runtime",
        _ => return None,
    })
}

/// Installs secrets that arrived from `source` (ADS or a gRPC SDS server):
/// each is checked first, and one that would not build refuses the whole
/// response (NACK); every TLS context using one then rebuilds its config
/// for new connections.
pub(super) fn set_secrets(
    shared: &Shared,
    source: &crate::tls::sds::Source,
    secrets: Vec<Secret>,
    version: &str,
) -> Result<(), String> {
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
        if let Some(slot) = shared.ctx.secrets.slot_of(source, &name) {
            slot.set(s, version);
            shared.ctx.secrets.count(&name, "update_success");
        }
    }
    Ok(())
}
