//! Route tables by name (RDS).

use crate::http::route::RouteTable;
use arc_swap::ArcSwapOption;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// Where an HCM finds its route table. Empty until RDS delivers it.
pub type RouteSlot = Arc<ArcSwapOption<RouteTable>>;

struct Entry {
    slot: RouteSlot,
    /// The stat prefixes of the HCMs that use it (for `http.<prefix>.rds.<name>.*`).
    prefixes: BTreeSet<String>,
    version: Option<String>,
    last_updated: Option<chrono::DateTime<chrono::Utc>>,
    config: Option<legate_api::pb::envoy::config::route::v3::RouteConfiguration>,
}

/// Every route configuration name an HCM asked for, with its current table.
#[derive(Default)]
pub struct RdsRegistry {
    entries: Mutex<BTreeMap<String, Entry>>,
}

pub struct RdsView {
    pub name: String,
    pub version: Option<String>,
    pub last_updated: Option<chrono::DateTime<chrono::Utc>>,
    pub config: Option<legate_api::pb::envoy::config::route::v3::RouteConfiguration>,
}

impl RdsRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot for `name`, shared by every HCM that names it.
    pub fn slot(&self, name: &str, stat_prefix: &str) -> RouteSlot {
        let mut m = self.lock();
        let e = m.entry(name.to_string()).or_insert_with(|| Entry {
            slot: Arc::new(ArcSwapOption::empty()),
            prefixes: BTreeSet::new(),
            version: None,
            last_updated: None,
            config: None,
        });
        e.prefixes.insert(stat_prefix.to_string());
        e.slot.clone()
    }

    /// Route configuration names in use.
    pub fn names(&self) -> BTreeSet<String> {
        self.lock().keys().cloned().collect()
    }

    pub fn is_ready(&self, name: &str) -> bool {
        self.lock().get(name).is_some_and(|e| e.slot.load().is_some())
    }

    /// Installs a new table; returns the stat prefixes to count the update under.
    pub fn install(
        &self,
        config: legate_api::pb::envoy::config::route::v3::RouteConfiguration,
        table: RouteTable,
        version: &str,
    ) -> Vec<String> {
        let mut m = self.lock();
        let e = m.entry(config.name.clone()).or_insert_with(|| Entry {
            slot: Arc::new(ArcSwapOption::empty()),
            prefixes: BTreeSet::new(),
            version: None,
            last_updated: None,
            config: None,
        });
        e.slot.store(Some(Arc::new(table)));
        e.version = Some(version.to_string());
        e.last_updated = Some(chrono::Utc::now());
        e.config = Some(config);
        e.prefixes.iter().cloned().collect()
    }

    pub fn list(&self) -> Vec<RdsView> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.config.is_some())
            .map(|(n, e)| RdsView {
                name: n.clone(),
                version: e.version.clone(),
                last_updated: e.last_updated,
                config: e.config.clone(),
            })
            .collect()
    }
}
