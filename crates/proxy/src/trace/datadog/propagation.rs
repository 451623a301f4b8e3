//! Datadog's trace context on the wire, as the tracer inside Envoy 1.40
//! (dd-trace-cpp) reads and writes it by default: the `x-datadog-*`
//! headers first, else W3C `traceparent`/`tracestate` (with its `dd=`
//! member); both are written upstream.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

pub static X_DATADOG_TRACE_ID: HeaderName = HeaderName::from_static("x-datadog-trace-id");
pub static X_DATADOG_PARENT_ID: HeaderName = HeaderName::from_static("x-datadog-parent-id");
pub static X_DATADOG_SAMPLING_PRIORITY: HeaderName = HeaderName::from_static("x-datadog-sampling-priority");
pub static X_DATADOG_ORIGIN: HeaderName = HeaderName::from_static("x-datadog-origin");
pub static X_DATADOG_TAGS: HeaderName = HeaderName::from_static("x-datadog-tags");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The propagated tag carrying a 128-bit trace id's high half.
pub const TID: &str = "_dd.p.tid";
/// The prefix of the trace tags that travel with the context.
const PROPAGATED: &str = "_dd.p.";

/// A caller's context.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Extracted {
    pub trace_high: u64,
    pub trace_low: u64,
    /// None: a synthetic request's origin without a parent.
    pub parent_id: Option<u64>,
    pub priority: Option<i32>,
    pub origin: Option<String>,
    /// `_dd.p.*` trace tags other than the trace id's high half, in order.
    pub tags: Vec<(String, String)>,
    /// From W3C: the last Datadog parent (`tracestate`'s `p`), reported as
    /// `_dd.parent_id`.
    pub w3c_parent: Option<String>,
    /// `tracestate` members of other vendors, carried on.
    pub other_state: Option<String>,
}

/// A context header that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed trace context")]
pub struct Malformed;

/// The request's context: none, one, or Err when a header is malformed
/// (Envoy then logs it and starts a new trace).
pub fn extract(h: &HeaderMap) -> Result<Option<Extracted>, Malformed> {
    match datadog(h).map_err(|_| Malformed)? {
        Some(e) => Ok(Some(e)),
        None => w3c(h).map_err(|_| Malformed),
    }
}

fn text<'a>(h: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ()> {
    h.get(name).map(|v| v.to_str().map(str::trim).map_err(|_| ())).transpose()
}

fn datadog(h: &HeaderMap) -> Result<Option<Extracted>, ()> {
    let Some(trace) = text(h, &X_DATADOG_TRACE_ID)? else { return Ok(None) };
    let trace_low: u64 = trace.parse().map_err(|_| ())?;
    let origin = text(h, &X_DATADOG_ORIGIN)?.map(str::to_owned);
    let parent_id = match text(h, &X_DATADOG_PARENT_ID)? {
        Some(p) => Some(p.parse::<u64>().map_err(|_| ())?),
        None if origin.is_some() => None,
        None => return Err(()),
    };
    let priority = text(h, &X_DATADOG_SAMPLING_PRIORITY)?.map(|p| p.parse::<i32>().map_err(|_| ())).transpose()?;
    if trace_low == 0 {
        return Err(());
    }
    let mut e = Extracted { trace_low, parent_id, priority, origin, ..Default::default() };
    for (k, v) in text(h, &X_DATADOG_TAGS)?.into_iter().flat_map(|t| t.split(',')).filter_map(|i| i.split_once('=')) {
        let (k, v) = (k.trim(), v.trim());
        if k == TID {
            e.trace_high = hex64(v).unwrap_or(0);
        } else if k.starts_with(PROPAGATED) {
            e.tags.push((k.to_string(), v.to_string()));
        }
    }
    Ok(Some(e))
}

fn hex64(v: &str) -> Option<u64> {
    (v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit())).then(|| u64::from_str_radix(v, 16).ok()).flatten()
}

fn w3c(h: &HeaderMap) -> Result<Option<Extracted>, ()> {
    let Some(tp) = text(h, &TRACEPARENT)? else { return Ok(None) };
    let parts: Vec<&str> = tp.split('-').collect();
    let [version, trace, parent, flags, ..] = parts[..] else { return Err(()) };
    if version.len() != 2 || version == "ff" || (version == "00" && parts.len() != 4) || trace.len() != 32 {
        return Err(());
    }
    let (high, low) = (hex64(&trace[..16]).ok_or(())?, hex64(&trace[16..]).ok_or(())?);
    let parent = hex64(parent).ok_or(())?;
    let flags = (flags.len() == 2).then(|| u8::from_str_radix(flags, 16).ok()).flatten().ok_or(())?;
    if (high == 0 && low == 0) || parent == 0 {
        return Err(());
    }
    let sampled = flags & 1 == 1;
    let mut e = Extracted { trace_high: high, trace_low: low, parent_id: Some(parent), ..Default::default() };
    let mut others = Vec::new();
    let mut state_priority = None;
    let mut last_parent = None;
    for member in text(h, &TRACESTATE)?.into_iter().flat_map(|s| s.split(',')).map(str::trim) {
        let Some(dd) = member.strip_prefix("dd=") else {
            if !member.is_empty() {
                others.push(member);
            }
            continue;
        };
        for (k, v) in dd.split(';').filter_map(|f| f.split_once(':')) {
            match k {
                "s" => state_priority = v.parse::<i32>().ok(),
                "o" => e.origin = Some(v.replace('~', "=")),
                "p" => last_parent = Some(v.to_string()),
                _ => {
                    if let Some(key) = k.strip_prefix("t.") {
                        e.tags.push((format!("{PROPAGATED}{key}"), v.replace('~', "=")));
                    }
                }
            }
        }
    }
    // The flag decides; `s` refines it when the two agree.
    e.priority = Some(match state_priority {
        Some(s) if (s > 0) == sampled => s,
        _ => i32::from(sampled),
    });
    e.w3c_parent = Some(last_parent.unwrap_or_else(|| "0000000000000000".into()));
    e.other_state = (!others.is_empty()).then(|| others.join(","));
    Ok(Some(e))
}

/// A span's context as it goes upstream.
pub struct Outgoing<'a> {
    pub trace_high: u64,
    pub trace_low: u64,
    pub span_id: u64,
    pub priority: i32,
    pub origin: Option<&'a str>,
    pub tags: &'a [(String, String)],
    pub other_state: Option<&'a str>,
}

/// Both styles into the upstream request.
pub fn inject(h: &mut HeaderMap, o: &Outgoing<'_>) {
    let mut set = |k: &HeaderName, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k.clone(), v);
        }
    };
    set(&X_DATADOG_TRACE_ID, o.trace_low.to_string());
    set(&X_DATADOG_PARENT_ID, o.span_id.to_string());
    set(&X_DATADOG_SAMPLING_PRIORITY, o.priority.to_string());
    if let Some(origin) = o.origin {
        set(&X_DATADOG_ORIGIN, origin.to_string());
    }
    let mut tags: Vec<String> = Vec::new();
    if o.trace_high != 0 {
        tags.push(format!("{TID}={:016x}", o.trace_high));
    }
    tags.extend(o.tags.iter().map(|(k, v)| format!("{k}={v}")));
    if !tags.is_empty() {
        set(&X_DATADOG_TAGS, tags.join(","));
    }
    let flag = if o.priority > 0 { "01" } else { "00" };
    set(&TRACEPARENT, format!("00-{:016x}{:016x}-{:016x}-{flag}", o.trace_high, o.trace_low, o.span_id));
    let mut dd = format!("dd=s:{};p:{:016x}", o.priority, o.span_id);
    if let Some(origin) = o.origin {
        dd.push_str(&format!(";o:{}", state_value(origin)));
    }
    for (k, v) in o.tags {
        if let Some(key) = k.strip_prefix(PROPAGATED) {
            dd.push_str(&format!(";t.{key}:{}", state_value(v)));
        }
    }
    if let Some(others) = o.other_state {
        dd.push(',');
        dd.push_str(others);
    }
    set(&TRACESTATE, dd);
}

/// A value as `tracestate`'s `dd` member may hold it: `=` as `~`, and
/// the member's separators and anything unprintable as `_`.
fn state_value(v: &str) -> String {
    v.chars()
        .map(|c| match c {
            '=' => '~',
            ',' | ';' | '~' => '_',
            c if (' '..='~').contains(&c) => c,
            _ => '_',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn datadog_headers_come_first_and_need_a_parent() {
        let h = headers(&[
            ("x-datadog-trace-id", "1234"),
            ("x-datadog-parent-id", "5678"),
            ("x-datadog-sampling-priority", "2"),
            ("x-datadog-origin", "synthetics"),
            ("x-datadog-tags", "_dd.p.dm=-4,_dd.p.usr=x,other=1"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ]);
        let e = extract(&h).unwrap().unwrap();
        assert_eq!((e.trace_high, e.trace_low, e.parent_id, e.priority), (0, 1234, Some(5678), Some(2)));
        assert_eq!(e.origin.as_deref(), Some("synthetics"));
        assert_eq!(e.tags, [("_dd.p.dm".into(), "-4".into()), ("_dd.p.usr".into(), "x".into())]);
        assert!(extract(&headers(&[("x-datadog-trace-id", "1234")])).is_err());
        assert!(extract(&headers(&[("x-datadog-trace-id", "abc"), ("x-datadog-parent-id", "1")])).is_err());
        assert_eq!(extract(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn w3c_context_with_the_dd_member() {
        let h = headers(&[
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("tracestate", "dd=s:2;o:rum;t.dm:-4,k=v"),
        ]);
        let e = extract(&h).unwrap().unwrap();
        assert_eq!((e.trace_high, e.trace_low), (0x0af7651916cd43dd, 0x8448eb211c80319c));
        assert_eq!((e.parent_id, e.priority), (Some(0xb7ad6b7169203331), Some(2)));
        assert_eq!((e.origin.as_deref(), e.other_state.as_deref()), (Some("rum"), Some("k=v")));
        assert_eq!(e.w3c_parent.as_deref(), Some("0000000000000000"));
        let unsampled = headers(&[("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")]);
        assert_eq!(extract(&unsampled).unwrap().unwrap().priority, Some(0));
        assert!(
            extract(&headers(&[("traceparent", "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01")])).is_err()
        );
    }

    #[test]
    fn both_styles_are_written() {
        let mut h = HeaderMap::new();
        let tags = [("_dd.p.dm".to_string(), "-0".to_string())];
        let o = Outgoing {
            trace_high: 0x6b17530300000000,
            trace_low: 0x5e5c2e6a374e1b07,
            span_id: 0x6192d3ab8eb7e1a8,
            priority: 1,
            origin: None,
            tags: &tags,
            other_state: Some("k=v"),
        };
        inject(&mut h, &o);
        assert_eq!(h["x-datadog-trace-id"], "6799360571151883015");
        assert_eq!(h["x-datadog-parent-id"], "7030914702066049448");
        assert_eq!(h["x-datadog-sampling-priority"], "1");
        assert_eq!(h["x-datadog-tags"], "_dd.p.tid=6b17530300000000,_dd.p.dm=-0");
        assert_eq!(h["traceparent"], "00-6b175303000000005e5c2e6a374e1b07-6192d3ab8eb7e1a8-01");
        assert_eq!(h["tracestate"], "dd=s:1;p:6192d3ab8eb7e1a8;t.dm:-0,k=v");
        assert!(!h.contains_key("x-datadog-origin"));
    }
}
