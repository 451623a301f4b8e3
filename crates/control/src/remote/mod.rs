//! Calls this control plane makes to others: another replica's part of the
//! fleet's figures, a proxy's admin page. Below `serve`, `releases` and
//! `alerts`, which all read through it.

pub mod http_get;
pub mod shards;
