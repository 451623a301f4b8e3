//! Active health checking (HTTP and TCP), on the main thread.
//!
//! Each health-checked cluster has one task: every `interval` (plus jitter)
//! it checks every host; `unhealthy_threshold` consecutive failures take a
//! host out of the set requests go to, `healthy_threshold` consecutive
//! successes bring it back. A host's first answer decides at once (Envoy
//! waits for it before the cluster takes traffic).

use crate::cluster::{Cluster, Host};
use crate::stats::{Counter, Gauge, Store};
use legate_api::pb::envoy::config::core::v3::{health_check::HealthChecker as Kind, HealthCheck};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

enum Check {
    /// GET `path` with this host header; healthy on an expected status.
    Http { path: String, host: String, expected: Vec<(i64, i64)> },
    /// A TCP connect succeeds.
    Tcp,
}

pub struct HealthChecker {
    check: Check,
    interval: Duration,
    jitter: Duration,
    timeout: Duration,
    unhealthy_threshold: u32,
    healthy_threshold: u32,
    attempt: Arc<Counter>,
    success: Arc<Counter>,
    failure: Arc<Counter>,
    healthy: Arc<Gauge>,
}

fn dur(d: &Option<legate_api::pb::google::protobuf::Duration>) -> Duration {
    d.as_ref().map_or(Duration::ZERO, |d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
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
        let check = match &hc.health_checker {
            Some(Kind::HttpHealthCheck(h)) => Check::Http {
                path: h.path.clone(),
                host: if h.host.is_empty() { cluster.to_string() } else { h.host.clone() },
                expected: if h.expected_statuses.is_empty() {
                    vec![(200, 201)]
                } else {
                    h.expected_statuses.iter().map(|r| (r.start, r.end)).collect()
                },
            },
            Some(Kind::TcpHealthCheck(_)) => Check::Tcp,
            _ => return Err("health_checks[0]: only http_health_check and tcp_health_check are supported".into()),
        };
        let p = format!("cluster.{cluster}.health_check.");
        Ok(Some(Self {
            check,
            interval: dur(&hc.interval).max(Duration::from_millis(10)),
            jitter: dur(&hc.interval_jitter),
            timeout: dur(&hc.timeout).max(Duration::from_millis(1)),
            unhealthy_threshold: hc.unhealthy_threshold.map_or(1, |v| v.value).max(1),
            healthy_threshold: hc.healthy_threshold.map_or(1, |v| v.value).max(1),
            attempt: store.counter(&format!("{p}attempt")),
            success: store.counter(&format!("{p}success")),
            failure: store.counter(&format!("{p}failure")),
            healthy: store.gauge(&format!("{p}healthy")),
        }))
    }

    async fn probe(&self, host: &Host) -> bool {
        let attempt = async {
            let stream = tokio::net::TcpStream::connect(host.addr).await.ok()?;
            match &self.check {
                Check::Tcp => Some(true),
                Check::Http { path, host: authority, expected } => {
                    let (mut sender, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
                    tokio::spawn(conn);
                    let req = http::Request::get(path.as_str())
                        .header(http::header::HOST, authority.as_str())
                        .header(http::header::USER_AGENT, "Envoy/HC")
                        .body(crate::body::ProxyBody::Empty)
                        .ok()?;
                    let status = sender.send_request(req).await.ok()?.status().as_u16() as i64;
                    Some(expected.iter().any(|(lo, hi)| status >= *lo && status < *hi))
                }
            }
        };
        tokio::time::timeout(self.timeout, attempt).await.ok().flatten().unwrap_or(false)
    }

    /// Checks every host once; true when any host's verdict changed.
    pub async fn round(&self, cluster: &Cluster) -> bool {
        let hosts = cluster.hosts.load().all.clone();
        let mut changed = false;
        for h in hosts {
            self.attempt.inc();
            let ok = self.probe(&h).await;
            if ok {
                self.success.inc();
            } else {
                self.failure.inc();
            }
            changed |= self.record(&h, ok);
        }
        if changed {
            cluster.refresh_health();
        }
        self.healthy.set(cluster.hosts.load().healthy as i64);
        changed
    }

    fn record(&self, h: &Host, ok: bool) -> bool {
        let was = h.hc_healthy.load(Relaxed);
        if h.hc_pending.swap(false, Relaxed) {
            h.hc_healthy.store(ok, Relaxed);
            return ok != was;
        }
        if ok {
            h.hc_fails.store(0, Relaxed);
            let passes = h.hc_passes.fetch_add(1, Relaxed) + 1;
            if !was && passes >= self.healthy_threshold {
                h.hc_healthy.store(true, Relaxed);
                return true;
            }
        } else {
            h.hc_passes.store(0, Relaxed);
            let fails = h.hc_fails.fetch_add(1, Relaxed) + 1;
            if was && fails >= self.unhealthy_threshold {
                h.hc_healthy.store(false, Relaxed);
                return true;
            }
        }
        false
    }

    fn next_wait(&self) -> Duration {
        self.interval + self.jitter.mul_f64(rand::random::<f64>())
    }
}

/// Checks a cluster until it is gone.
pub async fn run(cluster: Weak<Cluster>) {
    loop {
        let Some(c) = cluster.upgrade() else { return };
        let Some(hc) = &c.health_check else { return };
        let wait = hc.next_wait();
        hc.round(&c).await;
        drop(c);
        tokio::time::sleep(wait).await;
    }
}
