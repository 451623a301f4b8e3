//! Errors of loading and validating configuration: always a field path and a reason.

use std::fmt;

/// One problem at one place in a config: `static_resources.clusters[0].connect_timeout: reason`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { path: path.into(), reason: reason.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The text is not YAML/JSON at all.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// The document does not match Envoy's schema or its rules.
    #[error("invalid configuration:\n{}", join(.0))]
    Invalid(Vec<FieldError>),
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn join(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")
}

/// The verdict of a full check: problems that make the config invalid for Envoy,
/// and fields that are valid but that Legate does not implement yet.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub errors: Vec<FieldError>,
    pub unsupported: Vec<FieldError>,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }
}
