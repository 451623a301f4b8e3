//! The published configuration and the controller that changes it: validate,
//! commit one revision, publish; the registry's instances; and reloading what
//! another replica committed.

pub mod apply;
pub mod config;
pub mod controller;
pub mod instances;
pub mod stage;
pub mod staged;
