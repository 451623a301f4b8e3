//! A Release's strategy as users write it — `canary` (steps, optionally
//! sticky), `blueGreen` (a preview header, then all at once) or `abTest`
//! (requests with given headers or cookies) — checked with field paths into
//! the steps, the requests the candidate takes whatever the weights, the
//! stickiness and the hold.

use crate::resources::mesh::spec::{Problems, Sticky, ToCandidate};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StrategySpec {
    #[serde(default)]
    pub canary: Option<CanarySpec>,
    #[serde(default)]
    pub blue_green: Option<BlueGreenSpec>,
    #[serde(default)]
    pub ab_test: Option<AbTestSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanarySpec {
    /// The candidate's percent of traffic at each step, increasing, ending at 100.
    pub steps: Vec<u32>,
    /// How long each step runs before it is analysed.
    #[serde(default = "default_hold")]
    pub hold: String,
    /// Keep one client on one version: hash this header or cookie.
    #[serde(default)]
    pub stickiness: Option<StickinessSpec>,
}

/// `{header: x-user}`, `{cookie: session}` (a cookie the client has), or
/// `{cookie: NAME, ttl: 1h}`: the proxy sets the cookie (for `ttl`) on a
/// client's first response when the request has none.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickinessSpec {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
    #[serde(default)]
    pub ttl: Option<String>,
}

/// Blue-green: the candidate is first reached only by requests carrying
/// the preview header (analysed after `hold`), then takes all traffic at
/// once (analysed again); stable keeps its cluster, ready for a rollback.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlueGreenSpec {
    #[serde(default)]
    pub preview: PreviewSpec,
    #[serde(default = "default_hold")]
    pub hold: String,
}

/// The header (exact value) that previews the candidate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewSpec {
    #[serde(default = "default_preview_header")]
    pub header: String,
    #[serde(default = "default_preview_value")]
    pub value: String,
}

impl Default for PreviewSpec {
    fn default() -> Self {
        Self { header: default_preview_header(), value: default_preview_value() }
    }
}

fn default_preview_header() -> String {
    "x-release-preview".into()
}

fn default_preview_value() -> String {
    "candidate".into()
}

/// A/B test: requests carrying any one of these headers or cookies (exact
/// values) go to the candidate, every other request stays on stable; after
/// `hold` the candidate's figures are analysed, then it is promoted (all
/// traffic) or rolled back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbTestSpec {
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub cookies: BTreeMap<String, String>,
    #[serde(default = "default_hold")]
    pub hold: String,
}

fn default_hold() -> String {
    "30s".into()
}

/// The strategy checked: what the state machine and the routes need.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Strategy {
    /// The candidate's percent at each step (blue-green: 0 then 100; A/B: 0).
    pub steps: Vec<u32>,
    /// Requests the candidate takes whatever the weights.
    pub preview: Vec<ToCandidate>,
    pub sticky: Option<Sticky>,
    pub hold: Duration,
}

/// The one strategy given, checked.
pub fn strategy(s: &StrategySpec, p: &mut Problems) -> Strategy {
    let given = [s.canary.is_some(), s.blue_green.is_some(), s.ab_test.is_some()].iter().filter(|g| **g).count();
    if given != 1 {
        p.push(("spec.strategy".into(), "needs exactly one of canary, blueGreen or abTest".into()));
        return Strategy::default();
    }
    if let Some(c) = &s.canary {
        check_steps(&c.steps, p);
        let sticky = c.stickiness.as_ref().and_then(|st| stickiness(st, p));
        let hold = duration(p, "spec.strategy.canary.hold", &c.hold);
        return Strategy { steps: c.steps.clone(), preview: Vec::new(), sticky, hold };
    }
    if let Some(b) = &s.blue_green {
        if b.preview.header.is_empty() || b.preview.value.is_empty() {
            p.push(("spec.strategy.blueGreen.preview".into(), "needs a header name and value".into()));
        }
        let preview = vec![ToCandidate::Header(b.preview.header.to_ascii_lowercase(), b.preview.value.clone())];
        let hold = duration(p, "spec.strategy.blueGreen.hold", &b.hold);
        return Strategy { steps: vec![0, 100], preview, sticky: None, hold };
    }
    let Some(ab) = &s.ab_test else { return Strategy::default() };
    Strategy {
        steps: vec![0],
        preview: ab_matches(ab, p),
        sticky: None,
        hold: duration(p, "spec.strategy.abTest.hold", &ab.hold),
    }
}

/// An A/B test's headers and cookies, each a way to the candidate.
fn ab_matches(ab: &AbTestSpec, p: &mut Problems) -> Vec<ToCandidate> {
    let path = "spec.strategy.abTest";
    if ab.headers.is_empty() && ab.cookies.is_empty() {
        p.push((path.into(), "needs headers or cookies that send a request to the candidate".into()));
    }
    let mut out = Vec::new();
    for (name, value) in &ab.headers {
        if !token(name) || value.is_empty() {
            p.push((format!("{path}.headers.{name}"), "needs a header name and a value".into()));
        }
        out.push(ToCandidate::Header(name.to_ascii_lowercase(), value.clone()));
    }
    for (name, value) in &ab.cookies {
        if !token(name) || !cookie_value(value) {
            p.push((
                format!("{path}.cookies.{name}"),
                "needs a cookie name and a value (no spaces, ';', ',' or quotes)".into(),
            ));
        }
        out.push(ToCandidate::Cookie(name.clone(), value.clone()));
    }
    out
}

fn stickiness(s: &StickinessSpec, p: &mut Problems) -> Option<Sticky> {
    let path = "spec.strategy.canary.stickiness";
    let ttl = match (&s.ttl, &s.cookie) {
        (None, _) => None,
        (Some(_), None) => {
            p.push((format!("{path}.ttl"), "only a cookie has a ttl (the proxy sets the cookie)".into()));
            return None;
        }
        (Some(t), Some(_)) => match humantime::parse_duration(t.trim()) {
            Ok(d) if d.as_secs() >= 1 => Some(d.as_secs()),
            _ => {
                p.push((format!("{path}.ttl"), format!("'{t}' is not a duration of a second or more, such as 1h")));
                return None;
            }
        },
    };
    match (&s.header, &s.cookie) {
        (Some(h), None) if token(h) => Some(Sticky::Header(h.to_ascii_lowercase())),
        (None, Some(c)) if token(c) => Some(Sticky::Cookie { name: c.clone(), ttl_s: ttl }),
        (Some(_), None) | (None, Some(_)) => {
            p.push((path.into(), "needs a header or cookie name".into()));
            None
        }
        _ => {
            p.push((path.into(), "needs one of header or cookie".into()));
            None
        }
    }
}

/// An HTTP token (header and cookie names).
fn token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A cookie value as RFC 6265 allows it unquoted.
fn cookie_value(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && !b"\";,\\".contains(&b))
}

fn check_steps(steps: &[u32], p: &mut Problems) {
    let path = "spec.strategy.canary.steps";
    if steps.is_empty() {
        p.push((path.into(), "needs at least one step".into()));
        return;
    }
    for (i, w) in steps.iter().enumerate() {
        if *w == 0 || *w > 100 {
            p.push((format!("{path}[{i}]"), format!("{w} is not a percent from 1 to 100")));
        } else if i > 0 && *w <= steps[i - 1] {
            p.push((format!("{path}[{i}]"), format!("{w} does not increase on {}", steps[i - 1])));
        }
    }
    if steps.last() != Some(&100) {
        p.push((path.into(), "the last step must be 100".into()));
    }
}

/// A duration such as `5s`, `1m30s`, `500ms`.
pub fn duration(p: &mut Problems, field: &str, text: &str) -> Duration {
    humantime::parse_duration(text.trim()).unwrap_or_else(|e| {
        p.push((field.into(), format!("'{text}' is not a duration such as 5s or 1m: {e}")));
        Duration::ZERO
    })
}
