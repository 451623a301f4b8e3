//! The `location` of a route's `redirect`, built from the request as
//! Envoy builds it.

use crate::http::route::{split_query, Redirect, Route};

/// The `location` of a redirect, built from the request as Envoy does.
pub(super) fn redirect_location(rd: &Redirect, route: &Route, authority: &str, path: &str) -> String {
    let scheme = rd.scheme.as_deref().unwrap_or("http");
    let (req_host, req_port) = match authority.rsplit_once(':') {
        Some((h, p))
            if p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(']')
                || authority.starts_with('[') && authority.contains("]:") =>
        {
            (h.to_string(), Some(p.to_string()))
        }
        _ => (authority.to_string(), None),
    };
    let host = rd.host.clone().unwrap_or(req_host);
    let port = match (rd.port, &rd.host) {
        (Some(p), _) => Some(p.to_string()),
        // A new host replaces host and port.
        (None, Some(_)) => None,
        // A new scheme keeps the request's port, unless it was the old scheme's default.
        (None, None) if rd.scheme.is_some() => req_port.filter(|p| p != "80"),
        (None, None) => req_port,
    };
    let port = port.filter(|p| !((scheme == "http" && p == "80") || (scheme == "https" && p == "443")));
    let (p, q) = split_query(path);
    let new_path = if let Some(np) = &rd.path {
        // path_redirect replaces path and query (a query in it is kept as given).
        if np.contains('?') || rd.strip_query {
            np.clone()
        } else {
            format!("{np}{q}")
        }
    } else if let (Some(pr), Some(prefix)) = (&rd.prefix_rewrite, route.prefix()) {
        let rest = path.get(prefix.len()..).unwrap_or("");
        let full = format!("{pr}{rest}");
        if rd.strip_query {
            split_query(&full).0.to_string()
        } else {
            full
        }
    } else if let Some((re, sub)) = &rd.regex_rewrite {
        let np = re.replace_all(p, sub.as_str()).into_owned();
        if rd.strip_query {
            np
        } else {
            format!("{np}{q}")
        }
    } else if rd.strip_query {
        p.to_string()
    } else {
        path.to_string()
    };
    match port {
        Some(port) => format!("{scheme}://{host}:{port}{new_path}"),
        None => format!("{scheme}://{host}{new_path}"),
    }
}
