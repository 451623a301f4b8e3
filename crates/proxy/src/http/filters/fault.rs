//! `envoy.filters.http.fault`: delays and aborts, fixed or asked for by
//! request headers, each with its probability.

use crate::common::fraction::{per_million, roll};
use crate::common::matcher::HeaderMatch;
use crate::common::runtime;
use crate::http::filters::api::{
    FilterContext, FilterStatus, HttpFilter, Registration, RequestCtx, ResponseState, Verdict,
};
use legate_api::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use legate_api::pb::envoy::extensions::filters::http::fault::v3::{fault_abort::ErrorType, HttpFault};
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;
use std::time::Duration;

pub const TYPE: &str = "envoy.extensions.filters.http.fault.v3.HTTPFault";

pub const REGISTRATION: Registration =
    Registration { type_url: TYPE, compile: Fault::compile_any, per_route: None, one_per_chain: None };

/// Requests ask for a delay in milliseconds here (`header_delay`).
const DELAY_HEADER: &str = "x-envoy-fault-delay-request";
/// Requests ask for an abort with a status here (`header_abort`).
const ABORT_HEADER: &str = "x-envoy-fault-abort-request";

enum Delay {
    Fixed(Duration),
    /// From `x-envoy-fault-delay-request` (milliseconds).
    Header,
}

enum Abort {
    Status(u16),
    /// From `x-envoy-fault-abort-request` (a status).
    Header,
}

/// The runtime keys that override a fault's chance, status and delay (the
/// filter's `*_runtime` fields, or Envoy's defaults).
struct Keys {
    abort_percent: String,
    abort_status: String,
    delay_percent: String,
    delay_ms: String,
}

/// The request's downstream cluster, whose own keys
/// (`fault.http.<cluster>.abort.abort_percent`, ...) also apply.
const DOWNSTREAM_CLUSTER: &str = "x-envoy-downstream-service-cluster";

pub struct Fault {
    headers: Vec<HeaderMatch>,
    delay: Option<(Delay, u32)>,
    abort: Option<(Abort, u32)>,
    keys: Keys,
    delays_injected: Arc<crate::stats::Counter>,
    aborts_injected: Arc<crate::stats::Counter>,
}

impl Fault {
    /// `i` is the filter's index, for error paths.
    pub fn compile(f: &HttpFault, store: &crate::stats::Store, stat_prefix: &str, i: usize) -> Result<Self, String> {
        let delay = match f.delay.as_ref() {
            Some(d) => {
                let how = match &d.fault_delay_secifier {
                    Some(FaultDelaySecifier::FixedDelay(x)) => Delay::Fixed(legate_api::duration::from_pb(x)),
                    Some(FaultDelaySecifier::HeaderDelay(_)) => Delay::Header,
                    None => return Err(format!("http_filters[{i}].typed_config.delay: a delay is required")),
                };
                Some((how, per_million(d.percentage.as_ref())))
            }
            None => None,
        };
        let abort = match f.abort.as_ref() {
            Some(a) => {
                let how = match &a.error_type {
                    Some(ErrorType::HttpStatus(s)) => {
                        Abort::Status(u16::try_from(*s).map_err(|_| "abort.http_status out of range")?)
                    }
                    Some(ErrorType::HeaderAbort(_)) => Abort::Header,
                    _ => {
                        return Err(format!(
                            "http_filters[{i}].typed_config.abort: only http_status and header_abort are supported"
                        ))
                    }
                };
                Some((how, per_million(a.percentage.as_ref())))
            }
            None => None,
        };
        let headers = f.headers.iter().map(HeaderMatch::new).collect::<Result<_, _>>()?;
        let p = format!("http.{stat_prefix}.fault.");
        let key = |set: &str, default: &str| if set.is_empty() { default.to_string() } else { set.to_string() };
        let keys = Keys {
            abort_percent: key(&f.abort_percent_runtime, "fault.http.abort.abort_percent"),
            abort_status: key(&f.abort_http_status_runtime, "fault.http.abort.http_status"),
            delay_percent: key(&f.delay_percent_runtime, "fault.http.delay.fixed_delay_percent"),
            delay_ms: key(&f.delay_duration_runtime, "fault.http.delay.fixed_duration_ms"),
        };
        Ok(Fault {
            headers,
            delay,
            abort,
            keys,
            delays_injected: store.counter(&format!("{p}delays_injected")),
            aborts_injected: store.counter(&format!("{p}aborts_injected")),
        })
    }

    fn compile_any(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
        let f = legate_api::any::unpack(any)?;
        Ok(Box::new(Self::compile(&f, ctx.server.store, ctx.stat_prefix, ctx.index)?))
    }

    /// The abort, if one is drawn: `header_status` is the status the request
    /// asked for in `x-envoy-fault-abort-request`.
    fn abort(&self, header_status: Option<u64>, cluster: Option<&str>) -> Option<Verdict> {
        let (how, chance) = self.abort.as_ref()?;
        let status = match how {
            Abort::Status(s) => Some(u64::from(*s)),
            Abort::Header => header_status,
        }?;
        let knob = Knob { percent: &self.keys.abort_percent, value: &self.keys.abort_status, what: "abort" };
        let (enabled, status) = knob.draw(cluster, *chance, status);
        let status = u16::try_from(status).ok().filter(|s| (200..600).contains(s) && enabled)?;
        self.aborts_injected.inc();
        Some(Verdict::Abort { status, body: "fault filter abort", flag: "FI" })
    }
}

impl Fault {
    /// The delay, if one is drawn: the configured (or asked for) duration,
    /// unless the runtime overrides it or its chance.
    fn delay(&self, headers: &http::HeaderMap, cluster: Option<&str>) -> Option<Duration> {
        let (how, chance) = self.delay.as_ref()?;
        let ms = match how {
            Delay::Fixed(d) => d.as_millis() as u64,
            Delay::Header => header_num(headers, DELAY_HEADER)?,
        };
        let knob = Knob { percent: &self.keys.delay_percent, value: &self.keys.delay_ms, what: "delay" };
        let (enabled, ms) = knob.draw(cluster, *chance, ms);
        enabled.then(|| Duration::from_millis(ms))
    }
}

/// A fault's runtime keys: its chance and its value (status or duration).
struct Knob<'a> {
    percent: &'a str,
    value: &'a str,
    /// `abort` or `delay`, for the downstream cluster's keys.
    what: &'static str,
}

impl Knob<'_> {
    /// Draws the fault and reads its value, as Envoy: the runtime may
    /// override both, and the downstream cluster's own keys
    /// (`fault.http.<cluster>.abort.abort_percent`, `.http_status`;
    /// `.delay.fixed_delay_percent`, `.fixed_duration_ms`) may add a chance
    /// and override the value again.
    fn draw(&self, cluster: Option<&str>, chance: u32, value: u64) -> (bool, u64) {
        let rt = runtime::snapshot();
        let mut value = rt.integer(self.value, value);
        let mut enabled = roll(rt.fraction_per_million(self.percent, chance));
        if let Some(c) = cluster {
            let (percent, leaf) = if self.what == "abort" {
                ("abort_percent", "http_status")
            } else {
                ("fixed_delay_percent", "fixed_duration_ms")
            };
            enabled |= roll(rt.fraction_per_million(&format!("fault.http.{c}.{}.{percent}", self.what), chance));
            value = rt.integer(&format!("fault.http.{c}.{}.{leaf}", self.what), value);
        }
        (enabled, value)
    }
}

/// A number a request header asks for.
fn header_num(headers: &http::HeaderMap, name: &str) -> Option<u64> {
    headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok())
}

impl HttpFilter for Fault {
    /// Delays (sleeping) and/or aborts the request. Cost: nothing unless
    /// the headers match; a box only for a delay.
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, _: &'r mut ResponseState) -> FilterStatus<'r> {
        let headers = &*rq.headers;
        if !self.headers.iter().all(|m| m.matches(headers, &rq.pseudo)) {
            return FilterStatus::Continue;
        }
        // The abort header is read now, the abort drawn after the delay.
        let abort_header = match &self.abort {
            Some((Abort::Header, _)) => header_num(headers, ABORT_HEADER),
            _ => None,
        };
        let cluster = headers.get(DOWNSTREAM_CLUSTER).and_then(|v| v.to_str().ok()).filter(|c| !c.is_empty());
        if let Some(d) = self.delay(headers, cluster) {
            self.delays_injected.inc();
            let cluster = cluster.map(str::to_string);
            return FilterStatus::Wait(Box::pin(async move {
                tokio::time::sleep(d).await;
                self.abort(abort_header, cluster.as_deref()).unwrap_or(Verdict::Continue)
            }));
        }
        match self.abort(abort_header, cluster) {
            Some(v) => FilterStatus::Done(v),
            None => FilterStatus::Continue,
        }
    }
}
