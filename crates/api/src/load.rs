//! Envoy config text (YAML or JSON) to a validated bootstrap, and the full
//! verdict on one (invalid fields, and fields Legate does not implement).

use crate::error::{FieldError, LoadError, Report};
use crate::pb::envoy::config::bootstrap::v3::Bootstrap;
use crate::{semantic, support};
use prost_reflect::DynamicMessage;
use serde_json::Value;

/// The conversions between JSON, reflective and typed messages, where their
/// callers have always found them.
pub use crate::convert::{decode, decode_typed, to_dynamic, to_json};

/// A bootstrap that decoded and passed validation, with its reflective form kept
/// for the support check and `/config_dump`.
pub struct LoadedBootstrap {
    pub bootstrap: Bootstrap,
    pub dynamic: DynamicMessage,
}

/// Parses YAML or JSON text (JSON is YAML) into a JSON value.
pub fn parse_text(text: &str) -> Result<Value, LoadError> {
    serde_yaml_ng::from_str::<Value>(text).map_err(|e| LoadError::Syntax(e.to_string()))
}

/// Loads a bootstrap from text: schema, validation rules and Envoy's semantic checks.
pub fn load_bootstrap(text: &str) -> Result<LoadedBootstrap, LoadError> {
    let value = parse_text(text)?;
    let (bootstrap, dynamic) = decode_typed::<Bootstrap>(value).map_err(LoadError::Invalid)?;
    let errors = semantic::check_bootstrap(&bootstrap);
    if !errors.is_empty() {
        return Err(LoadError::Invalid(errors));
    }
    Ok(LoadedBootstrap { bootstrap, dynamic })
}

/// Loads a bootstrap from a file; `.json`, `.yaml` and `.yml` are all read as YAML.
pub fn load_bootstrap_file(path: &str) -> Result<LoadedBootstrap, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.into(), source })?;
    load_bootstrap(&text)
}

/// The full verdict on a bootstrap: what makes it invalid, and what in it Legate
/// does not implement yet.
pub fn check_bootstrap(text: &str) -> Report {
    match load_bootstrap(text) {
        Ok(loaded) => Report { errors: Vec::new(), unsupported: support::unsupported(&loaded.dynamic) },
        Err(LoadError::Invalid(errors)) => Report { errors, unsupported: Vec::new() },
        Err(other) => Report { errors: vec![FieldError::new("", other.to_string())], unsupported: Vec::new() },
    }
}
