//! The bootstrap's `stats_config.stats_matcher`: which stats the store
//! shows. `reject_all` hides every one, an `exclusion_list` those any of
//! its patterns matches, an `inclusion_list` all but those. A hidden stat
//! still works for its holder; it is not shown by the admin nor sent to the
//! sinks, as Envoy does not instantiate it.

use crate::common::matcher::StringMatch;
use crate::server::instance::ServerError;
use crate::stats::{StatFilter, Store};
use legate_api::pb::envoy::config::bootstrap::v3::Bootstrap;
use legate_api::pb::envoy::config::metrics::v3::stats_matcher::StatsMatcher as Kind;
use legate_api::pb::envoy::r#type::matcher::v3::ListStringMatcher;

fn patterns(list: &ListStringMatcher, field: &str) -> Result<Vec<StringMatch>, ServerError> {
    list.patterns
        .iter()
        .enumerate()
        .map(|(i, p)| {
            StringMatch::new(p).map_err(|reason| ServerError::Config {
                path: format!("stats_config.stats_matcher.{field}.patterns[{i}]"),
                reason,
            })
        })
        .collect()
}

/// The filter the bootstrap's stats matcher says (`None`: every stat shown).
pub fn filter(b: &Bootstrap) -> Result<Option<StatFilter>, ServerError> {
    let Some(kind) =
        b.stats_config.as_ref().and_then(|c| c.stats_matcher.as_ref()).and_then(|m| m.stats_matcher.as_ref())
    else {
        return Ok(None);
    };
    Ok(match kind {
        Kind::RejectAll(true) => Some(Box::new(|_: &str| false)),
        Kind::RejectAll(false) => None,
        Kind::ExclusionList(l) => {
            let p = patterns(l, "exclusion_list")?;
            Some(Box::new(move |name: &str| !p.iter().any(|m| m.matches(name))))
        }
        Kind::InclusionList(l) => {
            let p = patterns(l, "inclusion_list")?;
            Some(Box::new(move |name: &str| p.iter().any(|m| m.matches(name))))
        }
    })
}

/// The store for this bootstrap.
pub fn store(b: &Bootstrap) -> Result<Store, ServerError> {
    Ok(match filter(b)? {
        Some(f) => Store::with_filter(f),
        None => Store::default(),
    })
}
