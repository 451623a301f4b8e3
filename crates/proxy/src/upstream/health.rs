//! Active health checking (HTTP, TCP with optional send/receive, and gRPC
//! `grpc.health.v1`), on the main thread.
//!
//! Each health-checked cluster has one task (see `tasks`) that checks each
//! host when it is due. As Envoy's, a host's next check waits (plus
//! jitter), until the cluster has opened a connection for traffic,
//! `no_traffic_interval` (default 60 s; `no_traffic_healthy_interval` after
//! a pass that left the host healthy), then `interval` after a pass,
//! `unhealthy_interval` after a failure, and `healthy_edge_interval` /
//! `unhealthy_edge_interval` while a change of verdict waits for its
//! threshold. `unhealthy_threshold` consecutive failures take a host out of
//! the set requests go to, `healthy_threshold` consecutive successes bring
//! it back. A host's first answer decides at once (Envoy waits for it
//! before the cluster takes traffic). An endpoint's `health_check_config`
//! gives its checks another address or port, another host header, or none
//! at all (`disable_active_health_check`: always healthy).

use crate::stats::{Counter, Gauge, Store};
use crate::upstream::clock::clock_ms;
use crate::upstream::host::Host;
use crate::upstream::membership::Membership;
use legate_api::pb::envoy::config::core::v3::{health_check::HealthChecker as Kind, HealthCheck};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

enum Check {
    /// GET `path` with this host header; healthy on an expected status.
    Http { path: String, host: String, expected: Vec<(i64, i64)> },
    /// A TCP connect succeeds; with `send`, those bytes are written and the
    /// answer must contain every `receive` payload, in order.
    Tcp { send: Vec<u8>, receive: Vec<Vec<u8>> },
    /// `grpc.health.v1.Health/Check` over HTTP/2 answers SERVING.
    Grpc { service: String, authority: String },
}

/// A health-check payload: `text` is hex, `binary` raw bytes.
fn payload(p: &legate_api::pb::envoy::config::core::v3::health_check::Payload) -> Result<Vec<u8>, String> {
    use legate_api::pb::envoy::config::core::v3::health_check::payload::Payload as P;
    match &p.payload {
        Some(P::Text(hex)) => {
            let hex = hex.trim();
            if hex.len() % 2 != 0 {
                return Err(format!("payload text '{hex}' is not hex"));
            }
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| format!("payload text '{hex}' is not hex")))
                .collect()
        }
        Some(P::Binary(b)) => Ok(b.clone()),
        None => Ok(Vec::new()),
    }
}

/// Whether `got` holds every payload of `want`, each after the previous one.
fn contains_in_order(got: &[u8], want: &[Vec<u8>]) -> bool {
    let mut from = 0;
    for w in want {
        if w.is_empty() {
            continue;
        }
        match got[from..].windows(w.len()).position(|win| win == w.as_slice()) {
            Some(i) => from += i + w.len(),
            None => return false,
        }
    }
    true
}

/// What a check's result did to the host's verdict (Envoy's
/// `HealthTransition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transition {
    Unchanged,
    Changed,
    /// The result differs from the verdict but its threshold is not reached.
    ChangePending,
}

/// The waits between a host's checks (see the module's comment).
struct Intervals {
    interval: Duration,
    unhealthy: Duration,
    unhealthy_edge: Duration,
    healthy_edge: Duration,
    no_traffic: Duration,
    no_traffic_healthy: Duration,
}

impl Intervals {
    fn compile(hc: &HealthCheck) -> Self {
        let at_least = |d: &legate_api::pb::google::protobuf::Duration| {
            legate_api::duration::from_pb(d).max(Duration::from_millis(10))
        };
        let interval = legate_api::duration::or(hc.interval.as_ref(), Duration::ZERO).max(Duration::from_millis(10));
        let unhealthy = hc.unhealthy_interval.as_ref().map_or(interval, at_least);
        let no_traffic = hc.no_traffic_interval.as_ref().map_or(Duration::from_secs(60), at_least);
        Self {
            interval,
            unhealthy,
            unhealthy_edge: hc.unhealthy_edge_interval.as_ref().map_or(unhealthy, at_least),
            healthy_edge: hc.healthy_edge_interval.as_ref().map_or(interval, at_least),
            no_traffic,
            no_traffic_healthy: hc.no_traffic_healthy_interval.as_ref().map_or(no_traffic, at_least),
        }
    }

    /// Envoy's `HealthCheckerImplBase::interval`: the wait after a check
    /// that passed (`ok`) or not, with what it did to the verdict.
    fn after(&self, ok: bool, change: Transition, traffic: bool) -> Duration {
        let pending = change == Transition::ChangePending;
        match (traffic, ok, pending) {
            (false, true, false) => self.no_traffic_healthy,
            (false, ..) => self.no_traffic,
            (true, false, true) => self.unhealthy_edge,
            (true, false, false) => self.unhealthy,
            (true, true, true) => self.healthy_edge,
            (true, true, false) => self.interval,
        }
    }
}

pub struct HealthChecker {
    check: Check,
    intervals: Intervals,
    jitter: Duration,
    timeout: Duration,
    unhealthy_threshold: u32,
    healthy_threshold: u32,
    attempt: Arc<Counter>,
    success: Arc<Counter>,
    failure: Arc<Counter>,
    network_failure: Arc<Counter>,
    healthy: Arc<Gauge>,
}

impl HealthChecker {
    pub fn compile(checks: &[HealthCheck], store: &Store, cluster: &str) -> Result<Option<Self>, String> {
        let Some(hc) = (match checks {
            [] => None,
            [one] => Some(one),
            _ => return Err("health_checks: one health check is supported".into()),
        }) else {
            return Ok(None);
        };
        let check =
            match &hc.health_checker {
                Some(Kind::HttpHealthCheck(h)) => Check::Http {
                    path: h.path.clone(),
                    host: if h.host.is_empty() { cluster.to_string() } else { h.host.clone() },
                    expected: if h.expected_statuses.is_empty() {
                        vec![(200, 201)]
                    } else {
                        h.expected_statuses.iter().map(|r| (r.start, r.end)).collect()
                    },
                },
                Some(Kind::TcpHealthCheck(t)) => Check::Tcp {
                    send: t.send.as_ref().map(payload).transpose()?.unwrap_or_default(),
                    receive: t.receive.iter().map(payload).collect::<Result<_, _>>()?,
                },
                Some(Kind::GrpcHealthCheck(g)) => Check::Grpc {
                    service: g.service_name.clone(),
                    authority: if g.authority.is_empty() { cluster.to_string() } else { g.authority.clone() },
                },
                _ => return Err(
                    "health_checks[0]: only http_health_check, tcp_health_check and grpc_health_check are supported"
                        .into(),
                ),
            };
        let p = format!("cluster.{cluster}.health_check.");
        Ok(Some(Self {
            check,
            intervals: Intervals::compile(hc),
            jitter: legate_api::duration::or(hc.interval_jitter.as_ref(), Duration::ZERO),
            timeout: legate_api::duration::or(hc.timeout.as_ref(), Duration::ZERO).max(Duration::from_millis(1)),
            unhealthy_threshold: hc.unhealthy_threshold.map_or(1, |v| v.value).max(1),
            healthy_threshold: hc.healthy_threshold.map_or(1, |v| v.value).max(1),
            attempt: store.counter(&format!("{p}attempt")),
            success: store.counter(&format!("{p}success")),
            failure: store.counter(&format!("{p}failure")),
            network_failure: store.counter(&format!("{p}network_failure")),
            healthy: store.gauge(&format!("{p}healthy")),
        }))
    }

    /// One check of `host`: `Ok(healthy)` when it answered, `Err(())` when
    /// it could not be reached or did not answer in time (a network failure).
    async fn probe(&self, host: &Host) -> Result<bool, ()> {
        let attempt = async {
            let stream = tokio::net::TcpStream::connect(host.health_check_address()).await.map_err(|_| ())?;
            // `health_check_config.hostname` names the host to its checks.
            let named = host.health_check.as_ref().map(|c| c.hostname.as_str()).filter(|n| !n.is_empty());
            match &self.check {
                Check::Tcp { send, receive } => {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut stream = stream;
                    if send.is_empty() && receive.is_empty() {
                        return Ok(true);
                    }
                    stream.write_all(send).await.map_err(|_| ())?;
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !contains_in_order(&got, receive) {
                        let n = stream.read(&mut buf).await.map_err(|_| ())?;
                        if n == 0 || got.len() > 64 * 1024 {
                            return Ok(false);
                        }
                        got.extend_from_slice(&buf[..n]);
                    }
                    Ok(true)
                }
                Check::Http { path, host: authority, expected } => {
                    let (mut sender, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                            .await
                            .map_err(|_| ())?;
                    tokio::spawn(conn);
                    let req = http::Request::get(path.as_str())
                        .header(http::header::HOST, named.unwrap_or(authority))
                        .header(http::header::USER_AGENT, "Envoy/HC")
                        .body(crate::body::ProxyBody::Empty)
                        .map_err(|_| ())?;
                    let status = sender.send_request(req).await.map_err(|_| ())?.status().as_u16() as i64;
                    Ok(expected.iter().any(|(lo, hi)| status >= *lo && status < *hi))
                }
                Check::Grpc { service, authority } => grpc_check(stream, service, named.unwrap_or(authority)).await,
            }
        };
        tokio::time::timeout(self.timeout, attempt).await.unwrap_or(Err(()))
    }

    /// Checks every host whose check is due (all of them, the first time);
    /// true when any host's verdict changed. `traffic`: the cluster has
    /// opened a connection for traffic.
    pub async fn round(&self, hosts: &Membership, traffic: bool) -> bool {
        let all = hosts.load().all.clone();
        let mut changed = false;
        let now = clock_ms();
        for h in all.iter().filter(|h| h.actively_checked() && h.hc_due.load(Relaxed) <= now) {
            self.attempt.inc();
            let result = self.probe(h).await;
            let ok = result == Ok(true);
            if ok {
                self.success.inc();
            } else {
                self.failure.inc();
                if result.is_err() {
                    self.network_failure.inc();
                }
            }
            let change = self.record(h, ok);
            changed |= change == Transition::Changed;
            let wait = self.intervals.after(ok, change, traffic) + self.jitter.mul_f64(rand::random::<f64>());
            h.hc_due.store(clock_ms() + wait.as_millis() as u64, Relaxed);
        }
        if changed {
            hosts.refresh_health();
        }
        self.healthy.set(hosts.load().healthy as i64);
        changed
    }

    fn record(&self, h: &Host, ok: bool) -> Transition {
        let was = h.hc_healthy.load(Relaxed);
        let changed = |now: bool| if now { Transition::Changed } else { Transition::Unchanged };
        if h.hc_pending.swap(false, Relaxed) {
            h.hc_healthy.store(ok, Relaxed);
            if ok {
                h.mark_healthy_now();
            }
            return changed(ok != was);
        }
        if ok {
            h.hc_fails.store(0, Relaxed);
            let passes = h.hc_passes.fetch_add(1, Relaxed) + 1;
            if was {
                return Transition::Unchanged;
            }
            if passes >= self.healthy_threshold {
                h.hc_healthy.store(true, Relaxed);
                h.mark_healthy_now();
                return Transition::Changed;
            }
        } else {
            h.hc_passes.store(0, Relaxed);
            let fails = h.hc_fails.fetch_add(1, Relaxed) + 1;
            if !was {
                return Transition::Unchanged;
            }
            if fails >= self.unhealthy_threshold {
                h.hc_healthy.store(false, Relaxed);
                return Transition::Changed;
            }
        }
        Transition::ChangePending
    }

    /// The wait before the next host is due (at most a second, so hosts
    /// that DNS or EDS add are checked soon).
    pub fn next_wait(&self, hosts: &Membership) -> Duration {
        let now = clock_ms();
        let next = hosts.load().all.iter().filter(|h| h.actively_checked()).map(|h| h.hc_due.load(Relaxed)).min();
        let wait = next.map_or(1000, |due| due.saturating_sub(now)).clamp(1, 1000);
        Duration::from_millis(wait)
    }
}

/// `grpc.health.v1.Health/Check` for `service` over HTTP/2: healthy when
/// the answer is HTTP 200, `grpc-status` 0 and the message says SERVING (1).
async fn grpc_check(stream: tokio::net::TcpStream, service: &str, authority: &str) -> Result<bool, ()> {
    use http_body_util::BodyExt;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|_| ())?;
    tokio::spawn(conn);
    // HealthCheckRequest { service = 1 } in gRPC framing (uncompressed).
    let mut message = Vec::with_capacity(service.len() + 2);
    if !service.is_empty() {
        message.push(0x0a);
        prost::encoding::encode_varint(service.len() as u64, &mut message);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let req = http::Request::post(format!("http://{authority}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .header(http::header::USER_AGENT, "Envoy/HC")
        .body(crate::body::ProxyBody::full(framed))
        .map_err(|_| ())?;
    let resp = sender.send_request(req).await.map_err(|_| ())?;
    if resp.status() != http::StatusCode::OK {
        return Ok(false);
    }
    let head_status = resp.headers().get("grpc-status").cloned();
    let collected = resp.into_body().collect().await.map_err(|_| ())?;
    let grpc_status = collected.trailers().and_then(|t| t.get("grpc-status").cloned()).or(head_status);
    if grpc_status.as_ref().map(|v| v.as_bytes()) != Some(b"0") {
        return Ok(false);
    }
    let body = collected.to_bytes();
    // One framed HealthCheckResponse: status is field 1, a varint.
    let Some(msg) = body.get(5..) else { return Ok(false) };
    Ok(serving(msg))
}

/// Whether a HealthCheckResponse says SERVING (field 1 = 1).
fn serving(mut msg: &[u8]) -> bool {
    while !msg.is_empty() {
        let Ok(key) = prost::encoding::decode_varint(&mut msg) else { return false };
        match (key >> 3, key & 7) {
            (1, 0) => return prost::encoding::decode_varint(&mut msg) == Ok(1),
            (_, 0) => {
                if prost::encoding::decode_varint(&mut msg).is_err() {
                    return false;
                }
            }
            (_, 2) => {
                let Ok(len) = prost::encoding::decode_varint(&mut msg) else { return false };
                let Some(rest) = msg.get(len as usize..) else { return false };
                msg = rest;
            }
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::{contains_in_order, serving, HealthCheck, Intervals, Transition};
    use std::time::Duration;

    #[test]
    fn the_wait_after_a_check_follows_envoys_intervals() {
        let s = |secs: i64| Some(legate_api::pb::google::protobuf::Duration { seconds: secs, nanos: 0 });
        let hc = HealthCheck {
            interval: s(1),
            unhealthy_interval: s(2),
            unhealthy_edge_interval: s(3),
            healthy_edge_interval: s(4),
            no_traffic_interval: s(5),
            no_traffic_healthy_interval: s(6),
            ..Default::default()
        };
        let i = Intervals::compile(&hc);
        let secs = |ok, change, traffic| i.after(ok, change, traffic).as_secs();
        assert_eq!(secs(true, Transition::Unchanged, true), 1);
        assert_eq!(secs(true, Transition::Changed, true), 1);
        assert_eq!(secs(false, Transition::Unchanged, true), 2);
        assert_eq!(secs(false, Transition::Changed, true), 2);
        assert_eq!(secs(false, Transition::ChangePending, true), 3);
        assert_eq!(secs(true, Transition::ChangePending, true), 4);
        assert_eq!(secs(false, Transition::Unchanged, false), 5);
        assert_eq!(secs(true, Transition::ChangePending, false), 5);
        assert_eq!(secs(true, Transition::Unchanged, false), 6);
        // Unset: the edges fall back to their intervals, no-traffic ones to 60 s.
        let d = Intervals::compile(&HealthCheck { interval: s(1), unhealthy_interval: s(2), ..Default::default() });
        assert_eq!(d.after(false, Transition::ChangePending, true), Duration::from_secs(2));
        assert_eq!(d.after(true, Transition::ChangePending, true), Duration::from_secs(1));
        assert_eq!(d.after(true, Transition::Unchanged, false), Duration::from_secs(60));
    }

    #[test]
    fn tcp_receive_payloads_must_appear_in_order() {
        let want = vec![b"PO".to_vec(), b"NG".to_vec()];
        assert!(contains_in_order(b"xxPOyyNG", &want));
        assert!(!contains_in_order(b"NGxxPO", &want));
        assert!(contains_in_order(b"anything", &[]));
    }

    #[test]
    fn grpc_serving_is_field_one_equal_to_one() {
        assert!(serving(&[0x08, 0x01]));
        assert!(!serving(&[0x08, 0x02]));
        assert!(!serving(&[]));
    }
}
