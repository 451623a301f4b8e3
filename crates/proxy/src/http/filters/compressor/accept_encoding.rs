//! The `accept-encoding` choice, as Envoy's compressor makes it, and the
//! `vary: Accept-Encoding` mark on responses that could have been compressed.

use http::header::VARY;
use http::{HeaderMap, HeaderValue};

/// `vary: Accept-Encoding`, added to what the response varies on already.
pub(super) fn add_vary(h: &mut HeaderMap) {
    let present = h.get_all(VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim() == "*" || t.trim().eq_ignore_ascii_case("accept-encoding")))
    });
    if present {
        return;
    }
    let joined = match h.get(VARY).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, Accept-Encoding"),
        _ => "Accept-Encoding".to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        h.insert(VARY, v);
    }
}

#[derive(Debug, PartialEq)]
pub(super) enum Choice {
    Ours,
    Identity,
    Wildcard,
    None,
}

/// Parses `accept-encoding` as Envoy does: `token;q=x` items, a q of 0
/// takes the coding out; the highest q among ours, identity and `*` wins.
/// Returns the choice and whether ours is still allowed (not `gzip;q=0`).
pub(super) fn choose(ae: &str, ours: &str) -> (Choice, bool) {
    let mut items: Vec<(&str, f32)> = Vec::new();
    let mut ours_allowed = true;
    for token in ae.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (name, params) = token.split_once(';').unwrap_or((token, ""));
        let mut q = 1.0f32;
        if let Some((k, v)) = params.split_once('=') {
            if k.trim().eq_ignore_ascii_case("q") {
                match v.trim().parse::<f32>() {
                    Ok(x) => q = x,
                    Err(_) => continue,
                }
            }
        }
        let name = name.trim();
        if q == 0.0 {
            if name.eq_ignore_ascii_case(ours) {
                ours_allowed = false;
            }
            continue;
        }
        items.push((name, q));
    }
    let mut best: (Choice, f32) = (Choice::None, 0.0);
    for (name, q) in items {
        let c = if name.eq_ignore_ascii_case(ours) && ours_allowed {
            Choice::Ours
        } else if name.eq_ignore_ascii_case("identity") {
            Choice::Identity
        } else if name == "*" {
            Choice::Wildcard
        } else {
            continue;
        };
        if q > best.1 {
            best = (c, q);
        }
    }
    (best.0, ours_allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_negotiation() {
        assert_eq!(choose("gzip", "gzip").0, Choice::Ours);
        assert_eq!(choose("br, gzip;q=0.5", "gzip").0, Choice::Ours);
        assert_eq!(choose("gzip;q=0.2, identity;q=0.5", "gzip").0, Choice::Identity);
        assert_eq!(choose("*", "gzip").0, Choice::Wildcard);
        assert_eq!(choose("gzip;q=0, *", "gzip"), (Choice::Wildcard, false));
        assert_eq!(choose("br", "gzip").0, Choice::None);
        assert_eq!(choose("", "gzip").0, Choice::None);
        assert_eq!(choose("gzip, br", "br").0, Choice::Ours);
        assert_eq!(choose("gzip;q=0.5, br", "br").0, Choice::Ours);
    }

    #[test]
    fn vary_is_extended_once() {
        let mut h = HeaderMap::new();
        add_vary(&mut h);
        assert_eq!(h.get(VARY).map(|v| v.as_bytes()), Some(&b"Accept-Encoding"[..]));
        let mut h = HeaderMap::new();
        h.insert(VARY, HeaderValue::from_static("Origin"));
        add_vary(&mut h);
        add_vary(&mut h);
        assert_eq!(h.get(VARY).map(|v| v.as_bytes()), Some(&b"Origin, Accept-Encoding"[..]));
    }
}
