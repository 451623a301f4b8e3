//! Secrets (`envoy.extensions.transport_sockets.tls.v3.Secret`) for TLS
//! contexts, from the three places Envoy takes them:
//!
//! - `static_resources.secrets`, referenced by name with no `sds_config`;
//! - a file (`sds_config.path_config_source`, or the older `path`): a
//!   `DiscoveryResponse` in YAML or JSON whose `resources` are secrets. The
//!   file is re-read when it changes (Envoy reacts to a file moved into
//!   place) or, with `watched_directory`, when that directory changes; the
//!   certificate and key files a secret names are watched as well;
//! - ADS (`sds_config: {ads: {}}`): the xDS client subscribes to the names
//!   that listeners and clusters use and stores what arrives.
//!
//! Each referenced secret is a `SecretSlot`. TLS contexts hold their slots
//! and subscribe to them; a slot that changes tells its subscribers, which
//! build a new rustls config off the handshake path and swap it in (see
//! `tls.rs`). A handshake never touches a slot.

use arc_swap::ArcSwapOption;
use legate_api::pb::envoy::config::core::v3::{config_source::ConfigSourceSpecifier, data_source, ConfigSource};
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::{secret, SdsSecretConfig, Secret};
use legate_api::pb::envoy::service::discovery::v3::DiscoveryResponse;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

pub const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// How often watched SDS files are looked at.
const FILE_POLL: Duration = Duration::from_millis(100);

/// Something built from secrets that must be rebuilt when one changes.
pub trait Subscriber: Send + Sync {
    fn secret_changed(&self);
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Static,
    File {
        path: PathBuf,
        watched_directory: Option<PathBuf>,
    },
    Ads,
    /// A gRPC `api_config_source`: its (first) cluster, delta or SotW.
    Grpc {
        cluster: String,
        delta: bool,
    },
}

/// One named secret and the TLS contexts that use it.
pub struct SecretSlot {
    pub name: String,
    pub source: Source,
    value: ArcSwapOption<Secret>,
    /// When it was first asked for, and how long a context waits for it
    /// (`sds_config.initial_fetch_timeout`, 15 s by default, 0: no limit)
    /// before it warms up without it, as Envoy's init manager does.
    asked: std::time::Instant,
    initial_fetch_timeout: Duration,
    /// The xDS version (empty for files) and when the value last changed,
    /// for `/config_dump`.
    updated: Mutex<(String, chrono::DateTime<chrono::Utc>)>,
    subscribers: Mutex<Vec<Weak<dyn Subscriber>>>,
}

impl SecretSlot {
    fn new(name: &str, source: Source, initial_fetch_timeout: Duration) -> Self {
        Self {
            name: name.to_string(),
            source,
            value: ArcSwapOption::empty(),
            asked: std::time::Instant::now(),
            initial_fetch_timeout,
            updated: Mutex::new((String::new(), chrono::Utc::now())),
            subscribers: Mutex::new(Vec::new()),
        }
    }

    /// The secret, when it has arrived.
    pub fn get(&self) -> Option<Arc<Secret>> {
        self.value.load_full()
    }

    /// It arrived, or waiting for it has timed out (what lets a listener or
    /// cluster finish warming).
    pub fn settled(&self) -> bool {
        self.value.load().is_some()
            || (!self.initial_fetch_timeout.is_zero() && self.asked.elapsed() >= self.initial_fetch_timeout)
    }

    /// (version, last updated).
    pub fn updated(&self) -> (String, chrono::DateTime<chrono::Utc>) {
        self.updated.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stores a new value and tells every live subscriber (which rebuild
    /// their configs now, on the calling thread: the main thread or the file
    /// watcher, never a worker).
    pub fn set(&self, value: Secret, version: &str) {
        self.value.store(Some(Arc::new(value)));
        *self.updated.lock().unwrap_or_else(|e| e.into_inner()) = (version.to_string(), chrono::Utc::now());
        self.notify();
    }

    fn notify(&self) {
        let live: Vec<Arc<dyn Subscriber>> = {
            let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
            subs.retain(|w| w.strong_count() > 0);
            subs.iter().filter_map(Weak::upgrade).collect()
        };
        for s in live {
            s.secret_changed();
        }
    }

    pub fn subscribe(&self, s: Weak<dyn Subscriber>) {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SdsError {
    #[error("Unknown static secret: {0}")]
    UnknownStatic(String),
    #[error("{0}: node 'id' and 'cluster' are required. Set it either in 'node' config or via --service-node and --service-cluster options.")]
    NoNode(&'static str),
    #[error("sds_config: only ads, path, path_config_source and a gRPC api_config_source are supported")]
    UnsupportedSource,
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Grpc(String),
}

/// Something with TLS certificates to show in `/certs`.
pub trait CertSource: Send + Sync {
    fn certs(&self) -> crate::tls::certs::CertsInfo;
}

/// A watched SDS file and the fingerprint of what it depends on.
struct Watch {
    path: PathBuf,
    watched_directory: Option<PathBuf>,
    fingerprint: Vec<Option<(u64, u64, SystemTime, u64)>>,
}

/// Every secret the proxy knows: the static ones, and the file and ADS
/// ones some TLS context references (held weakly: a secret no context uses
/// any more is forgotten and, for ADS, unsubscribed).
#[derive(Default)]
pub struct SecretManager {
    statics: HashMap<String, Arc<SecretSlot>>,
    dynamic: Mutex<HashMap<(Source, String), Weak<SecretSlot>>>,
    watches: Mutex<Vec<Watch>>,
    watcher_started: std::sync::atomic::AtomicBool,
    contexts: Mutex<Vec<Weak<dyn CertSource>>>,
    /// The node has an id and a cluster (Envoy requires both for SDS).
    node_named: bool,
    /// For `sds.<name>.update_*`.
    stats: Option<Arc<crate::stats::Store>>,
}

impl SecretManager {
    /// With the bootstrap's `static_resources.secrets`; `node_named`: the
    /// node has an id and a cluster.
    pub fn new(statics: &[Secret], node_named: bool) -> Self {
        let statics = statics
            .iter()
            .map(|s| {
                let slot = SecretSlot::new(&s.name, Source::Static, Duration::ZERO);
                slot.value.store(Some(Arc::new(s.clone())));
                (s.name.clone(), Arc::new(slot))
            })
            .collect();
        Self { statics, node_named, ..Default::default() }
    }

    /// Counts SDS updates in `store` as Envoy does (`sds.<name>.update_attempt`,
    /// `update_success`, `update_rejected`).
    pub fn with_stats(mut self, store: Arc<crate::stats::Store>) -> Self {
        self.stats = Some(store);
        self
    }

    /// Counts one update of secret `name`: `what` is `update_success` or
    /// `update_rejected` (an attempt either way).
    pub fn count(&self, name: &str, what: &str) {
        if let Some(store) = &self.stats {
            store.counter(&format!("sds.{name}.update_attempt")).inc();
            store.counter(&format!("sds.{name}.{what}")).inc();
        }
    }

    /// Counts a subscription's request for secret `name` (Envoy counts an
    /// attempt when a gRPC subscription asks, and again per response).
    pub fn count_request(&self, name: &str) {
        if let Some(store) = &self.stats {
            store.counter(&format!("sds.{name}.update_attempt")).inc();
        }
    }

    /// The slot an `SdsSecretConfig` names; a file secret is read now (the
    /// file must exist, as in Envoy) and its file watched from then on.
    pub fn slot(self: &Arc<Self>, cfg: &SdsSecretConfig) -> Result<Arc<SecretSlot>, SdsError> {
        let Some(cs) = &cfg.sds_config else {
            return self.statics.get(&cfg.name).cloned().ok_or_else(|| SdsError::UnknownStatic(cfg.name.clone()));
        };
        let source = source_of(cs)?;
        if !self.node_named {
            return Err(SdsError::NoNode("SdsApi"));
        }
        let key = (source.clone(), cfg.name.clone());
        let mut dynamic = self.dynamic.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = dynamic.get(&key).and_then(Weak::upgrade) {
            return Ok(slot);
        }
        let timeout = cs.initial_fetch_timeout.as_ref().map_or(Duration::from_secs(15), legate_api::duration::from_pb);
        let slot = Arc::new(SecretSlot::new(&cfg.name, source.clone(), timeout));
        if let Some(store) = &self.stats {
            // Envoy creates a subscription's counters with it.
            for c in ["update_attempt", "update_success", "update_rejected", "update_failure"] {
                store.counter(&format!("sds.{}.{c}", cfg.name));
            }
        }
        if let Source::File { path, .. } = &source {
            let secrets = read_file(path)?;
            if let Some(s) = secrets.into_iter().find(|s| s.name == cfg.name) {
                slot.set(s, "");
                self.count(&cfg.name, "update_success");
            }
        }
        dynamic.retain(|_, w| w.strong_count() > 0);
        dynamic.insert(key, Arc::downgrade(&slot));
        if let Source::File { path, watched_directory } = &source {
            let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
            if !watches.iter().any(|w| &w.path == path && &w.watched_directory == watched_directory) {
                let mut w =
                    Watch { path: path.clone(), watched_directory: watched_directory.clone(), fingerprint: vec![] };
                w.fingerprint = fingerprint(&w, &self.file_slots_locked(&dynamic, path));
                watches.push(w);
            }
            drop(watches);
            self.start_watcher();
        }
        Ok(slot)
    }

    fn file_slots_locked(
        &self,
        dynamic: &HashMap<(Source, String), Weak<SecretSlot>>,
        path: &Path,
    ) -> Vec<Arc<SecretSlot>> {
        dynamic
            .iter()
            .filter(|((s, _), _)| matches!(s, Source::File { path: p, .. } if p == path))
            .filter_map(|(_, w)| w.upgrade())
            .collect()
    }

    /// The names of the ADS secrets some TLS context waits for or uses.
    pub fn ads_names(&self) -> BTreeSet<String> {
        self.names_of(&Source::Ads)
    }

    /// The live ADS slot of `name`, if some context uses it.
    pub fn ads_slot(&self, name: &str) -> Option<Arc<SecretSlot>> {
        self.slot_of(&Source::Ads, name)
    }

    /// The names of the secrets from `source` some TLS context waits for or uses.
    pub fn names_of(&self, source: &Source) -> BTreeSet<String> {
        let dynamic = self.dynamic.lock().unwrap_or_else(|e| e.into_inner());
        dynamic.iter().filter(|((s, _), w)| s == source && w.strong_count() > 0).map(|((_, n), _)| n.clone()).collect()
    }

    /// The live slot of `name` from `source`, if some context uses it.
    pub fn slot_of(&self, source: &Source, name: &str) -> Option<Arc<SecretSlot>> {
        let dynamic = self.dynamic.lock().unwrap_or_else(|e| e.into_inner());
        dynamic.get(&(source.clone(), name.to_string())).and_then(Weak::upgrade)
    }

    /// The gRPC sources (`api_config_source`) some live secret comes from.
    pub fn grpc_sources(&self) -> BTreeSet<(String, bool)> {
        let dynamic = self.dynamic.lock().unwrap_or_else(|e| e.into_inner());
        dynamic
            .iter()
            .filter(|(_, w)| w.strong_count() > 0)
            .filter_map(|((s, _), _)| match s {
                Source::Grpc { cluster, delta } => Some((cluster.clone(), *delta)),
                _ => None,
            })
            .collect()
    }

    /// The static secrets and the live file and ADS ones, each by name.
    pub fn all(&self) -> (Vec<Arc<SecretSlot>>, Vec<Arc<SecretSlot>>) {
        let mut statics: Vec<Arc<SecretSlot>> = self.statics.values().cloned().collect();
        statics.sort_by(|a, b| a.name.cmp(&b.name));
        let dynamic = self.dynamic.lock().unwrap_or_else(|e| e.into_inner());
        let mut d: Vec<Arc<SecretSlot>> = dynamic.values().filter_map(Weak::upgrade).collect();
        d.sort_by(|a, b| a.name.cmp(&b.name));
        (statics, d)
    }

    /// Registers a TLS context for `/certs`.
    pub fn register(&self, c: Weak<dyn CertSource>) {
        let mut v = self.contexts.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|w| w.strong_count() > 0);
        v.push(c);
    }

    /// The live TLS contexts, in the order they were made.
    pub fn contexts(&self) -> Vec<Arc<dyn CertSource>> {
        let v = self.contexts.lock().unwrap_or_else(|e| e.into_inner());
        v.iter().filter_map(Weak::upgrade).collect()
    }

    /// Starts the file watcher thread once. It polls (every 100 ms) the
    /// files of the secrets in use and ends when the manager is dropped.
    /// Polling, not inotify: a handful of `stat` calls per tick on its own
    /// thread, no extra dependency (inotify would need `unsafe` or a crate),
    /// and it sees a move into place as Envoy does — within 100 ms where
    /// Envoy's inotify takes a few (`bench/sds-rotation.sh`).
    fn start_watcher(self: &Arc<Self>) {
        if self.watcher_started.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new().name("sds-files".into()).spawn(move || loop {
            std::thread::sleep(FILE_POLL);
            let Some(me) = weak.upgrade() else { return };
            me.poll_files();
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the SDS file watcher: {e}");
        }
    }

    /// Re-reads every watched file whose fingerprint moved and updates the
    /// secrets of it that changed (or whose certificate files changed).
    pub fn poll_files(&self) {
        let changed: Vec<(PathBuf, Vec<Arc<SecretSlot>>)> = {
            let dynamic = self.dynamic.lock().unwrap_or_else(|e| e.into_inner());
            let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
            let mut out = Vec::new();
            watches.retain_mut(|w| {
                let slots = self.file_slots_locked(&dynamic, &w.path);
                if slots.is_empty() {
                    return false;
                }
                let fp = fingerprint(w, &slots);
                if fp != w.fingerprint {
                    w.fingerprint = fp;
                    out.push((w.path.clone(), slots));
                }
                true
            });
            out
        };
        for (path, slots) in changed {
            match read_file(&path) {
                Ok(secrets) => {
                    for slot in slots {
                        match secrets.iter().find(|s| s.name == slot.name) {
                            Some(s) => {
                                tracing::info!("SDS file {}: secret '{}' updated", path.display(), slot.name);
                                slot.set(s.clone(), "");
                                self.count(&slot.name, "update_success");
                            }
                            None => tracing::warn!(
                                "SDS file {}: secret '{}' is no longer there; keeping the last one",
                                path.display(),
                                slot.name
                            ),
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("SDS file update rejected: {e}");
                    for slot in slots {
                        self.count(&slot.name, "update_rejected");
                    }
                }
            }
        }
    }
}

#[allow(deprecated)] // Envoy still accepts this deprecated field, so Legate reads it.
fn source_of(cs: &ConfigSource) -> Result<Source, SdsError> {
    match &cs.config_source_specifier {
        Some(ConfigSourceSpecifier::Ads(_)) => Ok(Source::Ads),
        Some(ConfigSourceSpecifier::ApiConfigSource(a)) => {
            let (delta, clusters) = crate::common::config_source::grpc_source(a)
                .map_err(|e| SdsError::Grpc(format!("sds_config.api_config_source.{e}")))?;
            // Envoy streams from the first listed service.
            let cluster = clusters.into_iter().next().unwrap_or_default();
            Ok(Source::Grpc { cluster, delta })
        }
        Some(ConfigSourceSpecifier::Path(p)) => Ok(Source::File { path: p.into(), watched_directory: None }),
        Some(ConfigSourceSpecifier::PathConfigSource(p)) => Ok(Source::File {
            path: p.path.clone().into(),
            watched_directory: p.watched_directory.as_ref().map(|w| w.path.clone().into()),
        }),
        _ => Err(SdsError::UnsupportedSource),
    }
}

/// What tells a watched file changed: with `watched_directory`, the
/// directory (something moved into it); otherwise the file itself (a new
/// inode when a file is moved into place) and the certificate files its
/// secrets name.
fn fingerprint(w: &Watch, slots: &[Arc<SecretSlot>]) -> Vec<Option<(u64, u64, SystemTime, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let stat = |p: &Path| {
        std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    if let Some(dir) = &w.watched_directory {
        return vec![stat(dir)];
    }
    let mut out = vec![stat(&w.path)];
    for slot in slots {
        if let Some(s) = slot.get() {
            for f in files_of(&s) {
                out.push(stat(Path::new(&f)));
            }
        }
    }
    out
}

/// The files a secret's data sources name.
pub fn files_of(s: &Secret) -> Vec<String> {
    let mut sources = Vec::new();
    match &s.r#type {
        Some(secret::Type::TlsCertificate(c)) => {
            sources.extend(c.certificate_chain.iter());
            sources.extend(c.private_key.iter());
        }
        Some(secret::Type::ValidationContext(v)) => sources.extend(v.trusted_ca.iter()),
        _ => {}
    }
    sources
        .into_iter()
        .filter_map(|d| match &d.specifier {
            Some(data_source::Specifier::Filename(f)) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

/// Reads an SDS file: a `DiscoveryResponse` (YAML or JSON) of secrets,
/// validated as any secret from the bootstrap or xDS is.
pub fn read_file(path: &Path) -> Result<Vec<Secret>, SdsError> {
    let p = path.display().to_string();
    let fail = |reason: String| SdsError::File { path: p.clone(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let value = legate_api::load::parse_text(&text).map_err(|e| fail(e.to_string()))?;
    let (resp, _) = legate_api::load::decode_typed::<DiscoveryResponse>(value)
        .map_err(|e| fail(e.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")))?;
    let mut out = Vec::new();
    for (i, any) in resp.resources.iter().enumerate() {
        if any.type_url != SECRET_TYPE {
            return Err(fail(format!("resources[{i}]: type {} is not a Secret", any.type_url)));
        }
        let s: Secret = legate_api::any::unpack(any).map_err(|e| fail(format!("resources[{i}]: {e}")))?;
        check_secret(&s).map_err(|e| fail(format!("resources[{i}]: {e}")))?;
        out.push(s);
    }
    Ok(out)
}

/// Schema rules, what Legate implements, and that its certificate and key
/// can be read: a secret that would not build is refused whole.
pub fn check_secret(s: &Secret) -> Result<(), String> {
    let Some(dynamic) = legate_api::load::to_dynamic(s) else {
        return Err("cannot read as a Secret".into());
    };
    let mut problems: Vec<String> =
        legate_api::validate::validate(&dynamic, "").iter().map(|e| e.to_string()).collect();
    problems.extend(legate_api::support::unsupported(&dynamic).iter().map(|e| e.to_string()));
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    crate::tls::verify::check_secret_material(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn leaf(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert =
            rcgen::CertificateParams::new(vec![name.to_string()]).expect("params").self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn sds_yaml(name: &str, (cert, key): &(String, String)) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("json");
        format!(
            "resources:\n- \"@type\": {SECRET_TYPE}\n  name: {name}\n  tls_certificate: {{certificate_chain: {{inline_string: {}}}, private_key: {{inline_string: {}}}}}\n",
            q(cert),
            q(key)
        )
    }

    fn temp_dir(label: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("legate-sds-unit-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[allow(deprecated)] // Envoy still accepts this deprecated field, so Legate reads it.
    fn file_cfg(name: &str, path: &Path) -> SdsSecretConfig {
        SdsSecretConfig {
            name: name.into(),
            sds_config: Some(ConfigSource {
                config_source_specifier: Some(ConfigSourceSpecifier::Path(path.display().to_string())),
                ..Default::default()
            }),
        }
    }

    struct Counter(AtomicUsize);
    impl Subscriber for Counter {
        fn secret_changed(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn static_secrets_by_name_and_unknown_refused() {
        let m = Arc::new(SecretManager::new(&[Secret { name: "s".into(), r#type: None }], false));
        assert!(m.slot(&SdsSecretConfig { name: "s".into(), sds_config: None }).is_ok());
        let e = m.slot(&SdsSecretConfig { name: "t".into(), sds_config: None }).err().expect("unknown");
        assert_eq!(e.to_string(), "Unknown static secret: t");
    }

    #[test]
    fn sds_needs_a_named_node() {
        let dir = temp_dir("node");
        let path = dir.join("s.yaml");
        std::fs::write(&path, sds_yaml("s", &leaf("a.example.com"))).expect("write");
        let m = Arc::new(SecretManager::new(&[], false));
        let e = m.slot(&file_cfg("s", &path)).err().expect("refused");
        assert!(e.to_string().contains("node 'id' and 'cluster' are required"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn file_read_validated() {
        let dir = temp_dir("read");
        let path = dir.join("s.yaml");
        std::fs::write(&path, sds_yaml("s", &leaf("a.example.com"))).expect("write");
        let secrets = read_file(&path).expect("read");
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets[0].name, "s");
        // A key that is not a key: the whole file is refused.
        std::fs::write(&path, sds_yaml("s", &(leaf("a").0, "junk".into()))).expect("write");
        assert!(read_file(&path).is_err());
        // A resource of another type.
        std::fs::write(&path, "resources: [{\"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster, name: c}]")
            .expect("write");
        assert!(read_file(&path).expect_err("refused").to_string().contains("is not a Secret"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn file_moved_into_place_updates_the_secret_and_tells_subscribers() {
        let dir = temp_dir("move");
        let path = dir.join("s.yaml");
        std::fs::write(&path, sds_yaml("s", &leaf("a.example.com"))).expect("write");
        let m = Arc::new(SecretManager::new(&[], true));
        let slot = m.slot(&file_cfg("s", &path)).expect("slot");
        let first = slot.get().expect("read at once");
        let sub = Arc::new(Counter(AtomicUsize::new(0)));
        let weak: Weak<Counter> = Arc::downgrade(&sub);
        slot.subscribe(weak);
        m.poll_files();
        assert_eq!(sub.0.load(Ordering::Relaxed), 0, "nothing changed");
        let tmp = dir.join("s.tmp");
        std::fs::write(&tmp, sds_yaml("s", &leaf("b.example.com"))).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        // The watcher thread polls too: whichever sees the move first applies it.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while sub.0.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
            m.poll_files();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(sub.0.load(Ordering::Relaxed), 1);
        assert_ne!(*slot.get().expect("value"), *first);
        // A broken file is rejected: the last good secret stays.
        let current = slot.get().expect("value");
        std::fs::write(&tmp, "resources: [").expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        m.poll_files();
        std::thread::sleep(FILE_POLL * 2);
        assert_eq!(*slot.get().expect("value"), *current);
        assert_eq!(sub.0.load(Ordering::Relaxed), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn certificate_files_a_secret_names_are_watched_too() {
        let dir = temp_dir("files");
        let (cert, key) = leaf("a.example.com");
        std::fs::write(dir.join("c.pem"), &cert).expect("write");
        std::fs::write(dir.join("k.pem"), &key).expect("write");
        let path = dir.join("s.yaml");
        let yaml = format!(
            "resources:\n- \"@type\": {SECRET_TYPE}\n  name: s\n  tls_certificate: {{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}\n",
            dir.join("c.pem").display(),
            dir.join("k.pem").display()
        );
        std::fs::write(&path, yaml).expect("write");
        let m = Arc::new(SecretManager::new(&[], true));
        let slot = m.slot(&file_cfg("s", &path)).expect("slot");
        assert_eq!(files_of(&slot.get().expect("value")).len(), 2);
        let sub = Arc::new(Counter(AtomicUsize::new(0)));
        let weak: Weak<Counter> = Arc::downgrade(&sub);
        slot.subscribe(weak);
        // A certificate without its key is refused: nothing changes.
        let (cert2, key2) = leaf("b.example.com");
        std::fs::write(dir.join("c.tmp"), &cert2).expect("write");
        std::fs::rename(dir.join("c.tmp"), dir.join("c.pem")).expect("rename");
        m.poll_files();
        std::thread::sleep(FILE_POLL * 2);
        assert_eq!(sub.0.load(Ordering::Relaxed), 0, "a key that does not match is refused");
        // Its key moved over the one the secret names: the pair is taken.
        std::fs::write(dir.join("k.tmp"), &key2).expect("write");
        std::fs::rename(dir.join("k.tmp"), dir.join("k.pem")).expect("rename");
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while sub.0.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
            m.poll_files();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(sub.0.load(Ordering::Relaxed), 1, "the context rebuilds with the new file");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
