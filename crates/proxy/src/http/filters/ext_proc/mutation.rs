//! What a processor's answer changes: a header list (the pseudo-headers
//! first, as Envoy's header maps hold them) changed by a `HeaderMutation`
//! under Envoy's default mutation rules, and a body changed by a
//! `BodyMutation` (Envoy's `MutationUtils` and `MutationRules::Checker`).

use crate::stats::Counter;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use legate_api::pb::envoy::config::core::v3::{HeaderMap as PbHeaderMap, HeaderValue as PbHeaderValue};
use legate_api::pb::envoy::service::ext_proc::v3::{body_mutation, BodyMutation, HeaderMutation};

/// Headers in order, as the processor sees them.
pub(super) type HeaderList = Vec<(String, Vec<u8>)>;

/// The list as the processor is sent it (values in `raw_value`, as Envoy
/// 1.40 sends them), the headers `send` lets through.
pub(super) fn to_proto(list: &HeaderList, send: impl Fn(&str) -> bool) -> PbHeaderMap {
    PbHeaderMap {
        headers: list
            .iter()
            .filter(|(k, _)| send(k))
            .map(|(k, v)| PbHeaderValue { key: k.clone(), raw_value: v.clone(), ..Default::default() })
            .collect(),
    }
}

fn has(list: &HeaderList, name: &str) -> bool {
    list.iter().any(|(k, _)| k == name)
}

/// Envoy's `setCopy`: every entry of the name goes, the new one is added
/// at the end.
fn set(list: &mut HeaderList, name: &str, value: &[u8]) {
    list.retain(|(k, _)| k != name);
    list.push((name.to_string(), value.to_vec()));
}

/// How a mutation is applied.
#[derive(Clone, Copy)]
pub(super) struct How<'a> {
    /// The answer replaces the whole message (`CONTINUE_AND_REPLACE`).
    pub replacing: bool,
    /// A new `content-length` is not taken (the body may change later).
    pub skip_content_length: bool,
    /// `mutation_rules` (Envoy's defaults without), or the permissive
    /// rules of an immediate response's headers.
    pub rules: &'a Rules,
}

impl Default for How<'_> {
    fn default() -> Self {
        Self { replacing: false, skip_content_length: false, rules: &Rules::DEFAULT }
    }
}

/// `HeaderMutationRules`, compiled (Envoy's `MutationRules::Checker`).
pub(super) struct Rules {
    pub allow_all_routing: bool,
    pub allow_envoy: bool,
    pub disallow_system: bool,
    pub disallow_all: bool,
    pub disallow_is_error: bool,
    pub allow: Option<regex::Regex>,
    pub disallow: Option<regex::Regex>,
}

impl Rules {
    pub const DEFAULT: Rules = Rules {
        allow_all_routing: false,
        allow_envoy: false,
        disallow_system: false,
        disallow_all: false,
        disallow_is_error: false,
        allow: None,
        disallow: None,
    };
    /// An immediate response's headers: routing and `x-envoy-*` allowed.
    pub const PERMISSIVE: Rules = Rules { allow_all_routing: true, allow_envoy: true, ..Rules::DEFAULT };

    /// Whether the change is allowed (Envoy's `isAllowed` and `isValidValue`).
    fn allows(&self, op: Op, name: &str, value: &[u8]) -> bool {
        (op == Op::Remove || valid_value(name, value)) && self.allowed_name(op, name)
    }

    fn allowed_name(&self, op: Op, name: &str) -> bool {
        if op == Op::Remove && (name.starts_with(':') || name == "host") {
            return false;
        }
        if self.disallow.as_ref().is_some_and(|r| r.is_match(name)) {
            return false;
        }
        if self.allow.as_ref().is_some_and(|r| r.is_match(name)) {
            return true;
        }
        if self.disallow_all {
            return false;
        }
        if !self.allow_all_routing && matches!(name, "host" | ":authority" | ":method" | ":scheme") {
            return false;
        }
        if name.starts_with(':') && (op == Op::Append || self.disallow_system) {
            return false;
        }
        self.allow_envoy || !name.starts_with("x-envoy")
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Set,
    Append,
    Remove,
}

fn valid_value(name: &str, value: &[u8]) -> bool {
    if !name.starts_with(':') && !value_chars_valid(value) {
        return false;
    }
    if name == ":status" {
        return std::str::from_utf8(value).ok().and_then(|v| v.parse::<u32>().ok()).is_some_and(|s| s >= 200);
    }
    true
}

fn value_chars_valid(value: &[u8]) -> bool {
    !value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n')
}

fn name_valid(name: &str) -> bool {
    let n = name.strip_prefix(':').unwrap_or(name);
    !n.is_empty() && http::HeaderName::from_bytes(n.as_bytes()).is_ok()
}

/// Applies a header mutation. A header the rules refuse is skipped and
/// counted (`rejected_header_mutations`); an invalid name or value fails
/// the whole answer (Envoy then answers 500). With `skip_content_length`
/// a new `content-length` is not taken.
pub(super) fn apply_headers(
    m: &HeaderMutation,
    list: &mut HeaderList,
    how: How<'_>,
    rejected: &Counter,
) -> Result<(), &'static str> {
    let How { replacing, skip_content_length, rules } = how;
    for name in &m.remove_headers {
        if !name_valid(name) {
            rejected.inc();
            return Err("Invalid character in remove_headers mutation.");
        }
        let name = name.to_ascii_lowercase();
        if rules.allows(Op::Remove, &name, b"") {
            list.retain(|(k, _)| *k != name);
        } else {
            rejected.inc();
            if rules.disallow_is_error {
                return Err("Invalid attempt to remove a header");
            }
        }
    }
    for sh in &m.set_headers {
        let Some(h) = &sh.header else { continue };
        if skip_content_length && h.key.eq_ignore_ascii_case("content-length") {
            continue;
        }
        if !h.value.is_empty() && !h.raw_value.is_empty() {
            rejected.inc();
            return Err("Only one of value or raw_value in the HeaderValue message should be set.");
        }
        let value = h.raw_value.as_slice();
        if !name_valid(&h.key) || !value_chars_valid(value) {
            rejected.inc();
            return Err("Invalid character in set_headers mutation.");
        }
        let name = h.key.to_ascii_lowercase();
        #[allow(deprecated)]
        let append = sh.append.as_ref().is_some_and(|b| b.value);
        let op = if append && has(list, &name) { Op::Append } else { Op::Set };
        // `:method` may change when the whole message is replaced.
        if !(rules.allows(op, &name, value) || (replacing && name == ":method")) {
            rejected.inc();
            if rules.disallow_is_error {
                return Err("Invalid attempt to modify a header");
            }
            continue;
        }
        if append {
            list.push((name, value.to_vec()));
        } else {
            set(list, &name, value);
        }
    }
    Ok(())
}

/// A body after a mutation (`None`: unchanged).
pub(super) fn apply_body(m: &BodyMutation) -> Option<bytes::Bytes> {
    match &m.mutation {
        Some(body_mutation::Mutation::Body(b)) => Some(bytes::Bytes::from(b.clone())),
        Some(body_mutation::Mutation::ClearBody(true)) => Some(bytes::Bytes::new()),
        _ => None,
    }
}

/// The header list back into a map, its pseudo-headers left out.
pub(super) fn to_map(list: &HeaderList) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(list.len());
    for (k, v) in list.iter().filter(|(k, _)| !k.starts_with(':')) {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_bytes(v)) {
            map.append(k, v);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_api::pb::envoy::config::core::v3::HeaderValueOption;
    use legate_api::pb::google::protobuf::BoolValue;

    fn opt(k: &str, v: &str, append: Option<bool>) -> HeaderValueOption {
        #[allow(deprecated)]
        HeaderValueOption {
            header: Some(PbHeaderValue { key: k.into(), raw_value: v.as_bytes().to_vec(), ..Default::default() }),
            append: append.map(|value| BoolValue { value }),
            ..Default::default()
        }
    }

    fn list(pairs: &[(&str, &str)]) -> HeaderList {
        pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn default_rules_skip_routing_and_envoy_headers() {
        let store = crate::stats::Store::default();
        let rejected = store.counter("rejected");
        let mut l = list(&[(":authority", "a"), (":path", "/"), ("x-a", "1"), ("x-a", "2"), ("host", "h")]);
        let m = HeaderMutation {
            set_headers: vec![
                opt("X-A", "3", None),
                opt("x-b", "b", Some(true)),
                opt("x-b", "c", Some(true)),
                opt(":path", "/new", None),
                opt(":authority", "other", None),
                opt("x-envoy-foo", "1", None),
                opt(":path", "/x", Some(true)),
            ],
            remove_headers: vec!["host".into(), ":path".into(), "x-missing".into()],
        };
        assert!(apply_headers(&m, &mut l, How::default(), &rejected).is_ok());
        assert_eq!(
            l,
            list(&[(":authority", "a"), ("host", "h"), ("x-a", "3"), ("x-b", "b"), ("x-b", "c"), (":path", "/new")])
        );
        // host and :path removals, :authority and x-envoy-foo sets, :path appended.
        assert_eq!(rejected.value(), 5);
    }

    #[test]
    fn invalid_values_fail_and_status_must_be_final() {
        let store = crate::stats::Store::default();
        let rejected = store.counter("rejected");
        let mut l = list(&[(":status", "200")]);
        let bad = HeaderMutation { set_headers: vec![opt("x-a", "a\nb", None)], remove_headers: vec![] };
        assert!(apply_headers(&bad, &mut l, How::default(), &rejected).is_err());
        let low = HeaderMutation { set_headers: vec![opt(":status", "100", None)], remove_headers: vec![] };
        assert!(apply_headers(&low, &mut l, How::default(), &rejected).is_ok());
        assert_eq!(l, list(&[(":status", "200")]));
        let cl = HeaderMutation { set_headers: vec![opt("content-length", "3", None)], remove_headers: vec![] };
        assert!(apply_headers(&cl, &mut l, How { skip_content_length: true, ..How::default() }, &rejected).is_ok());
        assert_eq!(l, list(&[(":status", "200")]));
    }
}
