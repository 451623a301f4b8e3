//! What Legate implements, field by field. Placeholder filled in below.
use crate::error::FieldError;
use prost_reflect::DynamicMessage;
pub fn unsupported(_m: &DynamicMessage) -> Vec<FieldError> { Vec::new() }
