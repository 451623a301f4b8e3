//! Envoy's `DataSource`: inline bytes or string, or a file read at config time.

use bytes::Bytes;
use legate_api::pb::envoy::config::core::v3::{data_source::Specifier, DataSource};

pub fn read(ds: &DataSource) -> Result<Bytes, String> {
    match &ds.specifier {
        Some(Specifier::InlineString(s)) => Ok(Bytes::from(s.clone())),
        Some(Specifier::InlineBytes(b)) => Ok(Bytes::from(b.clone())),
        Some(Specifier::Filename(f)) => {
            std::fs::read(f).map(Bytes::from).map_err(|e| format!("Invalid path: {f}: {e}"))
        }
        Some(Specifier::EnvironmentVariable(v)) => {
            std::env::var(v).map(Bytes::from).map_err(|_| format!("Environment variable doesn't exist: {v}"))
        }
        None => Ok(Bytes::new()),
    }
}
