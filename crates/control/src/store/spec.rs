//! Where the state lives, as the command line names it: a SQLite folder or
//! etcd endpoints.

use crate::store::records::StoreError;
use std::path::PathBuf;

/// Where the state lives, as given on the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreSpec {
    /// A SQLite file in this folder.
    Sqlite(PathBuf),
    /// These etcd endpoints (host:port), tried in turn.
    Etcd(Vec<String>),
    /// These etcd endpoints over TLS (`etcds://`).
    EtcdTls(Vec<String>),
}

/// `host:port[,host:port...]` after `etcd://` or `etcds://`.
fn endpoints(scheme: &str, rest: &str) -> Result<Vec<String>, StoreError> {
    let endpoints: Vec<String> =
        rest.trim_end_matches('/').split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect();
    if endpoints.is_empty() {
        return Err(StoreError::Spec(format!("{scheme}:// needs at least one host:port")));
    }
    for e in &endpoints {
        let ok = e.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(StoreError::Spec(format!("'{e}' is not host:port")));
        }
    }
    Ok(endpoints)
}

impl StoreSpec {
    /// `etcd://host:port[,host:port...]`, `etcds://...` (over TLS) or
    /// `sqlite:DIR` (`sqlite://DIR`).
    pub fn parse(s: &str) -> Result<StoreSpec, StoreError> {
        if let Some(rest) = s.strip_prefix("etcd://") {
            return Ok(StoreSpec::Etcd(endpoints("etcd", rest)?));
        }
        if let Some(rest) = s.strip_prefix("etcds://") {
            return Ok(StoreSpec::EtcdTls(endpoints("etcds", rest)?));
        }
        if let Some(rest) = s.strip_prefix("sqlite:") {
            let dir = rest.strip_prefix("//").unwrap_or(rest);
            if dir.is_empty() {
                return Err(StoreError::Spec("sqlite: needs a folder".into()));
            }
            return Ok(StoreSpec::Sqlite(PathBuf::from(dir)));
        }
        Err(StoreError::Spec(format!("'{s}': expected etcd://host:port[,host:port...], etcds://... or sqlite:DIR")))
    }

    /// For logs.
    pub fn describe(&self) -> String {
        match self {
            StoreSpec::Sqlite(dir) => format!("SQLite in {}", dir.display()),
            StoreSpec::Etcd(eps) => format!("etcd at {}", eps.join(",")),
            StoreSpec::EtcdTls(eps) => format!("etcd over TLS at {}", eps.join(",")),
        }
    }

    /// The store as a URL, for errors (`etcds://host:port`).
    pub fn url(&self) -> String {
        match self {
            StoreSpec::Sqlite(dir) => format!("sqlite:{}", dir.display()),
            StoreSpec::Etcd(eps) => format!("etcd://{}", eps.join(",")),
            StoreSpec::EtcdTls(eps) => format!("etcds://{}", eps.join(",")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_specs() {
        assert_eq!(
            StoreSpec::parse("etcd://127.0.0.1:2379,127.0.0.1:22379").ok(),
            Some(StoreSpec::Etcd(vec!["127.0.0.1:2379".into(), "127.0.0.1:22379".into()]))
        );
        assert_eq!(StoreSpec::parse("sqlite:./d").ok(), Some(StoreSpec::Sqlite("./d".into())));
        assert_eq!(
            StoreSpec::parse("etcds://127.0.0.1:2379").ok(),
            Some(StoreSpec::EtcdTls(vec!["127.0.0.1:2379".into()]))
        );
        assert!(StoreSpec::parse("etcds://host").is_err());
        assert!(StoreSpec::parse("etcd://").is_err());
        assert!(StoreSpec::parse("etcd://host").is_err());
        assert!(StoreSpec::parse("redis://x:1").is_err());
    }
}
