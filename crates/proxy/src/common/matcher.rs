//! String and header matchers compiled from Envoy's matcher protos.

use legate_api::pb::envoy::config::route::v3::{header_matcher::HeaderMatchSpecifier, HeaderMatcher};
use legate_api::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, RegexMatcher, StringMatcher};
use regex::Regex;

/// Compiles an Envoy `RegexMatcher` (RE2 syntax; the `regex` crate accepts the
/// same language minus back-references, which RE2 lacks too). Envoy's regex
/// matches must cover the whole input, so the pattern is anchored.
pub fn compile_regex(m: &RegexMatcher) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{})$", m.regex)).map_err(|e| format!("invalid regex '{}': {e}", m.regex))
}

/// Like [`compile_regex`] but unanchored, for rewrites (`regex_rewrite`).
pub fn compile_search_regex(m: &RegexMatcher) -> Result<Regex, String> {
    Regex::new(&m.regex).map_err(|e| format!("invalid regex '{}': {e}", m.regex))
}

/// Envoy's substitution text (`\\1` for a group) in the `regex` crate's
/// syntax (`${1}`, a literal `$` doubled).
pub fn envoy_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(d)) if d.is_ascii_digit() => {
                out.push_str(&format!("${{{d}}}"));
                chars.next();
            }
            ('$', _) => out.push_str("$$"),
            _ => out.push(c),
        }
    }
    out
}

#[derive(Debug, Clone)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

/// A compiled `StringMatcher`. With `ignore_case` the pattern is lowercased once
/// here and the input per match.
#[derive(Debug, Clone)]
pub struct StringMatch {
    kind: StrMatch,
    ignore_case: bool,
}

impl StringMatch {
    pub fn new(m: &StringMatcher) -> Result<Self, String> {
        let ic = m.ignore_case;
        let lower = |s: &String| if ic { s.to_ascii_lowercase() } else { s.clone() };
        let kind = match &m.match_pattern {
            Some(MatchPattern::Exact(s)) => StrMatch::Exact(lower(s)),
            Some(MatchPattern::Prefix(s)) => StrMatch::Prefix(lower(s)),
            Some(MatchPattern::Suffix(s)) => StrMatch::Suffix(lower(s)),
            Some(MatchPattern::Contains(s)) => StrMatch::Contains(lower(s)),
            Some(MatchPattern::SafeRegex(r)) => StrMatch::Regex(compile_regex(r)?),
            Some(MatchPattern::Custom(_)) => return Err("custom string matchers are not supported".into()),
            None => return Err("string matcher without a pattern".into()),
        };
        Ok(Self { kind, ignore_case: ic })
    }

    /// The pattern of an exact, case-sensitive matcher.
    pub fn exact(&self) -> Option<&str> {
        match &self.kind {
            StrMatch::Exact(s) if !self.ignore_case => Some(s),
            _ => None,
        }
    }

    pub fn from_kind(kind: StrMatch) -> Self {
        Self { kind, ignore_case: false }
    }

    pub fn matches(&self, input: &str) -> bool {
        let lowered;
        let s = if self.ignore_case && !matches!(self.kind, StrMatch::Regex(_)) {
            lowered = input.to_ascii_lowercase();
            lowered.as_str()
        } else {
            input
        };
        match &self.kind {
            StrMatch::Exact(p) => s == p,
            StrMatch::Prefix(p) => s.starts_with(p.as_str()),
            StrMatch::Suffix(p) => s.ends_with(p.as_str()),
            StrMatch::Contains(p) => s.contains(p.as_str()),
            StrMatch::Regex(r) => r.is_match(s),
        }
    }
}

#[derive(Debug, Clone)]
enum HeaderTest {
    Str(StringMatch),
    Present(bool),
    Range(i64, i64),
}

/// The request's pseudo-headers, which header matchers may name (`:path`, ...).
#[derive(Debug, Clone, Copy, Default)]
pub struct Pseudo<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
}

#[derive(Debug, Clone)]
enum Key {
    Header(http::HeaderName),
    Method,
    Path,
    Authority,
    Scheme,
}

/// A compiled route `HeaderMatcher`.
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    name: Key,
    test: HeaderTest,
    invert: bool,
    missing_as_empty: bool,
}

impl HeaderMatch {
    #[allow(deprecated)] // Envoy still accepts this deprecated field, so Legate reads it.
    pub fn new(m: &HeaderMatcher) -> Result<Self, String> {
        let lower = m.name.to_ascii_lowercase();
        let name = match lower.as_str() {
            ":method" => Key::Method,
            ":path" => Key::Path,
            ":authority" | "host" => Key::Authority,
            ":scheme" => Key::Scheme,
            other => Key::Header(
                http::HeaderName::from_bytes(other.as_bytes())
                    .map_err(|_| format!("invalid header name '{}'", m.name))?,
            ),
        };
        let test = match &m.header_match_specifier {
            Some(HeaderMatchSpecifier::ExactMatch(s)) => {
                HeaderTest::Str(StringMatch::from_kind(StrMatch::Exact(s.clone())))
            }
            Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => {
                HeaderTest::Str(StringMatch::from_kind(StrMatch::Regex(compile_regex(r)?)))
            }
            Some(HeaderMatchSpecifier::RangeMatch(r)) => HeaderTest::Range(r.start, r.end),
            Some(HeaderMatchSpecifier::PresentMatch(p)) => HeaderTest::Present(*p),
            Some(HeaderMatchSpecifier::PrefixMatch(s)) => {
                HeaderTest::Str(StringMatch::from_kind(StrMatch::Prefix(s.clone())))
            }
            Some(HeaderMatchSpecifier::SuffixMatch(s)) => {
                HeaderTest::Str(StringMatch::from_kind(StrMatch::Suffix(s.clone())))
            }
            Some(HeaderMatchSpecifier::ContainsMatch(s)) => {
                HeaderTest::Str(StringMatch::from_kind(StrMatch::Contains(s.clone())))
            }
            Some(HeaderMatchSpecifier::StringMatch(sm)) => HeaderTest::Str(StringMatch::new(sm)?),
            // No specifier: the header must be present.
            None => HeaderTest::Present(true),
        };
        Ok(Self { name, test, invert: m.invert_match, missing_as_empty: m.treat_missing_header_as_empty })
    }

    /// Envoy's semantics: several values of one header are matched joined by ','.
    pub fn matches(&self, headers: &http::HeaderMap, pseudo: &Pseudo<'_>) -> bool {
        // An empty pseudo-header is an absent one (a request always has
        // :method, :path and :scheme; the network RBAC filter has none).
        fn present(v: &str) -> Option<std::borrow::Cow<'_, str>> {
            (!v.is_empty()).then_some(std::borrow::Cow::Borrowed(v))
        }
        let name = match &self.name {
            Key::Header(n) => n,
            Key::Method => return self.test_value(present(pseudo.method)),
            Key::Path => return self.test_value(present(pseudo.path)),
            Key::Authority => return self.test_value(present(pseudo.authority)),
            Key::Scheme => return self.test_value(present(pseudo.scheme)),
        };
        let mut values = headers.get_all(name).iter();
        let value: Option<std::borrow::Cow<'_, str>> = match (values.next(), values.next()) {
            (None, _) => None,
            (Some(v), None) => Some(String::from_utf8_lossy(v.as_bytes())),
            (Some(first), Some(second)) => {
                let mut s = String::from_utf8_lossy(first.as_bytes()).into_owned();
                for v in std::iter::once(second).chain(values) {
                    s.push(',');
                    s.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
                Some(s.into())
            }
        };
        self.test_value(value)
    }

    fn test_value(&self, value: Option<std::borrow::Cow<'_, str>>) -> bool {
        let value = match value {
            None if self.missing_as_empty => Some("".into()),
            v => v,
        };
        let result = match (&self.test, value) {
            (HeaderTest::Present(want), v) => return v.is_some() == (*want != self.invert),
            (_, None) => return false,
            (HeaderTest::Str(m), Some(v)) => m.matches(&v),
            (HeaderTest::Range(lo, hi), Some(v)) => v.trim().parse::<i64>().is_ok_and(|n| n >= *lo && n < *hi),
        };
        result != self.invert
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(m: HeaderMatcher) -> HeaderMatch {
        HeaderMatch::new(&m).unwrap()
    }

    #[test]
    #[allow(deprecated)] // Envoy still accepts this deprecated field, so Legate reads it.
    fn header_matchers() {
        let mut h = http::HeaderMap::new();
        h.insert("x-a", "hello".parse().unwrap());
        let exact = hm(HeaderMatcher {
            name: "X-A".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::ExactMatch("hello".into())),
            ..Default::default()
        });
        assert!(exact.matches(&h, &Pseudo::default()));
        let inverted = hm(HeaderMatcher {
            name: "x-a".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::PrefixMatch("he".into())),
            invert_match: true,
            ..Default::default()
        });
        assert!(!inverted.matches(&h, &Pseudo::default()));
        let absent = hm(HeaderMatcher {
            name: "x-b".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
            ..Default::default()
        });
        assert!(!absent.matches(&h, &Pseudo::default()));
        let absent_inverted = hm(HeaderMatcher {
            name: "x-b".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::SuffixMatch("x".into())),
            invert_match: true,
            ..Default::default()
        });
        // A missing header never matches a value test, inverted or not.
        assert!(!absent_inverted.matches(&h, &Pseudo::default()));
    }

    #[test]
    fn regex_is_anchored() {
        let r = compile_regex(&RegexMatcher { regex: "/a[0-9]+".into(), ..Default::default() }).unwrap();
        assert!(r.is_match("/a12"));
        assert!(!r.is_match("/a12/b"));
    }
}
