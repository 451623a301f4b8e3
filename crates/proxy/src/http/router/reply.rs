//! The router's own replies when no upstream response will come: no
//! healthy host, a circuit breaker, a failed or reset upstream request, a
//! timer that ran out (Envoy's `onUpstreamAbort`, `onResponseTimeout`).
//! Each is a local reply with the route's response header mutations.

use super::retry::X_ENVOY_ATTEMPT_COUNT;
use super::timeout::TimedOut;
use crate::body::RequestProgress;
use crate::http::conn_manager::stream::Stream;
use crate::http::conn_manager::{Hcm, Matched, ProxyResponse};
use crate::upstream::cluster::Cluster;
use crate::upstream::error::UpstreamError;
use http::header::{HeaderName, HeaderValue};
use std::sync::atomic::Ordering::Relaxed;

static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");

impl Hcm {
    /// The route's timeout passed before the response: 504 `UT`.
    pub(super) fn route_timeout_reply(
        &self,
        stream: Box<Stream>,
        cluster: &Cluster,
        matched: Matched<'_>,
    ) -> ProxyResponse {
        cluster.stats.upstream_rq_timeout.inc();
        stream.charged.each().for_each(|s| s.upstream_rq_timeout.inc());
        self.charge_status(&stream, &cluster.stats, 504);
        self.router_reply(stream, Some(matched), 504, "response_timeout", "UT", Some("upstream request timeout".into()))
    }

    /// A circuit breaker's answer: 503 `UO` with `x-envoy-overloaded`.
    pub(super) fn overflow_reply(&self, stream: Box<Stream>, cluster: &Cluster, matched: Matched<'_>) -> ProxyResponse {
        self.charge_status(&stream, &cluster.stats, 503);
        let body = UpstreamError::Overflow.local_reply_body();
        let details = "upstream_reset_before_response_started{overflow}";
        let mut r = self.router_reply(stream, Some(matched), 503, details, "UO", Some(body));
        if !self.suppress_envoy_headers() {
            r.headers_mut().insert(X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
        }
        r
    }

    /// No host to send to: 503 `UH`.
    pub(super) fn no_healthy_upstream_reply(
        &self,
        stream: Box<Stream>,
        cluster: &Cluster,
        matched: Matched<'_>,
    ) -> ProxyResponse {
        self.charge_status(&stream, &cluster.stats, 503);
        let body = Some("no healthy upstream".into());
        self.router_reply(stream, Some(matched), 503, "no_healthy_upstream", "UH", body)
    }

    /// A timer ended the wait for the response. For the stream's own
    /// limits, Envoy answers 504 once the whole request was received (the
    /// wait is the upstream's), 408 while it was still arriving.
    pub(super) fn timed_out_reply(
        &self,
        stream: Box<Stream>,
        timed_out: TimedOut,
        cluster: &Cluster,
        matched: Matched<'_>,
        request_done: &RequestProgress,
    ) -> ProxyResponse {
        let received = request_done.done.load(Relaxed);
        match timed_out {
            TimedOut::Route => self.route_timeout_reply(stream, cluster, matched),
            TimedOut::Request => {
                self.stats.downstream_rq_timeout.inc();
                self.local_reply(stream, 408, "request_overall_timeout", "", Some("request timeout".into()))
            }
            TimedOut::MaxDuration => {
                cluster.stats.upstream_rq_max_duration_reached.inc();
                let status = if received { 504 } else { 408 };
                let body = Some("upstream max stream duration reached".into());
                let details = "upstream_max_stream_duration_reached";
                self.router_reply(stream, Some(matched), status, details, "UMSDR", body)
            }
            TimedOut::StreamDuration => {
                self.stats.downstream_rq_max_duration_reached.inc();
                let status = if received { 504 } else { 408 };
                let body = Some("downstream duration timeout".into());
                self.local_reply(stream, status, "max_duration_timeout", "DT", body)
            }
            TimedOut::StreamIdle => {
                self.stats.downstream_rq_idle_timeout.inc();
                let status = if received { 504 } else { 408 };
                self.local_reply(stream, status, "stream_idle_timeout", "SI", Some("stream timeout".into()))
            }
        }
    }

    /// The upstream request failed before a response (after `attempts`
    /// tries): 503 with the failure's flag and Envoy's wording.
    pub(super) fn upstream_failure_reply(
        &self,
        stream: Box<Stream>,
        error: UpstreamError,
        cluster: &Cluster,
        matched: Matched<'_>,
        attempts: u32,
    ) -> ProxyResponse {
        let cs = &cluster.stats;
        let (_, vh, _) = matched;
        match error {
            UpstreamError::Overflow => return self.overflow_reply(stream, cluster, matched),
            // The last try's per-try timeout: Envoy's 504 "upstream request timeout".
            UpstreamError::PerTryTimeout => {
                self.charge_status(&stream, cs, 504);
                let body = Some("upstream request timeout".into());
                let mut r = self.router_reply(stream, Some(matched), 504, "upstream_per_try_timeout", "UT", body);
                if vh.attempt_count_response {
                    r.headers_mut().insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempts));
                }
                return r;
            }
            // max_connection_pools: Envoy has no pool for the host and
            // answers as when no host is healthy.
            UpstreamError::PoolOverflow => return self.no_healthy_upstream_reply(stream, cluster, matched),
            _ => {}
        }
        self.charge_status(&stream, cs, 503);
        if error.response_flag() == "UF" {
            cs.upstream_rq_pending_failure_eject.inc();
        }
        let details = match error.response_flag() {
            "UF" => "upstream_reset_before_response_started{remote_connection_failure|delayed_connect_error:_Connection_refused}",
            "UR" => "upstream_reset_before_response_started{remote_refused_stream_reset}",
            _ => "upstream_reset_before_response_started{connection_termination}",
        };
        let mut body = error.local_reply_body();
        if attempts > 1 {
            body = body.replacen("reset reason:", "retried and the latest reset reason:", 1);
        }
        let mut r = self.router_reply(stream, Some(matched), 503, details, error.response_flag(), Some(body));
        // Envoy's local reply after an upstream failure says how many tries
        // there were, when the virtual host asks for it.
        if vh.attempt_count_response {
            r.headers_mut().insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(attempts));
        }
        r
    }
}
