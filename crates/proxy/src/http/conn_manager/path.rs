//! The connection manager's path handling before routing, as Envoy's
//! `ConnectionManagerUtility::maybeNormalizePath` does it:
//! `path_with_escaped_slashes_action` (`%2F` and `%5C` in the path, not the
//! query: kept, refused with 400, unescaped and redirected with 307, or
//! unescaped and forwarded), then `normalize_path` (RFC 3986 normalization
//! as Chromium's URL canonicalizer, which Envoy embeds, does it: `.` and
//! `..` segments, also written `%2e`, resolved; `\` made `/`; escapes of
//! unreserved characters decoded; characters outside the path set escaped;
//! an escaped NUL refused), then `merge_slashes`. Route matching and the
//! upstream see the result.

use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::PathWithEscapedSlashesAction as Escaped;
use legate_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;

/// A connection manager's path options.
#[derive(Clone, Copy, Debug, Default)]
pub struct PathOptions {
    normalize: bool,
    merge_slashes: bool,
    escaped_slashes: EscapedSlashes,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum EscapedSlashes {
    #[default]
    Keep,
    Reject,
    Redirect,
    Forward,
}

/// What becomes of a request's path.
#[derive(Debug, PartialEq)]
pub enum PathAction {
    /// Route (and forward) this path; `None`: the path as it came.
    Continue(Option<String>),
    /// 400 (`path_normalization_failed`).
    Reject,
    /// 307 to this path.
    Redirect(String),
}

impl PathOptions {
    pub fn compile(c: &HttpConnectionManager) -> Self {
        // Envoy's default (IMPLEMENTATION_SPECIFIC_DEFAULT) keeps them.
        let escaped_slashes = match Escaped::try_from(c.path_with_escaped_slashes_action) {
            Ok(Escaped::RejectRequest) => EscapedSlashes::Reject,
            Ok(Escaped::UnescapeAndRedirect) => EscapedSlashes::Redirect,
            Ok(Escaped::UnescapeAndForward) => EscapedSlashes::Forward,
            _ => EscapedSlashes::Keep,
        };
        Self { normalize: c.normalize_path.is_some_and(|b| b.value), merge_slashes: c.merge_slashes, escaped_slashes }
    }

    /// Whether any option changes paths (otherwise nothing is looked at).
    pub fn active(&self) -> bool {
        self.normalize || self.merge_slashes || self.escaped_slashes != EscapedSlashes::Keep
    }

    /// The path's fate; `grpc`: a redirect is refused instead, as Envoy
    /// refuses to redirect a gRPC request.
    pub fn apply(&self, path: &str, grpc: bool) -> PathAction {
        let mut out = None::<String>;
        let mut redirect = false;
        if self.escaped_slashes != EscapedSlashes::Keep {
            if let Some(p) = unescape_slashes(path) {
                match self.escaped_slashes {
                    EscapedSlashes::Reject => return PathAction::Reject,
                    EscapedSlashes::Redirect => redirect = true,
                    _ => {}
                }
                out = Some(p);
            }
        }
        if self.normalize {
            match normalize(out.as_deref().unwrap_or(path)) {
                Some(p) => out = Some(p),
                None => return PathAction::Reject,
            }
        }
        if self.merge_slashes {
            if let Some(p) = merge_slashes(out.as_deref().unwrap_or(path)) {
                out = Some(p);
            }
        }
        let out = out.filter(|p| p != path);
        match (redirect, out) {
            (true, _) if grpc => PathAction::Reject,
            (true, Some(p)) => PathAction::Redirect(p),
            (_, out) => PathAction::Continue(out),
        }
    }
}

/// The path and the query (with its `?`) of a request target.
fn split(path: &str) -> (&str, &str) {
    path.find('?').map_or((path, ""), |i| path.split_at(i))
}

/// `%2F`/`%2f` as `/` and `%5C`/`%5c` as `\` in the path part; `None` when
/// there are none.
fn unescape_slashes(path: &str) -> Option<String> {
    let (p, query) = split(path);
    if !p.contains('%') {
        return None;
    }
    let out = p.replace("%2F", "/").replace("%2f", "/").replace("%5C", "\\").replace("%5c", "\\");
    (out.len() != p.len()).then(|| out + query)
}

/// Runs of slashes in the path part as one (a leading and a trailing one kept).
fn merge_slashes(path: &str) -> Option<String> {
    let (p, query) = split(path);
    if !p.contains("//") {
        return None;
    }
    let prefix = if p.starts_with('/') { "/" } else { "" };
    let suffix = if p.ends_with('/') { "/" } else { "" };
    let joined: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    Some(format!("{prefix}{}{suffix}{query}", joined.join("/")))
}

/// How the canonicalizer treats a byte of the path.
#[derive(Clone, Copy, PartialEq)]
enum Class {
    Pass,
    /// Escaped in the output.
    Escape,
    /// Decoded when it comes escaped.
    Unescape,
    /// Refused (NUL).
    Invalid,
}

fn class(b: u8) -> Class {
    match b {
        0 => Class::Invalid,
        1..=0x20 | b'"' | b'#' | b'%' | b'<' | b'>' | b'?' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}' | 0x7f.. => {
            Class::Escape
        }
        b'-' | b'.' | b'0'..=b'9' | b'A'..=b'Z' | b'_' | b'a'..=b'z' | b'~' => Class::Unescape,
        _ => Class::Pass,
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The escaped byte at `i` (`%XX`), if it is one.
fn escaped_at(p: &[u8], i: usize) -> Option<u8> {
    if p.get(i) != Some(&b'%') {
        return None;
    }
    Some(hex(*p.get(i + 1)?)? << 4 | hex(*p.get(i + 2)?)?)
}

/// The length of a dot at `i`: `.` (1) or `%2e` (3), else 0.
fn dot_at(p: &[u8], i: usize) -> usize {
    match p.get(i..) {
        Some([b'.', ..]) => 1,
        Some([b'%', b'2', b'e' | b'E', ..]) => 3,
        _ => 0,
    }
}

fn is_slash(b: Option<&u8>) -> bool {
    matches!(b, Some(b'/' | b'\\'))
}

fn push_escaped(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
}

/// Back to the slash before the last segment of `out` (which ends in one),
/// never above the first.
fn back_up(out: &mut Vec<u8>) {
    let mut i = out.len() - 1;
    if i == 0 {
        return;
    }
    i -= 1;
    while i > 0 && out[i] != b'/' {
        i -= 1;
    }
    out.truncate(i + 1);
}

/// The path part canonicalized (the query kept as it is); `None` when
/// Envoy refuses it.
pub fn normalize(path: &str) -> Option<String> {
    let (p, query) = split(path);
    let p = p.as_bytes();
    let mut out = Vec::with_capacity(p.len() + 1);
    if !is_slash(p.first()) {
        out.push(b'/');
    }
    let mut ok = true;
    let mut i = 0;
    while i < p.len() {
        let b = p[i];
        let dot = dot_at(p, i);
        if dot > 0 {
            i += dot;
            if out.last() != Some(&b'/') {
                out.push(b'.');
                continue;
            }
            // A segment of one dot, or two, ending at a slash or the end.
            let second = dot_at(p, i);
            if i == p.len() {
            } else if is_slash(p.get(i)) {
                i += 1;
            } else if second > 0 && (i + second == p.len() || is_slash(p.get(i + second))) {
                i += second + usize::from(i + second < p.len());
                back_up(&mut out);
            } else {
                out.push(b'.');
            }
            continue;
        }
        match b {
            b'\\' => out.push(b'/'),
            b'%' => match escaped_at(p, i) {
                Some(v) if class(v) == Class::Unescape => {
                    out.push(v);
                    i += 2;
                }
                Some(v) => {
                    out.extend_from_slice(&p[i..i + 3]);
                    ok &= class(v) != Class::Invalid;
                    i += 2;
                }
                None => out.push(b'%'),
            },
            _ => match class(b) {
                Class::Invalid => {
                    push_escaped(&mut out, b);
                    ok = false;
                }
                Class::Escape => push_escaped(&mut out, b),
                Class::Pass | Class::Unescape => out.push(b),
            },
        }
        i += 1;
    }
    if !ok || out.is_empty() {
        return None;
    }
    let mut s = String::from_utf8(out).ok()?;
    s.push_str(query);
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_as_chromium_does() {
        for (input, want) in [
            ("/a/./b/../c", "/a/c"),
            ("/a/%2e/b/%2E%2e/c?x=/../y", "/a/c?x=/../y"),
            ("/../../a", "/a"),
            ("/a/..", "/"),
            ("/a/.", "/a/"),
            ("/a\\b", "/a/b"),
            ("/%41%7e%2d", "/A~-"),
            ("/%2f%3A", "/%2f%3A"),
            ("/a b", "/a%20b"),
            ("/a..b/.c", "/a..b/.c"),
            ("/a//b", "/a//b"),
            ("/%zz", "/%zz"),
        ] {
            assert_eq!(normalize(input).as_deref(), Some(want), "{input}");
        }
        assert_eq!(normalize("/a%00b"), None);
    }

    #[test]
    fn escaped_slashes_then_normalization_then_merging() {
        let opts = |e, n, m| PathOptions { normalize: n, merge_slashes: m, escaped_slashes: e };
        let p = "/a%2Fb%5c..//c?q=%2F";
        assert_eq!(opts(EscapedSlashes::Keep, false, false).apply(p, false), PathAction::Continue(None));
        assert_eq!(opts(EscapedSlashes::Reject, false, false).apply(p, false), PathAction::Reject);
        assert_eq!(
            opts(EscapedSlashes::Reject, true, true).apply("/a//b", false),
            PathAction::Continue(Some("/a/b".into()))
        );
        let fwd = opts(EscapedSlashes::Forward, false, false).apply(p, false);
        assert_eq!(fwd, PathAction::Continue(Some("/a/b\\..//c?q=%2F".into())));
        let all = opts(EscapedSlashes::Redirect, true, true).apply(p, false);
        assert_eq!(all, PathAction::Redirect("/a/c?q=%2F".into()));
        assert_eq!(opts(EscapedSlashes::Redirect, true, true).apply(p, true), PathAction::Reject);
        assert_eq!(merge_slashes("//a///b//?x=//").as_deref(), Some("/a/b/?x=//"));
    }
}
