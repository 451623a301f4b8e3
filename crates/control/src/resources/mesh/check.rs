//! A Service, Gateway or Route document checked on its own (shape and
//! values), before it is stored; its references are checked when everything
//! is compiled together (`generate`).

use crate::resources::document::Document;
use crate::resources::kind::Kind;
use crate::resources::mesh::spec::{parse, GatewaySpec, Problems, RouteKindSpec, RouteSpec, ServiceSpec};
use crate::resources::resource::{content_hash, Resource};

/// Checks a Service, Gateway or Route document on its own (shape and values).
pub fn check(kind: Kind, doc: &Document) -> Result<Resource, Problems> {
    let problems = match kind {
        Kind::Service => check_service(&parse(doc)?),
        Kind::Gateway => check_gateway(&parse(doc)?),
        Kind::Route => check_route(&parse(doc)?),
        _ => return Err(vec![("kind".into(), "not a higher-level kind".into())]),
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let version = content_hash(serde_json::to_vec(&doc.spec).unwrap_or_default().as_slice());
    Ok(Resource::from_document(kind, doc, version))
}

fn check_service(s: &ServiceSpec) -> Problems {
    let mut p = Vec::new();
    if s.dns.is_some() && !s.endpoints.is_empty() {
        p.push(("spec.dns".into(), "use either endpoints or dns, not both".into()));
    }
    for (i, e) in s.endpoints.iter().enumerate() {
        if e.address.parse::<std::net::IpAddr>().is_err() {
            p.push((format!("spec.endpoints[{i}].address"), format!("'{}' is not an IP address", e.address)));
        }
    }
    if let Some(h) = s.health_check.as_ref().filter(|h| h.hds) {
        // Sent to proxies as it is (HDS), not inside a cluster: checked here.
        let hc = crate::resources::mesh::service::health_check(h);
        type Hc = legate_api::pb::envoy::config::core::v3::HealthCheck;
        if let Err(errors) = legate_api::convert::decode_typed::<Hc>(hc) {
            p.extend(errors.into_iter().map(|e| (format!("spec.health_check.{}", e.path), e.reason)));
        }
    }
    if let Some(iso) = &s.isolation {
        p.extend(crate::resources::isolate::check(iso, "spec.isolation"));
    }
    p
}

fn check_gateway(g: &GatewaySpec) -> Problems {
    let mut p = check_routes(&g.routes);
    if g.tcp.is_some() && !g.routes.is_empty() {
        p.push(("spec.tcp".into(), "a gateway has either routes or tcp, not both".into()));
    }
    if g.address.parse::<std::net::IpAddr>().is_err() {
        p.push(("spec.address".into(), format!("'{}' is not an IP address", g.address)));
    }
    p
}

fn check_route(r: &RouteKindSpec) -> Problems {
    let mut p = check_routes(&r.routes);
    if r.hosts.is_empty() {
        p.push(("spec.hosts".into(), "at least one host is required".into()));
    }
    p
}

fn check_routes(routes: &[RouteSpec]) -> Problems {
    let mut p = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let actions =
            [!r.to.is_empty(), r.redirect.is_some(), r.direct_response.is_some()].iter().filter(|x| **x).count();
        if actions != 1 {
            p.push((format!("spec.routes[{i}]"), "needs exactly one of to, redirect, direct_response".into()));
        }
        let m = &r.matches;
        if [m.prefix.is_some(), m.path.is_some(), m.regex.is_some()].iter().filter(|x| **x).count() != 1 {
            p.push((format!("spec.routes[{i}].match"), "needs exactly one of prefix, path, regex".into()));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::document::parse_documents;

    fn problems(spec: &str) -> Vec<String> {
        let d = parse_documents(&format!("kind: Service\nmetadata: {{name: web}}\nspec: {spec}\n")).expect("yaml");
        match check(Kind::Service, &d[0]) {
            Ok(_) => Vec::new(),
            Err(p) => p.into_iter().map(|(path, _)| path).collect(),
        }
    }

    #[test]
    fn isolation_and_hds_health_checks_are_checked_with_their_paths() {
        let eps = "endpoints: [{address: 127.0.0.1, port: 80}]";
        assert!(problems(&format!("{{{eps}, isolation: {{max_percent: 34}}}}")).is_empty());
        assert_eq!(problems(&format!("{{{eps}, isolation: {{max_percent: 101}}}}")), ["spec.isolation.max_percent"]);
        assert!(problems(&format!("{{{eps}, health_check: {{path: /, interval: 0.5s, hds: true}}}}")).is_empty());
        // Sent to proxies as it is: a duration Envoy would not read is refused at apply.
        assert_eq!(
            problems(&format!("{{{eps}, health_check: {{path: /, interval: 500ms, hds: true}}}}")),
            ["spec.health_check.interval"]
        );
    }
}
