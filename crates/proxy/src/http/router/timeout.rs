//! Waiting for the upstream's response headers under the timers that may
//! end the wait first: the route timeout, the connection manager's request
//! timeout, the stream idle timeout, the cluster's max stream duration and
//! the stream's duration limit under the route's `max_stream_duration`.

use crate::body::RequestProgress;
use crate::http::conn_manager::Hcm;
use crate::http::route::RouteAction;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// The timer that ended the wait for a response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum TimedOut {
    /// The route's `timeout` (or `x-envoy-upstream-rq-timeout-ms`).
    Route,
    /// The connection manager's `request_timeout`, while the request was
    /// still arriving.
    Request,
    /// The stream idle timeout (the route's `idle_timeout` when it sets one).
    StreamIdle,
    /// The cluster's `max_stream_duration` passed before the response.
    MaxDuration,
    /// The stream's limit under the route's `max_stream_duration` passed.
    StreamDuration,
}

/// The timers a wait for response headers runs under, besides the
/// connection manager's own.
pub(super) struct Timers {
    /// The route timeout (`None`: off).
    pub(super) route: Option<Duration>,
    /// The cluster's `max_stream_duration`.
    pub(super) max_stream: Option<Duration>,
    /// When the stream's own duration limit passes.
    pub(super) stream_deadline: Option<tokio::time::Instant>,
}

impl Hcm {
    /// Waits for upstream response headers under the route timeout, the HCM's
    /// request timeout (only while the request is still arriving) and the
    /// stream idle timeout (the route's `idle_timeout` when it sets one).
    /// Timers that are off cost nothing.
    pub(super) async fn await_response<F: std::future::Future>(
        &self,
        fut: F,
        ra: &RouteAction,
        timers: Timers,
        request_done: &RequestProgress,
    ) -> Result<F::Output, TimedOut> {
        let Timers { route: route_timeout, max_stream, stream_deadline } = timers;
        let idle_timeout = ra.idle_timeout.unwrap_or(self.stream_idle_timeout);
        let far = Duration::from_secs(365 * 24 * 3600);
        let route = tokio::time::sleep(route_timeout.unwrap_or(far));
        let request = tokio::time::sleep(self.request_timeout.unwrap_or(far));
        let idle = tokio::time::sleep(idle_timeout.unwrap_or(far));
        let max = tokio::time::sleep(max_stream.unwrap_or(far));
        let limit = tokio::time::sleep_until(stream_deadline.unwrap_or_else(|| tokio::time::Instant::now() + far));
        tokio::pin!(fut, route, request, idle, max, limit);
        loop {
            tokio::select! {
                r = &mut fut => return Ok(r),
                _ = &mut route, if route_timeout.is_some() => return Err(TimedOut::Route),
                _ = &mut request, if self.request_timeout.is_some() => {
                    if !request_done.done.load(Relaxed) {
                        return Err(TimedOut::Request);
                    }
                    request.as_mut().reset(tokio::time::Instant::now() + far);
                }
                // Request body data is activity: the timer runs from its last byte.
                _ = &mut idle, if idle_timeout.is_some() => {
                    let again = request_done.last_data().zip(idle_timeout).map(|(t, d)| tokio::time::Instant::from_std(t + d));
                    match again {
                        Some(at) if at > tokio::time::Instant::now() => idle.as_mut().reset(at),
                        _ => return Err(TimedOut::StreamIdle),
                    }
                }
                _ = &mut max, if max_stream.is_some() => return Err(TimedOut::MaxDuration),
                _ = &mut limit, if stream_deadline.is_some() => return Err(TimedOut::StreamDuration),
            }
        }
    }
}
