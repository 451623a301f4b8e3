//! The service registry: instances that register over the API, keep
//! themselves alive with heartbeats, and vanish when their TTL lapses. What
//! they become for the proxies is `resources::registered`.

use crate::clock;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Deserialize)]
pub struct Registration {
    /// Chosen by the instance, or generated.
    #[serde(default)]
    pub id: Option<String>,
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Seconds without a heartbeat before the instance is dropped.
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u64,
}

fn default_ttl() -> u64 {
    30
}

#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub service: String,
    pub id: String,
    pub address: String,
    pub port: u16,
    pub labels: BTreeMap<String, String>,
    pub ttl_seconds: u64,
    pub registered_at: String,
    /// Seconds left before it expires without a heartbeat.
    pub expires_in: f64,
    #[serde(skip)]
    expires: Instant,
}

#[derive(Default)]
pub struct Registry {
    instances: BTreeMap<(String, String), Instance>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("address: '{0}' is not an IP address")]
    Address(String),
    #[error("ttl_seconds must be between 1 and 86400")]
    Ttl,
    #[error("service name must be 1-128 characters of [a-zA-Z0-9._-]")]
    Service,
}

/// An instance as a shared store keeps it: the expiry as wall-clock time
/// (milliseconds since the Unix epoch), since replicas share no `Instant`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub service: String,
    pub id: String,
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub ttl_seconds: u64,
    pub registered_at: String,
    pub expires_at_ms: u64,
}

impl Instance {
    pub fn record(&self) -> InstanceRecord {
        let left = self.expires.saturating_duration_since(Instant::now());
        InstanceRecord {
            service: self.service.clone(),
            id: self.id.clone(),
            address: self.address.clone(),
            port: self.port,
            labels: self.labels.clone(),
            ttl_seconds: self.ttl_seconds,
            registered_at: self.registered_at.clone(),
            expires_at_ms: clock::unix_ms() + left.as_millis() as u64,
        }
    }

    pub fn from_record(r: InstanceRecord) -> Instance {
        let left = Duration::from_millis(r.expires_at_ms.saturating_sub(clock::unix_ms()));
        Instance {
            service: r.service,
            id: r.id,
            address: r.address,
            port: r.port,
            labels: r.labels,
            ttl_seconds: r.ttl_seconds,
            registered_at: r.registered_at,
            expires_in: left.as_secs_f64(),
            expires: Instant::now() + left,
        }
    }
}

impl Registry {
    pub fn register(&mut self, service: &str, r: Registration) -> Result<Instance, RegistryError> {
        let inst = Self::instance(service, r)?;
        self.insert(inst.clone());
        Ok(inst)
    }

    /// Checks a registration and makes the instance it describes.
    pub fn instance(service: &str, r: Registration) -> Result<Instance, RegistryError> {
        if service.is_empty()
            || service.len() > 128
            || !service.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(RegistryError::Service);
        }
        if r.address.parse::<std::net::IpAddr>().is_err() {
            return Err(RegistryError::Address(r.address));
        }
        if !(1..=86_400).contains(&r.ttl_seconds) {
            return Err(RegistryError::Ttl);
        }
        let id = r.id.filter(|i| !i.is_empty()).unwrap_or_else(|| format!("{}:{}", r.address, r.port));
        let inst = Instance {
            service: service.to_string(),
            id: id.clone(),
            address: r.address,
            port: r.port,
            labels: r.labels,
            ttl_seconds: r.ttl_seconds,
            registered_at: clock::now(),
            expires_in: r.ttl_seconds as f64,
            expires: Instant::now() + Duration::from_secs(r.ttl_seconds),
        };
        Ok(inst)
    }

    /// Adds or replaces an instance.
    pub fn insert(&mut self, inst: Instance) {
        self.instances.insert((inst.service.clone(), inst.id.clone()), inst);
    }

    /// Replaces every instance (a replica catching up with the shared store).
    pub fn replace_all(&mut self, all: Vec<Instance>) {
        self.instances = all.into_iter().map(|i| ((i.service.clone(), i.id.clone()), i)).collect();
    }

    /// Extends an instance's life; false when it is not (or no longer) registered.
    pub fn heartbeat(&mut self, service: &str, id: &str) -> bool {
        match self.instances.get_mut(&(service.to_string(), id.to_string())) {
            Some(i) => {
                i.expires = Instant::now() + Duration::from_secs(i.ttl_seconds);
                true
            }
            None => false,
        }
    }

    pub fn deregister(&mut self, service: &str, id: &str) -> bool {
        self.instances.remove(&(service.to_string(), id.to_string())).is_some()
    }

    /// Drops instances whose TTL lapsed; true when any did.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.instances.len();
        self.instances.retain(|_, i| i.expires > now);
        before != self.instances.len()
    }

    pub fn list(&self) -> Vec<Instance> {
        let now = Instant::now();
        self.instances
            .values()
            .map(|i| Instance { expires_in: i.expires.saturating_duration_since(now).as_secs_f64(), ..i.clone() })
            .collect()
    }
}
