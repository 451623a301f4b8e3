//! Access log filters (`AccessLog.filter`): which streams a logger writes,
//! as Envoy decides it from the finished stream: its response code, its
//! duration, its response flags, a request header, and `and`/`or` of those.
//! A comparison's value is read from the runtime under its `runtime_key`
//! when a layer sets it.

use crate::common::format::Context;
use crate::common::matcher::{HeaderMatch, Pseudo};
use crate::common::runtime::RuntimeU32;
use legate_api::pb::envoy::config::accesslog::v3::{
    access_log_filter::FilterSpecifier, comparison_filter::Op, AccessLogFilter, ComparisonFilter,
};

pub enum Filter {
    /// The response code (0 without one) compared to a value.
    Status(Op, RuntimeU32),
    /// The duration in milliseconds compared to a value.
    Duration(Op, RuntimeU32),
    /// Any of these flags (any flag at all when empty).
    Flags(Vec<String>),
    Header(HeaderMatch),
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

fn comparison(c: Option<&ComparisonFilter>, what: &str) -> Result<(Op, RuntimeU32), String> {
    let c = c.ok_or_else(|| format!("{what}.comparison is required"))?;
    let op = Op::try_from(c.op).map_err(|_| format!("{what}.comparison.op: unknown operator"))?;
    Ok((op, RuntimeU32::uint(c.value.as_ref())))
}

impl Filter {
    pub fn compile(f: &AccessLogFilter) -> Result<Self, String> {
        Ok(match f.filter_specifier.as_ref().ok_or("a filter is required")? {
            FilterSpecifier::StatusCodeFilter(s) => {
                let (op, v) = comparison(s.comparison.as_ref(), "status_code_filter")?;
                Filter::Status(op, v)
            }
            FilterSpecifier::DurationFilter(d) => {
                let (op, v) = comparison(d.comparison.as_ref(), "duration_filter")?;
                Filter::Duration(op, v)
            }
            // The flags' names were checked with the schema's rules.
            FilterSpecifier::ResponseFlagFilter(r) => Filter::Flags(r.flags.clone()),
            FilterSpecifier::HeaderFilter(h) => {
                let m = h.header.as_ref().ok_or("header_filter.header is required")?;
                Filter::Header(HeaderMatch::new(m).map_err(|e| format!("header_filter.header: {e}"))?)
            }
            FilterSpecifier::AndFilter(a) => Filter::And(all(&a.filters, "and_filter")?),
            FilterSpecifier::OrFilter(o) => Filter::Or(all(&o.filters, "or_filter")?),
            _ => return Err("this access log filter is not supported".into()),
        })
    }

    /// Whether the finished stream `ctx` is logged.
    pub fn passes(&self, ctx: &Context<'_>) -> bool {
        match self {
            Filter::Status(op, v) => compare(*op, u64::from(ctx.status.unwrap_or(0)), u64::from(v.value())),
            Filter::Duration(op, v) => match ctx.duration {
                Some(d) => compare(*op, d.as_millis() as u64, u64::from(v.value())),
                None => false,
            },
            Filter::Flags(wanted) => {
                let set = ctx.response_flags.split(',').filter(|f| !f.is_empty() && *f != "-");
                if wanted.is_empty() {
                    set.count() > 0
                } else {
                    set.into_iter().any(|f| wanted.iter().any(|w| w == f))
                }
            }
            Filter::Header(m) => {
                let empty = http::HeaderMap::new();
                let pseudo = Pseudo { method: ctx.method, path: ctx.path, authority: ctx.authority, scheme: "" };
                m.matches(ctx.request.unwrap_or(&empty), &pseudo)
            }
            Filter::And(fs) => fs.iter().all(|f| f.passes(ctx)),
            Filter::Or(fs) => fs.iter().any(|f| f.passes(ctx)),
        }
    }
}

fn all(filters: &[AccessLogFilter], what: &str) -> Result<Vec<Filter>, String> {
    filters
        .iter()
        .enumerate()
        .map(|(i, f)| Filter::compile(f).map_err(|e| format!("{what}.filters[{i}].{e}")))
        .collect()
}

fn compare(op: Op, have: u64, value: u64) -> bool {
    match op {
        Op::Eq => have == value,
        Op::Ge => have >= value,
        Op::Le => have <= value,
        Op::Ne => have != value,
    }
}
