//! `envoy.service.metrics.v3.MetricsService/StreamMetrics`: the node on the
//! first message, then Prometheus metric families on every flush, each
//! message one report. Counters are cumulative unless the node says its sink
//! sends deltas ([`super::DELTAS_KEY`]); histograms are read from their
//! buckets (a summary alone carries no buckets and is left out).

use crate::discovery::node::NodeInfo;
use crate::monitor::{stat::untag, Histogram, Monitor, Report};
use legate_api::pb::envoy::service::metrics::v3::{
    metrics_service_server::MetricsService, StreamMetricsMessage, StreamMetricsResponse,
};
use legate_api::pb::io::prometheus::client::{Metric, MetricFamily, MetricType};
use std::collections::HashMap;
use std::sync::Arc;
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone)]
pub struct MetricsServer {
    monitor: Arc<Monitor>,
}

impl MetricsServer {
    pub fn new(monitor: Arc<Monitor>) -> Self {
        Self { monitor }
    }
}

fn labels(m: &Metric) -> Vec<(String, String)> {
    m.label.iter().map(|l| (l.name.clone().unwrap_or_default(), l.value.clone().unwrap_or_default())).collect()
}

fn histogram(m: &Metric) -> Option<Histogram> {
    let h = m.histogram.as_ref()?;
    let mut out =
        Histogram { count: h.sample_count.unwrap_or(0), sum: h.sample_sum.unwrap_or(0.0), ..Default::default() };
    for b in &h.bucket {
        let bound = b.upper_bound.unwrap_or(f64::INFINITY);
        if bound.is_finite() {
            out.bounds.push(bound);
            out.cumulative.push(b.cumulative_count.unwrap_or(0));
        }
    }
    Some(out)
}

/// One message's families as a report (`node` and `at_ms` filled by the caller).
pub fn to_report(families: &[MetricFamily]) -> Report {
    let mut r = Report { source: "stream".into(), histograms_per_interval: true, ..Default::default() };
    for f in families {
        let name = f.name.as_deref().unwrap_or_default();
        let kind = f.r#type.and_then(|t| MetricType::try_from(t).ok());
        for m in &f.metric {
            let stat = untag(name, &labels(m));
            match kind {
                Some(MetricType::Counter) => {
                    let v = m.counter.as_ref().and_then(|c| c.value).unwrap_or(0.0);
                    r.counters.push((stat, v.max(0.0) as u64));
                }
                Some(MetricType::Gauge) => r.gauges.push((stat, m.gauge.as_ref().and_then(|g| g.value).unwrap_or(0.0))),
                Some(MetricType::Histogram) => r.histograms.extend(histogram(m).map(|h| (stat, h))),
                _ => {}
            }
        }
    }
    r
}

/// Running sums for a sink that sends counter deltas.
#[derive(Default)]
struct Summed(HashMap<String, u64>);

impl Summed {
    fn apply(&mut self, r: &mut Report) {
        for (name, v) in &mut r.counters {
            let sum = self.0.entry(name.clone()).or_insert(0);
            *sum += *v;
            *v = *sum;
        }
    }
}

#[tonic::async_trait]
impl MetricsService for MetricsServer {
    async fn stream_metrics(
        &self,
        req: Request<Streaming<StreamMetricsMessage>>,
    ) -> Result<Response<StreamMetricsResponse>, Status> {
        let mut stream = req.into_inner();
        let mut node: Option<NodeInfo> = None;
        let mut deltas: Option<Summed> = None;
        while let Some(msg) = stream.message().await? {
            if let Some(n) = msg.identifier.as_ref().and_then(|i| i.node.as_ref()) {
                let info = NodeInfo::from_node(n);
                if info.metadata.get(super::DELTAS_KEY).map(String::as_str) == Some("true") {
                    deltas.get_or_insert_with(Summed::default);
                }
                node = Some(info);
            }
            let Some(n) = &node else {
                return Err(Status::invalid_argument("the first message must carry the node identifier"));
            };
            let mut report = to_report(&msg.envoy_metrics);
            if let Some(d) = deltas.as_mut() {
                d.apply(&mut report);
            }
            report.node.clone_from(&n.id);
            report.node_cluster.clone_from(&n.cluster);
            report.at_ms = crate::clock::unix_ms();
            self.monitor.ingest(report);
        }
        Ok(Response::new(StreamMetricsResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use legate_api::pb::io::prometheus::client::{Bucket, Counter, LabelPair};

    fn label(name: &str, value: &str) -> LabelPair {
        LabelPair { name: Some(name.into()), value: Some(value.into()) }
    }

    #[test]
    fn tagged_families_become_plain_stats_and_deltas_are_summed() {
        let counter = MetricFamily {
            name: Some("cluster.upstream_rq_xx".into()),
            r#type: Some(MetricType::Counter as i32),
            metric: vec![Metric {
                label: vec![label("envoy_response_code_class", "5"), label("envoy_cluster_name", "web")],
                counter: Some(Counter { value: Some(3.0), ..Default::default() }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let hist = MetricFamily {
            name: Some("cluster.web.upstream_rq_time".into()),
            r#type: Some(MetricType::Histogram as i32),
            metric: vec![Metric {
                histogram: Some(legate_api::pb::io::prometheus::client::Histogram {
                    sample_count: Some(4),
                    sample_sum: Some(9.0),
                    bucket: vec![
                        Bucket { upper_bound: Some(1.0), cumulative_count: Some(1), ..Default::default() },
                        Bucket { upper_bound: Some(5.0), cumulative_count: Some(4), ..Default::default() },
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut r = to_report(&[counter, hist]);
        assert_eq!(r.counters, vec![("cluster.web.upstream_rq_5xx".to_string(), 3)]);
        assert_eq!(r.histograms[0].1.cumulative, vec![1, 4]);
        let mut sums = Summed::default();
        sums.apply(&mut r);
        sums.apply(&mut r);
        assert_eq!(r.counters[0].1, 6, "deltas 3 then 3 are a cumulative 6");
    }
}
