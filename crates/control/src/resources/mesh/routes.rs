//! Route specs to Envoy routes: the match, then one action (to services or
//! weighted subsets, a redirect, or a direct response), header changes, and
//! the retry policy of the route or of the one service it goes to.

use crate::resources::mesh::spec::{
    DirectSpec, MatchSpec, Protocol, RedirectSpec, RefProblems, RetrySpec, RouteSpec, ServiceSpec, Split, Sticky,
    ToCandidate,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Envoy routes for a list of route specs; reference problems are collected
/// under `label` (the Gateway or Route they came from).
pub fn compile_routes(
    label: &str,
    routes: &[RouteSpec],
    services: &BTreeMap<String, ServiceSpec>,
    problems: &mut RefProblems,
) -> Vec<Value> {
    let mut out = Vec::new();
    for (i, rt) in routes.iter().enumerate() {
        let mut route = json!({"match": route_match(&rt.matches)});
        if let Some(d) = &rt.direct_response {
            route["direct_response"] = direct_response(d);
        } else if let Some(rd) = &rt.redirect {
            route["redirect"] = redirect(rd);
        } else {
            let to = Targets { label, route: i, services };
            route["route"] = to.action(rt, problems);
        }
        if !rt.request_headers.is_empty() {
            route["request_headers_to_add"] = headers_to_add(&rt.request_headers);
        }
        if !rt.response_headers.is_empty() {
            route["response_headers_to_add"] = headers_to_add(&rt.response_headers);
        }
        out.extend(preview_routes(rt, &route, services));
        out.push(route);
    }
    out
}

/// The split of a release on one of the services a route goes to (not to a subset).
fn release_split<'a>(rt: &RouteSpec, services: &'a BTreeMap<String, ServiceSpec>) -> Option<&'a Split> {
    rt.to.iter().filter(|t| t.subset.is_none()).find_map(|t| services.get(&t.service)?.split.as_ref())
}

/// Requests a release's candidate takes whatever the weights (blue-green's
/// preview, an A/B test's headers and cookies): the route again, first,
/// once per header or cookie, with it as one more match, to the candidate.
fn preview_routes(rt: &RouteSpec, route: &Value, services: &BTreeMap<String, ServiceSpec>) -> Vec<Value> {
    let Some(split) = release_split(rt, services) else { return Vec::new() };
    split
        .preview
        .iter()
        .map(|m| {
            let mut preview = route.clone();
            let matcher = match m {
                ToCandidate::Header(name, value) => json!({"name": name, "string_match": {"exact": value}}),
                // Envoy matches no cookie by itself: a regex over the Cookie
                // header (the whole value must match) finds `name=value` among the pairs.
                ToCandidate::Cookie(name, value) => json!({"name": "cookie", "string_match": {"safe_regex": {
                    "regex": format!("(.*;\\s*)?{}={}(;.*)?", regex_escape(name), regex_escape(value))}}}),
            };
            match preview["match"]["headers"].as_array_mut() {
                Some(headers) => headers.push(matcher),
                None => preview["match"]["headers"] = json!([matcher]),
            }
            if let Some(action) = preview["route"].as_object_mut() {
                action.remove("weighted_clusters");
                action.remove("hash_policy");
                action.insert("cluster".into(), json!(split.candidate));
            }
            preview
        })
        .collect()
}

/// `text` with every character a regular expression could read as syntax escaped.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if !c.is_ascii_alphanumeric() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn route_match(m: &MatchSpec) -> Value {
    let mut out = json!({});
    if let Some(p) = &m.prefix {
        out["prefix"] = json!(p);
    } else if let Some(p) = &m.path {
        out["path"] = json!(p);
    } else if let Some(p) = &m.regex {
        out["safe_regex"] = json!({"regex": p});
    }
    if !m.headers.is_empty() {
        out["headers"] = exact_matchers(&m.headers);
    }
    if !m.query.is_empty() {
        out["query_parameters"] = exact_matchers(&m.query);
    }
    out
}

/// Header or query parameter matchers, each on an exact value.
fn exact_matchers(values: &BTreeMap<String, String>) -> Value {
    json!(values.iter().map(|(k, v)| json!({"name": k, "string_match": {"exact": v}})).collect::<Vec<_>>())
}

/// Headers set (replacing any of the same name).
fn headers_to_add(headers: &BTreeMap<String, String>) -> Value {
    json!(headers
        .iter()
        .map(|(k, v)| json!({"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}))
        .collect::<Vec<_>>())
}

fn direct_response(d: &DirectSpec) -> Value {
    match &d.body {
        Some(b) => json!({"status": d.status, "body": {"inline_string": b}}),
        None => json!({"status": d.status}),
    }
}

fn redirect(rd: &RedirectSpec) -> Value {
    let mut out = json!({});
    if let Some(h) = &rd.host {
        out["host_redirect"] = json!(h);
    }
    if let Some(p) = &rd.path {
        out["path_redirect"] = json!(p);
    }
    if rd.https {
        out["https_redirect"] = json!(true);
    }
    out["response_code"] = json!(match rd.code.unwrap_or(301) {
        302 => "FOUND",
        303 => "SEE_OTHER",
        307 => "TEMPORARY_REDIRECT",
        308 => "PERMANENT_REDIRECT",
        _ => "MOVED_PERMANENTLY",
    });
    out
}

/// Where route number `route` of `label` sends requests, checked against the
/// services that exist.
struct Targets<'a> {
    label: &'a str,
    route: usize,
    services: &'a BTreeMap<String, ServiceSpec>,
}

impl Targets<'_> {
    /// The route action: its clusters, timeout, rewrite and retries.
    fn action(&self, rt: &RouteSpec, problems: &mut RefProblems) -> Value {
        let clusters = self.clusters(rt, problems);
        let mut action = match clusters.as_slice() {
            [(c, _)] => json!({"cluster": c}),
            many => {
                json!({"weighted_clusters": {"clusters": many.iter().map(|(c, w)| json!({"name": c, "weight": w})).collect::<Vec<_>>()}})
            }
        };
        if let (Some(sticky), true) =
            (release_split(rt, self.services).and_then(|s| s.sticky.as_ref()), clusters.len() > 1)
        {
            // The weighted pick hashes the client's header or cookie.
            action["weighted_clusters"]["use_hash_policy"] = json!(true);
            action["hash_policy"] = match sticky {
                Sticky::Header(h) => json!([{"header": {"header_name": h}}]),
                Sticky::Cookie { name, ttl_s: None } => json!([{"cookie": {"name": name}}]),
                Sticky::Cookie { name, ttl_s: Some(t) } => {
                    json!([{"cookie": {"name": name, "ttl": format!("{t}s"), "path": "/"}}])
                }
            };
        }
        if let Some(t) = &rt.timeout {
            action["timeout"] = json!(t);
        }
        if let Some(p) = &rt.prefix_rewrite {
            action["prefix_rewrite"] = json!(p);
        }
        // The route's retries, or those of the one service it goes to.
        let mut targets = rt.to.iter().map(|t| t.service.as_str()).collect::<Vec<_>>();
        targets.dedup();
        let service_retries = match targets.as_slice() {
            [one] => self.services.get(*one).and_then(|s| s.retries.as_ref()),
            _ => None,
        };
        if let Some(r) = rt.retries.as_ref().or(service_retries) {
            action["retry_policy"] = retry_policy(r);
        }
        action
    }

    /// The clusters (a service, or one of its subsets) and weights the route
    /// goes to; a target that does not resolve is reported and left out.
    fn clusters(&self, rt: &RouteSpec, problems: &mut RefProblems) -> Vec<(String, u32)> {
        let mut clusters = Vec::new();
        for (t_i, t) in rt.to.iter().enumerate() {
            let path = format!("spec.routes[{}].to[{t_i}]", self.route);
            let mut problem = |field: &str, reason: String| {
                problems.push((self.label.to_string(), format!("{path}.{field}"), reason));
            };
            let Some(svc) = self.services.get(&t.service) else {
                problem("service", format!("unknown service '{}'", t.service));
                continue;
            };
            if svc.protocol == Protocol::Tcp {
                problem("service", format!("service '{}' is tcp: reach it through a Gateway's spec.tcp", t.service));
                continue;
            }
            match (&t.subset, &svc.split) {
                (Some(sub), _) if !svc.subsets.contains_key(sub) => {
                    problem("subset", format!("service '{}' has no subset '{sub}'", t.service));
                }
                (Some(sub), _) => clusters.push((format!("{}.{sub}", t.service), t.weight, None)),
                (None, split) => clusters.push((t.service.clone(), t.weight, split.clone())),
            }
        }
        split_weights(clusters)
    }
}

/// Targets as (cluster, weight, its service's release split) to weighted
/// clusters: with a split anywhere, weights become percents (a split
/// target's weight shared out between its stable and candidate clusters);
/// clusters left at weight 0 are left out.
fn split_weights(targets: Vec<(String, u32, Option<Split>)>) -> Vec<(String, u32)> {
    if targets.iter().all(|(_, _, s)| s.is_none()) {
        return targets.into_iter().map(|(c, w, _)| (c, w)).collect();
    }
    let mut out = Vec::new();
    for (cluster, weight, split) in targets {
        match split {
            Some(s) => {
                out.push((s.stable, weight.saturating_mul(100 - s.weight.min(100))));
                out.push((s.candidate, weight.saturating_mul(s.weight.min(100))));
            }
            None => out.push((cluster, weight.saturating_mul(100))),
        }
    }
    out.retain(|(_, w)| *w > 0);
    out
}

/// A retry policy: `on` is Envoy's `retry_on`; retries go to other hosts.
fn retry_policy(r: &RetrySpec) -> Value {
    let mut p = json!({
        "retry_on": r.on,
        "num_retries": r.attempts,
        "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        "host_selection_retry_max_attempts": 3,
    });
    if let Some(t) = &r.per_try_timeout {
        p["per_try_timeout"] = json!(t);
    }
    p
}
