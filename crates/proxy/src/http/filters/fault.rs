//! `envoy.filters.http.fault`: delays and aborts, fixed or asked for by
//! request headers, each with its probability.

use super::{per_million, roll, Verdict};
use crate::common::matcher::{HeaderMatch, Pseudo};
use legate_api::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use legate_api::pb::envoy::extensions::filters::http::fault::v3::{fault_abort::ErrorType, HttpFault};
use std::sync::Arc;
use std::time::Duration;

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

    /// Delays (sleeping) and/or aborts the request. Cost: nothing unless
    /// the headers match.
    pub async fn on_request(&self, headers: &http::HeaderMap, pseudo: &Pseudo<'_>) -> Option<Verdict> {
        if !self.headers.iter().all(|m| m.matches(headers, pseudo)) {
            return None;
        }
        let header_num =
            |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        if let Some((how, chance)) = &self.delay {
            let d = match how {
                Delay::Fixed(d) => Some(*d),
                Delay::Header => header_num("x-envoy-fault-delay-request").map(Duration::from_millis),
            };
            if let Some(d) = d.filter(|_| roll(*chance)) {
                self.delays_injected.inc();
                tokio::time::sleep(d).await;
            }
        }
        if let Some((how, chance)) = &self.abort {
            let status = match how {
                Abort::Status(s) => Some(*s),
                Abort::Header => header_num("x-envoy-fault-abort-request").and_then(|s| u16::try_from(s).ok()),
            };
            if let Some(status) = status.filter(|s| (200..600).contains(s) && roll(*chance)) {
                self.aborts_injected.inc();
                return Some(Verdict::Abort { status, body: "fault filter abort", flag: "FI" });
            }
        }
        None
    }
}
