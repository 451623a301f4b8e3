//! Envoy's per-method gRPC stats, charged on the route's cluster:
//! `cluster.<cluster>.<grpc-web|grpc>.<service>.<method>.<grpc-status>`, then
//! `.success` (status 0) or `.failure`, and `.total`, each time a response
//! (its headers when trailers-only, else its trailers) carries a
//! `grpc-status`.

use crate::stats::Store;
use std::sync::Arc;

/// The counters' common prefix for one request, and the store they live in.
pub struct GrpcStats {
    prefix: String,
    store: Arc<Store>,
}

impl GrpcStats {
    /// For a request to `path` routed to `cluster`: Envoy counts only paths
    /// of the form `/<service>/<method>` (the query left out).
    pub fn new(store: &Arc<Store>, protocol: &str, cluster: &str, path: &str) -> Option<Self> {
        let path = path.split('?').next().unwrap_or("");
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let (service, method) = (parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(Self { prefix: format!("cluster.{cluster}.{protocol}.{service}.{method}."), store: store.clone() })
    }

    /// Charges a response's `grpc-status`, when it has one.
    pub fn charge(&self, status: Option<&http::HeaderValue>) {
        let Some(status) = status.and_then(|v| v.to_str().ok()) else { return };
        let counter = |n: &str| self.store.counter(&format!("{}{n}", self.prefix)).inc();
        counter(status);
        counter(if status == "0" { "success" } else { "failure" });
        counter("total");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_service_and_method_paths_count() {
        let store = Arc::new(Store::default());
        assert!(GrpcStats::new(&store, "grpc-web", "c", "/a").is_none());
        assert!(GrpcStats::new(&store, "grpc-web", "c", "/a/b/c").is_none());
        let s = GrpcStats::new(&store, "grpc-web", "c", "/pkg.Svc/Get?x=1").expect("counted");
        s.charge(Some(&http::HeaderValue::from_static("5")));
        s.charge(None);
        assert_eq!(s.prefix, "cluster.c.grpc-web.pkg.Svc.Get.");
    }
}
