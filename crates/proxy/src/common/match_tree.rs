//! The generic matching API (`xds.type.matcher.v3.Matcher`): a tree of
//! `matcher_list` (predicates — `single_predicate`, `and_matcher`,
//! `or_matcher`, `not_matcher` — each with its `on_match`) or
//! `matcher_tree` (`exact_match_map`, `prefix_match_map`) nodes, with
//! `on_no_match`; an `on_match` is an action or a nested matcher. What the
//! action is belongs to the user (RBAC's `Action`): it is compiled by the
//! function the user gives, and evaluating gives the action found.
//!
//! Inputs read what the user's [`Data`] offers: request headers and query
//! parameters, source, direct source and destination IP and port, and server
//! name, as Envoy's HTTP matching data does; a user may allow fewer (RBAC
//! reads no query). An input with
//! no value matches no predicate.

use super::cidr::Cidr;
use super::matcher::StringMatch;
use legate_api::pb::xds::core::v3::TypedExtensionConfig;
use legate_api::pb::xds::r#type::matcher::v3 as xm;
use std::borrow::Cow;
use std::collections::HashMap;

const HEADER_INPUT: &str = "envoy.type.matcher.v3.HttpRequestHeaderMatchInput";
const QUERY_INPUT: &str = "envoy.type.matcher.v3.HttpRequestQueryParamMatchInput";
const NET: &str = "envoy.extensions.matching.common_inputs.network.v3.";
const IP_MATCHER: &str = "envoy.extensions.matching.input_matchers.ip.v3.Ip";

/// What an input reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A request header, its values joined by `,`.
    Header(http::HeaderName),
    /// A pseudo-header (`:path`, `:method`, `:authority`, `:scheme`), which
    /// Envoy's header input also reads.
    Pseudo(&'static str),
    /// A query parameter's first value, decoded.
    QueryParam(String),
    SourceIp,
    SourcePort,
    DirectSourceIp,
    DestinationIp,
    DestinationPort,
    ServerName,
}

/// What the matched thing offers to the inputs.
pub trait Data {
    /// The input's value, None when there is none.
    fn get(&self, input: &Input) -> Option<Cow<'_, str>>;
}

#[derive(Debug)]
enum Value {
    Str(StringMatch),
    Ip(Vec<Cidr>),
}

#[derive(Debug)]
enum Predicate {
    Single(Input, Value),
    Or(Vec<Predicate>),
    And(Vec<Predicate>),
    Not(Box<Predicate>),
}

#[derive(Debug)]
enum OnMatch<A> {
    Action(A),
    Nested(Box<Tree<A>>),
}

#[derive(Debug)]
enum Node<A> {
    List(Vec<(Predicate, OnMatch<A>)>),
    Exact(Input, HashMap<String, OnMatch<A>>),
    /// Longest prefix first.
    Prefix(Input, Vec<(String, OnMatch<A>)>),
    Empty,
}

/// A compiled matcher.
#[derive(Debug)]
pub struct Tree<A> {
    node: Node<A>,
    on_no_match: Option<OnMatch<A>>,
}

/// What the user of a tree gives its compilation: how an action is
/// compiled (the string is the field path errors name), and which inputs
/// it offers (an error names the input's type otherwise).
pub struct Build<'f, A> {
    pub action: &'f dyn Fn(&TypedExtensionConfig, &str) -> Result<A, String>,
    pub allowed: &'f dyn Fn(&Input) -> bool,
    /// Who refuses an input, for the error (`RBAC HTTP filter`).
    pub user: &'f str,
}

fn input<A>(c: Option<&TypedExtensionConfig>, path: &str, b: &Build<'_, A>) -> Result<Input, String> {
    let i = any_input(c, path)?;
    if !(b.allowed)(&i) {
        let name = c.and_then(|c| c.typed_config.as_ref()).map(legate_api::any::type_name).unwrap_or_default();
        return Err(format!("{path}: {} cannot match on {name}", b.user));
    }
    Ok(i)
}

fn any_input(c: Option<&TypedExtensionConfig>, path: &str) -> Result<Input, String> {
    use legate_api::pb::envoy::r#type::matcher::v3 as em;
    let c = c.ok_or(format!("{path}: input is required"))?;
    let any = c.typed_config.as_ref().ok_or(format!("{path}.typed_config is required"))?;
    let name = legate_api::any::type_name(any);
    Ok(match name {
        HEADER_INPUT => {
            let h: em::HttpRequestHeaderMatchInput = legate_api::any::unpack(any)?;
            if let Some(p) = [":path", ":method", ":authority", ":scheme"].into_iter().find(|p| *p == h.header_name) {
                return Ok(Input::Pseudo(p));
            }
            Input::Header(
                http::HeaderName::from_bytes(h.header_name.as_bytes())
                    .map_err(|_| format!("{path}.typed_config.header_name: invalid header name"))?,
            )
        }
        QUERY_INPUT => {
            let q: em::HttpRequestQueryParamMatchInput = legate_api::any::unpack(any)?;
            Input::QueryParam(q.query_param)
        }
        n => match n.strip_prefix(NET) {
            Some("SourceIPInput") => Input::SourceIp,
            Some("SourcePortInput") => Input::SourcePort,
            Some("DirectSourceIPInput") => Input::DirectSourceIp,
            Some("DestinationIPInput") => Input::DestinationIp,
            Some("DestinationPortInput") => Input::DestinationPort,
            Some("ServerNameInput") => Input::ServerName,
            _ => return Err(format!("{path}.typed_config: input {name} is not supported")),
        },
    })
}

/// The xds string matcher as Envoy's (the same fields).
fn string_match(m: &xm::StringMatcher, path: &str) -> Result<StringMatch, String> {
    use legate_api::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern as E, RegexMatcher, StringMatcher};
    use xm::string_matcher::MatchPattern as X;
    let pattern = match &m.match_pattern {
        Some(X::Exact(s)) => E::Exact(s.clone()),
        Some(X::Prefix(s)) => E::Prefix(s.clone()),
        Some(X::Suffix(s)) => E::Suffix(s.clone()),
        Some(X::Contains(s)) => E::Contains(s.clone()),
        Some(X::SafeRegex(r)) => E::SafeRegex(RegexMatcher { regex: r.regex.clone(), ..Default::default() }),
        Some(X::Custom(_)) | None => return Err(format!("{path}: a custom or empty string matcher is not supported")),
    };
    StringMatch::new(&StringMatcher { match_pattern: Some(pattern), ignore_case: m.ignore_case })
        .map_err(|e| format!("{path}: {e}"))
}

fn predicate<A>(p: &xm::matcher::matcher_list::Predicate, path: &str, b: &Build<'_, A>) -> Result<Predicate, String> {
    use xm::matcher::matcher_list::predicate::{single_predicate::Matcher as M, MatchType};
    let list = |ps: &[xm::matcher::matcher_list::Predicate], field: &str| {
        ps.iter()
            .enumerate()
            .map(|(i, p)| predicate(p, &format!("{path}.{field}.predicate[{i}]"), b))
            .collect::<Result<Vec<_>, String>>()
    };
    Ok(match &p.match_type {
        Some(MatchType::SinglePredicate(s)) => {
            let path = format!("{path}.single_predicate");
            let i = input(s.input.as_ref(), &format!("{path}.input"), b)?;
            let v = match &s.matcher {
                Some(M::ValueMatch(m)) => Value::Str(string_match(m, &format!("{path}.value_match"))?),
                Some(M::CustomMatch(c)) => Value::Ip(ip_matcher(c, &format!("{path}.custom_match"))?),
                None => return Err(format!("{path}: value_match or custom_match is required")),
            };
            Predicate::Single(i, v)
        }
        Some(MatchType::OrMatcher(l)) => Predicate::Or(list(&l.predicate, "or_matcher")?),
        Some(MatchType::AndMatcher(l)) => Predicate::And(list(&l.predicate, "and_matcher")?),
        Some(MatchType::NotMatcher(n)) => Predicate::Not(Box::new(predicate(n, &format!("{path}.not_matcher"), b)?)),
        None => return Err(format!("{path}: a predicate is required")),
    })
}

/// `envoy.extensions.matching.input_matchers.ip.v3.Ip`: the CIDR ranges.
fn ip_matcher(c: &TypedExtensionConfig, path: &str) -> Result<Vec<Cidr>, String> {
    let any = c.typed_config.as_ref().ok_or(format!("{path}.typed_config is required"))?;
    if legate_api::any::type_name(any) != IP_MATCHER {
        return Err(format!("{path}: {} is not supported (the IP matcher is)", legate_api::any::type_name(any)));
    }
    let ip: legate_api::pb::envoy::extensions::matching::input_matchers::ip::v3::Ip = legate_api::any::unpack(any)?;
    ip.cidr_ranges.iter().map(|r| Cidr::parse(r).map_err(|e| format!("{path}.cidr_ranges: {e}"))).collect()
}

fn on_match<A>(m: Option<&xm::matcher::OnMatch>, path: &str, b: &Build<'_, A>) -> Result<OnMatch<A>, String> {
    use xm::matcher::on_match::OnMatch as O;
    let m = m.ok_or(format!("{path}: on_match is required"))?;
    if m.keep_matching {
        return Err(format!("{path}.keep_matching is not supported"));
    }
    match &m.on_match {
        Some(O::Action(a)) => Ok(OnMatch::Action((b.action)(a, &format!("{path}.action"))?)),
        Some(O::Matcher(n)) => Ok(OnMatch::Nested(Box::new(Tree::compile(n, &format!("{path}.matcher"), b)?))),
        None => Err(format!("{path}: an action or a matcher is required")),
    }
}

impl<A> Tree<A> {
    /// Compiles `m`; `path` is where it is in the config.
    pub fn compile(m: &xm::Matcher, path: &str, b: &Build<'_, A>) -> Result<Self, String> {
        use xm::matcher::matcher_tree::TreeType;
        use xm::matcher::MatcherType;
        let on_no_match =
            m.on_no_match.as_ref().map(|o| on_match(Some(o), &format!("{path}.on_no_match"), b)).transpose()?;
        let node = match &m.matcher_type {
            Some(MatcherType::MatcherList(l)) => Node::List(
                l.matchers
                    .iter()
                    .enumerate()
                    .map(|(i, f)| {
                        let p = format!("{path}.matcher_list.matchers[{i}]");
                        let pred = f.predicate.as_ref().ok_or(format!("{p}.predicate is required"))?;
                        Ok((
                            predicate(pred, &format!("{p}.predicate"), b)?,
                            on_match(f.on_match.as_ref(), &format!("{p}.on_match"), b)?,
                        ))
                    })
                    .collect::<Result<_, String>>()?,
            ),
            Some(MatcherType::MatcherTree(t)) => {
                let p = format!("{path}.matcher_tree");
                let i = input(t.input.as_ref(), &format!("{p}.input"), b)?;
                let entries = |m: &xm::matcher::matcher_tree::MatchMap, field: &str| {
                    m.map
                        .iter()
                        .map(|(k, v)| Ok((k.clone(), on_match(Some(v), &format!("{p}.{field}[\"{k}\"]"), b)?)))
                        .collect::<Result<Vec<_>, String>>()
                };
                match &t.tree_type {
                    Some(TreeType::ExactMatchMap(m)) => {
                        Node::Exact(i, entries(m, "exact_match_map")?.into_iter().collect())
                    }
                    Some(TreeType::PrefixMatchMap(m)) => {
                        let mut e = entries(m, "prefix_match_map")?;
                        e.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
                        Node::Prefix(i, e)
                    }
                    _ => return Err(format!("{p}: only exact_match_map and prefix_match_map are supported")),
                }
            }
            None => Node::Empty,
        };
        Ok(Self { node, on_no_match })
    }

    /// The action the tree gives for `d`, None when nothing matched and
    /// there is no `on_no_match`.
    pub fn evaluate(&self, d: &dyn Data) -> Option<&A> {
        let found = match &self.node {
            Node::List(l) => l.iter().filter(|(p, _)| p.matches(d)).find_map(|(_, o)| o.evaluate(d)),
            Node::Exact(i, map) => d.get(i).and_then(|v| map.get(v.as_ref())).and_then(|o| o.evaluate(d)),
            Node::Prefix(i, list) => d
                .get(i)
                .and_then(|v| list.iter().filter(|(k, _)| v.starts_with(k.as_str())).find_map(|(_, o)| o.evaluate(d))),
            Node::Empty => None,
        };
        found.or_else(|| self.on_no_match.as_ref().and_then(|o| o.evaluate(d)))
    }
}

impl<A> OnMatch<A> {
    /// A nested matcher that matches nothing makes its `on_match` match
    /// nothing either (the xds API's rule).
    fn evaluate(&self, d: &dyn Data) -> Option<&A> {
        match self {
            Self::Action(a) => Some(a),
            Self::Nested(t) => t.evaluate(d),
        }
    }
}

impl Predicate {
    fn matches(&self, d: &dyn Data) -> bool {
        match self {
            Self::Single(i, v) => d.get(i).is_some_and(|s| match v {
                Value::Str(m) => m.matches(&s),
                Value::Ip(cidrs) => s.parse().is_ok_and(|ip| cidrs.iter().any(|c| c.contains(ip))),
            }),
            Self::Or(ps) => ps.iter().any(|p| p.matches(d)),
            Self::And(ps) => ps.iter().all(|p| p.matches(d)),
            Self::Not(p) => !p.matches(d),
        }
    }
}

/// A query parameter's first value in `path`, decoded (`+` is a space).
pub fn query_param<'a>(path: &'a str, name: &str) -> Option<Cow<'a, str>> {
    let (_, q) = path.split_once('?')?;
    form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Req(Vec<(Input, &'static str)>);
    impl Data for Req {
        fn get(&self, input: &Input) -> Option<Cow<'_, str>> {
            self.0.iter().find(|(i, _)| i == input).map(|(_, v)| Cow::Borrowed(*v))
        }
    }

    fn tree(yaml: &str) -> Tree<String> {
        let (m, _) = legate_api::load::decode_typed::<xm::Matcher>(legate_api::load::parse_text(yaml).expect("yaml"))
            .expect("a valid matcher");
        let action = |a: &TypedExtensionConfig, _: &str| Ok(a.name.clone());
        Tree::compile(&m, "matcher", &Build { action: &action, allowed: &|_| true, user: "test" }).expect("compiles")
    }

    #[test]
    fn lists_nested_matchers_and_maps() {
        let t = tree(
            r#"
matcher_list:
  matchers:
  - predicate:
      and_matcher:
        predicate:
        - single_predicate:
            input: { name: h, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: x-a } }
            value_match: { prefix: "ok" }
        - not_matcher:
            single_predicate:
              input: { name: ip, typed_config: { "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.SourceIPInput } }
              custom_match: { name: ip, typed_config: { "@type": type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip, stat_prefix: s, cidr_ranges: [{ address_prefix: 10.0.0.0, prefix_len: 8 }] } }
    on_match:
      matcher:
        matcher_tree:
          input: { name: p, typed_config: { "@type": type.googleapis.com/envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput } }
          exact_match_map: { map: { "80": { action: { name: eighty, typed_config: { "@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: n } } } } }
  - predicate:
      single_predicate:
        input: { name: h, typed_config: { "@type": type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput, header_name: x-a } }
        value_match: { exact: okay }
    on_match: { action: { name: second, typed_config: { "@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: n } } }
on_no_match: { action: { name: none, typed_config: { "@type": type.googleapis.com/envoy.config.rbac.v3.Action, name: n } } }
"#,
        );
        let h = || Input::Header(http::HeaderName::from_static("x-a"));
        let eval = |v: Vec<(Input, &'static str)>| t.evaluate(&Req(v)).cloned();
        assert_eq!(
            eval(vec![(h(), "okay"), (Input::SourceIp, "127.0.0.1"), (Input::DestinationPort, "80")]).as_deref(),
            Some("eighty")
        );
        // The nested matcher does not match: on to the next field matcher.
        assert_eq!(
            eval(vec![(h(), "okay"), (Input::SourceIp, "127.0.0.1"), (Input::DestinationPort, "81")]).as_deref(),
            Some("second")
        );
        assert_eq!(eval(vec![(h(), "okay"), (Input::SourceIp, "10.1.2.3")]).as_deref(), Some("second"));
        assert_eq!(eval(vec![(h(), "okx")]).as_deref(), Some("none"));
        assert_eq!(eval(vec![]).as_deref(), Some("none"));
    }

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(query_param("/a?x=1&y=a%20b+c&y=2", "y").as_deref(), Some("a b c"));
        assert_eq!(query_param("/a?x=1", "y"), None);
        assert_eq!(query_param("/a", "x"), None);
    }
}
