//! The router: the last HTTP filter, which sends a request upstream.

pub mod retry;
