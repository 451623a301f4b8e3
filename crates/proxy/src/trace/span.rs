//! One span as the tracers share it: its identity in the trace, its name,
//! kind, times and tags. A driver starts it (reading the parent's context
//! from the request), writes its context into the upstream request, and
//! reports it when it ends.

use std::any::Any;
use std::sync::Arc;
use std::time::SystemTime;

/// Envoy's span kinds: a connection manager's span is a server span on an
/// ingress listener and a client span on an egress one; the router's child
/// span is a client span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

/// Where a span sits in its trace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpanContext {
    /// The high 64 bits of a 128-bit trace id (0 for a 64-bit id).
    pub trace_id_high: u64,
    pub trace_id: u64,
    /// The trace id was 128 bits (or is to be written so).
    pub trace_id_128: bool,
    pub span_id: u64,
    pub parent_id: Option<u64>,
    pub sampled: bool,
}

impl SpanContext {
    /// The trace id in lowercase hex: 16 or 32 digits.
    pub fn trace_hex(&self) -> String {
        if self.trace_id_128 {
            format!("{:016x}{:016x}", self.trace_id_high, self.trace_id)
        } else {
            format!("{:016x}", self.trace_id)
        }
    }
}

/// The parent's context as a request carried it.
#[derive(Debug, Clone, Default)]
pub struct Parent {
    pub context: Option<SpanContext>,
    /// A sampling decision carried without ids (`x-b3-sampled` alone, `b3: 0`).
    pub sampled: Option<bool>,
    /// W3C `tracestate`, carried on.
    pub tracestate: Option<String>,
    /// The parent came in B3's single-header form: the context goes on in it.
    pub b3_single: bool,
}

/// A span in flight.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: String,
    pub kind: Kind,
    pub context: SpanContext,
    /// Zipkin's `shared`: the span id is the caller's (a server span that
    /// shares its client's id).
    pub shared: bool,
    pub start: SystemTime,
    pub tags: Vec<(String, String)>,
    pub tracestate: Option<String>,
    /// Propagated in B3's single-header form.
    pub b3_single: bool,
    /// What a tracer keeps with the span beyond this model (SkyWalking's
    /// segment and span ids).
    pub ext: Option<Ext>,
}

/// A tracer's own state carried by a span, read back with `get`.
#[derive(Clone)]
pub struct Ext(pub Arc<dyn Any + Send + Sync>);

impl Ext {
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }
}

impl std::fmt::Debug for Ext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ext")
    }
}

impl Span {
    /// A span with no tags, not shared, without tracestate, propagated in
    /// B3's multi-header form; drivers set what differs.
    pub fn new(name: String, kind: Kind, context: SpanContext, start: SystemTime) -> Self {
        Self {
            name,
            kind,
            context,
            shared: false,
            start,
            tags: Vec::new(),
            tracestate: None,
            b3_single: false,
            ext: None,
        }
    }

    /// A tag, replacing one of the same name (as Envoy's tracers keep one
    /// value per tag).
    pub fn set_tag(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.tags.iter_mut().find(|(n, _)| n == name) {
            Some(t) => t.1 = value,
            None => self.tags.push((name.to_string(), value)),
        }
    }

    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// A random id, never zero (zero means "absent" on the wire).
pub fn random_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

/// Microseconds since the epoch.
pub fn micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Nanoseconds since the epoch.
pub fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Milliseconds since the epoch.
pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
