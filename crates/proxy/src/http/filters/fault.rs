//! `envoy.filters.http.fault`: delays and aborts, fixed or asked for by
//! request headers, each with its probability.

use crate::common::fraction::{per_million, roll};
use crate::common::matcher::HeaderMatch;
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

pub struct Fault {
    headers: Vec<HeaderMatch>,
    delay: Option<(Delay, u32)>,
    abort: Option<(Abort, u32)>,
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
        Ok(Fault {
            headers,
            delay,
            abort,
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
    fn abort(&self, header_status: Option<u64>) -> Option<Verdict> {
        let (how, chance) = self.abort.as_ref()?;
        let status = match how {
            Abort::Status(s) => Some(*s),
            Abort::Header => header_status.and_then(|s| u16::try_from(s).ok()),
        };
        let status = status.filter(|s| (200..600).contains(s) && roll(*chance))?;
        self.aborts_injected.inc();
        Some(Verdict::Abort { status, body: "fault filter abort", flag: "FI" })
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
        if let Some((how, chance)) = &self.delay {
            let d = match how {
                Delay::Fixed(d) => Some(*d),
                Delay::Header => header_num(headers, DELAY_HEADER).map(Duration::from_millis),
            };
            if let Some(d) = d.filter(|_| roll(*chance)) {
                self.delays_injected.inc();
                return FilterStatus::Wait(Box::pin(async move {
                    tokio::time::sleep(d).await;
                    self.abort(abort_header).unwrap_or(Verdict::Continue)
                }));
            }
        }
        match self.abort(abort_header) {
            Some(v) => FilterStatus::Done(v),
            None => FilterStatus::Continue,
        }
    }
}
