//! Envoy's v3 API for Legate.
//!
//! - [`pb`]: the typed structs (from the `envoy-types` crate).
//! - [`pool`]: a descriptor pool built from the very same `.proto` files, used to
//!   read Envoy's proto3 JSON/YAML form and to read validation rules at run time.
//! - [`load`]: YAML/JSON text to a typed [`pb::envoy::config::bootstrap::v3::Bootstrap`],
//!   with Envoy's leniencies and every error reported as `field.path: reason`.
//! - [`validate`]: the protoc-gen-validate rules Envoy enforces, interpreted from
//!   the descriptors, plus Envoy's semantic checks.
//! - [`support`]: what Legate implements, so that nothing is silently ignored.

pub mod any;
pub mod duration;
pub mod error;
pub mod lenient;
pub mod load;
pub mod pool;
pub mod semantic;
pub mod support;
pub mod validate;
mod walk;

pub use envoy_types::pb;
pub use error::{FieldError, LoadError, Report};
