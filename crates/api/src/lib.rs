//! Envoy's v3 API for Legate.
//!
//! - [`pb`]: the typed structs (from the `envoy-types` crate).
//! - [`pool`]: a descriptor pool built from the very same `.proto` files, used to
//!   read Envoy's proto3 JSON/YAML form and to read validation rules at run time.
//! - [`convert`]: JSON to reflective and typed messages and back, with Envoy's
//!   leniencies and every error reported as `field.path: reason`.
//! - [`load`]: YAML/JSON text to a typed [`pb::envoy::config::bootstrap::v3::Bootstrap`],
//!   checked by schema, validation rules and [`semantic`] checks.
//! - [`validate`]: the protoc-gen-validate rules Envoy enforces, interpreted from
//!   the descriptors; [`semantic`]: Envoy's checks beyond the schema.
//! - [`support`]: what Legate implements, so that nothing is silently ignored.

// The project keeps functions under about 100 lines (threshold in clippy.toml).
#![warn(clippy::too_many_lines)]

pub mod any;
pub mod convert;
pub mod duration;
pub mod error;
pub mod legate;
pub mod lenient;
pub mod load;
pub mod pool;
pub mod semantic;
pub mod support;
pub mod support_tracing;
pub mod validate;
pub mod walk;

pub use envoy_types::pb;
pub use error::{FieldError, LoadError, Report};
