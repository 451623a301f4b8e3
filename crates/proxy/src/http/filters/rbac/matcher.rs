//! RBAC's `matcher` and `shadow_matcher`: a generic match tree
//! (`crate::common::match_tree`) whose actions are
//! `envoy.config.rbac.v3.Action`s. As Envoy's matcher engine: the action
//! found decides (ALLOW and LOG let the request through, DENY refuses it),
//! and a request no matcher takes, without `on_no_match`, is refused.

use super::subject::Subject;
use crate::common::match_tree::{Build, Data, Input, Tree};
use legate_api::pb::envoy::config::rbac::v3::{rbac::Action as PbAction, Action as PbRbacAction};
use legate_api::pb::xds::core::v3::TypedExtensionConfig;
use legate_api::pb::xds::r#type::matcher::v3::Matcher;
use std::borrow::Cow;

const ACTION: &str = "envoy.config.rbac.v3.Action";

/// What a matched action says: its name (the effective policy) and whether
/// the request may pass.
#[derive(Debug)]
pub struct Decision {
    pub name: String,
    pub allow: bool,
}

pub type RbacTree = Tree<Decision>;

fn action(c: &TypedExtensionConfig, path: &str) -> Result<Decision, String> {
    let any = c.typed_config.as_ref().ok_or(format!("{path}.typed_config is required"))?;
    if legate_api::any::type_name(any) != ACTION {
        return Err(format!("{path}.typed_config: {} is not an RBAC action", legate_api::any::type_name(any)));
    }
    let a: PbRbacAction = legate_api::any::unpack(any)?;
    let allow = match PbAction::try_from(a.action) {
        Ok(PbAction::Allow | PbAction::Log) => true,
        Ok(PbAction::Deny) => false,
        Err(_) => return Err(format!("{path}.typed_config.action: unknown action {}", a.action)),
    };
    Ok(Decision { name: a.name, allow })
}

/// The inputs Envoy's RBAC HTTP filter offers (of those Legate reads).
fn allowed(i: &Input) -> bool {
    !matches!(i, Input::QueryParam(_))
}

/// The tree of a `matcher` (or `shadow_matcher`: `field` names it).
pub fn compile(m: &Matcher, field: &str) -> Result<RbacTree, String> {
    let b = Build { action: &action, allowed: &allowed, user: "RBAC HTTP filter" };
    Tree::compile(m, field, &b)
}

/// Whether the tree lets `s` through.
pub fn allows(t: &RbacTree, s: &Subject<'_>) -> bool {
    t.evaluate(s).is_some_and(|d| d.allow)
}

impl Data for Subject<'_> {
    fn get(&self, input: &Input) -> Option<Cow<'_, str>> {
        let ip = |ip: std::net::IpAddr| Some(Cow::Owned(ip.to_string()));
        match input {
            Input::Header(name) => {
                let mut all = self.headers.get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()));
                let first = all.next()?;
                Some(all.fold(first, |acc, v| Cow::Owned(format!("{acc},{v}"))))
            }
            Input::Pseudo(p) => {
                let v = match *p {
                    ":path" => self.pseudo.path,
                    ":method" => self.pseudo.method,
                    ":authority" => self.pseudo.authority,
                    _ => self.pseudo.scheme,
                };
                (self.http && !v.is_empty()).then_some(Cow::Borrowed(v))
            }
            // Refused when compiled.
            Input::QueryParam(_) => None,
            // The client after x-forwarded-for, as Envoy's remote address
            // (a forwarded client has port 0).
            Input::SourceIp => ip(self.remote),
            Input::DirectSourceIp => ip(self.direct_remote),
            Input::SourcePort => {
                let port = if self.remote == self.direct_remote { self.peer_port } else { 0 };
                Some(Cow::Owned(port.to_string()))
            }
            Input::DestinationIp => ip(self.local.ip()),
            Input::DestinationPort => Some(Cow::Owned(self.local.port().to_string())),
            Input::ServerName => (!self.sni.is_empty()).then_some(Cow::Borrowed(self.sni)),
        }
    }
}
