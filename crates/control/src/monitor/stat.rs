//! Which Envoy stats the figures read, by name: a cluster's (`cluster.<name>.<stat>`,
//! a service), a virtual cluster's (`vhost.<vh>.vcluster.<vc>.<stat>`, a
//! route) and a connection manager's (`http.<prefix>.<stat>`, the proxy's
//! own traffic). Names may come tagged (`cluster.upstream_rq_xx` with
//! `envoy_cluster_name`, or Prometheus' `envoy_cluster_upstream_rq_xx`):
//! [`untag`] puts the plain Envoy name back together.

/// Whose figure a stat is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// An upstream cluster.
    Service(&'a str),
    /// A virtual host's virtual cluster (Envoy counts it only where the
    /// route configuration defines `virtual_clusters`, and in `other`), or
    /// a route with a `stat_prefix` (`route.<prefix>`).
    Route(&'a str, &'a str),
    /// The proxy itself (its connection managers, summed).
    Proxy,
}

/// Routes share the services' series under a name no cluster stat can have
/// (Envoy turns `:` in stat names into `_`): `vhost:<vh>:<vc>`.
pub const ROUTE_PREFIX: &str = "vhost:";

pub fn route_key(vh: &str, vc: &str) -> String {
    format!("{ROUTE_PREFIX}{vh}:{vc}")
}

/// The virtual host and virtual cluster of a route key.
pub fn route_of(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(ROUTE_PREFIX)?.split_once(':')
}

/// `vhost.<vh>.vcluster.<vc>.<stat>` for one of `stats`, or a route's
/// `vhost.<vh>.route.<stat_prefix>.<stat>` (its target named
/// `route.<stat_prefix>`: no virtual cluster's name holds a dot).
fn split_route<'a, T: Copy>(name: &'a str, stats: &[(&str, T)]) -> Option<(Target<'a>, T)> {
    let rest = name.strip_prefix("vhost.")?;
    let (vh, tail, route) = match rest.split_once(".vcluster.") {
        Some((vh, tail)) => (vh, tail, false),
        None => {
            let at = rest.find(".route.")?;
            (&rest[..at], &rest[at + 1..], true)
        }
    };
    stats.iter().find_map(|(stat, t)| {
        let who = tail.strip_suffix(stat)?.strip_suffix('.')?;
        let own = if route { who.strip_prefix("route.")? } else { who };
        (!vh.is_empty() && !own.is_empty() && !own.contains('.')).then_some((Target::Route(vh, who), *t))
    })
}

/// The route's `stat_prefix` of a route target's name (`route.<prefix>`).
pub fn route_stat_prefix(who: &str) -> Option<&str> {
    who.strip_prefix("route.")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterStat {
    /// `upstream_rq_completed` / `downstream_rq_completed`: what `requests` counts.
    Completed,
    /// `*_rq_total`: `requests` when a proxy does not report `completed`.
    Total,
    Rq2xx,
    Rq4xx,
    Rq5xx,
    Retry,
    Timeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaugeStat {
    ActiveRq,
    ActiveCx,
    Ejected,
    Healthy,
    Membership,
}

const CLUSTER_COUNTERS: &[(&str, CounterStat)] = &[
    ("upstream_rq_completed", CounterStat::Completed),
    ("upstream_rq_total", CounterStat::Total),
    ("upstream_rq_2xx", CounterStat::Rq2xx),
    ("upstream_rq_4xx", CounterStat::Rq4xx),
    ("upstream_rq_5xx", CounterStat::Rq5xx),
    ("upstream_rq_retry", CounterStat::Retry),
    ("upstream_rq_timeout", CounterStat::Timeout),
];
const HTTP_COUNTERS: &[(&str, CounterStat)] = &[
    ("downstream_rq_completed", CounterStat::Completed),
    ("downstream_rq_total", CounterStat::Total),
    ("downstream_rq_2xx", CounterStat::Rq2xx),
    ("downstream_rq_4xx", CounterStat::Rq4xx),
    ("downstream_rq_5xx", CounterStat::Rq5xx),
];
const CLUSTER_GAUGES: &[(&str, GaugeStat)] = &[
    ("upstream_rq_active", GaugeStat::ActiveRq),
    ("upstream_cx_active", GaugeStat::ActiveCx),
    ("outlier_detection.ejections_active", GaugeStat::Ejected),
    ("membership_healthy", GaugeStat::Healthy),
    ("membership_total", GaugeStat::Membership),
];
const HTTP_GAUGES: &[(&str, GaugeStat)] =
    &[("downstream_rq_active", GaugeStat::ActiveRq), ("downstream_cx_active", GaugeStat::ActiveCx)];

/// `cluster.<name>.<stat>` or `http.<prefix>.<stat>` for one of `stats`.
fn split<'a, T: Copy>(name: &'a str, stats: &[(&str, T)], scope: &str) -> Option<(&'a str, T)> {
    let rest = name.strip_prefix(scope)?;
    stats.iter().find_map(|(stat, t)| {
        let owner = rest.strip_suffix(stat)?.strip_suffix('.')?;
        (!owner.is_empty()).then_some((owner, *t))
    })
}

/// A cluster's own stats, not its `internal.`/`external.`/`canary.`/zone views.
fn plain_cluster(owner: &str) -> bool {
    ![".internal", ".external", ".canary"].iter().any(|s| owner.ends_with(s)) && !owner.contains(".zone.")
}

/// Envoy's admin listener (`http.admin.`) is left out: scraping it must not
/// count as the proxy's traffic. Prefixes with dots are per-user-agent or
/// per-route views.
fn plain_http(prefix: &str) -> bool {
    prefix != "admin" && !prefix.contains('.')
}

fn classify<'a, T: Copy>(name: &'a str, cluster: &[(&str, T)], http: &[(&str, T)]) -> Option<(Target<'a>, T)> {
    if let Some((owner, t)) = split(name, cluster, "cluster.") {
        return plain_cluster(owner).then_some((Target::Service(owner), t));
    }
    let (prefix, t) = split(name, http, "http.")?;
    plain_http(prefix).then_some((Target::Proxy, t))
}

pub fn counter(name: &str) -> Option<(Target<'_>, CounterStat)> {
    classify(name, CLUSTER_COUNTERS, HTTP_COUNTERS).or_else(|| split_route(name, CLUSTER_COUNTERS))
}

pub fn gauge(name: &str) -> Option<(Target<'_>, GaugeStat)> {
    classify(name, CLUSTER_GAUGES, HTTP_GAUGES)
}

/// `upstream_rq_time` of a cluster, `downstream_rq_time` of a connection manager.
pub fn histogram(name: &str) -> Option<Target<'_>> {
    let time = &[("upstream_rq_time", ())];
    classify(name, time, &[("downstream_rq_time", ())]).or_else(|| split_route(name, time)).map(|(t, ())| t)
}

/// The plain Envoy name of a tagged stat: `cluster.upstream_rq_xx` (or
/// Prometheus' `envoy_cluster_upstream_rq_xx`) with `envoy_cluster_name=a`
/// and `envoy_response_code_class=5` is `cluster.a.upstream_rq_5xx`. Names
/// without those tags come back as they are.
pub fn untag(name: &str, labels: &[(String, String)]) -> String {
    // Prometheus' label names (`envoy_cluster_name`) or the metrics
    // service's tags as labels (`envoy.cluster_name`).
    let label = |k: &str| {
        let dotted = k.replacen('_', ".", 1);
        labels.iter().find(|(n, _)| n == k || *n == dotted).map(|(_, v)| v.as_str())
    };
    let prom = name.starts_with("envoy_");
    let bare = name.strip_prefix("envoy_").unwrap_or(name);
    let owned;
    let (scope, owner) = if let Some(c) = label("envoy_cluster_name") {
        ("cluster", c)
    } else if let Some(p) = label("envoy_http_conn_manager_prefix") {
        ("http", p)
    } else if let (Some(vh), Some(vc)) = (label("envoy_virtual_host"), label("envoy_virtual_cluster")) {
        owned = format!("{vh}.vcluster.{vc}");
        let Some(stat) = bare.strip_prefix("vhost").and_then(|s| s.strip_prefix(['.', '_'])) else {
            return name.to_string();
        };
        let stat = stat.strip_prefix("vcluster").and_then(|s| s.strip_prefix(['.', '_'])).unwrap_or(stat);
        let stat = match (stat.strip_suffix("_rq_xx"), label("envoy_response_code_class")) {
            (Some(head), Some(class)) => format!("{head}_rq_{class}xx"),
            _ => stat.to_string(),
        };
        return format!("vhost.{owned}.{stat}");
    } else {
        return name.to_string();
    };
    let Some(stat) = bare.strip_prefix(scope).and_then(|s| s.strip_prefix(['.', '_'])) else {
        return name.to_string();
    };
    let mut stat = stat.to_string();
    if prom {
        if let Some(rest) = stat.strip_prefix("outlier_detection_") {
            stat = format!("outlier_detection.{rest}");
        }
    }
    if let (Some(head), Some(class)) = (stat.strip_suffix("_rq_xx"), label("envoy_response_code_class")) {
        stat = format!("{head}_rq_{class}xx");
    }
    format!("{scope}.{owner}.{stat}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_and_http_stats_are_read_by_suffix() {
        assert_eq!(counter("cluster.a.b.upstream_rq_5xx"), Some((Target::Service("a.b"), CounterStat::Rq5xx)));
        assert_eq!(counter("cluster.a.external.upstream_rq_completed"), None);
        assert_eq!(counter("http.ingress.downstream_rq_total"), Some((Target::Proxy, CounterStat::Total)));
        assert_eq!(counter("http.admin.downstream_rq_total"), None);
        assert_eq!(
            gauge("cluster.a.outlier_detection.ejections_active"),
            Some((Target::Service("a"), GaugeStat::Ejected))
        );
        assert_eq!(histogram("cluster.a.upstream_rq_time"), Some(Target::Service("a")));
        assert_eq!(counter("cluster.a.upstream_rq_503"), None);
        assert_eq!(
            counter("vhost.web.vcluster.api.upstream_rq_5xx"),
            Some((Target::Route("web", "api"), CounterStat::Rq5xx))
        );
        assert_eq!(histogram("vhost.web.vcluster.other.upstream_rq_time"), Some(Target::Route("web", "other")));
        assert_eq!(route_of(&route_key("web", "api")), Some(("web", "api")));
        // A route's `stat_prefix`, in a virtual host whose name has dots.
        assert_eq!(
            counter("vhost.shop.example.route.checkout.upstream_rq_completed"),
            Some((Target::Route("shop.example", "route.checkout"), CounterStat::Completed))
        );
        assert_eq!(histogram("vhost.w.route.main.upstream_rq_time"), Some(Target::Route("w", "route.main")));
        assert_eq!(route_stat_prefix("route.main"), Some("main"));
        assert_eq!(counter("vhost.w.route.a.b.upstream_rq_completed"), None, "a prefix has no dot");
    }

    #[test]
    fn tagged_names_come_back_plain() {
        let l = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        let tags = l(&[("envoy_response_code_class", "5"), ("envoy_cluster_name", "web")]);
        assert_eq!(untag("envoy_cluster_upstream_rq_xx", &tags), "cluster.web.upstream_rq_5xx");
        assert_eq!(untag("cluster.upstream_rq_xx", &tags), "cluster.web.upstream_rq_5xx");
        let c = l(&[("envoy_cluster_name", "web")]);
        assert_eq!(
            untag("envoy_cluster_outlier_detection_ejections_active", &c),
            "cluster.web.outlier_detection.ejections_active"
        );
        let h = l(&[("envoy_http_conn_manager_prefix", "ingress")]);
        assert_eq!(untag("envoy_http_downstream_rq_time", &h), "http.ingress.downstream_rq_time");
        assert_eq!(untag("server.uptime", &[]), "server.uptime");
        let dotted = l(&[("envoy.response_code_class", "5"), ("envoy.cluster_name", "web")]);
        assert_eq!(untag("cluster.upstream_rq_xx", &dotted), "cluster.web.upstream_rq_5xx");
        let v = l(&[("envoy.response_code_class", "2"), ("envoy.virtual_cluster", "api"), ("envoy.virtual_host", "w")]);
        assert_eq!(untag("vhost.vcluster.upstream_rq_xx", &v), "vhost.w.vcluster.api.upstream_rq_2xx");
    }
}
