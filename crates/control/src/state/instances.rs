//! The registry through the controller: instances register, beat and leave
//! (in the shared store when there is one), and every change is published.

use crate::discovery::registry::{Instance, Registration, Registry, RegistryError};
use crate::state::controller::Controller;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryOpError {
    #[error(transparent)]
    Invalid(#[from] RegistryError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Controller {
    /// Registers an instance (in the shared store when there is one) and
    /// publishes its endpoints.
    pub fn register(&self, service: &str, r: Registration) -> Result<Instance, RegistryOpError> {
        let inst = Registry::instance(service, r)?;
        if let Some(etcd) = self.store.etcd() {
            etcd.put_instance(&inst.record())?;
        }
        self.mirror_registry(|reg| reg.insert(inst.clone()));
        Ok(inst)
    }

    /// Extends an instance's life; false when it is not (or no longer) registered.
    pub fn heartbeat(&self, service: &str, id: &str) -> Result<bool, StoreError> {
        let Some(etcd) = self.store.etcd() else {
            return Ok(self.lock_registry().heartbeat(service, id));
        };
        let Some(rec) = etcd.heartbeat_instance(service, id)? else { return Ok(false) };
        let inst = Instance::from_record(rec);
        self.lock_registry().insert(inst);
        Ok(true)
    }

    pub fn deregister(&self, service: &str, id: &str) -> Result<bool, StoreError> {
        let removed = match self.store.etcd() {
            Some(etcd) => etcd.delete_instance(service, id)?,
            None => false,
        };
        let mut local = false;
        self.mirror_registry(|reg| local = reg.deregister(service, id));
        Ok(removed || local)
    }

    pub fn instances(&self) -> Vec<Instance> {
        self.lock_registry().list()
    }

    /// Changes the registry and republishes.
    pub fn mirror_registry(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.lock_registry());
        self.publish();
    }

    /// Drops expired registry instances and republishes if any went. On etcd
    /// the leader does this in the store instead (see `replication`).
    pub fn expire_instances(&self) {
        if self.store.etcd().is_some() {
            return;
        }
        let changed = self.lock_registry().expire(std::time::Instant::now());
        if changed {
            self.publish();
        }
    }
}
