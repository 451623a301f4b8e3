//! `envoy.filters.network.local_ratelimit`: a token bucket on new
//! connections. A connection that finds the bucket empty is closed at once,
//! before any byte is read, and counted in
//! `local_rate_limit.<stat_prefix>.rate_limited`.

use crate::http::context::CompileContext;
use crate::listener::network::api::ConnectionFilter;
use crate::stats::{Counter, Store};
use legate_api::pb::envoy::extensions::filters::network::local_ratelimit::v3::LocalRateLimit;
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;

pub const TYPE: &str = "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit";

pub struct NetRateLimit {
    bucket: crate::common::token_bucket::TokenBucket,
    /// `runtime_enabled` (on when unset).
    enabled: crate::common::runtime::RuntimeFlag,
    rate_limited: Arc<Counter>,
}

impl NetRateLimit {
    /// The filter from its `typed_config`; `path` names it in errors.
    pub fn compile_filter(any: &Any, ctx: &CompileContext, path: &str) -> Result<Arc<dyn ConnectionFilter>, String> {
        let l = legate_api::any::unpack(any)?;
        Ok(Arc::new(Self::compile(&l, &ctx.store, path)?))
    }

    /// `path` names the filter in errors.
    pub fn compile(l: &LocalRateLimit, store: &Store, path: &str) -> Result<Self, String> {
        if l.stat_prefix.is_empty() {
            return Err(format!("{path}.stat_prefix: value length must be at least 1 characters"));
        }
        let tb = l.token_bucket.as_ref().ok_or(format!("{path}.token_bucket is required"))?;
        Ok(Self {
            bucket: crate::common::token_bucket::TokenBucket::compile(tb, &format!("{path}.token_bucket"))?,
            enabled: crate::common::runtime::RuntimeFlag::flag(l.runtime_enabled.as_ref(), true),
            rate_limited: store.counter(&format!("local_rate_limit.{}.rate_limited", l.stat_prefix)),
        })
    }

    /// Whether a new connection may go on (takes a token when enabled).
    pub fn admit(&self) -> bool {
        if !self.enabled.value() || self.bucket.take() {
            return true;
        }
        self.rate_limited.inc();
        false
    }
}

impl ConnectionFilter for NetRateLimit {
    fn on_new_connection(&self) -> bool {
        self.admit()
    }
}
