//! Calls this control plane makes to others: another replica's part of the
//! fleet's figures, a proxy's admin page, a webhook (alert receivers,
//! release gates). Below `serve`, `releases` and `alerts`, which all go
//! through it.

pub mod http_get;
pub mod shards;
pub mod webhook;
