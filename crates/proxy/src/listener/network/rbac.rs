//! `envoy.filters.network.rbac`: the RBAC engines (`filters::rbac`) applied to
//! a connection, in front of `tcp_proxy` or the HTTP connection manager.
//!
//! As in Envoy the rules are checked when the connection's first bytes
//! arrive (`ONE_TIME_ON_FIRST_BYTE`), or on every read (`CONTINUOUS`); a
//! denied connection is closed without its data being passed on. The
//! check wraps the connection's read side: nothing is evaluated before data
//! or the end of the stream comes (a connection closed without data is
//! checked at its end, as Envoy's onData runs for end of stream too).
//!
//! Cost: one policy walk per connection (per read with CONTINUOUS); the
//! read gate (`read_gate`) adds a branch per read.

use crate::http::context::CompileContext;
use crate::http::filters::rbac::engine::{engines_of, Counted, Engine, Subject};
use crate::listener::network::api::{ConnCtx, ConnectionFilter, DataVerdict};
use crate::stats::Store;
use legate_api::pb::envoy::extensions::filters::network::rbac::v3::{rbac::EnforcementType, Rbac as PbRbac};
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;

pub const TYPE: &str = "envoy.extensions.filters.network.rbac.v3.RBAC";

/// One compiled network RBAC filter.
pub struct NetRbac {
    enforced: Option<Engine>,
    shadow: Option<Engine>,
    continuous: bool,
    counted: Counted,
}

/// Envoy's `statPrefixJoin`: a dot between the parts unless the prefix ends with one.
fn join(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('.') {
        format!("{prefix}{rest}")
    } else {
        format!("{prefix}.{rest}")
    }
}

impl NetRbac {
    /// The filter from its `typed_config`; `path` names it in errors.
    pub fn compile_filter(any: &Any, ctx: &CompileContext, path: &str) -> Result<Arc<dyn ConnectionFilter>, String> {
        let r = legate_api::any::unpack(any)?;
        let f = Self::compile(&r, &ctx.store).map_err(|e| format!("{path}.{e}"))?;
        Ok(Arc::new(f))
    }

    pub fn compile(c: &PbRbac, store: &Store) -> Result<Self, String> {
        if c.matcher.is_some() || c.shadow_matcher.is_some() {
            return Err("matcher and shadow_matcher are not supported (use rules)".into());
        }
        if c.delay_deny.is_some() {
            return Err("delay_deny is not supported".into());
        }
        if c.stat_prefix.is_empty() {
            return Err("stat_prefix: value length must be at least 1 characters".into());
        }
        let continuous = match EnforcementType::try_from(c.enforcement_type) {
            Ok(EnforcementType::OneTimeOnFirstByte) => false,
            Ok(EnforcementType::Continuous) => true,
            Err(_) => return Err(format!("enforcement_type: unknown value {}", c.enforcement_type)),
        };
        let (enforced, shadow) = engines_of(c.rules.as_ref(), c.shadow_rules.as_ref())?;
        // `<stat_prefix>rbac.allowed`; shadow counters also carry
        // `shadow_rules_stat_prefix` before their name, as Envoy's do.
        let p = join(&c.stat_prefix, "rbac.");
        let sp = format!("{p}{}", c.shadow_rules_stat_prefix);
        Ok(Self { enforced, shadow, continuous, counted: Counted::new(store, &p, &sp) })
    }
}

static NO_HEADERS: std::sync::LazyLock<http::HeaderMap> = std::sync::LazyLock::new(http::HeaderMap::new);

/// What a connection offers the matchers: no headers, no path.
fn subject(conn: &ConnCtx) -> Subject<'_> {
    static NO_PSEUDO: crate::common::matcher::Pseudo<'static> =
        crate::common::matcher::Pseudo { method: "", path: "", authority: "", scheme: "" };
    Subject {
        headers: &NO_HEADERS,
        pseudo: &NO_PSEUDO,
        http: false,
        tls: conn.tls.as_deref(),
        sni: conn.sni.as_deref().unwrap_or(""),
        direct_remote: conn.remote.ip(),
        remote: conn.remote.ip(),
        peer_port: conn.remote.port(),
        local: conn.local,
    }
}

impl ConnectionFilter for NetRbac {
    fn checks_data(&self) -> bool {
        true
    }

    /// The shadow rules are counted once, on the first data; the enforced
    /// rules are checked then, and on every read with CONTINUOUS.
    fn on_data(&self, conn: &ConnCtx, before: DataVerdict) -> DataVerdict {
        let s = subject(conn);
        let first = before == DataVerdict::Unchecked;
        if first {
            self.counted.shadow(self.shadow.as_ref(), &s);
        }
        if !(first || (self.continuous && before == DataVerdict::Allowed)) {
            return before;
        }
        if self.counted.enforce(self.enforced.as_ref(), &s) {
            DataVerdict::Allowed
        } else {
            DataVerdict::Denied
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::network::read_gate::Gate;
    use legate_api::pb::envoy::config::rbac::v3::{
        permission::Rule, principal::Identifier, rbac::Action, Permission, Policy, Principal, Rbac as Rules,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn filter(store: &Store, action: Action, continuous: bool) -> NetRbac {
        let mut rules = Rules { action: action as i32, ..Default::default() };
        rules.policies.insert(
            "all".into(),
            Policy {
                permissions: vec![Permission { rule: Some(Rule::Any(true)) }],
                principals: vec![Principal { identifier: Some(Identifier::Any(true)) }],
                ..Default::default()
            },
        );
        let c = PbRbac {
            rules: Some(rules),
            stat_prefix: "t".into(),
            enforcement_type: if continuous { EnforcementType::Continuous } else { EnforcementType::OneTimeOnFirstByte }
                as i32,
            ..Default::default()
        };
        NetRbac::compile(&c, store).expect("compiles")
    }

    fn conn() -> ConnCtx {
        let a: std::net::SocketAddr = "127.0.0.1:1000".parse().expect("addr");
        ConnCtx { remote: a, local: a, tls: None, sni: None }
    }

    /// Reads what the peer writes in two separate chunks.
    async fn two_chunks(action: Action, continuous: bool) -> (Store, std::io::Result<usize>) {
        let store = Store::default();
        let (near, mut far) = tokio::io::duplex(64);
        let only: Arc<dyn ConnectionFilter> = Arc::new(filter(&store, action, continuous));
        let mut gate = Gate::new(near, Arc::from([only]), conn());
        let mut buf = [0u8; 16];
        far.write_all(b"one").await.expect("write");
        let first = gate.read(&mut buf).await;
        if first.is_err() {
            return (store, first);
        }
        far.write_all(b"two").await.expect("write");
        let second = gate.read(&mut buf).await;
        (store, second)
    }

    #[test]
    fn a_connection_has_no_headers_and_no_path() {
        use legate_api::pb::envoy::config::route::v3::{header_matcher::HeaderMatchSpecifier, HeaderMatcher};
        use legate_api::pb::envoy::r#type::matcher::v3::{
            path_matcher, string_matcher::MatchPattern, PathMatcher, StringMatcher,
        };
        let engine = |perm: Rule| {
            let mut rules = Rules { action: Action::Allow as i32, ..Default::default() };
            rules.policies.insert(
                "p".into(),
                Policy {
                    permissions: vec![Permission { rule: Some(perm) }],
                    principals: vec![Principal { identifier: Some(Identifier::Any(true)) }],
                    ..Default::default()
                },
            );
            Engine::new(&rules).expect("compiles")
        };
        let header = |invert: bool| {
            Rule::Header(HeaderMatcher {
                name: ":path".into(),
                header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
                invert_match: invert,
                ..Default::default()
            })
        };
        let path = Rule::UrlPath(PathMatcher {
            rule: Some(path_matcher::Rule::Path(StringMatcher {
                match_pattern: Some(MatchPattern::Prefix(String::new())),
                ignore_case: false,
            })),
        });
        let conn = conn();
        let s = subject(&conn);
        assert!(!engine(header(false)).allows(&s), ":path is absent");
        assert!(engine(header(true)).allows(&s), "an inverted match of an absent header matches");
        assert!(!engine(path).allows(&s), "url_path never matches a connection");
    }

    #[tokio::test]
    async fn one_time_checks_the_first_read_only() {
        let (store, r) = two_chunks(Action::Allow, false).await;
        assert_eq!(r.expect("allowed"), 3);
        assert_eq!(store.counter("t.rbac.allowed").value(), 1);
    }

    #[tokio::test]
    async fn continuous_checks_every_read() {
        let (store, r) = two_chunks(Action::Allow, true).await;
        assert_eq!(r.expect("allowed"), 3);
        assert_eq!(store.counter("t.rbac.allowed").value(), 2);
    }

    #[tokio::test]
    async fn a_denied_connection_reads_nothing() {
        let (store, r) = two_chunks(Action::Deny, false).await;
        assert!(r.is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied));
        assert_eq!(store.counter("t.rbac.denied").value(), 1);
    }

    #[test]
    fn stat_prefix_join() {
        assert_eq!(join("tcp", "rbac."), "tcp.rbac.");
        assert_eq!(join("tcp.", "rbac."), "tcp.rbac.");
    }
}
