//! Spans as the Datadog agent takes them: `POST /v0.4/traces`, a
//! MessagePack array of trace chunks (each an array of spans), with the
//! headers Envoy 1.40's tracer sends; and the sampling rates the agent
//! answers with (`rate_by_service`).

use super::super::export::{Encode, Encoded, Finished};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

pub const PATH: &str = "/v0.4/traces";
static META_LANG: HeaderName = HeaderName::from_static("datadog-meta-lang");
static META_LANG_VERSION: HeaderName = HeaderName::from_static("datadog-meta-lang-version");
static META_TRACER_VERSION: HeaderName = HeaderName::from_static("datadog-meta-tracer-version");
static TRACE_COUNT: HeaderName = HeaderName::from_static("x-datadog-trace-count");
/// What Envoy 1.40's tracer (dd-trace-cpp) names itself to the agent, and
/// in every span's `language`: an agent treats Legate's spans as Envoy's.
pub const LANG: &str = "cpp";
const LANG_VERSION: &str = "202002";
const TRACER_VERSION: &str = "v2.1.1";

/// One span in the agent's v0.4 shape.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Span {
    pub service: String,
    pub name: &'static str,
    pub resource: String,
    pub trace_id: u64,
    pub span_id: u64,
    pub parent_id: u64,
    pub start: i64,
    pub duration: i64,
    pub error: i32,
    pub meta: BTreeMap<String, String>,
    pub metrics: BTreeMap<String, f64>,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// A trace chunk: the spans of one trace this proxy finished, the local
/// root first (carried in a `Finished`'s `ext`).
pub struct Chunk(pub Vec<Span>);

/// The agent's rates by `service:<name>,env:<env>`, from its answers.
#[derive(Default)]
pub struct Rates(RwLock<HashMap<String, f64>>);

impl Rates {
    /// The rate for `service` (no env: Legate sets none), else the agent's
    /// default (`service:,env:`); None before the agent has answered.
    pub fn get(&self, service: &str) -> Option<f64> {
        let r = self.0.read().ok()?;
        r.get(&format!("service:{service},env:")).or_else(|| r.get("service:,env:")).copied()
    }

    pub(super) fn update(&self, body: &[u8]) {
        #[derive(serde::Deserialize)]
        struct Answer {
            rate_by_service: Option<HashMap<String, f64>>,
        }
        let Ok(Answer { rate_by_service: Some(rates) }) = serde_json::from_slice::<Answer>(body) else { return };
        if let Ok(mut r) = self.0.write() {
            *r = rates.into_iter().filter(|(_, v)| (0.0..=1.0).contains(v)).collect();
        }
    }
}

/// The encoder: every chunk gathered since the last flush, in one request.
pub struct Traces {
    pub rates: Arc<Rates>,
}

impl Encode for Traces {
    fn encode(&self, spans: &[Finished]) -> Encoded {
        let chunks: Vec<&Vec<Span>> =
            spans.iter().filter_map(|f| f.span.ext.as_ref().and_then(|e| e.get::<Chunk>())).map(|c| &c.0).collect();
        let count = HeaderValue::from(chunks.len());
        Encoded {
            path: PATH.to_string(),
            content_type: "application/msgpack",
            body: rmp_serde::to_vec_named(&chunks).map(Bytes::from).unwrap_or_default(),
            grpc: false,
            headers: vec![
                (META_LANG.clone(), HeaderValue::from_static(LANG)),
                (META_LANG_VERSION.clone(), HeaderValue::from_static(LANG_VERSION)),
                (META_TRACER_VERSION.clone(), HeaderValue::from_static(TRACER_VERSION)),
                (TRACE_COUNT.clone(), count),
            ],
        }
    }

    /// Envoy counts a report as sent on 200 only.
    fn accepted(&self, status: u16, _: Option<&str>) -> bool {
        status == 200
    }

    fn answered(&self, body: &Bytes) {
        self.rates.update(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_rates_by_service() {
        let r = Rates::default();
        assert_eq!(r.get("svc"), None);
        r.update(br#"{"rate_by_service":{"service:,env:":1,"service:svc,env:":0.25,"service:bad,env:":7}}"#);
        assert_eq!((r.get("svc"), r.get("other"), r.get("bad")), (Some(0.25), Some(1.0), Some(1.0)));
        r.update(b"{}");
        assert_eq!(r.get("svc"), Some(0.25), "an answer without rates keeps them");
    }
}
