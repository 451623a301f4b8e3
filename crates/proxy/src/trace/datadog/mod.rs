//! The Datadog tracer (`envoy.tracers.datadog`), as Envoy 1.40's (built on
//! dd-trace-cpp) behaves: every span is named `envoy.proxy` with Envoy's
//! operation name as its resource; a caller's context comes from the
//! `x-datadog-*` headers, else W3C `traceparent`/`tracestate`, and both
//! go upstream. A new trace has a 128-bit id (the high half starts with
//! the epoch seconds). A request Envoy does not trace is still reported,
//! with sampling priority -1 (user drop); one it traces is kept by the
//! agent's rate for the service once the agent has sent one, else kept
//! (priority 1). A trace's spans go as one chunk once all have ended;
//! chunks go every 2 s to `POST /v0.4/traces` on `collector_cluster`.

pub mod propagation;
pub mod wire;

use super::driver::{DriverContext, Operation, Registration, Upstream};
use super::export::{ExportStats, Exporter, Finished, Flush, Target, QUEUE};
use super::span::{nanos, random_id, Ext, Kind, Span, SpanContext};
use super::tags;
use http::HeaderMap;
use legate_api::pb::envoy::config::trace::v3::DatadogConfig;
use legate_api::pb::google::protobuf::Any;
use propagation::Extracted;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub const REGISTRATION: Registration = Registration {
    type_url: "envoy.config.trace.v3.DatadogConfig",
    compile: |any, ctx| Ok(Arc::new(Datadog::compile(any, ctx)?)),
};

/// dd-trace-cpp's flush interval (each flush's request has as long).
const FLUSH: Flush = Flush { min_spans: 0, interval: Duration::from_secs(2) };
/// Every span's operation name (Envoy's operation is the resource).
const SPAN_NAME: &str = "envoy.proxy";
/// Sampling priorities.
const USER_DROP: i32 = -1;
const AUTO_KEEP: i32 = 1;
const AUTO_REJECT: i32 = 0;

pub struct Datadog {
    service: String,
    process: Arc<Process>,
    rates: Arc<wire::Rates>,
    exporter: Arc<Exporter>,
}

/// What every span of this tracer carries.
struct Process {
    runtime_id: String,
    version: String,
    pid: f64,
}

/// One trace on this proxy (dd-trace-cpp's trace segment): the decision
/// and the context that travels, and the spans that ended.
struct Segment {
    high: u64,
    low: u64,
    priority: i32,
    origin: Option<String>,
    /// `_dd.p.*` trace tags but the high half of the id.
    tags: Vec<(String, String)>,
    /// The rate the sampler kept or dropped the trace by (`_dd.agent_psr`).
    agent_psr: Option<f64>,
    /// `_dd.parent_id` (a W3C caller's last Datadog parent).
    w3c_parent: Option<String>,
    other_state: Option<String>,
    /// Spans started and not yet ended; the next span's place.
    open: AtomicUsize,
    next: AtomicUsize,
    done: Mutex<Vec<(usize, wire::Span)>>,
}

/// A span's segment and its place in it (the span's `ext`).
struct SegmentSpan {
    segment: Arc<Segment>,
    index: usize,
}

impl Datadog {
    fn compile(any: &Any, ctx: &DriverContext<'_>) -> Result<Self, String> {
        let c: DatadogConfig = legate_api::any::unpack(any)?;
        if c.service_name.is_empty() {
            return Err("service_name: value length must be at least 1 characters".into());
        }
        if !ctx.clusters.load().contains_key(&c.collector_cluster) {
            // Envoy checks the cluster when the config is loaded.
            return Err(format!("collector_cluster: envoy.tracers.datadog: unknown cluster '{}'", c.collector_cluster));
        }
        let authority =
            if c.collector_hostname.is_empty() { c.collector_cluster.clone() } else { c.collector_hostname.clone() };
        let target = Target {
            cluster: c.collector_cluster.clone(),
            authority,
            timeout: FLUSH.interval,
            clusters: ctx.clusters.clone(),
        };
        let rates = Arc::new(wire::Rates::default());
        let stats = ExportStats::named(ctx.store, "datadog", "traces_sent", "traces_dropped");
        let encoder = Box::new(wire::Traces { rates: rates.clone() });
        let exporter = Exporter::flushing(target, encoder, stats, ctx.exporters, QUEUE, FLUSH);
        let process = Process {
            runtime_id: uuid::Uuid::new_v4().to_string(),
            version: format!("legate {}", crate::common::version::version()),
            pid: f64::from(std::process::id()),
        };
        Ok(Self { service: c.service_name, process: Arc::new(process), rates, exporter })
    }

    /// The decision for a trace the caller did not decide: Envoy's "not
    /// traced" is a user drop; else the agent's rate for the service
    /// (Knuth's multiplicative hash of the trace id against it), or keep.
    fn decide(&self, traced: bool, low: u64, tags: &mut Vec<(String, String)>) -> (i32, Option<f64>) {
        if !traced {
            return (USER_DROP, None);
        }
        let Some(rate) = self.rates.get(&self.service) else {
            set(tags, "_dd.p.dm", "-0");
            return (AUTO_KEEP, Some(1.0));
        };
        let threshold = if rate >= 1.0 { u64::MAX } else { (rate * u64::MAX as f64) as u64 };
        let keep = low.wrapping_mul(1_111_111_111_111_111_111) <= threshold;
        if keep {
            set(tags, "_dd.p.dm", "-1");
        }
        set(tags, "_dd.p.ksr", &format!("{}", (rate * 1e6).round() / 1e6));
        (if keep { AUTO_KEEP } else { AUTO_REJECT }, Some(rate))
    }

    /// A finished span in the agent's shape; the chunk's first span gets
    /// the trace's own tags when the chunk is put together.
    fn wire_span(&self, span: &Span, end: SystemTime) -> wire::Span {
        let c = &span.context;
        let mut meta = BTreeMap::new();
        let mut error = 0;
        for (k, v) in &span.tags {
            match k.as_str() {
                tags::ERROR => error |= i32::from(v == tags::TRUE),
                tags::ERROR_REASON => {
                    error = 1;
                    meta.insert("error.message".to_string(), v.clone());
                    meta.insert(k.clone(), v.clone());
                }
                _ => {
                    meta.insert(k.clone(), v.clone());
                }
            }
        }
        meta.insert("language".into(), wire::LANG.into());
        meta.insert("runtime-id".into(), self.process.runtime_id.clone());
        meta.insert("version".into(), self.process.version.clone());
        let start = nanos(span.start);
        wire::Span {
            service: self.service.clone(),
            name: SPAN_NAME,
            resource: span.name.clone(),
            trace_id: c.trace_id,
            span_id: c.span_id,
            parent_id: c.parent_id.unwrap_or(0),
            start: start as i64,
            duration: nanos(end).saturating_sub(start) as i64,
            error,
            meta,
            metrics: BTreeMap::from([("process_id".to_string(), self.process.pid)]),
            kind: "web",
        }
    }
}

/// A trace tag, replacing one of the same name.
fn set(tags: &mut Vec<(String, String)>, k: &str, v: &str) {
    match tags.iter_mut().find(|(n, _)| n == k) {
        Some(t) => v.clone_into(&mut t.1),
        None => tags.push((k.to_string(), v.to_string())),
    }
}

fn place(span: &Span) -> Option<&SegmentSpan> {
    span.ext.as_ref().and_then(|e| e.get::<SegmentSpan>())
}

impl Segment {
    /// The trace's tags on its chunk's first span.
    fn tag_root(&self, root: &mut wire::Span) {
        for (k, v) in &self.tags {
            root.meta.insert(k.clone(), v.clone());
        }
        if self.high != 0 {
            root.meta.insert(propagation::TID.into(), format!("{:016x}", self.high));
        }
        if let Some(p) = &self.w3c_parent {
            root.meta.insert("_dd.parent_id".into(), p.clone());
        }
        root.metrics.insert("_sampling_priority_v1".into(), f64::from(self.priority));
        if let Some(r) = self.agent_psr {
            root.metrics.insert("_dd.agent_psr".into(), r);
        }
    }
}

impl super::Driver for Datadog {
    /// A caller's context continues its trace (a malformed one starts a
    /// new trace, as Envoy's); there is always a span.
    fn start(&self, h: &HeaderMap, op: &Operation<'_>, traced: bool, start: SystemTime) -> Option<Span> {
        let span_id = random_id();
        let mut e = propagation::extract(h).ok().flatten().unwrap_or_else(|| {
            let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            Extracted { trace_high: (secs & 0xffff_ffff) << 32, trace_low: span_id, ..Default::default() }
        });
        let (priority, agent_psr) = match e.priority {
            Some(p) => (p, None),
            None => self.decide(traced, e.trace_low, &mut e.tags),
        };
        let context = SpanContext {
            trace_id_high: e.trace_high,
            trace_id: e.trace_low,
            trace_id_128: e.trace_high != 0,
            span_id,
            parent_id: e.parent_id,
            sampled: priority > 0,
        };
        let segment = Arc::new(Segment {
            high: e.trace_high,
            low: e.trace_low,
            priority,
            origin: e.origin,
            tags: e.tags,
            agent_psr,
            w3c_parent: e.w3c_parent,
            other_state: e.other_state,
            open: AtomicUsize::new(1),
            next: AtomicUsize::new(1),
            done: Mutex::default(),
        });
        let kind = if op.egress { Kind::Client } else { Kind::Server };
        let mut span = Span::new(op.name(), kind, context, start);
        span.ext = Some(Ext(Arc::new(SegmentSpan { segment, index: 0 })));
        Some(span)
    }

    fn child(&self, parent: &Span, name: String, start: SystemTime) -> Span {
        let context =
            SpanContext { span_id: random_id(), parent_id: Some(parent.context.span_id), ..parent.context.clone() };
        let mut span = Span::new(name, Kind::Client, context, start);
        if let Some(p) = place(parent) {
            let segment = p.segment.clone();
            segment.open.fetch_add(1, Ordering::AcqRel);
            let index = segment.next.fetch_add(1, Ordering::Relaxed);
            span.ext = Some(Ext(Arc::new(SegmentSpan { segment, index })));
        }
        span
    }

    fn inject(&self, span: &mut Span, h: &mut HeaderMap, _: &Upstream<'_>) {
        let Some(p) = place(span) else { return };
        let s = &p.segment;
        let o = propagation::Outgoing {
            trace_high: s.high,
            trace_low: s.low,
            span_id: span.context.span_id,
            priority: s.priority,
            origin: s.origin.as_deref(),
            tags: &s.tags,
            other_state: s.other_state.as_deref(),
        };
        propagation::inject(h, &o);
    }

    /// Every span is reported, whatever its priority (the agent drops);
    /// the trace's chunk goes once its last span has ended.
    fn finish(&self, span: Span, end: SystemTime) {
        let Some(p) = place(&span) else { return };
        let segment = p.segment.clone();
        let mut w = self.wire_span(&span, end);
        if let Some(o) = &segment.origin {
            w.meta.insert("_dd.origin".into(), o.clone());
        }
        let Ok(mut done) = segment.done.lock() else { return };
        done.push((p.index, w));
        if segment.open.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let mut spans = std::mem::take(&mut *done);
        drop(done);
        spans.sort_by_key(|(i, _)| *i);
        let mut spans: Vec<wire::Span> = spans.into_iter().map(|(_, s)| s).collect();
        if let Some(root) = spans.first_mut() {
            segment.tag_root(root);
        }
        let carrier = Span { ext: Some(Ext(Arc::new(wire::Chunk(spans)))), ..span };
        self.exporter.push(Finished { span: carrier, end });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Store;

    fn driver() -> Datadog {
        let store = Store::default();
        let target = Target {
            cluster: "c".into(),
            authority: "c".into(),
            timeout: FLUSH.interval,
            clusters: Default::default(),
        };
        let rates = Arc::new(wire::Rates::default());
        let encoder = Box::new(wire::Traces { rates: rates.clone() });
        let pending = Mutex::new(Vec::new());
        let exporter = Exporter::flushing(target, encoder, ExportStats::new(&store, "t"), &pending, 10, FLUSH);
        let process = Process { runtime_id: "r".into(), version: "v".into(), pid: 1.0 };
        Datadog { service: "s".into(), process: Arc::new(process), rates, exporter }
    }

    #[test]
    fn the_sampling_decision_without_a_callers() {
        let d = driver();
        let mut tags = Vec::new();
        assert_eq!(d.decide(false, 7, &mut tags), (USER_DROP, None));
        assert!(tags.is_empty(), "Envoy's drop sets no decision maker");
        assert_eq!(d.decide(true, 7, &mut tags), (AUTO_KEEP, Some(1.0)));
        assert_eq!(tags, [("_dd.p.dm".to_string(), "-0".to_string())]);
        // The agent's rate: all kept at 1, none at 0.
        d.rates.update(br#"{"rate_by_service":{"service:s,env:":1}}"#);
        let mut tags = Vec::new();
        assert_eq!(d.decide(true, 7, &mut tags), (AUTO_KEEP, Some(1.0)));
        assert_eq!(tags, [("_dd.p.dm".into(), "-1".into()), ("_dd.p.ksr".into(), "1".into())]);
        d.rates.update(br#"{"rate_by_service":{"service:s,env:":0}}"#);
        let mut tags = Vec::new();
        assert_eq!(d.decide(true, 7, &mut tags), (AUTO_REJECT, Some(0.0)));
        assert_eq!(tags, [("_dd.p.ksr".to_string(), "0".to_string())]);
    }

    #[test]
    fn error_tags_become_the_spans_error() {
        let d = driver();
        let mut s = Span::new("r".into(), Kind::Client, SpanContext::default(), SystemTime::UNIX_EPOCH);
        s.set_tag(tags::ERROR, tags::TRUE);
        s.set_tag(tags::HTTP_STATUS_CODE, "503");
        let w = d.wire_span(&s, SystemTime::UNIX_EPOCH + Duration::from_millis(3));
        assert_eq!((w.error, w.duration, w.parent_id), (1, 3_000_000, 0));
        assert_eq!(w.meta.get(tags::ERROR), None);
        assert_eq!(w.meta.get(tags::HTTP_STATUS_CODE).map(String::as_str), Some("503"));
        s.tags.clear();
        s.set_tag(tags::ERROR_REASON, "remote reset");
        let w = d.wire_span(&s, SystemTime::UNIX_EPOCH);
        assert_eq!((w.error, w.meta.get("error.message").map(String::as_str)), (1, Some("remote reset")));
    }
}
