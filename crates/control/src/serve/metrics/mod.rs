//! Collection: what the proxies send about their traffic, on the xDS
//! address. `stream` serves Envoy's metrics service
//! (`envoy.stat_sinks.metrics_service`), `lrs` the load reporting service,
//! and `scrape` pulls `/stats/prometheus` from a proxy that does not
//! stream but names its admin address in its node metadata
//! ([`ADMIN_ADDRESS_KEY`]). Each turns what it gets into a
//! `monitor::Report` (or a load report) and hands it to the monitor.

pub mod lrs;
pub mod scrape;
pub mod stream;

/// Node metadata key naming a proxy's admin address (`127.0.0.1:9901`):
/// such a proxy is scraped every 5 s while it does not stream metrics.
pub const ADMIN_ADDRESS_KEY: &str = "legate.admin_address";

/// Node metadata key (`"true"`) telling that the proxy's sink sends counters
/// as deltas (`report_counters_as_deltas`): the stream sums them back.
pub const DELTAS_KEY: &str = "legate.counters_as_deltas";
