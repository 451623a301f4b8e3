//! `envoy.filters.network.ext_authz`: a connection is checked with an
//! external authorization service over gRPC
//! (`envoy.service.auth.v3.Authorization/Check`, its two peers' addresses)
//! when its first data arrives, as Envoy's `onData` does; the data waits
//! for the answer. Allowed: the connection goes on with that data. Denied,
//! or failed without `failure_mode_allow`: closed, its data not passed on.
//! Stats `ext_authz.<stat_prefix>.total/ok/denied/error/failure_mode_allowed/
//! cx_closed/disabled` and the gauge `active`.

use crate::http::context::CompileContext;
use crate::http::filters::ext_authz::check::build_tcp;
use crate::http::filters::ext_authz::client::{Kind, Service};
use crate::http::filters::ext_authz::decision::Decision;
use crate::http::filters::service::GrpcTarget;
use crate::listener::network::api::{Check, ConnCtx, ConnectionFilter};
use crate::stats::{Counter, Gauge};
use legate_api::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz;
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;
use std::time::Duration;

pub const TYPE: &str = "envoy.extensions.filters.network.ext_authz.v3.ExtAuthz";

/// Envoy's default check timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);

pub struct NetExtAuthz(Arc<Inner>);

struct Inner {
    service: Service,
    failure_mode_allow: bool,
    total: Arc<Counter>,
    ok: Arc<Counter>,
    denied: Arc<Counter>,
    error: Arc<Counter>,
    failure_mode_allowed: Arc<Counter>,
    cx_closed: Arc<Counter>,
    active: Arc<Gauge>,
}

impl NetExtAuthz {
    /// The filter from its `typed_config`; `path` names it in errors.
    pub fn compile_filter(any: &Any, ctx: &CompileContext, path: &str) -> Result<Arc<dyn ConnectionFilter>, String> {
        let c: ExtAuthz = legate_api::any::unpack(any)?;
        if c.stat_prefix.is_empty() {
            return Err(format!("{path}.stat_prefix: value length must be at least 1 characters"));
        }
        let g = c.grpc_service.as_ref().ok_or(format!("{path}.grpc_service is required"))?;
        // Envoy 1.40 shows no `grpc.<stat_prefix>.*` of this filter's
        // `google_grpc` client: they are kept apart.
        let unseen = crate::stats::Store::default();
        let target = GrpcTarget::compile(g, &unseen).map_err(|e| format!("{path}.grpc_service.{e}"))?;
        let timeout = g.timeout.as_ref().map_or(DEFAULT_TIMEOUT, legate_api::duration::from_pb);
        let service =
            Service { cluster: String::new(), timeout, clusters: ctx.clusters.clone(), kind: Kind::Grpc(target) };
        let p = format!("ext_authz.{}.", c.stat_prefix);
        let counter = |n: &str| ctx.store.counter(&format!("{p}{n}"));
        // Envoy creates it with the filter.
        counter("disabled");
        Ok(Arc::new(Self(Arc::new(Inner {
            service,
            failure_mode_allow: c.failure_mode_allow,
            total: counter("total"),
            ok: counter("ok"),
            denied: counter("denied"),
            error: counter("error"),
            failure_mode_allowed: counter("failure_mode_allowed"),
            cx_closed: counter("cx_closed"),
            active: ctx.store.gauge(&format!("{p}active")),
        }))))
    }
}

impl Inner {
    async fn check(&self, remote: std::net::SocketAddr, local: std::net::SocketAddr) -> bool {
        self.total.inc();
        self.active.inc();
        let decision = self.service.check(&build_tcp(remote, local)).await;
        self.active.dec();
        let allowed = match decision {
            Decision::Ok(_) => {
                self.ok.inc();
                true
            }
            Decision::Denied { .. } => {
                self.denied.inc();
                false
            }
            Decision::Error => {
                self.error.inc();
                if self.failure_mode_allow {
                    self.failure_mode_allowed.inc();
                }
                self.failure_mode_allow
            }
        };
        if !allowed {
            self.cx_closed.inc();
        }
        allowed
    }
}

impl ConnectionFilter for NetExtAuthz {
    fn checks_data(&self) -> bool {
        true
    }

    fn check_first_data(&self, conn: &ConnCtx) -> Option<Check> {
        let inner = self.0.clone();
        let (remote, local) = (conn.remote, conn.local);
        Some(Box::pin(async move { inner.check(remote, local).await }))
    }
}
