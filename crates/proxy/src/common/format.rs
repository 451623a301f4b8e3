//! Envoy's `%OPERATOR%` substitution language, for access logs and header values.
//!
//! A format string is parsed once per config into [`Format`] segments; rendering
//! walks the segments and reads from a [`Context`], appending to one `String`.

use crate::common::metadata::{Map, Path};
use http::HeaderMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// Everything an operator can read about one request.
#[derive(Default)]
pub struct Context<'a> {
    pub request: Option<&'a HeaderMap>,
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub protocol: &'a str,
    pub response: Option<&'a HeaderMap>,
    pub status: Option<u16>,
    pub response_flags: &'a str,
    pub response_code_details: &'a str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: Option<Duration>,
    pub start_time: Option<SystemTime>,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: &'a str,
    pub route_name: &'a str,
    pub downstream_remote: Option<SocketAddr>,
    pub downstream_local: Option<SocketAddr>,
    /// The upstream host's name (`Endpoint.hostname`, or the DNS name it
    /// was resolved from); empty when it has none.
    pub upstream_hostname: &'a str,
    /// A Unix socket upstream host's path (`upstream_host` is then a
    /// stand-in); empty for an IP host.
    pub upstream_pipe: &'a str,
    /// The upstream host's metadata (`LbEndpoint.metadata`), by namespace.
    pub upstream_metadata: Option<&'a Map>,
    /// The request's dynamic metadata, by namespace.
    pub dynamic_metadata: Option<&'a Map>,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Literal(String),
    StartTime(Option<String>),
    Req { main: String, alt: Option<String>, max: Option<usize> },
    Resp { main: String, alt: Option<String>, max: Option<usize> },
    Protocol,
    Method,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamRemoteAddress,
    RouteName,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    Hostname,
    UpstreamHostName,
    UpstreamMetadata(Path, Option<usize>),
    DynamicMetadata(Path, Option<usize>),
}

/// A parsed format string.
#[derive(Debug, Clone, PartialEq)]
pub struct Format {
    ops: Vec<Op>,
    /// In a header value a missing value is empty (and the header is then
    /// not added); in an access log it is `-`.
    header_value: bool,
}

/// What stands for a value that is not there.
fn missing(out: &mut String, header_value: bool) {
    if !header_value {
        out.push('-');
    }
}

/// Envoy's default access log format.
pub const DEFAULT_ACCESS_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

impl Format {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut ops = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            // `%%` is a literal percent sign.
            if let Some(stripped) = after.strip_prefix('%') {
                lit.push('%');
                rest = stripped;
                continue;
            }
            let Some(end) = find_op_end(after) else {
                lit.push('%');
                rest = after;
                continue;
            };
            let token = &after[..end];
            match parse_op(token)? {
                Some(op) => {
                    if !lit.is_empty() {
                        ops.push(Op::Literal(std::mem::take(&mut lit)));
                    }
                    ops.push(op);
                }
                None => {
                    lit.push('%');
                    lit.push_str(token);
                    lit.push('%');
                }
            }
            rest = &after[end + 1..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            ops.push(Op::Literal(lit));
        }
        Ok(Self { ops, header_value: false })
    }

    /// The same format, for a header value (missing values are empty).
    pub fn for_header(mut self) -> Self {
        self.header_value = true;
        self
    }

    /// True when the format has no operators (rendering is a copy).
    pub fn literal(&self) -> Option<&str> {
        match self.ops.as_slice() {
            [] => Some(""),
            [Op::Literal(s)] => Some(s),
            _ => None,
        }
    }

    pub fn render(&self, ctx: &Context<'_>, out: &mut String) {
        for op in &self.ops {
            render_op(op, ctx, out, self.header_value);
        }
    }

    /// A format that is one metadata operator alone: the value it finds
    /// (`Some(None)` when none), which a JSON log writes with its type.
    pub fn typed_value(&self, ctx: &Context<'_>) -> Option<Option<serde_json::Value>> {
        let (map, path) = match self.ops.as_slice() {
            [Op::UpstreamMetadata(p, None)] => (ctx.upstream_metadata, p),
            [Op::DynamicMetadata(p, None)] => (ctx.dynamic_metadata, p),
            _ => return None,
        };
        Some(map.and_then(|m| path.find(m)).filter(|v| !v.is_null()).cloned())
    }

    /// One operator and nothing else: a JSON log writes its value typed,
    /// null when missing; in any other string a missing value is `-`.
    pub fn single_op(&self) -> bool {
        matches!(self.ops.as_slice(), [op] if !matches!(op, Op::Literal(_)))
    }

    /// Renders with `-` for missing values whatever the format's mode.
    pub fn render_log(&self, ctx: &Context<'_>) -> String {
        let mut s = String::new();
        for op in &self.ops {
            render_op(op, ctx, &mut s, false);
        }
        s
    }

    pub fn render_string(&self, ctx: &Context<'_>) -> String {
        let mut s = String::new();
        self.render(ctx, &mut s);
        s
    }
}

/// The end of an operator: the next `%` that is not inside `(...)`.
fn find_op_end(s: &str) -> Option<usize> {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            '%' if depth <= 0 => return Some(i),
            ' ' | '"' | '\n' if depth <= 0 => return None,
            _ => {}
        }
    }
    None
}

fn parse_header_op(arg: &str, max: Option<usize>) -> (String, Option<String>, Option<usize>) {
    let (main, alt) = match arg.split_once('?') {
        Some((a, b)) => (a.to_ascii_lowercase(), Some(b.to_ascii_lowercase())),
        None => (arg.to_ascii_lowercase(), None),
    };
    (main, alt, max)
}

fn parse_op(token: &str) -> Result<Option<Op>, String> {
    let (name, arg, max) = match token.find('(') {
        Some(open) => {
            // The last `)` after the `(` (a `)` before it, as in `%A)B(C%`,
            // does not close it).
            let close =
                token[open..].rfind(')').map(|c| open + c).ok_or_else(|| format!("unterminated operator %{token}%"))?;
            let max = token[close + 1..].strip_prefix(':').and_then(|m| m.parse().ok());
            (&token[..open], Some(&token[open + 1..close]), max)
        }
        None => (token, None, None),
    };
    let op = match name {
        "START_TIME" => Op::StartTime(arg.filter(|a| !a.is_empty()).map(str::to_owned)),
        "REQ" => {
            let (main, alt, max) = parse_header_op(arg.unwrap_or(""), max);
            Op::Req { main, alt, max }
        }
        "RESP" => {
            let (main, alt, max) = parse_header_op(arg.unwrap_or(""), max);
            Op::Resp { main, alt, max }
        }
        "PROTOCOL" => Op::Protocol,
        "METHOD" => Op::Method,
        "RESPONSE_CODE" => Op::ResponseCode,
        "RESPONSE_FLAGS" => Op::ResponseFlags,
        "RESPONSE_CODE_DETAILS" => Op::ResponseCodeDetails,
        "BYTES_RECEIVED" => Op::BytesReceived,
        "BYTES_SENT" => Op::BytesSent,
        "DURATION" => Op::Duration,
        "UPSTREAM_HOST" => Op::UpstreamHost,
        "UPSTREAM_CLUSTER" => Op::UpstreamCluster,
        "UPSTREAM_REMOTE_ADDRESS" => Op::UpstreamRemoteAddress,
        "ROUTE_NAME" => Op::RouteName,
        "DOWNSTREAM_REMOTE_ADDRESS" => Op::DownstreamRemoteAddress,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => Op::DownstreamRemoteAddressWithoutPort,
        "DOWNSTREAM_LOCAL_ADDRESS" => Op::DownstreamLocalAddress,
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => Op::DownstreamLocalAddressWithoutPort,
        "HOSTNAME" => Op::Hostname,
        "UPSTREAM_HOST_NAME" => Op::UpstreamHostName,
        // As Envoy 1.40, which takes no length for this one.
        "UPSTREAM_METADATA" if max.is_some() => {
            return Err("UPSTREAM_METADATA does not allow length to be specified.".into());
        }
        "UPSTREAM_METADATA" => Op::UpstreamMetadata(Path::parse(arg.unwrap_or(""))?, max),
        "DYNAMIC_METADATA" => Op::DynamicMetadata(Path::parse(arg.unwrap_or(""))?, max),
        other if other.chars().all(|c| c.is_ascii_uppercase() || c == '_') && !other.is_empty() => {
            return Err(format!("Not supported field in StreamInfo: {other}"));
        }
        _ => return Ok(None),
    };
    Ok(Some(op))
}

fn header<'a>(map: Option<&'a HeaderMap>, ctx: &'a Context<'_>, name: &str) -> Option<&'a str> {
    match name {
        ":method" => Some(ctx.method),
        // A CONNECT has no path.
        ":path" => Some(ctx.path).filter(|s| !s.is_empty()),
        ":authority" => Some(ctx.authority).filter(|s| !s.is_empty()),
        ":status" => None,
        _ => map?.get(name).and_then(|v| v.to_str().ok()),
    }
}

fn push_opt(out: &mut String, v: Option<&str>, max: Option<usize>, hm: bool) {
    match v {
        Some(s) => match max {
            Some(m) if s.len() > m => out.push_str(&s[..floor_char_boundary(s, m)]),
            _ => out.push_str(s),
        },
        None => missing(out, hm),
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn render_op(op: &Op, ctx: &Context<'_>, out: &mut String, hm: bool) {
    match op {
        Op::Literal(s) => out.push_str(s),
        Op::StartTime(fmt) => match ctx.start_time {
            Some(t) => {
                let dt: chrono::DateTime<chrono::Utc> = t.into();
                match fmt {
                    None => {
                        let _ = write!(out, "{}", dt.format("%Y-%m-%dT%H:%M:%S%.3fZ"));
                    }
                    Some(f) => {
                        // chrono's strftime knows Envoy's %s and %f/%3f/%6f/%9f.
                        let _ = write!(out, "{}", dt.format(f));
                    }
                }
            }
            None => missing(out, hm),
        },
        Op::Req { main, alt, max } => {
            let v = header(ctx.request, ctx, main).or_else(|| alt.as_deref().and_then(|a| header(ctx.request, ctx, a)));
            push_opt(out, v, *max, hm)
        }
        Op::Resp { main, alt, max } => {
            let v =
                header(ctx.response, ctx, main).or_else(|| alt.as_deref().and_then(|a| header(ctx.response, ctx, a)));
            push_opt(out, v, *max, hm)
        }
        Op::Protocol => push_opt(out, Some(ctx.protocol).filter(|p| !p.is_empty()), None, hm),
        Op::Method => push_opt(out, Some(ctx.method).filter(|p| !p.is_empty()), None, hm),
        Op::ResponseCode => {
            let _ = write!(out, "{}", ctx.status.unwrap_or(0));
        }
        // No flags is a value of its own, `-`, in logs and JSON alike.
        Op::ResponseFlags => out.push_str(if ctx.response_flags.is_empty() { "-" } else { ctx.response_flags }),
        Op::ResponseCodeDetails => push_opt(out, Some(ctx.response_code_details).filter(|f| !f.is_empty()), None, hm),
        Op::BytesReceived => {
            let _ = write!(out, "{}", ctx.bytes_received);
        }
        Op::BytesSent => {
            let _ = write!(out, "{}", ctx.bytes_sent);
        }
        Op::Duration => match ctx.duration {
            Some(d) => {
                let _ = write!(out, "{}", d.as_millis());
            }
            None => missing(out, hm),
        },
        Op::UpstreamHost | Op::UpstreamRemoteAddress => match ctx.upstream_host {
            Some(_) if !ctx.upstream_pipe.is_empty() => out.push_str(ctx.upstream_pipe),
            Some(a) => {
                let _ = write!(out, "{a}");
            }
            None => missing(out, hm),
        },
        Op::UpstreamCluster => push_opt(out, Some(ctx.upstream_cluster).filter(|c| !c.is_empty()), None, hm),
        Op::RouteName => push_opt(out, Some(ctx.route_name).filter(|c| !c.is_empty()), None, hm),
        Op::DownstreamRemoteAddress => addr(out, ctx.downstream_remote, true, hm),
        Op::DownstreamRemoteAddressWithoutPort => addr(out, ctx.downstream_remote, false, hm),
        Op::DownstreamLocalAddress => addr(out, ctx.downstream_local, true, hm),
        Op::DownstreamLocalAddressWithoutPort => addr(out, ctx.downstream_local, false, hm),
        Op::Hostname => out.push_str(hostname()),
        Op::UpstreamHostName => match ctx.upstream_host {
            Some(_) if !ctx.upstream_hostname.is_empty() => out.push_str(ctx.upstream_hostname),
            Some(_) if !ctx.upstream_pipe.is_empty() => out.push_str(ctx.upstream_pipe),
            Some(a) => {
                let _ = write!(out, "{a}");
            }
            None => missing(out, hm),
        },
        Op::UpstreamMetadata(path, max) => {
            let v = ctx.upstream_metadata.and_then(|m| path.find(m)).and_then(crate::common::metadata::text);
            push_opt(out, v.as_deref(), *max, hm)
        }
        Op::DynamicMetadata(path, max) => {
            let v = ctx.dynamic_metadata.and_then(|m| path.find(m)).and_then(crate::common::metadata::text);
            push_opt(out, v.as_deref(), *max, hm)
        }
    }
}

fn addr(out: &mut String, a: Option<SocketAddr>, with_port: bool, hm: bool) {
    match a {
        Some(a) if with_port => {
            let _ = write!(out, "{a}");
        }
        Some(a) => {
            let _ = write!(out, "{}", a.ip());
        }
        None => missing(out, hm),
    }
}

/// The machine's host name, read once.
pub fn hostname() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| gethostname::gethostname().to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    /// Found by the fuzzer (`crates/proxy/tests/fuzz.rs`): a `)` before the
    /// `(` sliced the operator backwards and panicked while loading config.
    #[test]
    fn a_close_before_the_open_is_an_error_not_a_panic() {
        for bad in ["%RESP)A(%", "%REQ)x(%", "%START_TIME)(%", "a %)(% b"] {
            assert!(Format::parse(bad).is_err(), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn default_format_renders_dashes_for_missing_values() {
        let f = Format::parse(DEFAULT_ACCESS_LOG_FORMAT).unwrap();
        let mut h = HeaderMap::new();
        h.insert("user-agent", "curl/8".parse().unwrap());
        let ctx = Context {
            request: Some(&h),
            method: "GET",
            path: "/a",
            authority: "x",
            protocol: "HTTP/1.1",
            status: Some(200),
            ..Default::default()
        };
        let s = f.render_string(&ctx);
        assert!(s.starts_with("[-] \"GET /a HTTP/1.1\" 200 - 0 0 - - \"-\" \"curl/8\" \"-\" \"x\" \"-\"\n"), "{s}");
    }

    #[test]
    fn alternate_header_and_truncation() {
        let f = Format::parse("%REQ(X-A?X-B):3% %%").unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-b", "abcdef".parse().unwrap());
        let ctx = Context { request: Some(&h), ..Default::default() };
        assert_eq!(f.render_string(&ctx), "abc %");
    }

    #[test]
    fn unknown_operator_is_an_error() {
        assert!(Format::parse("%NOT_AN_OPERATOR%").is_err());
        assert_eq!(Format::parse("100% sure").unwrap().literal(), Some("100% sure"));
    }
}
