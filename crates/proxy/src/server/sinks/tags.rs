//! Envoy's default tag extraction (`use_all_default_tags`), for the metrics
//! service sink's `emit_tags_as_labels`: the variable parts of a stat name
//! (cluster name, connection manager prefix, response code, listener
//! address, ...) become tags, and what is left is the tag-extracted name
//! (`cluster.echo.upstream_rq_503` is `cluster.upstream_rq` with
//! `envoy.response_code=503` and `envoy.cluster_name=echo`).
//!
//! As Envoy's `TagProducerImpl`: every extractor reads the whole name; each
//! match adds a tag and marks its part of the name for removal. Extractors
//! without a fixed first token run first, then those for the name's first
//! token, each group in Envoy's order. Regex extractors remove their first
//! group and take the second as the value; tokenized ones (`cluster.$.**`)
//! take the token at `$` and remove it with its dot.

use regex::Regex;
use std::sync::LazyLock;

enum Matcher {
    /// The regex, a substring the name must hold for it to be tried, and a
    /// value that is not a tag (`admin` is no listener address).
    Re(Regex, &'static str, &'static str),
    Tokens(Vec<&'static str>),
}

struct Extractor {
    name: &'static str,
    /// The name's first token this extractor needs, if any.
    prefix: Option<String>,
    matcher: Matcher,
}

const TAG_VALUE: &str = r"[^\.]+";

fn expand(re: &str) -> String {
    re.replace("<ADDRESS>", r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)")
        .replace("<CIPHER>", r"[\w\-]+")
        .replace("<TLS_VERSION>", r"TLSv\d\.\d")
        .replace("<TAG_VALUE>", TAG_VALUE)
        .replace("<ROUTE_CONFIG_NAME>", r"[\w\-\./]+")
        .replace("<SCOPED_ROUTE_CONFIG_NAME>", r"[\w\-\.]+")
        .replace("<LISTENER_OR_CLUSTER_WITH_NAME>", r"(?:listener|cluster)\..*?")
        .replace("<PROXY_PROTOCOL_VERSION>", r"\d")
}

/// `^word\.` gives `word`: the first token a regex needs.
fn regex_prefix(re: &str) -> Option<String> {
    let rest = re.strip_prefix('^')?;
    let word = &rest[..rest.find(r"\.")?];
    word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_').then(|| word.to_string())
}

fn re(name: &'static str, re: &str, substr: &'static str, not: &'static str) -> Extractor {
    let expanded = expand(re);
    let compiled = Regex::new(&expanded).unwrap_or_else(|e| panic!("tag regex {name}: {e}"));
    Extractor { name, prefix: regex_prefix(&expanded), matcher: Matcher::Re(compiled, substr, not) }
}

fn tokens(name: &'static str, pattern: &'static str) -> Extractor {
    let toks: Vec<&'static str> = pattern.split('.').collect();
    let prefix = toks.first().filter(|t| !["$", "*", "**"].contains(*t)).map(|t| t.to_string());
    Extractor { name, prefix, matcher: Matcher::Tokens(toks) }
}

/// Envoy 1.40's default extractors, in its order.
static EXTRACTORS: LazyLock<Vec<Extractor>> = LazyLock::new(|| {
    vec![
        re("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_", ""),
        re("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_", ""),
        re(
            "envoy.dynamo_partition_id",
            r"^http\.<TAG_VALUE>\.dynamodb\.table\.<TAG_VALUE>\.capacity\.<TAG_VALUE>(\.__partition_id=(\w{7}))$",
            ".dynamodb.table.",
            "",
        ),
        re(
            "envoy.dynamo_operation",
            r"^http\.<TAG_VALUE>\.dynamodb.(?:operation|table\.<TAG_VALUE>\.capacity)(\.(<TAG_VALUE>))(?:\.|$)",
            ".dynamodb.",
            "",
        ),
        tokens("envoy.mongo_callsite", "mongo.*.collection.*.callsite.$.query.**"),
        re("envoy.dynamo_table", r"^http\.<TAG_VALUE>\.dynamodb.(?:table|error)\.((<TAG_VALUE>)\.)", ".dynamodb.", ""),
        tokens("envoy.mongo_collection", "mongo.*.collection.$.**.query.*"),
        tokens("envoy.mongo_cmd", "mongo.*.cmd.$.**"),
        tokens("envoy.grpc_bridge_method", "cluster.*.grpc.*.$.**"),
        tokens("envoy.http_user_agent", "http.*.user_agent.$.**"),
        tokens("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
        tokens("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
        re("envoy.ssl_cipher", r"^listener\..*?\.ssl\.ciphers(\.(<CIPHER>))$", ".ssl.ciphers.", ""),
        re("envoy.ssl_curve", r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.curves(\.(<CIPHER>))$", ".ssl.curves.", ""),
        re("envoy.ssl_sigalg", r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.sigalgs(\.(<CIPHER>))$", ".ssl.sigalgs.", ""),
        re(
            "envoy.ssl_version",
            r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.versions(\.(<TLS_VERSION>))$",
            ".ssl.versions.",
            "",
        ),
        re("envoy.ssl_cipher_suite", r"^cluster\.<TAG_VALUE>\.ssl\.ciphers(\.(<CIPHER>))$", ".ssl.ciphers.", ""),
        tokens("envoy.grpc_bridge_service", "cluster.*.grpc.$.**"),
        tokens("envoy.tcp_prefix", "tcp.$.**"),
        tokens("envoy.udp_prefix", "udp.$.**"),
        tokens("envoy.clientssl_prefix", "auth.clientssl.$.**"),
        tokens("envoy.ratelimit_prefix", "ratelimit.$.**"),
        tokens("envoy.cluster_name", "cluster.$.**"),
        re("envoy.http_conn_manager_prefix", r"^listener\..*?\.http\.((<TAG_VALUE>)\.)", ".http.", ""),
        tokens("envoy.ext_authz_prefix", "cluster.*.ext_authz.$.**"),
        tokens("envoy.ext_authz_prefix", "http.*.ext_authz.$.**"),
        tokens("envoy.http_conn_manager_prefix", "http.$.**"),
        re(
            "envoy.worker_id",
            r"^(?:listener\.(?:<ADDRESS>|<TAG_VALUE>)|server|listener_manager|thread_local_cluster_manager)\.worker_((\d+)\.)",
            "",
            "",
        ),
        re("envoy.listener_address", r"^listener\.((<ADDRESS>|<TAG_VALUE>)\.)", "", "admin"),
        tokens("envoy.virtual_host", "vhost.$.**"),
        tokens("envoy.mongo_prefix", "mongo.$.**"),
        re("envoy.rds_route_config", r"^http\.<TAG_VALUE>\.rds\.((<ROUTE_CONFIG_NAME>)\.)\w+?$", ".rds.", ""),
        re(
            "envoy.scoped_rds_config",
            r"^http\.<TAG_VALUE>\.scoped_rds\.((<SCOPED_ROUTE_CONFIG_NAME>)\.)\w+?$",
            ".scoped_rds.",
            "",
        ),
        tokens("envoy.route", "vhost.*.route.$.**"),
        tokens("envoy.thrift_prefix", "thrift.$.**"),
        tokens("envoy.redis_prefix", "redis.$.**"),
        tokens("envoy.local_http_ratelimit_prefix", "$.http_local_rate_limit.**"),
        tokens("envoy.local_network_ratelimit_prefix", "local_rate_limit.$.**"),
        tokens("envoy.local_listener_ratelimit_prefix", "listener_local_ratelimit.$.**"),
        tokens("envoy.dns_filter_prefix", "dns_filter.$.**"),
        tokens("envoy.connection_limit_prefix", "connection_limit.$.**"),
        re(
            "envoy.rbac_policy_name",
            r"^http\.<TAG_VALUE>\.rbac\.(?:<TAG_VALUE>\.)?policy\.((<TAG_VALUE>)\.)(allowed|shadow_allowed|denied|shadow_denied)$",
            "",
            "",
        ),
        tokens("envoy.rbac_prefix", "$.rbac.**"),
        re("envoy.rbac_http_prefix", r"^http\.<TAG_VALUE>\.rbac\.((<TAG_VALUE>)\.).*?", "", "policy"),
        re("envoy.proxy_protocol_prefix", r"^proxy_proto\.((<TAG_VALUE>)\.).+$", "", "versions"),
        re(
            "envoy.proxy_protocol_version",
            r"^proxy_proto\.((?:<TAG_VALUE>\.)?versions\.v(<PROXY_PROTOCOL_VERSION>)\.)\w+$",
            "",
            "",
        ),
        tokens("envoy.google_grpc_client_prefix", "grpc.$.**"),
        re(
            "envoy.tls_certificate",
            r"^<LISTENER_OR_CLUSTER_WITH_NAME>\.ssl\.certificate\.((<TAG_VALUE>)\.).*$",
            ".ssl.certificate",
            "",
        ),
        re("envoy.xds_resource_name", r"^sds\.((<TAG_VALUE>)\.).+", "", ""),
    ]
});

/// Where a token pattern matches `toks` from `t` on (pattern from `p`):
/// the index of the token at `$`, if the pattern has one.
fn match_tokens(pat: &[&str], toks: &[&str], p: usize, t: usize, at: Option<usize>) -> Option<Option<usize>> {
    let Some(&head) = pat.get(p) else { return (t == toks.len()).then_some(at) };
    match head {
        "**" => (t..=toks.len()).find_map(|skip| match_tokens(pat, toks, p + 1, skip, at)),
        _ if t >= toks.len() => None,
        "*" => match_tokens(pat, toks, p + 1, t + 1, at),
        "$" => match_tokens(pat, toks, p + 1, t + 1, Some(t)),
        lit if lit == toks[t] => match_tokens(pat, toks, p + 1, t + 1, at),
        _ => None,
    }
}

impl Extractor {
    /// The tag's value and the byte range the name loses, if it matches.
    fn extract(&self, name: &str) -> Option<(String, std::ops::Range<usize>)> {
        match &self.matcher {
            Matcher::Re(re, substr, not) => {
                if !substr.is_empty() && !name.contains(substr) {
                    return None;
                }
                let caps = re.captures(name)?;
                let remove = caps.get(1)?;
                let value = caps.get(2).unwrap_or(remove).as_str();
                (value != *not).then(|| (value.to_string(), remove.range()))
            }
            Matcher::Tokens(pat) => {
                let toks: Vec<&str> = name.split('.').collect();
                let i = match_tokens(pat, &toks, 0, 0, None)??;
                let start: usize = toks[..i].iter().map(|t| t.len() + 1).sum();
                let end = (start + toks[i].len() + 1).min(name.len());
                Some((toks[i].to_string(), start..end))
            }
        }
    }
}

/// The tag-extracted name and the tags of `name`, in Envoy's order.
pub fn extract(name: &str) -> (String, Vec<(&'static str, String)>) {
    let first = name.split('.').next().unwrap_or("");
    let mut tags = Vec::new();
    let mut removed: Vec<std::ops::Range<usize>> = Vec::new();
    let unprefixed = EXTRACTORS.iter().filter(|e| e.prefix.is_none());
    let prefixed = EXTRACTORS.iter().filter(|e| e.prefix.as_deref() == Some(first));
    for e in unprefixed.chain(prefixed) {
        if let Some((value, range)) = e.extract(name) {
            tags.push((e.name, value));
            removed.push(range);
        }
    }
    let kept: String =
        name.char_indices().filter(|(i, _)| !removed.iter().any(|r| r.contains(i))).map(|(_, c)| c).collect();
    (kept, tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(name: &str) -> (String, Vec<(&'static str, String)>) {
        extract(name)
    }

    #[test]
    fn default_tags_as_envoy_extracts_them() {
        let (n, t) = tags("cluster.echo.upstream_rq_503");
        assert_eq!(n, "cluster.upstream_rq");
        assert_eq!(t, vec![("envoy.response_code", "503".into()), ("envoy.cluster_name", "echo".into())]);
        let (n, t) = tags("cluster.echo.upstream_rq_5xx");
        assert_eq!(n, "cluster.upstream_rq_xx");
        assert_eq!(t, vec![("envoy.response_code_class", "5".into()), ("envoy.cluster_name", "echo".into())]);
        let (n, t) = tags("http.ingress.downstream_rq_total");
        assert_eq!(
            (n.as_str(), t),
            ("http.downstream_rq_total", vec![("envoy.http_conn_manager_prefix", "ingress".into())])
        );
        let (n, t) = tags("listener.127.0.0.1_10000.downstream_cx_total");
        assert_eq!(
            (n.as_str(), t),
            ("listener.downstream_cx_total", vec![("envoy.listener_address", "127.0.0.1_10000".into())])
        );
        let (n, t) = tags("listener.admin.downstream_cx_total");
        assert_eq!((n.as_str(), t.len()), ("listener.admin.downstream_cx_total", 0));
        let (n, t) = tags("server.uptime");
        assert_eq!((n.as_str(), t.len()), ("server.uptime", 0));
        let (n, t) = tags("vhost.web.vcluster.api.upstream_rq_200");
        assert_eq!(n, "vhost.vcluster.upstream_rq");
        let names: Vec<&str> = t.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, ["envoy.response_code", "envoy.virtual_cluster", "envoy.virtual_host"]);
    }
}
