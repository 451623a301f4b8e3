//! The rules of `jwt_authn`: which requirement a request's path (and
//! headers) asks for, and requirements compiled from `JwtRequirement`.

use crate::common::matcher::{compile_regex, HeaderMatch, Pseudo};
use legate_api::pb::envoy::config::route::v3::{route_match::PathSpecifier, RouteMatch};
use legate_api::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_requirement::RequiresType, requirement_rule::RequirementType, JwtAuthentication, JwtRequirement,
};
use std::collections::HashMap;

/// A compiled `JwtRequirement`.
pub(super) enum Requirement {
    Provider(usize),
    Any(Vec<Requirement>),
    All(Vec<Requirement>),
    /// Satisfied without a token; a token present must verify.
    AllowMissing,
    /// Always satisfied; a token that verifies is still used.
    AllowMissingOrFailed,
}

/// A rule's match: path (prefix, exact or regex) and headers.
enum PathTest {
    Prefix(String),
    Exact(String),
    Regex(regex::Regex),
}

pub(super) struct Rule {
    path: PathTest,
    headers: Vec<HeaderMatch>,
    /// None: the rule matches and asks for nothing.
    pub requires: Option<Requirement>,
}

fn path_test(m: &RouteMatch) -> Result<PathTest, String> {
    if m.case_sensitive.is_some_and(|b| !b.value) || !m.query_parameters.is_empty() {
        return Err("case_sensitive and query_parameters are not supported in jwt_authn rules".into());
    }
    Ok(match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathTest::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => PathTest::Exact(p.clone()),
        Some(PathSpecifier::SafeRegex(r)) => PathTest::Regex(compile_regex(r)?),
        _ => return Err("only prefix, path and safe_regex are supported".into()),
    })
}

impl Rule {
    /// Whether the request's path (query and fragment aside) and headers match.
    pub(super) fn matches(&self, headers: &http::HeaderMap, pseudo: &Pseudo<'_>) -> bool {
        let path_only = pseudo.path.split(['?', '#']).next().unwrap_or(pseudo.path);
        (match &self.path {
            PathTest::Prefix(p) => path_only.starts_with(p.as_str()),
            PathTest::Exact(p) => path_only == p,
            PathTest::Regex(re) => re.is_match(path_only),
        }) && self.headers.iter().all(|m| m.matches(headers, pseudo))
    }
}

/// The `rules`, in order; `index` gives each provider's position by name.
pub(super) fn compile_rules(c: &JwtAuthentication, index: &HashMap<String, usize>) -> Result<Vec<Rule>, String> {
    c.rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let m = r.r#match.as_ref().ok_or(format!("rules[{i}].match is required"))?;
            let requires = match &r.requirement_type {
                Some(RequirementType::Requires(q)) => {
                    Some(requirement(q, index).map_err(|e| format!("rules[{i}].requires: {e}"))?)
                }
                Some(RequirementType::RequirementName(_)) => {
                    return Err(format!("rules[{i}].requirement_name is not supported"))
                }
                None => None,
            };
            Ok(Rule {
                path: path_test(m).map_err(|e| format!("rules[{i}].match: {e}"))?,
                headers: m.headers.iter().map(HeaderMatch::new).collect::<Result<_, _>>()?,
                requires,
            })
        })
        .collect()
}

fn requirement(r: &JwtRequirement, index: &HashMap<String, usize>) -> Result<Requirement, String> {
    let all = |list: &[JwtRequirement]| list.iter().map(|r| requirement(r, index)).collect::<Result<_, _>>();
    match &r.requires_type {
        Some(RequiresType::ProviderName(n)) => {
            index.get(n).map(|i| Requirement::Provider(*i)).ok_or(format!("unknown provider '{n}'"))
        }
        Some(RequiresType::RequiresAny(l)) => Ok(Requirement::Any(all(&l.requirements)?)),
        Some(RequiresType::RequiresAll(l)) => Ok(Requirement::All(all(&l.requirements)?)),
        Some(RequiresType::AllowMissing(_)) => Ok(Requirement::AllowMissing),
        Some(RequiresType::AllowMissingOrFailed(_)) => Ok(Requirement::AllowMissingOrFailed),
        Some(_) => Err(
            "only provider_name, requires_any, requires_all, allow_missing and allow_missing_or_failed are supported"
                .into(),
        ),
        None => Err("a requirement is required".into()),
    }
}
