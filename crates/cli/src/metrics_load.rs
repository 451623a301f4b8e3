//! `legate metrics-load`: simulated proxies streaming their stats to the
//! control plane's metrics service, as Envoy's `metrics_service` sink does,
//! for the monitoring cost benchmark (`bench/metrics-scale.sh`).
//!
//! N streams (100 per HTTP/2 connection), each sending every `--every` the
//! Prometheus families of `--clusters` clusters (7 counters, 5 gauges and
//! the `upstream_rq_time` histogram with Envoy's 19 buckets each) and one
//! connection manager. It reads the control plane's CPU and RSS from /proc
//! (`--cp-pid`) before and after `--duration`, then checks that
//! `/v1/top/services` counts exactly the requests the streams reported.

use anyhow::Context as _;
use legate_api::pb::envoy::config::core::v3::Node;
use legate_api::pb::envoy::service::metrics::v3::{
    metrics_service_client::MetricsServiceClient, stream_metrics_message::Identifier, StreamMetricsMessage,
};
use legate_api::pb::io::prometheus::client::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Envoy's default histogram bounds (milliseconds).
const BOUNDS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

#[derive(clap::Args)]
pub struct MetricsLoadArgs {
    #[command(flatten)]
    pub fleet: crate::xds_load::Fleet,
    #[arg(long, default_value_t = 10)]
    pub clusters: usize,
    /// Seconds between two flushes of one proxy.
    #[arg(long, default_value_t = 5)]
    pub every: u64,
    /// Seconds measured.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
}

fn family(name: String, kind: MetricType, metric: Metric) -> MetricFamily {
    MetricFamily { name: Some(name), r#type: Some(kind as i32), metric: vec![metric], ..Default::default() }
}

fn counter(name: String, v: u64) -> MetricFamily {
    let m = Metric { counter: Some(Counter { value: Some(v as f64), ..Default::default() }), ..Default::default() };
    family(name, MetricType::Counter, m)
}

fn gauge(name: String, v: f64) -> MetricFamily {
    family(name, MetricType::Gauge, Metric { gauge: Some(Gauge { value: Some(v) }), ..Default::default() })
}

/// A histogram of `n` samples, all in the 5–10 ms bucket.
fn histogram(name: String, n: u64) -> MetricFamily {
    let bucket = BOUNDS
        .iter()
        .map(|&b| Bucket {
            upper_bound: Some(b),
            cumulative_count: Some(if b >= 10.0 { n } else { 0 }),
            ..Default::default()
        })
        .collect();
    let h = Histogram { sample_count: Some(n), sample_sum: Some(n as f64 * 7.0), bucket, ..Default::default() };
    let m = Metric { histogram: Some(h), label: Vec::<LabelPair>::new(), ..Default::default() };
    family(name, MetricType::Histogram, m)
}

/// One flush: every cluster has served `total` requests, a tenth of them 5xx.
fn families(clusters: usize, total: u64) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    for c in 0..clusters {
        let p = format!("cluster.c{c}.");
        for (stat, v) in [
            ("upstream_rq_completed", total),
            ("upstream_rq_total", total),
            ("upstream_rq_2xx", total - total / 10),
            ("upstream_rq_5xx", total / 10),
            ("upstream_rq_4xx", 0),
            ("upstream_rq_retry", 0),
            ("upstream_rq_timeout", 0),
        ] {
            out.push(counter(format!("{p}{stat}"), v));
        }
        for stat in ["upstream_rq_active", "upstream_cx_active", "membership_healthy", "membership_total"] {
            out.push(gauge(format!("{p}{stat}"), 1.0));
        }
        out.push(gauge(format!("{p}outlier_detection.ejections_active"), 0.0));
        out.push(histogram(format!("{p}upstream_rq_time"), total));
    }
    out.push(counter("http.ingress.downstream_rq_completed".into(), total * clusters as u64));
    out.push(histogram("http.ingress.downstream_rq_time".into(), total * clusters as u64));
    out
}

/// One simulated proxy: `rounds` flushes, `every` apart, each cluster's
/// counters `step` higher than the last. Adds what it reported to `sent`.
async fn proxy(channel: tonic::transport::Channel, i: usize, args: Arc<MetricsLoadArgs>, sent: Arc<AtomicU64>) {
    let (tx, rx) = mpsc::channel(2);
    let mut client = MetricsServiceClient::new(channel);
    let call =
        tokio::spawn(async move { client.stream_metrics(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    let node = Node { id: format!("sim-{i}"), cluster: "sim".into(), ..Default::default() };
    // Flushes spread over the interval, as proxies started at different times.
    tokio::time::sleep(Duration::from_millis((i as u64 * 997) % (args.every * 1000))).await;
    let rounds = args.duration / args.every + 2;
    for round in 0..rounds {
        let total = round * 10;
        let msg = StreamMetricsMessage {
            identifier: (round == 0).then(|| Identifier { node: Some(node.clone()) }),
            envoy_metrics: families(args.clusters, total),
        };
        if tx.send(msg).await.is_err() {
            return;
        }
        if round > 0 {
            // The first flush is the baseline; each later one adds 10 per cluster.
            sent.fetch_add(10 * args.clusters as u64, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(args.every)).await;
    }
    drop(tx);
    let _ = call.await;
}

pub fn run(args: MetricsLoadArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(run_async(Arc::new(args)))
}

async fn run_async(args: Arc<MetricsLoadArgs>) -> anyhow::Result<()> {
    let usage = |pid: Option<u32>| pid.and_then(crate::xds_load::proc_usage);
    let before = usage(args.fleet.cp_pid);
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut channel = None;
    for i in 0..args.fleet.streams {
        if i % 100 == 0 {
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", args.fleet.xds))?;
            channel = Some(endpoint.connect().await.context("connect to the xDS address")?);
        }
        let ch = channel.clone().context("channel")?;
        tasks.push(tokio::spawn(proxy(ch, i, args.clone(), sent.clone())));
    }
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let after = usage(args.fleet.cp_pid);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(3 * args.every), t).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    report(&args, before, after, sent.load(Ordering::Relaxed))
}

fn report(
    args: &MetricsLoadArgs,
    before: Option<(u64, f64)>,
    after: Option<(u64, f64)>,
    sent: u64,
) -> anyhow::Result<()> {
    let per_s = args.fleet.streams as f64 / args.every as f64;
    println!(
        "{} streams, {} clusters each, one flush every {} s ({per_s:.0} reports/s, {} stats per report)",
        args.fleet.streams,
        args.clusters,
        args.every,
        args.clusters * 13 + 2
    );
    if let (Some((rss0, cpu0)), Some((rss1, cpu1))) = (before, after) {
        let cpu = (cpu1 - cpu0) / args.duration as f64;
        println!(
            "control plane over {} s: CPU {:.1} % of one core ({:.0} µs per report), RSS {:.1} MiB before, {:.1} MiB after",
            args.duration,
            cpu * 100.0,
            cpu * 1e6 / per_s,
            rss0 as f64 / 1048576.0,
            rss1 as f64 / 1048576.0
        );
    }
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let body =
        agent.get(&format!("{}/v1/top/services?window=1h", args.fleet.api)).call()?.body_mut().read_to_string()?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&body)?;
    let counted: u64 = list.iter().filter_map(|s| s["requests"].as_u64()).sum();
    println!("requests reported by the streams: {sent}; counted by the control plane: {counted}");
    anyhow::ensure!(counted == sent, "the control plane counted {counted}, the streams reported {sent}");
    Ok(())
}
