//! The RBAC engine: policies of permissions (what is asked) and principals
//! (who asks). ALLOW lets a request through when some policy matches it,
//! DENY refuses it then; LOG lets everything through. The HTTP filter and
//! the network filter (`crate::listener::network::rbac`) share it; the
//! network filter has no request: header matchers see no headers and
//! `url_path` never matches.
//!
//! Compiled once per config; evaluating a request walks the policies and
//! allocates nothing.

use crate::common::matcher::{HeaderMatch, StringMatch};
use crate::stats::Counter;
use legate_api::pb::envoy::config::core::v3::CidrRange;
use legate_api::pb::envoy::config::rbac::v3::{
    permission::Rule, principal::Identifier, rbac::Action as PbAction, Permission as PbPermission, Policy as PbPolicy,
    Principal as PbPrincipal, Rbac as PbRbac,
};
use legate_api::pb::envoy::r#type::matcher::v3::{path_matcher, PathMatcher};
use std::net::IpAddr;
use std::sync::Arc;

pub use super::subject::Subject;

/// An IP network: `address_prefix/prefix_len`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn new(c: &CidrRange) -> Result<Self, String> {
        let net: IpAddr =
            c.address_prefix.parse().map_err(|_| format!("invalid address_prefix '{}'", c.address_prefix))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        // Envoy clamps an over-long prefix to the address length.
        let len = c.prefix_len.as_ref().map_or(0, |v| v.value).min(max) as u8;
        Ok(Self { net, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) if self.net.is_ipv4() => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            other => other,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.len)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug)]
enum Permission {
    Any,
    And(Vec<Permission>),
    Or(Vec<Permission>),
    Not(Box<Permission>),
    Header(HeaderMatch),
    Path(StringMatch),
    DestinationPort(u16),
    DestinationIp(Cidr),
    RequestedServerName(StringMatch),
}

#[derive(Debug)]
enum Principal {
    Any,
    And(Vec<Principal>),
    Or(Vec<Principal>),
    Not(Box<Principal>),
    DirectRemoteIp(Cidr),
    RemoteIp(Cidr),
    Header(HeaderMatch),
    Path(StringMatch),
    /// The peer certificate's URI SANs, then DNS SANs, then subject; None:
    /// any TLS connection.
    Authenticated(Option<StringMatch>),
}

fn path_matcher(p: &PathMatcher) -> Result<StringMatch, String> {
    match &p.rule {
        Some(path_matcher::Rule::Path(s)) => StringMatch::new(s),
        None => Err("url_path: a path matcher is required".into()),
    }
}

impl Permission {
    fn new(p: &PbPermission) -> Result<Self, String> {
        Ok(match &p.rule {
            Some(Rule::Any(true)) => Self::Any,
            Some(Rule::Any(false)) => return Err("permission any: only true is meaningful".into()),
            Some(Rule::AndRules(s)) => Self::And(s.rules.iter().map(Self::new).collect::<Result<_, _>>()?),
            Some(Rule::OrRules(s)) => Self::Or(s.rules.iter().map(Self::new).collect::<Result<_, _>>()?),
            Some(Rule::NotRule(r)) => Self::Not(Box::new(Self::new(r)?)),
            Some(Rule::Header(h)) => Self::Header(HeaderMatch::new(h)?),
            Some(Rule::UrlPath(p)) => Self::Path(path_matcher(p)?),
            Some(Rule::DestinationPort(port)) => {
                Self::DestinationPort(u16::try_from(*port).map_err(|_| "destination_port out of range")?)
            }
            Some(Rule::DestinationIp(c)) => Self::DestinationIp(Cidr::new(c)?),
            Some(Rule::RequestedServerName(m)) => Self::RequestedServerName(StringMatch::new(m)?),
            Some(_) => return Err("this permission rule is not supported".into()),
            None => return Err("a permission rule is required".into()),
        })
    }

    fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Self::Any => true,
            Self::And(all) => all.iter().all(|p| p.matches(s)),
            Self::Or(any) => any.iter().any(|p| p.matches(s)),
            Self::Not(p) => !p.matches(s),
            Self::Header(h) => h.matches(s.headers, s.pseudo),
            Self::Path(m) => s.http && m.matches(s.path()),
            Self::DestinationPort(p) => s.local.port() == *p,
            Self::DestinationIp(c) => c.contains(s.local.ip()),
            Self::RequestedServerName(m) => m.matches(s.sni),
        }
    }
}

impl Principal {
    #[allow(deprecated)] // Envoy still accepts this deprecated field, so Legate reads it.
    fn new(p: &PbPrincipal) -> Result<Self, String> {
        Ok(match &p.identifier {
            Some(Identifier::Any(true)) => Self::Any,
            Some(Identifier::Any(false)) => return Err("principal any: only true is meaningful".into()),
            Some(Identifier::AndIds(s)) => Self::And(s.ids.iter().map(Self::new).collect::<Result<_, _>>()?),
            Some(Identifier::OrIds(s)) => Self::Or(s.ids.iter().map(Self::new).collect::<Result<_, _>>()?),
            Some(Identifier::NotId(p)) => Self::Not(Box::new(Self::new(p)?)),
            // Without the PROXY protocol the source is the connection's peer.
            Some(Identifier::DirectRemoteIp(c)) | Some(Identifier::SourceIp(c)) => Self::DirectRemoteIp(Cidr::new(c)?),
            Some(Identifier::RemoteIp(c)) => Self::RemoteIp(Cidr::new(c)?),
            Some(Identifier::Header(h)) => Self::Header(HeaderMatch::new(h)?),
            Some(Identifier::UrlPath(p)) => Self::Path(path_matcher(p)?),
            Some(Identifier::Authenticated(a)) => {
                Self::Authenticated(a.principal_name.as_ref().map(StringMatch::new).transpose()?)
            }
            Some(_) => return Err("this principal identifier is not supported".into()),
            None => return Err("a principal identifier is required".into()),
        })
    }

    fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Self::Any => true,
            Self::And(all) => all.iter().all(|p| p.matches(s)),
            Self::Or(any) => any.iter().any(|p| p.matches(s)),
            Self::Not(p) => !p.matches(s),
            Self::DirectRemoteIp(c) => c.contains(s.direct_remote),
            Self::RemoteIp(c) => c.contains(s.remote),
            Self::Header(h) => h.matches(s.headers, s.pseudo),
            Self::Path(m) => s.http && m.matches(s.path()),
            // As Envoy's AuthenticatedMatcher: no TLS never matches; TLS
            // without a name to match always does; otherwise any URI SAN,
            // any DNS SAN, or else the RFC 2253 subject (empty when the
            // client sent no certificate).
            Self::Authenticated(m) => match (s.tls, m) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(t), Some(m)) => {
                    let n = t.names();
                    n.uri.iter().any(|u| m.matches(u)) || n.dns.iter().any(|d| m.matches(d)) || m.matches(&n.subject)
                }
            },
        }
    }
}

#[derive(Debug)]
pub struct Policy {
    permissions: Vec<Permission>,
    principals: Vec<Principal>,
}

impl Policy {
    fn new(p: &PbPolicy) -> Result<Self, String> {
        if p.condition.is_some() || p.checked_condition.is_some() {
            return Err("condition (CEL) is not supported".into());
        }
        Ok(Self {
            permissions: p.permissions.iter().map(Permission::new).collect::<Result<_, _>>()?,
            principals: p.principals.iter().map(Principal::new).collect::<Result<_, _>>()?,
        })
    }

    /// A policy matches when any permission and any principal match.
    fn matches(&self, s: &Subject<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(s)) && self.principals.iter().any(|p| p.matches(s))
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    Allow,
    Deny,
    Log,
}

/// One set of rules (`rules` or `shadow_rules`), or a matcher (`matcher`
/// or `shadow_matcher`, see `super::matcher`).
#[derive(Debug)]
pub enum Engine {
    Policies {
        action: Action,
        /// Sorted by name, so evaluation order does not depend on map order.
        policies: Vec<(String, Policy)>,
    },
    Matcher(super::matcher::RbacTree),
}

impl Engine {
    pub fn new(r: &PbRbac) -> Result<Self, String> {
        let action = match PbAction::try_from(r.action) {
            Ok(PbAction::Allow) => Action::Allow,
            Ok(PbAction::Deny) => Action::Deny,
            Ok(PbAction::Log) => Action::Log,
            Err(_) => return Err(format!("unknown action {}", r.action)),
        };
        if r.audit_logging_options.is_some() {
            return Err("audit_logging_options is not supported".into());
        }
        let mut policies = r
            .policies
            .iter()
            .map(|(name, p)| {
                Policy::new(p).map(|p| (name.clone(), p)).map_err(|e| format!("policies[\"{name}\"]: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        policies.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self::Policies { action, policies })
    }

    /// Whether the request may pass.
    pub fn allows(&self, s: &Subject<'_>) -> bool {
        let (action, policies) = match self {
            Self::Policies { action, policies } => (action, policies),
            Self::Matcher(t) => return super::matcher::allows(t, s),
        };
        let matched = policies.iter().any(|(_, p)| p.matches(s));
        match action {
            Action::Allow => matched,
            Action::Deny => !matched,
            Action::Log => true,
        }
    }
}

/// An RBAC filter's counters (`allowed`, `denied`, `shadow_allowed`,
/// `shadow_denied`), with the evaluations they count; the HTTP and the
/// network filter name them differently.
pub struct Counted {
    pub allowed: Arc<Counter>,
    pub denied: Arc<Counter>,
    pub shadow_allowed: Arc<Counter>,
    pub shadow_denied: Arc<Counter>,
}

impl Counted {
    /// `<prefix>allowed`, `<prefix>denied`, `<shadow_prefix>shadow_allowed`, `<shadow_prefix>shadow_denied`.
    pub fn new(store: &crate::stats::Store, prefix: &str, shadow_prefix: &str) -> Self {
        Self {
            allowed: store.counter(&format!("{prefix}allowed")),
            denied: store.counter(&format!("{prefix}denied")),
            shadow_allowed: store.counter(&format!("{shadow_prefix}shadow_allowed")),
            shadow_denied: store.counter(&format!("{shadow_prefix}shadow_denied")),
        }
    }

    /// Evaluates the shadow rules, if any: counted, never enforced.
    pub fn shadow(&self, rules: Option<&Engine>, s: &Subject<'_>) {
        if let Some(e) = rules {
            if e.allows(s) {
                self.shadow_allowed.inc();
            } else {
                self.shadow_denied.inc();
            }
        }
    }

    /// Evaluates the enforced rules, if any (counted). False: refuse.
    pub fn enforce(&self, rules: Option<&Engine>, s: &Subject<'_>) -> bool {
        match rules {
            Some(e) if e.allows(s) => {
                self.allowed.inc();
                true
            }
            Some(_) => {
                self.denied.inc();
                false
            }
            None => true,
        }
    }
}

/// The engines of `rules` and `shadow_rules` (HTTP or network filter).
pub fn engines_of(rules: Option<&PbRbac>, shadow: Option<&PbRbac>) -> Result<(Option<Engine>, Option<Engine>), String> {
    let enforced = rules.map(Engine::new).transpose().map_err(|e| format!("rules.{e}"))?;
    let shadow = shadow.map(Engine::new).transpose().map_err(|e| format!("shadow_rules.{e}"))?;
    Ok((enforced, shadow))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::matcher::Pseudo;
    use legate_api::pb::envoy::config::rbac::v3::{permission, principal};
    use legate_api::pb::envoy::config::route::v3::{header_matcher::HeaderMatchSpecifier, HeaderMatcher};
    use legate_api::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, StringMatcher};
    use legate_api::pb::google::protobuf::UInt32Value;
    use std::net::SocketAddr;

    fn cidr(a: &str, len: u32) -> CidrRange {
        CidrRange { address_prefix: a.into(), prefix_len: Some(UInt32Value { value: len }) }
    }
    fn perm(r: Rule) -> PbPermission {
        PbPermission { rule: Some(r) }
    }
    fn id(i: Identifier) -> PbPrincipal {
        PbPrincipal { identifier: Some(i) }
    }
    fn prefix_path(p: &str) -> PathMatcher {
        PathMatcher {
            rule: Some(path_matcher::Rule::Path(StringMatcher {
                match_pattern: Some(MatchPattern::Prefix(p.into())),
                ignore_case: false,
            })),
        }
    }
    #[allow(deprecated)] // Envoy still accepts this deprecated field, so Legate reads it.
    fn header(name: &str, exact: &str) -> HeaderMatcher {
        HeaderMatcher {
            name: name.into(),
            header_match_specifier: Some(HeaderMatchSpecifier::ExactMatch(exact.into())),
            ..Default::default()
        }
    }
    fn engine(action: PbAction, perms: Vec<PbPermission>, ids: Vec<PbPrincipal>) -> Engine {
        let mut r = PbRbac { action: action as i32, ..Default::default() };
        r.policies.insert("p".into(), PbPolicy { permissions: perms, principals: ids, ..Default::default() });
        Engine::new(&r).expect("compiles")
    }

    struct Req {
        headers: http::HeaderMap,
        path: &'static str,
        direct: IpAddr,
        remote: IpAddr,
        port: u16,
    }
    impl Req {
        fn new(path: &'static str) -> Self {
            Self {
                headers: http::HeaderMap::new(),
                path,
                direct: "127.0.0.1".parse().expect("ip"),
                remote: "127.0.0.1".parse().expect("ip"),
                port: 8080,
            }
        }
        fn allowed(&self, e: &Engine) -> bool {
            let pseudo = Pseudo { method: "GET", path: self.path, authority: "example.com", scheme: "http" };
            let s = Subject {
                headers: &self.headers,
                pseudo: &pseudo,
                http: true,
                tls: None,
                sni: "",
                direct_remote: self.direct,
                remote: self.remote,
                peer_port: 40000,
                local: SocketAddr::new("127.0.0.1".parse().expect("ip"), self.port),
            };
            e.allows(&s)
        }
    }

    #[test]
    fn authenticated_needs_tls() {
        // A plain connection never matches `authenticated`, named or not.
        let any = engine(
            PbAction::Allow,
            vec![perm(Rule::Any(true))],
            vec![id(Identifier::Authenticated(Default::default()))],
        );
        assert!(!Req::new("/").allowed(&any));
    }

    #[test]
    fn cidr_contains() {
        let c = Cidr::new(&cidr("10.1.0.0", 16)).expect("cidr");
        assert!(c.contains("10.1.200.3".parse().expect("ip")));
        assert!(!c.contains("10.2.0.1".parse().expect("ip")));
        assert!(c.contains("::ffff:10.1.0.9".parse().expect("ip")));
        let all = Cidr::new(&cidr("0.0.0.0", 0)).expect("cidr");
        assert!(all.contains("192.0.2.1".parse().expect("ip")));
        let one = Cidr::new(&cidr("192.0.2.1", 99)).expect("clamped");
        assert!(one.contains("192.0.2.1".parse().expect("ip")) && !one.contains("192.0.2.2".parse().expect("ip")));
        let v6 = Cidr::new(&cidr("2001:db8::", 32)).expect("cidr");
        assert!(v6.contains("2001:db8:1::1".parse().expect("ip")));
        assert!(!v6.contains("10.0.0.1".parse().expect("ip")));
        assert!(Cidr::new(&cidr("nonsense", 8)).is_err());
    }

    #[test]
    fn allow_and_deny_actions() {
        let allow =
            engine(PbAction::Allow, vec![perm(Rule::UrlPath(prefix_path("/public")))], vec![id(Identifier::Any(true))]);
        assert!(Req::new("/public/x?y=1").allowed(&allow));
        assert!(!Req::new("/private").allowed(&allow));
        let deny =
            engine(PbAction::Deny, vec![perm(Rule::UrlPath(prefix_path("/public")))], vec![id(Identifier::Any(true))]);
        assert!(!Req::new("/public").allowed(&deny));
        assert!(Req::new("/private").allowed(&deny));
        let log = engine(PbAction::Log, vec![perm(Rule::Any(true))], vec![id(Identifier::Any(true))]);
        assert!(Req::new("/x").allowed(&log));
        // No policies: ALLOW refuses everything, DENY lets everything through.
        let empty = Engine::new(&PbRbac::default()).expect("compiles");
        assert!(!Req::new("/x").allowed(&empty));
    }

    #[test]
    fn combinators_ports_headers_and_addresses() {
        let and = perm(Rule::AndRules(permission::Set {
            rules: vec![perm(Rule::Header(header("x-role", "admin"))), perm(Rule::DestinationPort(8080))],
        }));
        let not_path = perm(Rule::NotRule(Box::new(perm(Rule::UrlPath(prefix_path("/admin"))))));
        let or = perm(Rule::OrRules(permission::Set { rules: vec![and, not_path] }));
        let ids = vec![id(Identifier::OrIds(principal::Set {
            ids: vec![
                id(Identifier::DirectRemoteIp(cidr("127.0.0.0", 8))),
                id(Identifier::AndIds(principal::Set {
                    ids: vec![
                        id(Identifier::RemoteIp(cidr("192.0.2.0", 24))),
                        id(Identifier::NotId(Box::new(id(Identifier::Header(header("x-banned", "yes")))))),
                    ],
                })),
            ],
        }))];
        let e = engine(PbAction::Allow, vec![or], ids);
        // Not under /admin: allowed for a loopback peer.
        assert!(Req::new("/home").allowed(&e));
        // Under /admin: needs the header and the port.
        let mut r = Req::new("/admin/x");
        assert!(!r.allowed(&e));
        r.headers.insert("x-role", http::HeaderValue::from_static("admin"));
        assert!(r.allowed(&e));
        r.port = 9090;
        assert!(!r.allowed(&e));
        // Another peer: only through the x-forwarded-for client, unless banned.
        let mut r = Req::new("/home");
        r.direct = "10.0.0.1".parse().expect("ip");
        assert!(!r.allowed(&e));
        r.remote = "192.0.2.7".parse().expect("ip");
        assert!(r.allowed(&e));
        r.headers.insert("x-banned", http::HeaderValue::from_static("yes"));
        assert!(!r.allowed(&e));
    }

    #[test]
    #[allow(deprecated)] // Envoy still accepts this deprecated field, so Legate reads it.
    fn unsupported_rules_are_refused() {
        let mut r = PbRbac::default();
        r.policies.insert(
            "p".into(),
            PbPolicy {
                permissions: vec![perm(Rule::Any(true))],
                principals: vec![id(Identifier::Metadata(Default::default()))],
                ..Default::default()
            },
        );
        assert!(Engine::new(&r).is_err_and(|e| e.contains("not supported")));
    }
}
