//! How state arrives from outside the API: other replicas' commits and
//! registry changes through etcd, and a watched folder of resource files.

pub mod folder;
pub mod replication;
