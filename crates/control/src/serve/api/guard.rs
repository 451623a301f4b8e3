//! Slows token guessing: a client (by IP address) that presents a wrong
//! token `limit` times within `lockout` is answered 429 for `lockout`,
//! whatever it presents, and the lockout is logged and audited. Only a
//! presented token that fails (401) counts: no token is not a guess, nor is
//! a valid token without the role (403).

use crate::serve::api::reply::error;
use crate::state::controller::Controller;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many failures lock a client out, and for how long (also the window
/// the failures are counted in).
#[derive(Clone, Copy, Debug)]
pub struct Lockout {
    pub limit: u32,
    pub duration: Duration,
}

impl Default for Lockout {
    fn default() -> Self {
        Lockout { limit: 10, duration: Duration::from_secs(60) }
    }
}

/// Clients tracked at most: beyond that, expired entries are dropped first
/// and new clients are not tracked until there is room (memory stays bounded
/// under a flood from many addresses).
const MAX_CLIENTS: usize = 10_000;

#[derive(Clone, Copy)]
struct Entry {
    failures: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

/// Failure counts per client address.
pub struct Guard {
    policy: Lockout,
    clients: Mutex<HashMap<IpAddr, Entry>>,
}

impl Guard {
    pub fn new(policy: Lockout) -> Guard {
        Guard { policy, clients: Mutex::new(HashMap::new()) }
    }

    /// When the client's lockout ends, if it is locked out now.
    fn locked(&self, ip: IpAddr, now: Instant) -> Option<Instant> {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.get(&ip).and_then(|e| e.locked_until).filter(|until| *until > now)
    }

    /// Counts a failure; true when it starts a lockout.
    fn failed(&self, ip: IpAddr, now: Instant) -> bool {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&ip) {
            let window = self.policy.duration;
            clients.retain(|_, e| now.duration_since(e.since) < window || e.locked_until.is_some_and(|u| u > now));
            if clients.len() >= MAX_CLIENTS {
                return false;
            }
        }
        let e = clients.entry(ip).or_insert(Entry { failures: 0, since: now, locked_until: None });
        if now.duration_since(e.since) >= self.policy.duration {
            *e = Entry { failures: 0, since: now, locked_until: None };
        }
        e.failures += 1;
        if e.failures >= self.policy.limit && e.locked_until.is_none_or(|u| u <= now) {
            e.locked_until = Some(now + self.policy.duration);
            return true;
        }
        false
    }
}

/// The middleware: refuses locked-out clients, counts 401s.
pub async fn limit(
    State((ctrl, guard)): State<(Arc<Controller>, Arc<Guard>)>,
    request: Request,
    next: Next,
) -> Response {
    let Some(ip) = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()) else {
        return next.run(request).await;
    };
    let now = Instant::now();
    if let Some(until) = guard.locked(ip, now) {
        return too_many(until.saturating_duration_since(now));
    }
    // A guess presents a token; a page opened before signing in does not.
    let presented = request.headers().contains_key(header::AUTHORIZATION);
    let response = next.run(request).await;
    if presented && response.status() == StatusCode::UNAUTHORIZED && guard.failed(ip, now) {
        let p = guard.policy;
        let detail = format!("{} failed authentications; locked out for {:?}", p.limit, p.duration);
        tracing::warn!(client = %ip, "{detail}");
        let _ = ctrl.store().audit(&format!("client {ip}"), "lockout", "api", false, &detail);
    }
    response
}

fn too_many(retry_after: Duration) -> Response {
    let secs = retry_after.as_secs().max(1);
    let msg = format!("too many failed authentications from this address; retry in {secs}s");
    let mut r = error(StatusCode::TOO_MANY_REQUESTS, "too_many_failures", msg, json!([]));
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_th_failure_locks_out_for_the_duration_and_then_counts_anew() {
        let g = Guard::new(Lockout { limit: 3, duration: Duration::from_secs(10) });
        let ip: IpAddr = [127, 0, 0, 9].into();
        let t0 = Instant::now();
        assert!(!g.failed(ip, t0) && !g.failed(ip, t0));
        assert!(g.locked(ip, t0).is_none());
        assert!(g.failed(ip, t0), "the third failure locks");
        assert!(g.locked(ip, t0 + Duration::from_secs(9)).is_some());
        assert!(g.locked([127, 0, 0, 10].into(), t0).is_none(), "other clients are not locked");
        let later = t0 + Duration::from_secs(11);
        assert!(g.locked(ip, later).is_none(), "the lockout ends");
        assert!(!g.failed(ip, later), "a new window starts from zero");
    }
}
