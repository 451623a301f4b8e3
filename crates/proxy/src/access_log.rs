//! Access loggers: `envoy.access_loggers.file` and `envoy.access_loggers.stdout`
//! / `stderr`, with Envoy's default format, `text_format_source` and `json_format`.

mod filter;

use crate::common::format::{Context, Format, DEFAULT_ACCESS_LOG_FORMAT};
use legate_api::pb::envoy::config::accesslog::v3::{access_log::ConfigType, AccessLog};
use legate_api::pb::envoy::config::core::v3::{substitution_format_string, SubstitutionFormatString};
use legate_api::pb::envoy::extensions::access_loggers::file::v3::{file_access_log::AccessLogFormat, FileAccessLog};
use legate_api::pb::envoy::extensions::access_loggers::stream::v3::{
    stderr_access_log, stdout_access_log, StderrAccessLog, StdoutAccessLog,
};
use std::io::Write;
use std::sync::{Arc, Mutex};

enum Line {
    Text(Format),
    /// Keys in the order written, each with its own format.
    Json(Vec<(String, JsonValue)>),
}

enum JsonValue {
    Text(Format),
    Nested(Vec<(String, JsonValue)>),
}

/// One configured access logger.
pub struct AccessLogger {
    line: Line,
    sink: Arc<Sink>,
    /// `filter`: the streams this logger writes (all without one).
    filter: Option<filter::Filter>,
}

/// Where lines go. Buffered; flushed every second by [`flush_all`] (Envoy's
/// default `file_flush_interval`), and on shutdown.
pub struct Sink {
    out: Mutex<std::io::BufWriter<Box<dyn Write + Send>>>,
}

static SINKS: Mutex<Vec<std::sync::Weak<Sink>>> = Mutex::new(Vec::new());

fn sink(w: Box<dyn Write + Send>) -> Arc<Sink> {
    let s = Arc::new(Sink { out: Mutex::new(std::io::BufWriter::with_capacity(64 * 1024, w)) });
    SINKS.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&s));
    s
}

/// Flushes every live access log sink.
pub fn flush_all() {
    let mut sinks = SINKS.lock().unwrap_or_else(|e| e.into_inner());
    sinks.retain(|w| match w.upgrade() {
        Some(s) => {
            let _ = s.out.lock().unwrap_or_else(|e| e.into_inner()).flush();
            true
        }
        None => false,
    });
}

fn file_sink(path: &str) -> Result<Arc<Sink>, String> {
    static FILES: Mutex<Vec<(String, std::sync::Weak<Sink>)>> = Mutex::new(Vec::new());
    let mut files = FILES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = files.iter().find(|(p, _)| p == path).and_then(|(_, w)| w.upgrade()) {
        return Ok(s);
    }
    let s = match path {
        "/dev/stdout" => sink(Box::new(std::io::stdout())),
        "/dev/stderr" => sink(Box::new(std::io::stderr())),
        _ => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("unable to open file '{path}': {e}"))?;
            sink(Box::new(f))
        }
    };
    files.push((path.to_string(), Arc::downgrade(&s)));
    Ok(s)
}

#[allow(deprecated)] // Envoy still accepts this deprecated field, so Legate reads it.
fn compile_format(f: Option<&SubstitutionFormatString>) -> Result<Line, String> {
    let Some(f) = f else { return Ok(Line::Text(Format::parse(DEFAULT_ACCESS_LOG_FORMAT)?)) };
    if !f.formatters.is_empty() {
        return Err("log_format.formatters: formatter extensions are not supported".into());
    }
    match &f.format {
        Some(substitution_format_string::Format::TextFormat(t)) => Ok(Line::Text(Format::parse(t)?)),
        Some(substitution_format_string::Format::TextFormatSource(ds)) => {
            let text = crate::common::datasource::read(ds)?;
            Ok(Line::Text(Format::parse(&String::from_utf8_lossy(&text))?))
        }
        Some(substitution_format_string::Format::JsonFormat(s)) => Ok(Line::Json(compile_struct(s)?)),
        None => Ok(Line::Text(Format::parse(DEFAULT_ACCESS_LOG_FORMAT)?)),
    }
}

fn compile_struct(s: &legate_api::pb::google::protobuf::Struct) -> Result<Vec<(String, JsonValue)>, String> {
    use legate_api::pb::google::protobuf::value::Kind;
    let mut keys: Vec<_> = s.fields.iter().collect();
    // Envoy writes JSON logs with keys sorted.
    keys.sort_by(|a, b| a.0.cmp(b.0));
    keys.into_iter()
        .map(|(k, v)| {
            let value = match &v.kind {
                Some(Kind::StringValue(t)) => JsonValue::Text(Format::parse(t)?.for_header()),
                Some(Kind::StructValue(inner)) => JsonValue::Nested(compile_struct(inner)?),
                Some(Kind::NumberValue(n)) => JsonValue::Text(Format::parse(&n.to_string())?),
                Some(Kind::BoolValue(b)) => JsonValue::Text(Format::parse(&b.to_string())?),
                _ => {
                    return Err(format!(
                        "json_format.{k}: only strings, numbers, bools and nested objects are supported"
                    ))
                }
            };
            Ok((k.clone(), value))
        })
        .collect()
}

impl AccessLogger {
    #[allow(deprecated)] // Envoy still accepts this deprecated field, so Legate reads it.
    pub fn compile(a: &AccessLog) -> Result<Self, String> {
        let filter = match &a.filter {
            Some(f) => Some(filter::Filter::compile(f).map_err(|e| format!("filter.{e}"))?),
            None => None,
        };
        let Some(ConfigType::TypedConfig(any)) = &a.config_type else {
            return Err("typed_config is required".into());
        };
        let ty = legate_api::any::type_name(any);
        let (line, sink) = match ty {
            "envoy.extensions.access_loggers.file.v3.FileAccessLog" => {
                let c: FileAccessLog = legate_api::any::unpack(any)?;
                let line = match &c.access_log_format {
                    Some(AccessLogFormat::LogFormat(f)) => compile_format(Some(f))?,
                    Some(AccessLogFormat::Format(t)) => Line::Text(Format::parse(t)?),
                    Some(AccessLogFormat::JsonFormat(s)) => Line::Json(compile_struct(s)?),
                    Some(_) => return Err("typed_json_format is not supported".into()),
                    None => compile_format(None)?,
                };
                (line, file_sink(&c.path)?)
            }
            "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog" => {
                let c: StdoutAccessLog = legate_api::any::unpack(any)?;
                let f = c.access_log_format.as_ref().map(|stdout_access_log::AccessLogFormat::LogFormat(f)| f);
                (compile_format(f)?, file_sink("/dev/stdout")?)
            }
            "envoy.extensions.access_loggers.stream.v3.StderrAccessLog" => {
                let c: StderrAccessLog = legate_api::any::unpack(any)?;
                let f = c.access_log_format.as_ref().map(|stderr_access_log::AccessLogFormat::LogFormat(f)| f);
                (compile_format(f)?, file_sink("/dev/stderr")?)
            }
            other => return Err(format!("access logger {other} is not supported")),
        };
        Ok(Self { line, sink, filter })
    }

    /// A file logger in Envoy's default format, as `admin.access_log_path` makes.
    pub fn file_with_default_format(path: &str) -> Result<Self, String> {
        Ok(Self { line: compile_format(None)?, sink: file_sink(path)?, filter: None })
    }

    pub fn log(&self, ctx: &Context<'_>) {
        if self.filter.as_ref().is_some_and(|f| !f.passes(ctx)) {
            return;
        }
        let mut s = String::with_capacity(256);
        match &self.line {
            Line::Text(f) => f.render(ctx, &mut s),
            Line::Json(fields) => {
                render_json(fields, ctx, &mut s);
                s.push('\n');
            }
        }
        let mut out = self.sink.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = out.write_all(s.as_bytes());
    }
}

fn render_json(fields: &[(String, JsonValue)], ctx: &Context<'_>, s: &mut String) {
    s.push('{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&serde_json::to_string(k).unwrap_or_default());
        s.push(':');
        match v {
            // A metadata operator alone keeps its value's type.
            JsonValue::Text(f) => match f.typed_value(ctx) {
                Some(Some(v)) => crate::common::metadata::write_json(&v, s),
                Some(None) => s.push_str("null"),
                None => text_json(f, ctx, s),
            },
            JsonValue::Nested(inner) => render_json(inner, ctx, s),
        }
    }
    s.push('}');
}

/// A text value in a JSON log. An operator alone renders empty when its
/// value is missing, which Envoy writes as null, and a number operator is
/// written as a JSON number; in a longer string a missing value is `-`.
fn text_json(f: &Format, ctx: &Context<'_>, s: &mut String) {
    if !f.single_op() {
        let text = if f.literal().is_some() { f.render_string(ctx) } else { f.render_log(ctx) };
        s.push_str(&serde_json::to_string(&text).unwrap_or_default());
        return;
    }
    let text = f.render_string(ctx);
    if text.is_empty() {
        s.push_str("null");
    } else if text.parse::<f64>().is_ok() && !text.starts_with('+') {
        s.push_str(&text);
    } else {
        s.push_str(&serde_json::to_string(&text).unwrap_or_default());
    }
}
