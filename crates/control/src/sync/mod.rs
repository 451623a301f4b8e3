//! How state arrives from outside the API: other replicas' commits and
//! registry changes through etcd, the other replicas' API addresses, and a watched folder of resource files.

pub mod folder;
pub mod lease;
pub mod peers;
pub mod replication;
