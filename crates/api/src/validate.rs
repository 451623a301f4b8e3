//! Envoy's protoc-gen-validate rules, read from the descriptors at run time.
//!
//! Envoy's API carries its constraints as `(validate.rules)` field options,
//! `(validate.required)` oneof options and `(validate.disabled)` message options.
//! Interpreting them generically means every message, extensions included, is
//! checked by the same rules Envoy's generated validators apply, with messages in
//! the words protoc-gen-validate uses.

use crate::error::FieldError;
use crate::lenient::join;
use crate::walk::walk;
use prost_reflect::{DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, ReflectMessage, Value};

struct Extensions {
    field_rules: Option<ExtensionDescriptor>,
    oneof_required: Option<ExtensionDescriptor>,
    message_disabled: Option<ExtensionDescriptor>,
    message_ignored: Option<ExtensionDescriptor>,
}

impl Extensions {
    /// The rule extensions in the pool `msg` was read through (the pool is not
    /// kept between readings: see [`crate::pool`]).
    fn of(msg: &DynamicMessage) -> Self {
        let desc = msg.descriptor();
        let pool = desc.parent_pool();
        Extensions {
            field_rules: pool.get_extension_by_name("validate.rules"),
            oneof_required: pool.get_extension_by_name("validate.required"),
            message_disabled: pool.get_extension_by_name("validate.disabled"),
            message_ignored: pool.get_extension_by_name("validate.ignored"),
        }
    }
}

/// Every rule violation in `msg` and below, with field paths.
pub fn validate(msg: &DynamicMessage, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let ext = Extensions::of(msg);
    walk(msg, path, &mut |m, p| validate_message(m, p, &ext, &mut errors));
    errors
}

fn option_true(options: &DynamicMessage, ext: &Option<ExtensionDescriptor>) -> bool {
    match ext {
        Some(ext) if options.has_extension(ext) => options.get_extension(ext).as_bool().unwrap_or(false),
        _ => false,
    }
}

fn validate_message(msg: &DynamicMessage, path: &str, ext: &Extensions, errors: &mut Vec<FieldError>) {
    let desc = msg.descriptor();
    let opts = desc.options();
    if option_true(&opts, &ext.message_disabled) || option_true(&opts, &ext.message_ignored) {
        return;
    }
    for oneof in desc.oneofs() {
        if oneof.is_synthetic() {
            continue;
        }
        if option_true(&oneof.options(), &ext.oneof_required) && !oneof.fields().any(|f| msg.has_field(&f)) {
            errors.push(FieldError::new(join(path, oneof.name()), "value is required"));
        }
    }
    let Some(rules_ext) = &ext.field_rules else { return };
    for field in desc.fields() {
        let options = field.options();
        if !options.has_extension(rules_ext) {
            continue;
        }
        let rules = options.get_extension(rules_ext);
        let Some(rules) = rules.as_message() else { continue };
        check_field(msg, &field, rules, &join(path, field.name()), errors);
    }
}

fn sub<'a>(rules: &'a DynamicMessage, name: &str) -> Option<&'a DynamicMessage> {
    let field = rules.descriptor().get_field_by_name(name)?;
    if !rules.has_field(&field) {
        return None;
    }
    match rules.get_field(&field) {
        std::borrow::Cow::Borrowed(Value::Message(m)) => Some(m),
        _ => None,
    }
}

fn rule(rules: &DynamicMessage, name: &str) -> Option<Value> {
    let field = rules.descriptor().get_field_by_name(name)?;
    rules.has_field(&field).then(|| rules.get_field(&field).into_owned())
}

fn rule_bool(rules: &DynamicMessage, name: &str) -> bool {
    rule(rules, name).and_then(|v| v.as_bool()).unwrap_or(false)
}

fn check_field(
    msg: &DynamicMessage,
    field: &FieldDescriptor,
    rules: &DynamicMessage,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let set = msg.has_field(field);
    // A rule on a oneof member applies only when that member is set.
    if field.containing_oneof().is_some_and(|o| !o.is_synthetic()) && !set {
        return;
    }
    if let Some(m) = sub(rules, "message") {
        if rule_bool(m, "required") && !set {
            errors.push(FieldError::new(path, "value is required"));
            return;
        }
        if rule_bool(m, "skip") {
            return;
        }
    }
    let value = msg.get_field(field);
    if field.is_map() {
        if let Some(r) = sub(rules, "map") {
            let n = value.as_map().map_or(0, |m| m.len()) as u64;
            if let Some(min) = rule(r, "min_pairs").and_then(|v| v.as_u64()) {
                if n < min {
                    errors.push(FieldError::new(path, format!("value must contain at least {min} pair(s)")));
                }
            }
        }
        return;
    }
    if field.is_list() {
        let Some(r) = sub(rules, "repeated") else { return };
        let items = value.as_list().unwrap_or(&[]);
        if let Some(min) = rule(r, "min_items").and_then(|v| v.as_u64()) {
            if (items.len() as u64) < min {
                errors.push(FieldError::new(path, format!("value must contain at least {min} item(s)")));
            }
        }
        if let Some(max) = rule(r, "max_items").and_then(|v| v.as_u64()) {
            if (items.len() as u64) > max {
                errors.push(FieldError::new(path, format!("value must contain no more than {max} item(s)")));
            }
        }
        if let Some(item_rules) = sub(r, "items") {
            for (i, item) in items.iter().enumerate() {
                check_value(item, &field.kind(), item_rules, &format!("{path}[{i}]"), errors);
            }
        }
        return;
    }
    for name in ["duration", "any", "timestamp"] {
        if let Some(r) = sub(rules, name) {
            if rule_bool(r, "required") && !set {
                errors.push(FieldError::new(path, "value is required"));
                return;
            }
        }
    }
    if matches!(field.kind(), Kind::Message(_)) && !set {
        return;
    }
    check_value(&value, &field.kind(), rules, path, errors);
}

/// Checks one value (a singular field or a list item) against type rules.
fn check_value(value: &Value, kind: &Kind, rules: &DynamicMessage, path: &str, errors: &mut Vec<FieldError>) {
    if let (Value::Message(m), Kind::Message(desc)) = (value, kind) {
        match desc.full_name() {
            "google.protobuf.Duration" => {
                if let Some(r) = sub(rules, "duration") {
                    check_duration(m, r, path, errors);
                }
            }
            name if name.starts_with("google.protobuf.") && name.ends_with("Value") => {
                if let Some(inner) = m.get_field_by_name("value") {
                    let inner_kind = desc.get_field_by_name("value").map(|f| f.kind()).unwrap_or(Kind::Bool);
                    check_value(&inner, &inner_kind, rules, path, errors);
                }
            }
            _ => {}
        }
        return;
    }
    for (rule_field, rule_value) in rules.fields() {
        let Value::Message(r) = rule_value else { continue };
        match rule_field.name() {
            "string" => check_string(value.as_str().unwrap_or(""), r, path, errors),
            "bytes" => {
                let len = value.as_bytes().map_or(0, |b| b.len()) as u64;
                if let Some(min) = rule(r, "min_len").and_then(|v| v.as_u64()) {
                    if len < min {
                        errors.push(FieldError::new(path, format!("value length must be at least {min} bytes")));
                    }
                }
            }
            "enum" if rule_bool(r, "defined_only") => {
                if let (Some(n), Kind::Enum(e)) = (value.as_enum_number(), kind) {
                    if e.get_value(n).is_none() {
                        errors.push(FieldError::new(path, "value must be one of the defined enum values"));
                    }
                }
            }
            "float" | "double" | "int32" | "int64" | "uint32" | "uint64" | "sint32" | "sint64" | "fixed32"
            | "fixed64" | "sfixed32" | "sfixed64" => {
                if let Some(x) = as_f64(value) {
                    check_number(x, r, path, errors);
                }
            }
            _ => {}
        }
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    Some(match v {
        Value::I32(x) => *x as f64,
        Value::I64(x) => *x as f64,
        Value::U32(x) => *x as f64,
        Value::U64(x) => *x as f64,
        Value::F32(x) => *x as f64,
        Value::F64(x) => *x,
        _ => return None,
    })
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// PGV's wording for range rules: `greater than`, `less than or equal to`,
/// `inside range [a, b)` and so on.
fn range_message(gt: Option<String>, gte: Option<String>, lt: Option<String>, lte: Option<String>) -> String {
    let low = gt.as_ref().map(|v| ('(', v)).or(gte.as_ref().map(|v| ('[', v)));
    let high = lt.as_ref().map(|v| (')', v)).or(lte.as_ref().map(|v| (']', v)));
    match (low, high) {
        (Some((lb, lo)), Some((hb, hi))) => format!("value must be inside range {lb}{lo}, {hi}{hb}"),
        (Some(('(', lo)), None) => format!("value must be greater than {lo}"),
        (Some((_, lo)), None) => format!("value must be greater than or equal to {lo}"),
        (None, Some((')', hi))) => format!("value must be less than {hi}"),
        (None, Some((_, hi))) => format!("value must be less than or equal to {hi}"),
        (None, None) => String::new(),
    }
}

/// The `gt`, `gte`, `lt` and `lte` rules (as `bound` reads them) against
/// `x`; a value out of range is reported with the bounds as `show` writes them.
fn check_range<T: PartialOrd + Copy>(
    x: T,
    bound: impl Fn(&str) -> Option<T>,
    show: fn(T) -> String,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let (gt, gte, lt, lte) = (bound("gt"), bound("gte"), bound("lt"), bound("lte"));
    let ok = gt.is_none_or(|v| x > v)
        && gte.is_none_or(|v| x >= v)
        && lt.is_none_or(|v| x < v)
        && lte.is_none_or(|v| x <= v);
    if !ok {
        errors.push(FieldError::new(path, range_message(gt.map(show), gte.map(show), lt.map(show), lte.map(show))));
    }
}

fn check_number(x: f64, r: &DynamicMessage, path: &str, errors: &mut Vec<FieldError>) {
    let get = |n: &str| rule(r, n).as_ref().and_then(as_f64);
    if let Some(c) = get("const") {
        if x != c {
            errors.push(FieldError::new(path, format!("value must equal {}", fmt_num(c))));
        }
        return;
    }
    check_range(x, get, fmt_num, path, errors);
    if let Some(Value::List(list)) = rule(r, "in") {
        if !list.is_empty() && !list.iter().filter_map(as_f64).any(|v| v == x) {
            errors.push(FieldError::new(path, "value must be in list"));
        }
    }
}

fn duration_nanos(m: &DynamicMessage) -> i128 {
    let s = m.get_field_by_name("seconds").and_then(|v| v.as_i64()).unwrap_or(0) as i128;
    let n = m.get_field_by_name("nanos").and_then(|v| v.as_i32()).unwrap_or(0) as i128;
    s * 1_000_000_000 + n
}

fn fmt_duration(nanos: i128) -> String {
    if nanos % 1_000_000_000 == 0 {
        format!("{}s", nanos / 1_000_000_000)
    } else {
        format!("{}s", nanos as f64 / 1e9)
    }
}

fn check_duration(d: &DynamicMessage, r: &DynamicMessage, path: &str, errors: &mut Vec<FieldError>) {
    let x = duration_nanos(d);
    let get = |n: &str| match rule(r, n) {
        Some(Value::Message(m)) => Some(duration_nanos(&m)),
        _ => None,
    };
    check_range(x, get, fmt_duration, path, errors);
    if x < 0 || d.get_field_by_name("nanos").and_then(|v| v.as_i32()).is_some_and(|n| n.abs() >= 1_000_000_000) {
        errors.push(FieldError::new(path, "invalid duration"));
    }
}

fn check_string(s: &str, r: &DynamicMessage, path: &str, errors: &mut Vec<FieldError>) {
    if s.is_empty() && rule_bool(r, "ignore_empty") {
        return;
    }
    let chars = s.chars().count() as u64;
    let get = |n: &str| rule(r, n).and_then(|v| v.as_u64());
    if let Some(min) = get("min_len") {
        if chars < min {
            errors.push(FieldError::new(path, format!("value length must be at least {min} characters")));
        }
    }
    if let Some(max) = get("max_len") {
        if chars > max {
            errors.push(FieldError::new(path, format!("value length must be at most {max} characters")));
        }
    }
    if let Some(min) = get("min_bytes") {
        if (s.len() as u64) < min {
            errors.push(FieldError::new(path, format!("value length must be at least {min} bytes")));
        }
    }
    if let Some(max) = get("max_bytes") {
        if (s.len() as u64) > max {
            errors.push(FieldError::new(path, format!("value length must be at most {max} bytes")));
        }
    }
    if let Some(prefix) = rule(r, "prefix").and_then(|v| v.as_str().map(str::to_owned)) {
        if !s.starts_with(&prefix) {
            errors.push(FieldError::new(path, format!("value does not have prefix \"{prefix}\"")));
        }
    }
    // well_known_regex HTTP_HEADER_NAME / HTTP_HEADER_VALUE: reject what can never
    // be sent on the wire (NUL, CR, LF), as Envoy's non-strict mode does.
    if rule(r, "well_known_regex").is_some() && s.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n') {
        errors.push(FieldError::new(path, "value does not match regex pattern"));
    }
    // PGV patterns are RE2, matched unanchored.
    if let Some(pattern) = rule(r, "pattern").and_then(|v| v.as_str().map(str::to_owned)) {
        if regex::Regex::new(&pattern).is_ok_and(|re| !re.is_match(s)) {
            errors.push(FieldError::new(path, format!("value does not match regex pattern \"{pattern}\"")));
        }
    }
}
