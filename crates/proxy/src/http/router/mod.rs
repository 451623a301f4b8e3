//! The router: the last HTTP filter, which sends a request upstream and
//! turns the answer (or its absence) into the downstream response.
//! `action.rs` is its entry (the matched route's action), `forward.rs` one
//! forwarded request's path (Envoy's `router.cc`); the other files are
//! their parts.

mod action;
mod forward;
mod mirror;
mod redirect;
mod reply;
pub mod retry;
mod timeout;
mod tunnel;
mod upgrade;
mod upstream_request;
