//! Upgrades as the connection manager sees them (WebSocket and other
//! HTTP/1.1 `Upgrade`s, CONNECT, extended CONNECT over HTTP/2): what a
//! request asks to switch to, and whether the route and the connection
//! manager allow it, decided before the filters run. The router carries an
//! accepted one out (`crate::http::router`).

use super::stream::Stream;
use super::{Found, Hcm, ProxyResponse, Step};
use crate::http::route::{Action, ClusterChoice, Route};
use http::header::{HeaderName, HeaderValue, CONNECTION, UPGRADE};
use http::request::Parts;
use http::Version;
use std::ops::ControlFlow::{Break, Continue};

static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// What a request asks to switch to.
pub(in crate::http) enum UpgradeKind {
    /// CONNECT (HTTP/1.1, or HTTP/2 without `:protocol`).
    Connect,
    /// HTTP/1.1 `Upgrade: <value>` with `connection: upgrade`, and the
    /// `connection` value as received (passed on as it is, as Envoy does).
    Header(HeaderValue, HeaderValue),
}

impl UpgradeKind {
    /// The name `upgrade_configs` know it by (compared ignoring case).
    fn as_str(&self) -> &str {
        match self {
            UpgradeKind::Connect => "CONNECT",
            UpgradeKind::Header(v, _) => v.to_str().unwrap_or(""),
        }
    }
}

/// An accepted upgrade, carried from the connection manager to the router.
pub(in crate::http) struct Upgrade {
    pub(in crate::http) kind: UpgradeKind,
    /// `connect_config` on the route: Legate answers the CONNECT itself.
    pub(in crate::http) terminate: bool,
    /// Where the downstream connection (or HTTP/2 stream) is handed over
    /// once the response has been written.
    pub(in crate::http) on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// CONNECT's `host:port`.
    pub(in crate::http) target: Option<http::uri::Authority>,
}

impl Upgrade {
    /// The upgrade of a request with these parts, allowed (`terminate`:
    /// the route answers a CONNECT itself).
    fn new(kind: UpgradeKind, terminate: bool, parts: &mut Parts) -> Self {
        Self {
            target: parts.uri.authority().cloned(),
            kind,
            terminate,
            on_upgrade: parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
        }
    }
}

/// The upgrade a request asks for, if any. Costs a method compare for
/// ordinary requests, plus one header lookup on HTTP/1.1.
fn upgrade_kind(parts: &mut Parts, extended: bool) -> Option<UpgradeKind> {
    if parts.method == http::Method::CONNECT {
        // An extended CONNECT (`:protocol`) was read as an upgrade already
        // (`read_extended_connect`); one left here had an unusable protocol name.
        if parts.extensions.get::<hyper::ext::Protocol>().is_some() {
            return None;
        }
        return Some(UpgradeKind::Connect);
    }
    if parts.version != Version::HTTP_11 && !extended {
        return None;
    }
    let value = parts.headers.get(UPGRADE)?;
    // HTTP/1.1 to h2c is not offered: Envoy drops the upgrade headers
    // (`strip_hop_by_hop` removes `upgrade` and `connection`) and
    // HTTP2-Settings, and serves the request as HTTP/1.1.
    if value.as_bytes().eq_ignore_ascii_case(b"h2c") {
        parts.headers.remove(&HTTP2_SETTINGS);
        return None;
    }
    let connection = parts
        .headers
        .get_all(CONNECTION)
        .iter()
        .find(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))?;
    Some(UpgradeKind::Header(value.clone(), connection.clone()))
}

impl Hcm {
    /// An upgrade (HTTP/1.1 `Upgrade` with `connection: upgrade`, or
    /// CONNECT) is decided before the filters run, as Envoy decides it when
    /// it builds the stream's filter chain: the route's `upgrade_configs`
    /// override the connection manager's. A refused one on a matched route
    /// gets 403 and the connection closes (its bytes after the head may be
    /// the other protocol's).
    pub(super) fn accept_upgrade(
        &self,
        mut stream: Box<Stream>,
        parts: &mut Parts,
        extended: bool,
        found: Found<'_>,
    ) -> Step<(Box<Stream>, Option<Upgrade>)> {
        let Some(kind) = upgrade_kind(parts, extended) else {
            return Continue((stream, None));
        };
        stream.upgrade_requested = parts.version == Version::HTTP_11;
        match self.upgrade_decision(kind.as_str(), found.map(|(_, r)| r)) {
            Some(terminate) => {
                let st = &self.stats;
                st.downstream_cx_upgrades_total.inc();
                st.downstream_cx_upgrades_active.inc();
                stream.upgraded = true;
                Continue((stream, Some(Upgrade::new(kind, terminate, parts))))
            }
            None if found.is_some() => Break(self.refuse_upgrade(stream, parts.version, found)),
            None => Continue((stream, None)),
        }
    }

    /// 403 for an upgrade the matched route does not allow.
    fn refuse_upgrade(&self, mut stream: Box<Stream>, version: Version, found: Found<'_>) -> ProxyResponse {
        self.stats.downstream_rq_ws_on_non_ws_route.inc();
        // The route's cluster is known (and logged) by then.
        if let Some((_, Route { action: Action::Forward(ra), .. })) = found {
            if let ClusterChoice::Name(n) = &ra.cluster {
                stream.cluster = self.clusters.load().get(n.as_str()).cloned();
            }
        }
        let mut r = self.local_reply(stream, 403, "upgrade_failed", "", None);
        if r.version() != Version::HTTP_2 && version != Version::HTTP_2 {
            r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }

    /// Envoy's rule: a route's `upgrade_configs` entry for the type decides
    /// when present (disabled refuses; enabled allows even when the
    /// connection manager does not list the type); otherwise the connection
    /// manager's entry does. `Some(terminate)` when allowed, where
    /// `terminate` says the route has a `connect_config` for CONNECT.
    fn upgrade_decision(&self, kind: &str, route: Option<&Route>) -> Option<bool> {
        let mut route_enabled = false;
        let mut terminate = false;
        if let Some(Route { action: Action::Forward(ra), .. }) = route {
            if let Some(u) = ra.upgrades.iter().find(|u| u.kind.eq_ignore_ascii_case(kind)) {
                if !u.enabled {
                    return None;
                }
                route_enabled = true;
                terminate = u.terminate_connect && kind.eq_ignore_ascii_case("connect");
            }
        }
        let hcm_enabled = self.upgrades.iter().any(|(k, enabled)| *enabled && k.eq_ignore_ascii_case(kind));
        (route_enabled || hcm_enabled).then_some(terminate)
    }
}
