//! The router's part of an accepted upgrade (WebSocket and other HTTP/1.1
//! `Upgrade`s, CONNECT, extended CONNECT over HTTP/2): the upgrade request
//! on a connection of its own, then the switch to a byte tunnel; or a
//! terminated CONNECT's own 200 and tunnel.

use super::tunnel::tunnel;
use super::upstream_request::Target;
use crate::body::{Finish, ProxyBody, RequestProgress, TrackedBody};
use crate::http::conn_manager::headers::strip_hop_by_hop;
use crate::http::conn_manager::stream::Stream;
use crate::http::conn_manager::upgrade::{Upgrade, UpgradeKind};
use crate::http::conn_manager::{Hcm, Matched, ProxyResponse, Step};
use crate::http::route::RouteAction;
use crate::upstream::error::UpstreamError;
use crate::upstream::pool::Held;
use http::header::{HeaderValue, CONNECTION, UPGRADE};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::ops::ControlFlow::{Break, Continue};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// The downstream side of an accepted upgrade: where its connection is
/// handed over, and the tunnel's idle timeout.
struct Downstream {
    on_upgrade: hyper::upgrade::OnUpgrade,
    idle: Option<Duration>,
}

impl Hcm {
    /// The router's part of an accepted upgrade. A terminated CONNECT is
    /// answered 200 once a raw connection to the host is up; otherwise the
    /// request goes to the host on a connection of its own (HTTP/1.1, never
    /// pooled), and a 101 (or a 2xx to a CONNECT) switches both sides to a
    /// byte tunnel that lasts until either side closes or the stream idle
    /// timeout passes. Any other answer is proxied as a response.
    pub(super) async fn forward_upgrade(
        &self,
        stream: Box<Stream>,
        mut parts: Parts,
        matched: Matched<'_>,
        ra: &RouteAction,
        target: &Target,
        up: Upgrade,
    ) -> Step<ProxyResponse> {
        let idle = ra.idle_timeout.unwrap_or(self.stream_idle_timeout);
        let Some(on_upgrade) = up.on_upgrade else {
            return Break(self.router_reply(stream, Some(matched), 503, "upgrade_failed", "", None));
        };
        let down = Downstream { on_upgrade, idle };
        let connect = matches!(up.kind, UpgradeKind::Connect);
        if connect && up.terminate {
            return Continue(self.terminate_connect(stream, matched, target, down).await);
        }
        if target.cluster.http2 {
            // Envoy would carry the upgrade as an extended CONNECT stream;
            // Legate does not speak that upstream.
            let body = Some("upgrades to an HTTP/2 cluster are not supported".into());
            return Break(self.router_reply(stream, Some(matched), 503, "upgrade_failed", "", body));
        }
        match &up.kind {
            UpgradeKind::Header(v, connection) => {
                parts.headers.insert(CONNECTION, connection.clone());
                parts.headers.insert(UPGRADE, v.clone());
            }
            UpgradeKind::Connect => match up.target.map(http::Uri::from) {
                Some(u) => parts.uri = u,
                None => return Break(self.router_reply(stream, Some(matched), 400, "invalid_path", "", None)),
            },
        }
        let (stream, upstream_resp, guard) = self.send_upgrade(stream, parts, matched, ra, target).await?;
        Continue(self.switch_protocols(stream, upstream_resp, guard, matched, connect, down))
    }

    /// A CONNECT the route terminates (`connect_config`): 200 once a raw
    /// connection to the host is up, then the tunnel over it.
    async fn terminate_connect(
        &self,
        mut stream: Box<Stream>,
        matched: Matched<'_>,
        target: &Target,
        down: Downstream,
    ) -> ProxyResponse {
        let cs = &target.cluster.stats;
        match crate::upstream::connection::connect_owned(&target.cluster, &target.host).await {
            Err(e) => {
                self.charge_status(&stream, cs, 503);
                let details = "upstream_reset_before_response_started{remote_connection_failure}";
                self.router_reply(stream, Some(matched), 503, details, e.response_flag(), Some(e.local_reply_body()))
            }
            Ok((io, guard)) => {
                cs.upstream_rq_total.inc();
                stream.charged.each().for_each(|s| s.upstream_rq_total.inc());
                self.charge_status(&stream, cs, 200);
                stream.details = "via_upstream";
                let mut resp = Response::new(ProxyBody::Empty);
                self.finish_response(&mut stream, &mut resp, Some(matched));
                resp.headers_mut().remove(CONNECTION);
                stream.conn.upgraded.store(true, Relaxed);
                tokio::spawn(tunnel(stream, down.on_upgrade, io, guard, down.idle));
                resp.map(|b| TrackedBody::new(b, None))
            }
        }
    }

    /// Sends the upgrade request on a connection of its own and waits for
    /// the answer under the route's timeout; the guard keeps that
    /// connection counted.
    async fn send_upgrade(
        &self,
        mut stream: Box<Stream>,
        parts: Parts,
        matched: Matched<'_>,
        ra: &RouteAction,
        target: &Target,
    ) -> Step<(Box<Stream>, Response<Incoming>, Arc<dyn Send + Sync>)> {
        let cluster = &target.cluster;
        let req = Request::from_parts(parts, ProxyBody::Empty);
        // No request body follows an upgrade's head.
        let request_done = RequestProgress::whole(0);
        let mut slot = Held::default();
        slot.also_total = stream.charged.totals();
        let sent = crate::upstream::pool::send_upgrade(cluster, &target.host, req, &mut slot);
        // An upgrade is no gRPC request: only `max_stream_duration` turns the route timeout off.
        let route = ra.stream_timeouts.route_timeout(ra.timeout, &http::HeaderMap::new(), false);
        let timers = super::timeout::Timers { route, max_stream: None, stream_deadline: None };
        let waited = self.await_response(sent, ra, timers, &request_done).await;
        stream.rq_slot = slot;
        let cs = &cluster.stats;
        let (upstream_resp, guard) = match waited {
            Ok(Ok(r)) => r,
            Ok(Err(UpstreamError::Overflow)) => return Break(self.overflow_reply(stream, cluster, matched)),
            Ok(Err(e)) => {
                self.charge_status(&stream, cs, 503);
                let details = match e.response_flag() {
                    "UF" => "upstream_reset_before_response_started{remote_connection_failure}",
                    _ => "upstream_reset_before_response_started{connection_termination}",
                };
                let body = Some(e.local_reply_body());
                return Break(self.router_reply(stream, Some(matched), 503, details, e.response_flag(), body));
            }
            // Any timer that ends the wait answers as the route timeout.
            Err(_) => return Break(self.route_timeout_reply(stream, cluster, matched)),
        };
        self.charge_status(&stream, cs, upstream_resp.status().as_u16());
        Continue((stream, upstream_resp, guard))
    }

    /// The upstream's answer to the upgrade: a 101 (or a 2xx to a CONNECT)
    /// switches both sides to the byte tunnel; any other answer is an
    /// ordinary response on the upgrade's own connection.
    fn switch_protocols(
        &self,
        mut stream: Box<Stream>,
        mut upstream_resp: Response<Incoming>,
        guard: Arc<dyn Send + Sync>,
        matched: Matched<'_>,
        connect: bool,
        down: Downstream,
    ) -> ProxyResponse {
        let status = upstream_resp.status().as_u16();
        let switched = status == 101 || (connect && (200..300).contains(&status));
        let upstream_upgrade = switched.then(|| hyper::upgrade::on(&mut upstream_resp));
        let (mut rparts, rbody) = upstream_resp.into_parts();
        let upgrade_value = rparts.headers.get(UPGRADE).cloned();
        strip_hop_by_hop(&mut rparts.headers);
        rparts.version = http::Version::HTTP_11;
        // Envoy sends no x-envoy-upstream-service-time on an upgrade's
        // answer, switched or not.
        let Some(upstream_upgrade) = upstream_upgrade else {
            let mut resp = Response::from_parts(rparts, ProxyBody::stream(rbody));
            stream.details = "via_upstream";
            self.finish_response(&mut stream, &mut resp, Some(matched));
            drop(guard);
            return resp.map(|b| TrackedBody::new(b, Some(stream)));
        };
        let mut resp = Response::from_parts(rparts, ProxyBody::Empty);
        stream.details = "via_upstream";
        self.finish_response(&mut stream, &mut resp, Some(matched));
        resp.headers_mut().remove(CONNECTION);
        if stream.protocol == "HTTP/2" {
            // An extended CONNECT is answered 200 (RFC 8441), as Envoy
            // turns the upstream's 101 around.
            *resp.status_mut() = StatusCode::OK;
            resp.headers_mut().remove(UPGRADE);
            stream.status = 200;
        } else if status == 101 {
            resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(v) = upgrade_value {
                resp.headers_mut().insert(UPGRADE, v);
            }
        }
        stream.conn.upgraded.store(true, Relaxed);
        tokio::spawn(async move {
            match upstream_upgrade.await {
                Ok(io) => tunnel(stream, down.on_upgrade, TokioIo::new(io), guard, down.idle).await,
                Err(_) => {
                    drop(guard);
                    Finish::finish(stream, 0, false);
                }
            }
        });
        resp.map(|b| TrackedBody::new(b, None))
    }
}
