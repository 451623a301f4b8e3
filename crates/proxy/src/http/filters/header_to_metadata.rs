//! `envoy.filters.http.header_to_metadata`: request and response headers
//! written into the stream's dynamic metadata, as Envoy 1.40 does it. Each
//! rule reads one header (several values joined by `,`), takes
//! `on_header_present` (the header's value, or the pair's `value`, or the
//! value through `regex_value_rewrite`) or `on_header_missing` (the pair's
//! `value`), decodes it (`BASE64`), types it (`STRING`, `NUMBER`,
//! `PROTOBUF_VALUE`) and sets `metadata_namespace` (default: the filter's
//! name) `key`; `remove` takes the header out. A value that is empty, 8 KiB
//! or longer, or does not decode is not written. With `stat_prefix`, Envoy's
//! counters under `http_filter_name.<stat_prefix>`.
//!
//! A route's or virtual host's `typed_per_filter_config` of the same type
//! replaces the filter's rules for its requests (without stats).

use crate::common::matcher::{compile_search_regex, envoy_substitution};
use crate::common::metadata::{value_json, Map};
use crate::http::filters::api::{
    FilterContext, FilterStatus, HttpFilter, PerRouteRegistration, Registration, RequestCtx, ResponseHooks,
    ResponseState,
};
use crate::http::route::per_filter::PerRouteConfig;
use crate::stats::{Counter, Store};
use base64::Engine;
use http::HeaderMap;
use legate_api::pb::envoy::extensions::filters::http::header_to_metadata::v3::config::{
    KeyValuePair, Rule as PbRule, ValueEncode, ValueType,
};
use legate_api::pb::envoy::extensions::filters::http::header_to_metadata::v3::Config;
use legate_api::pb::google::protobuf::Any;
use prost::Message;
use regex::Regex;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;

pub const TYPE: &str = "envoy.extensions.filters.http.header_to_metadata.v3.Config";

/// The namespace a pair without `metadata_namespace` writes to.
const FILTER_NAME: &str = "envoy.filters.http.header_to_metadata";

/// Envoy's `MAX_HEADER_VALUE_LEN`: values this long or longer are dropped.
const MAX_VALUE_LEN: usize = 8 * 1024;

pub const REGISTRATION: Registration = Registration {
    type_url: TYPE,
    compile: HeaderToMetadata::compile,
    per_route: Some(PerRouteRegistration { type_url: TYPE, compile: Rules::compile_per_route }),
    one_per_chain: None,
};

/// What one side of a rule writes.
struct Pair {
    namespace: String,
    key: String,
    value: String,
    rewrite: Option<(Regex, String)>,
    kind: ValueType,
    base64: bool,
}

struct Rule {
    header: http::HeaderName,
    present: Option<Pair>,
    missing: Option<Pair>,
    remove: bool,
}

/// A config's request and response rules.
pub struct Rules {
    request: Vec<Rule>,
    response: Vec<Rule>,
}

/// `http_filter_name.<stat_prefix>` counters.
struct Stats {
    request_rules_processed: Arc<Counter>,
    response_rules_processed: Arc<Counter>,
    request_metadata_added: Arc<Counter>,
    response_metadata_added: Arc<Counter>,
    request_header_not_found: Arc<Counter>,
    response_header_not_found: Arc<Counter>,
    base64_decode_failed: Arc<Counter>,
    header_value_too_long: Arc<Counter>,
    regex_substitution_failed: Arc<Counter>,
}

impl Stats {
    fn new(store: &Store, prefix: &str) -> Self {
        let c = |n: &str| store.counter(&format!("http_filter_name.{prefix}.{n}"));
        Self {
            request_rules_processed: c("request_rules_processed"),
            response_rules_processed: c("response_rules_processed"),
            request_metadata_added: c("request_metadata_added"),
            response_metadata_added: c("response_metadata_added"),
            request_header_not_found: c("request_header_not_found"),
            response_header_not_found: c("response_header_not_found"),
            base64_decode_failed: c("base64_decode_failed"),
            header_value_too_long: c("header_value_too_long"),
            regex_substitution_failed: c("regex_substitution_failed"),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Request,
    Response,
}

pub struct HeaderToMetadata {
    rules: Rules,
    stats: Option<Stats>,
}

impl HeaderToMetadata {
    fn own(&self) -> Apply<'_> {
        Apply { stats: self.stats.as_ref() }
    }
}

/// The rules a request took from its route, kept for its response.
struct RouteRules(Arc<Rules>);

impl HeaderToMetadata {
    fn compile(any: &Any, ctx: &FilterContext<'_>) -> Result<Box<dyn HttpFilter>, String> {
        let path = format!("http_filters[{}].typed_config", ctx.index);
        let c: Config = legate_api::any::unpack(any).map_err(|e| format!("{path}: {e}"))?;
        let rules = Rules::new(&c).map_err(|e| format!("{path}.{e}"))?;
        let stats = Some(&c.stat_prefix).filter(|p| !p.is_empty()).map(|p| Stats::new(ctx.server.store, p));
        Ok(Box::new(Self { rules, stats }))
    }
}

impl Rules {
    fn new(c: &Config) -> Result<Self, String> {
        let side = |rules: &[PbRule], name: &str| -> Result<Vec<Rule>, String> {
            rules.iter().enumerate().map(|(i, r)| Rule::new(r).map_err(|e| format!("{name}[{i}]: {e}"))).collect()
        };
        Ok(Self {
            request: side(&c.request_rules, "request_rules")?,
            response: side(&c.response_rules, "response_rules")?,
        })
    }

    fn compile_per_route(any: &Any, path: &str) -> Result<PerRouteConfig, String> {
        let c: Config = legate_api::any::unpack(any).map_err(|e| format!("{path}: {e}"))?;
        if !c.stat_prefix.is_empty() {
            return Err(format!("{path}.stat_prefix: stats of a per-route config are not implemented by Legate"));
        }
        if c.request_rules.is_empty() && c.response_rules.is_empty() {
            return Err(format!(
                "{path}: header_to_metadata_filter: Per filter configs must at least specify either request or response rules"
            ));
        }
        Ok(Arc::new(RouteRules(Arc::new(Self::new(&c).map_err(|e| format!("{path}.{e}"))?))))
    }
}

impl Rule {
    fn new(r: &PbRule) -> Result<Self, String> {
        if !r.cookie.is_empty() {
            return Err("cookie: rules on cookies are not implemented by Legate".into());
        }
        if r.header.is_empty() {
            return Err("One of Cookie or Header option needs to be specified".into());
        }
        let header = http::HeaderName::from_bytes(r.header.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("header: '{}' is not a header name", r.header))?;
        if r.on_header_present.is_none() && r.on_header_missing.is_none() {
            return Err(format!(
                "header to metadata filter: rule for header '{}' has neither `on_header_present` nor `on_header_missing` set",
                header
            ));
        }
        if let Some(p) = &r.on_header_present {
            if !p.value.is_empty() && p.regex_value_rewrite.is_some() {
                return Err("Cannot specify both value and regex_value_rewrite".into());
            }
        }
        if r.on_header_missing.as_ref().is_some_and(|m| m.value.is_empty()) {
            return Err("Cannot specify on_header_missing rule with an empty value".into());
        }
        Ok(Self {
            header,
            present: r.on_header_present.as_ref().map(|p| Pair::new(p, true)).transpose()?,
            missing: r.on_header_missing.as_ref().map(|p| Pair::new(p, false)).transpose()?,
            remove: r.remove,
        })
    }
}

impl Pair {
    fn new(p: &KeyValuePair, present: bool) -> Result<Self, String> {
        let side = if present { "on_header_present" } else { "on_header_missing" };
        // Envoy reads the rewrite only on the present side.
        let rewrite = match (&p.regex_value_rewrite, present) {
            (Some(rr), true) => {
                let pattern = rr.pattern.as_ref().ok_or(format!("{side}.regex_value_rewrite.pattern is required"))?;
                let re = compile_search_regex(pattern).map_err(|e| format!("{side}.regex_value_rewrite: {e}"))?;
                Some((re, envoy_substitution(&rr.substitution)))
            }
            _ => None,
        };
        Ok(Self {
            namespace: if p.metadata_namespace.is_empty() { FILTER_NAME.into() } else { p.metadata_namespace.clone() },
            key: p.key.clone(),
            value: p.value.clone(),
            rewrite,
            kind: ValueType::try_from(p.r#type).map_err(|_| format!("{side}.type: unknown value {}", p.r#type))?,
            base64: p.encode == ValueEncode::Base64 as i32,
        })
    }
}

/// Rules applied with the stats of the config they came from (a route's
/// own config has none).
struct Apply<'a> {
    stats: Option<&'a Stats>,
}

impl Apply<'_> {
    /// Envoy's `writeHeaderToMetadata`: every rule in order, then each
    /// namespace written merged into the stream's.
    fn apply(&self, rules: &[Rule], headers: &mut HeaderMap, dir: Direction, out: &crate::common::metadata::Dynamic) {
        let mut written: BTreeMap<&str, Map> = BTreeMap::new();
        for rule in rules {
            let found = joined(headers, &rule.header);
            if found.is_some() && rule.remove {
                headers.remove(&rule.header);
            }
            self.count(dir, |s| [&s.request_rules_processed, &s.response_rules_processed]);
            let (pair, value) = match (found, &rule.present, &rule.missing) {
                (Some(v), Some(p), _) => (p, self.rewritten(p, v)),
                (None, _, Some(m)) => {
                    self.count(dir, |s| [&s.request_header_not_found, &s.response_header_not_found]);
                    (m, m.value.clone())
                }
                _ => continue,
            };
            if value.is_empty() {
                continue;
            }
            if let Some(v) = self.typed(pair, value) {
                written.entry(&pair.namespace).or_default().insert(pair.key.clone(), v);
                self.count(dir, |s| [&s.request_metadata_added, &s.response_metadata_added]);
            }
        }
        for (ns, fields) in written {
            out.merge(ns, fields);
        }
    }

    /// The present side's value: the pair's own, else the header's through
    /// the rewrite.
    fn rewritten(&self, p: &Pair, header: String) -> String {
        if !p.value.is_empty() {
            return p.value.clone();
        }
        let Some((re, subst)) = &p.rewrite else { return header };
        let out = re.replace_all(&header, subst.as_str()).into_owned();
        if !header.is_empty() && out.is_empty() {
            self.stats.inspect(|s| s.regex_substitution_failed.inc());
        }
        out
    }

    /// Envoy's `addMetadata`: the value decoded and typed, or `None`.
    fn typed(&self, p: &Pair, value: String) -> Option<Value> {
        if value.len() >= MAX_VALUE_LEN {
            self.stats.inspect(|s| s.header_value_too_long.inc());
            return None;
        }
        let bytes = if p.base64 {
            match base64_decode(&value) {
                Some(b) if !b.is_empty() => b,
                _ => {
                    self.stats.inspect(|s| s.base64_decode_failed.inc());
                    return None;
                }
            }
        } else {
            value.into_bytes()
        };
        match p.kind {
            ValueType::String => Some(Value::String(String::from_utf8_lossy(&bytes).into_owned())),
            ValueType::Number => {
                let n: f64 = std::str::from_utf8(&bytes).ok()?.trim().parse().ok()?;
                serde_json::Number::from_f64(n).map(Value::Number)
            }
            ValueType::ProtobufValue => {
                let v = legate_api::pb::google::protobuf::Value::decode(bytes.as_slice()).ok()?;
                Some(value_json(&v))
            }
        }
    }

    fn count(&self, dir: Direction, which: impl Fn(&Stats) -> [&Arc<Counter>; 2]) {
        if let Some(s) = self.stats {
            which(s)[usize::from(dir == Direction::Response)].inc();
        }
    }
}

/// Every value of a header joined by `,` (Envoy's `getAllOfHeaderAsString`).
fn joined(headers: &HeaderMap, name: &http::HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut s = String::from_utf8_lossy(first.as_bytes()).into_owned();
    for v in values {
        s.push(',');
        s.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    Some(s)
}

/// Envoy's `Base64::decodeWithoutPadding`: padding may be there or not.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(s).ok()
}

impl HttpFilter for HeaderToMetadata {
    fn on_request<'r>(&'r self, rq: &'r mut RequestCtx<'_>, state: &'r mut ResponseState) -> FilterStatus<'r> {
        match rq.per_route::<RouteRules>() {
            Some(route) => {
                let rules = route.0.clone();
                Apply { stats: None }.apply(&rules.request, rq.headers, Direction::Request, &state.dynamic_metadata);
                // The route's rules hold for the response too.
                state.carried.push(Arc::new(RouteRules(rules)));
            }
            None => self.own().apply(&self.rules.request, rq.headers, Direction::Request, &state.dynamic_metadata),
        }
        FilterStatus::Continue
    }

    fn response_hooks(&self) -> ResponseHooks {
        ResponseHooks { on_response: true, ..Default::default() }
    }

    fn on_response(&self, state: &ResponseState, resp: &mut http::Response<crate::body::ProxyBody>) {
        let route = state.carried.iter().find_map(|c| (**c).downcast_ref::<RouteRules>());
        let (rules, apply) = match route {
            Some(r) => (&r.0.response, Apply { stats: None }),
            None => (&self.rules.response, self.own()),
        };
        if !rules.is_empty() {
            apply.apply(rules, resp.headers_mut(), Direction::Response, &state.dynamic_metadata);
        }
    }
}
