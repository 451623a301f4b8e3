//! The one interface every tracer implements, and the table that names
//! them: a new tracer is a module implementing `Driver` and one line in
//! `registry::DRIVERS` (and its config's fields in the support table).

use super::export::Exporter;
use super::span::Span;
use crate::stats::Store;
use crate::upstream::cluster::ClusterMap;
use arc_swap::ArcSwap;
use http::HeaderMap;
use legate_api::pb::google::protobuf::Any;
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

/// What the connection manager tells a driver about the span it starts.
pub struct Operation<'a> {
    /// Egress (an OUTBOUND listener): a client span; else a server span.
    pub egress: bool,
    /// The request's host (`:authority`).
    pub host: &'a str,
    /// The request's `:path` (with its query).
    pub path: &'a str,
    /// The upstream request gets its own span (`spawn_upstream_span`).
    pub spawn_upstream_span: bool,
}

/// The upstream request a span's context is written into.
pub struct Upstream<'a> {
    /// The host's address, once one is picked (the router's span).
    pub address: Option<String>,
    /// The request's authority and path as they go upstream.
    pub authority: &'a str,
    pub path: &'a str,
}

impl Operation<'_> {
    /// Envoy's operation name before any decorator: `ingress`, or `egress`
    /// and the host.
    pub fn name(&self) -> String {
        if self.egress {
            format!("egress {}", self.host)
        } else {
            "ingress".to_string()
        }
    }
}

/// A tracer: starts spans from a request's propagated context, writes a
/// span's context into the upstream request, and reports finished spans.
pub trait Driver: Send + Sync {
    /// The connection manager's span for a request with headers `h`;
    /// `traced` is the connection manager's sampling decision (a sampling
    /// decision the request carries wins). None when the request carries a
    /// context the tracer cannot read (Envoy's null span: nothing is
    /// propagated or reported).
    fn start(&self, h: &HeaderMap, op: &Operation<'_>, traced: bool, start: SystemTime) -> Option<Span>;
    /// A child of `parent` (the router's upstream span), a client span.
    fn child(&self, parent: &Span, name: String, start: SystemTime) -> Span;
    /// `span`'s context into the upstream request's headers (a tracer may
    /// note the upstream on the span: SkyWalking's exit span).
    fn inject(&self, span: &mut Span, h: &mut HeaderMap, upstream: &Upstream<'_>);
    /// A decorator or `x-envoy-decorator-operation` names the span's
    /// operation (SkyWalking keeps the path: Envoy's `setOperation` does
    /// nothing there).
    fn rename(&self, span: &mut Span, name: &str) {
        name.clone_into(&mut span.name);
    }
    /// The span ended at `end`: reported when sampled.
    fn finish(&self, span: Span, end: SystemTime);
}

/// What compiling a driver needs from the server.
pub struct DriverContext<'a> {
    pub store: &'a Arc<Store>,
    pub clusters: &'a Arc<ArcSwap<ClusterMap>>,
    /// This proxy's cluster (`--service-cluster` or `node.cluster`).
    pub local_cluster: &'a str,
    pub node_id: &'a str,
    /// `node.locality.zone`.
    pub zone: &'a str,
    /// Exporters compiled since the server last started them.
    pub exporters: &'a Arc<Mutex<Vec<Weak<Exporter>>>>,
}

/// How a tracer's driver is compiled from its `typed_config`.
pub type CompileFn = fn(&Any, &DriverContext<'_>) -> Result<Arc<dyn Driver>, String>;

/// One tracer: its config type and how it is compiled.
pub struct Registration {
    pub type_url: &'static str,
    pub compile: CompileFn,
}
