//! The pull fallback: every scrape period ([`EVERY`] by default), each connected proxy whose node
//! metadata names its admin address ([`super::ADMIN_ADDRESS_KEY`]) and that
//! has not streamed metrics lately is scraped at `/stats/prometheus`.

use crate::monitor::promtext;
use crate::state::controller::Controller;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The default scrape period.
pub const EVERY: Duration = Duration::from_secs(5);
/// A scrape gives up after this long.
const TIMEOUT: Duration = Duration::from_secs(3);
/// Largest scrape body read.
const MAX_BODY: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("{0}")]
    Get(#[from] crate::remote::http_get::GetError),
    #[error("body is not UTF-8")]
    Utf8,
    #[error("{0}")]
    Parse(#[from] promtext::ParseError),
}

/// `GET http://{addr}/stats/prometheus` (HTTP/1.1, one connection).
pub async fn fetch(addr: &str) -> Result<String, ScrapeError> {
    let body = crate::remote::http_get::get(addr, "/stats/prometheus", None, MAX_BODY, TIMEOUT).await?;
    String::from_utf8(body.to_vec()).map_err(|_| ScrapeError::Utf8)
}

/// The proxies to scrape now: node id -> (cluster, admin address), for
/// connected nodes naming an admin address and not streaming.
fn targets(ctrl: &Controller, every: Duration) -> BTreeMap<String, (String, String)> {
    let streaming: std::collections::BTreeSet<String> = ctrl
        .monitor
        .reporting(3 * every)
        .into_iter()
        .filter(|(_, src, _)| src == "stream")
        .map(|(n, _, _)| n)
        .collect();
    ctrl.fleet
        .list()
        .into_iter()
        .filter(|p| !streaming.contains(&p.node.id))
        .filter_map(|p| {
            let addr = p.node.metadata.get(super::ADMIN_ADDRESS_KEY)?.clone();
            Some((p.node.id.clone(), (p.node.cluster.clone(), addr)))
        })
        .collect()
}

async fn scrape_one(ctrl: Arc<Controller>, node: String, cluster: String, addr: String) {
    let result = async {
        let text = fetch(&addr).await?;
        Ok::<_, ScrapeError>(promtext::to_report(&text, &node, &cluster, crate::clock::unix_ms())?)
    }
    .await;
    match result {
        Ok(report) => ctrl.monitor.ingest(report),
        Err(e) => tracing::debug!("scrape of {node} at {addr}: {e}"),
    }
}

/// Scrapes every `every` until the task is dropped.
pub async fn run(ctrl: Arc<Controller>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (node, (cluster, addr)) in targets(&ctrl, every) {
            tokio::spawn(scrape_one(ctrl.clone(), node, cluster, addr));
        }
    }
}
