//! Header mutations (`*_headers_to_add` / `*_headers_to_remove`) with Envoy's
//! append actions and `%...%` values.

use crate::common::format::{Context, Format};
use http::{HeaderMap, HeaderName, HeaderValue};
use legate_api::pb::envoy::config::core::v3::{header_value_option::HeaderAppendAction, HeaderValueOption};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    AppendOrAdd,
    AddIfAbsent,
    OverwriteOrAdd,
    OverwriteIfExists,
}

#[derive(Debug, Clone)]
struct Add {
    name: HeaderName,
    value: Format,
    action: Action,
    keep_empty: bool,
}

/// One level's mutations (route, virtual host or route configuration).
#[derive(Debug, Clone, Default)]
pub struct HeaderMutations {
    remove: Vec<HeaderName>,
    add: Vec<Add>,
}

impl HeaderMutations {
    #[allow(deprecated)] // Envoy still accepts this deprecated field, so Legate reads it.
    pub fn new(add: &[HeaderValueOption], remove: &[String]) -> Result<Self, String> {
        let remove = remove
            .iter()
            .map(|n| {
                HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("invalid header name '{n}'"))
            })
            .collect::<Result<_, _>>()?;
        let add = add
            .iter()
            .map(|o| {
                let h = o.header.as_ref().ok_or("header is required")?;
                let name = HeaderName::from_bytes(h.key.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("invalid header name '{}'", h.key))?;
                let raw = if h.value.is_empty() {
                    String::from_utf8_lossy(&h.raw_value).into_owned()
                } else {
                    h.value.clone()
                };
                let value = Format::parse(&raw)?.for_header();
                // The deprecated `append` wins when set, as in Envoy.
                let action = match o.append {
                    Some(a) if a.value => Action::AppendOrAdd,
                    Some(_) => Action::OverwriteOrAdd,
                    None => match HeaderAppendAction::try_from(o.append_action)
                        .unwrap_or(HeaderAppendAction::AppendIfExistsOrAdd)
                    {
                        HeaderAppendAction::AppendIfExistsOrAdd => Action::AppendOrAdd,
                        HeaderAppendAction::AddIfAbsent => Action::AddIfAbsent,
                        HeaderAppendAction::OverwriteIfExistsOrAdd => Action::OverwriteOrAdd,
                        HeaderAppendAction::OverwriteIfExists => Action::OverwriteIfExists,
                    },
                };
                Ok(Add { name, value, action, keep_empty: o.keep_empty_value })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { remove, add })
    }

    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }

    /// Removes, then adds, as Envoy does at each level.
    pub fn apply(&self, headers: &mut HeaderMap, ctx: &Context<'_>) {
        for name in &self.remove {
            headers.remove(name);
        }
        for add in &self.add {
            let rendered;
            let text = match add.value.literal() {
                Some(s) => s,
                None => {
                    rendered = add.value.render_string(ctx);
                    rendered.as_str()
                }
            };
            if text.is_empty() && !add.keep_empty {
                continue;
            }
            let Ok(value) = HeaderValue::from_str(text) else { continue };
            match add.action {
                Action::AppendOrAdd => {
                    headers.append(add.name.clone(), value);
                }
                Action::AddIfAbsent => {
                    if !headers.contains_key(&add.name) {
                        headers.insert(add.name.clone(), value);
                    }
                }
                Action::OverwriteOrAdd => {
                    headers.insert(add.name.clone(), value);
                }
                Action::OverwriteIfExists => {
                    if headers.contains_key(&add.name) {
                        headers.insert(add.name.clone(), value);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_api::pb::envoy::config::core::v3::HeaderValue as PbHeaderValue;

    fn opt(k: &str, v: &str, action: HeaderAppendAction) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(PbHeaderValue { key: k.into(), value: v.into(), ..Default::default() }),
            append_action: action as i32,
            ..Default::default()
        }
    }

    #[test]
    fn append_actions() {
        let m = HeaderMutations::new(
            &[
                opt("x-a", "2", HeaderAppendAction::AppendIfExistsOrAdd),
                opt("x-b", "2", HeaderAppendAction::AddIfAbsent),
                opt("x-c", "2", HeaderAppendAction::OverwriteIfExistsOrAdd),
                opt("x-d", "2", HeaderAppendAction::OverwriteIfExists),
                opt("x-e", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", HeaderAppendAction::AppendIfExistsOrAdd),
            ],
            &["x-gone".into()],
        )
        .unwrap();
        let mut h = HeaderMap::new();
        for k in ["x-a", "x-b", "x-c", "x-gone"] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static("1"));
        }
        let ctx = Context { downstream_remote: Some("10.0.0.1:5".parse().unwrap()), ..Default::default() };
        m.apply(&mut h, &ctx);
        assert_eq!(h.get_all("x-a").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(h.get_all("x-b").iter().collect::<Vec<_>>(), ["1"]);
        assert_eq!(h.get_all("x-c").iter().collect::<Vec<_>>(), ["2"]);
        assert!(h.get("x-d").is_none());
        assert_eq!(h.get("x-e").unwrap(), "10.0.0.1");
        assert!(h.get("x-gone").is_none());
    }
}
