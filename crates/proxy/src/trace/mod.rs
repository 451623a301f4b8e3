//! Distributed tracing (Envoy's `Tracing::Tracer` and its drivers): what a
//! connection manager's `tracing` compiles to, the sampling decision Envoy
//! makes from `x-request-id`, and the tracers users pick, one driver per
//! provider in one table (`registry::DRIVERS`): `zipkin` (B3 headers, JSON v2
//! over HTTP, which Jaeger also accepts), `otel` (W3C `traceparent`, OTLP
//! over gRPC), `skywalking` (`sw8`, segments over gRPC) and `datadog`
//! (`x-datadog-*` and W3C headers, MessagePack to the agent). Spans are
//! built per request by the connection manager
//! (`http/conn_manager/tracing.rs`); finished spans go to the driver's
//! `export::Exporter`, which batches and sends them off the request path.

pub mod datadog;
pub mod driver;
pub mod export;
pub mod otel;
pub mod registry;
pub mod request_id;
pub mod skywalking;
pub mod span;
pub mod tags;
pub mod zipkin;

pub use driver::{Driver, Operation, Upstream};
pub use request_id::Reason;
pub use span::{Kind, Span};

use crate::stats::{Counter, Store};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as TracingPb;
use legate_api::pb::envoy::r#type::v3::Percent;
use std::sync::Arc;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_CLIENT_TRACE_ID: HeaderName = HeaderName::from_static("x-client-trace-id");
pub static X_ENVOY_FORCE_TRACE: HeaderName = HeaderName::from_static("x-envoy-force-trace");

/// A sampling percentage as Envoy keeps it: out of 10,000.
#[derive(Debug, Clone, Copy)]
pub struct Fraction(u64);

impl Fraction {
    const ALL: Fraction = Fraction(10_000);

    fn from_percent(p: Option<&Percent>) -> Self {
        p.map_or(Self::ALL, |p| Fraction((p.value / 100.0 * 10_000.0).round().clamp(0.0, 10_000.0) as u64))
    }

    /// Whether `value` (any number; taken modulo 10,000) falls inside.
    fn hit(self, value: u64) -> bool {
        value % 10_000 < self.0
    }
}

/// `http.<stat_prefix>.tracing.*`: why requests were traced or not.
pub struct TracingStats {
    pub client_enabled: Arc<Counter>,
    pub health_check: Arc<Counter>,
    pub not_traceable: Arc<Counter>,
    pub random_sampling: Arc<Counter>,
    pub service_forced: Arc<Counter>,
}

impl TracingStats {
    fn new(store: &Store, stat_prefix: &str) -> Self {
        let c = |n: &str| store.counter(&format!("http.{stat_prefix}.tracing.{n}"));
        Self {
            client_enabled: c("client_enabled"),
            health_check: c("health_check"),
            not_traceable: c("not_traceable"),
            random_sampling: c("random_sampling"),
            service_forced: c("service_forced"),
        }
    }

    fn charge(&self, reason: Reason) {
        match reason {
            Reason::ClientForced => self.client_enabled.inc(),
            Reason::Sampling => self.random_sampling.inc(),
            Reason::ServiceForced => self.service_forced.inc(),
            Reason::NotTraceable => self.not_traceable.inc(),
        }
    }
}

/// A connection manager's `tracing`, compiled.
pub struct Tracing {
    pub driver: Arc<dyn Driver>,
    client_sampling: Fraction,
    random_sampling: Fraction,
    overall_sampling: Fraction,
    /// `max_path_tag_length` (Envoy's default: 256).
    pub max_path_tag_length: usize,
    pub custom_tags: Vec<tags::CustomTag>,
    /// `spawn_upstream_span` (the connection manager's span is then the
    /// server side of the hop, whatever the direction).
    pub spawn_upstream_span: bool,
    /// `spawn_upstream_span` or the router's `start_child_span`: each
    /// upstream request gets its own child span.
    pub child_spans: bool,
    /// From the listener's `traffic_direction`: OUTBOUND is egress,
    /// anything else ingress (Envoy's legacy default).
    pub egress: bool,
    pub node_id: String,
    /// `node.locality.zone` (the `zone` tag, empty when unset).
    pub zone: String,
    pub stats: TracingStats,
}

impl Tracing {
    /// `tracing` of a connection manager on a listener whose direction is
    /// `egress`; errors name the field under `tracing`.
    pub fn compile(
        t: &TracingPb,
        egress: bool,
        start_child_span: bool,
        ctx: &driver::DriverContext<'_>,
        stat_prefix: &str,
    ) -> Result<Self, String> {
        let driver = match &t.provider {
            Some(p) => registry::compile(p, ctx).map_err(|e| format!("tracing.provider.{e}"))?,
            // Envoy 1.40 traces nothing without a provider.
            None => return Err("tracing.provider: a tracer is required (Envoy 1.40 has no default)".into()),
        };
        let custom_tags = t
            .custom_tags
            .iter()
            .enumerate()
            .map(|(i, c)| tags::CustomTag::compile(c).map_err(|e| format!("tracing.custom_tags[{i}].{e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            driver,
            client_sampling: Fraction::from_percent(t.client_sampling.as_ref()),
            random_sampling: Fraction::from_percent(t.random_sampling.as_ref()),
            overall_sampling: Fraction::from_percent(t.overall_sampling.as_ref()),
            max_path_tag_length: t.max_path_tag_length.as_ref().map_or(256, |v| v.value as usize),
            custom_tags,
            spawn_upstream_span: t.spawn_upstream_span.as_ref().is_some_and(|b| b.value),
            child_spans: t.spawn_upstream_span.as_ref().is_some_and(|b| b.value) || start_child_span,
            egress,
            node_id: ctx.node_id.to_string(),
            zone: ctx.zone.to_string(),
            stats: TracingStats::new(ctx.store, stat_prefix),
        })
    }

    /// Envoy's decision (`mutateTracingRequestHeader`): a reason already in
    /// the request id stands; otherwise the client's `x-client-trace-id`
    /// (within `client_sampling`), `x-envoy-force-trace`, or the id's number
    /// within `random_sampling`; `overall_sampling` may still turn it off.
    /// The reason is written back into `x-request-id` and counted.
    pub fn decide(&self, h: &mut HeaderMap) -> Reason {
        let reason = self.decide_inner(h);
        self.stats.charge(reason);
        reason
    }

    fn decide_inner(&self, h: &mut HeaderMap) -> Reason {
        let Some(id) = h.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_owned) else {
            return Reason::NotTraceable;
        };
        let Some(number) = request_id::integer(&id) else { return Reason::NotTraceable };
        let result = number % 10_000;
        let carried = request_id::reason(&id);
        let mut reason = carried;
        if reason == Reason::NotTraceable {
            if h.contains_key(&X_CLIENT_TRACE_ID) && self.client_sampling.hit(rand::random::<u64>()) {
                reason = Reason::ClientForced;
            } else if h.contains_key(&X_ENVOY_FORCE_TRACE) {
                reason = Reason::ServiceForced;
            } else if self.random_sampling.hit(result) {
                reason = Reason::Sampling;
            }
        }
        if reason != Reason::NotTraceable && !self.overall_sampling.hit(result) {
            reason = Reason::NotTraceable;
        }
        if reason == carried {
            return reason;
        }
        if let Some(v) = request_id::with_reason(&id, reason).and_then(|s| HeaderValue::from_str(&s).ok()) {
            h.insert(X_REQUEST_ID.clone(), v);
        }
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    struct Never;
    impl Driver for Never {
        fn start(&self, _: &HeaderMap, _: &Operation<'_>, _: bool, _: std::time::SystemTime) -> Option<Span> {
            None
        }
        fn child(&self, parent: &Span, _: String, _: std::time::SystemTime) -> Span {
            parent.clone()
        }
        fn inject(&self, _: &mut Span, _: &mut HeaderMap, _: &driver::Upstream<'_>) {}
        fn finish(&self, _: Span, _: std::time::SystemTime) {}
    }

    fn tracing(random: f64, overall: f64) -> Tracing {
        let store = Store::default();
        Tracing {
            driver: Arc::new(Never),
            client_sampling: Fraction::ALL,
            random_sampling: Fraction::from_percent(Some(&Percent { value: random })),
            overall_sampling: Fraction::from_percent(Some(&Percent { value: overall })),
            max_path_tag_length: 256,
            custom_tags: Vec::new(),
            spawn_upstream_span: false,
            child_spans: false,
            egress: false,
            node_id: String::new(),
            zone: String::new(),
            stats: TracingStats::new(&store, "t"),
        }
    }

    fn with_id(id: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static(id));
        h
    }

    #[test]
    fn the_request_ids_number_is_drawn_against_the_percentages() {
        // 0x00000bb8 = 3000: 3000 % 10000 falls inside 50 % (5000), not 20 %.
        let id = "00000bb8-0000-4000-8000-000000000000";
        let mut h = with_id(id);
        assert_eq!(tracing(50.0, 100.0).decide(&mut h), Reason::Sampling);
        assert_eq!(h[&X_REQUEST_ID], "00000bb8-0000-9000-8000-000000000000");
        let mut h = with_id(id);
        assert_eq!(tracing(20.0, 100.0).decide(&mut h), Reason::NotTraceable);
        assert_eq!(h[&X_REQUEST_ID], id, "unchanged when nothing changed");
        // A carried decision stands, unless overall sampling turns it off.
        let mut h = with_id("00000bb8-0000-9000-8000-000000000000");
        assert_eq!(tracing(0.0, 100.0).decide(&mut h), Reason::Sampling);
        let mut h = with_id("00000bb8-0000-b000-8000-000000000000");
        assert_eq!(tracing(100.0, 20.0).decide(&mut h), Reason::NotTraceable);
        assert_eq!(h[&X_REQUEST_ID], "00000bb8-0000-4000-8000-000000000000");
        // The client's own trace id, and a forced trace.
        let mut h = with_id(id);
        h.insert(X_CLIENT_TRACE_ID.clone(), HeaderValue::from_static("c"));
        assert_eq!(tracing(0.0, 100.0).decide(&mut h), Reason::ClientForced);
        let mut h = with_id(id);
        h.insert(X_ENVOY_FORCE_TRACE.clone(), HeaderValue::from_static("1"));
        assert_eq!(tracing(0.0, 100.0).decide(&mut h), Reason::ServiceForced);
        // No usable id: not traced.
        assert_eq!(tracing(100.0, 100.0).decide(&mut with_id("zz")), Reason::NotTraceable);
    }
}
