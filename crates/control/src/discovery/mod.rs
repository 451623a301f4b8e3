//! Who is out there: the proxies connected to this control plane (what each
//! is and what it was sent, ACKed and NACKed) and the service instances that
//! registered over the API; the other control-plane replicas on the same
//! store. Everything else builds on these facts.

pub mod agents;
pub mod bootstrap;
pub mod checks;
pub mod fleet;
pub mod health;
pub mod node;
pub mod registry;
pub mod replicas;
