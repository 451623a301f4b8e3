//! `legate xds-load`: simulated proxies for the control plane's scale benchmark.
//!
//! Opens N ADS streams (SotW or delta), each subscribing to every Cluster and
//! every ClusterLoadAssignment, ACKing what it gets. Then it changes one
//! ClusterLoadAssignment through the REST API, several times, and measures how
//! long each stream takes to receive it, and what the control plane spends:
//! memory per stream and CPU per push (read from /proc for `--cp-pid`).

use anyhow::Context as _;
use legate_api::pb::envoy::config::core::v3::Node;
use legate_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use legate_api::pb::envoy::service::discovery::v3::{
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest, DiscoveryRequest,
};
use prost::Message;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// Which control plane a simulated fleet talks to, and how many proxies it
/// has (shared by the xDS and the metrics load).
#[derive(clap::Args)]
pub struct Fleet {
    /// The control plane's xDS address.
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub xds: String,
    /// The control plane's API.
    #[arg(long, default_value = "http://127.0.0.1:9900")]
    pub api: String,
    /// The control plane's PID, to read its memory and CPU.
    #[arg(long)]
    pub cp_pid: Option<u32>,
    /// Simulated proxies, one stream each.
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
}

#[derive(clap::Args)]
pub struct LoadArgs {
    #[command(flatten)]
    pub fleet: Fleet,
    /// ADS streams per HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    pub per_connection: usize,
    #[arg(long)]
    pub delta: bool,
    /// Clusters (each with its ClusterLoadAssignment) to create before the run.
    #[arg(long, default_value_t = 10)]
    pub clusters: usize,
    /// Endpoints per cluster.
    #[arg(long, default_value_t = 1)]
    pub endpoints: usize,
    /// How many changes to time.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
}

/// (RSS bytes, CPU seconds) of a process.
pub fn proc_usage(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((rss_kb * 1024, ticks / 100.0))
}

fn documents(clusters: usize, endpoints: usize, round: usize) -> String {
    let mut s = String::new();
    for c in 0..clusters {
        s.push_str(&format!(
            "kind: Cluster\nmetadata: {{ name: c{c} }}\nspec: {{ name: c{c}, connect_timeout: 1s, type: EDS, eds_cluster_config: {{ eds_config: {{ ads: {{}} }} }} }}\n---\n"
        ));
        s.push_str(&assignment(c, endpoints, round));
    }
    s
}

/// Cluster c's endpoints; `round` is carried in the first endpoint's port so a
/// receiver can tell which change it got.
fn assignment(c: usize, endpoints: usize, round: usize) -> String {
    let eps: Vec<String> = (0..endpoints)
        .map(|e| {
            let port = if e == 0 { 20000 + round } else { 30000 + e };
            format!(
                "{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.{}, port_value: {port} }} }} }} }}",
                1 + c % 200
            )
        })
        .collect();
    format!("kind: ClusterLoadAssignment\nmetadata: {{ name: c{c} }}\nspec: {{ cluster_name: c{c}, endpoints: [{{ lb_endpoints: [{}] }}] }}\n---\n", eps.join(", "))
}

fn apply(api: &str, text: &str) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut r =
        agent.post(&format!("{api}/v1/apply")).send_json(serde_json::json!({"text": text, "message": "xds-load"}))?;
    anyhow::ensure!(r.status().is_success(), "apply failed: {}", r.body_mut().read_to_string().unwrap_or_default());
    Ok(())
}

/// The round a stream last saw for cluster c0 (from the marker port).
fn round_of(cla: &ClusterLoadAssignment) -> Option<usize> {
    use legate_api::pb::envoy::config::core::v3::{address, socket_address};
    use legate_api::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
    let ep = cla.endpoints.first()?.lb_endpoints.first()?;
    let Some(HostIdentifier::Endpoint(e)) = &ep.host_identifier else { return None };
    let Some(address::Address::SocketAddress(sa)) = e.address.as_ref()?.address.as_ref() else { return None };
    let Some(socket_address::PortSpecifier::PortValue(p)) = sa.port_specifier else { return None };
    (p >= 20000).then(|| (p - 20000) as usize)
}

struct Shared {
    /// Per stream: the last round seen for c0, and when (ns since start).
    seen_round: Vec<AtomicUsize>,
    seen_at: Vec<AtomicU64>,
    start: Instant,
}

impl Shared {
    /// Stream `i` received c0's assignment: the round it carries, and when.
    fn note(&self, i: usize, cla: &ClusterLoadAssignment) {
        if let Some(round) = round_of(cla) {
            self.seen_at[i].store(self.start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            self.seen_round[i].store(round, Ordering::Relaxed);
        }
    }
}

/// One simulated proxy's stream: its index, the channel it shares, the
/// EDS names it subscribes to.
struct SimStream {
    channel: tonic::transport::Channel,
    i: usize,
    names: Vec<String>,
    shared: Arc<Shared>,
}

impl SimStream {
    fn client(&self) -> (AggregatedDiscoveryServiceClient<tonic::transport::Channel>, Node) {
        let client = AggregatedDiscoveryServiceClient::new(self.channel.clone()).max_decoding_message_size(256 << 20);
        (client, Node { id: format!("sim-{}", self.i), cluster: "sim".into(), ..Default::default() })
    }
}

async fn sotw_stream(sim: SimStream) -> anyhow::Result<()> {
    let (mut client, node) = sim.client();
    let SimStream { i, names, shared, .. } = sim;
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(DiscoveryRequest { node: Some(node), type_url: CDS.into(), ..Default::default() })?;
    tx.send(DiscoveryRequest { type_url: EDS.into(), resource_names: names.clone(), ..Default::default() })?;
    let mut stream = client
        .stream_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(resp) = stream.message().await? {
        if resp.type_url == EDS {
            for any in &resp.resources {
                if let Ok(cla) = ClusterLoadAssignment::decode(any.value.as_slice()) {
                    if cla.cluster_name == "c0" {
                        shared.note(i, &cla);
                    }
                }
            }
        }
        let names = if resp.type_url == EDS { names.clone() } else { vec![] };
        tx.send(DiscoveryRequest {
            version_info: resp.version_info,
            response_nonce: resp.nonce,
            type_url: resp.type_url,
            resource_names: names,
            ..Default::default()
        })?;
    }
    Ok(())
}

async fn delta_stream(sim: SimStream) -> anyhow::Result<()> {
    let (mut client, node) = sim.client();
    let SimStream { i, names, shared, .. } = sim;
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(DeltaDiscoveryRequest { node: Some(node), type_url: CDS.into(), ..Default::default() })?;
    tx.send(DeltaDiscoveryRequest { type_url: EDS.into(), resource_names_subscribe: names, ..Default::default() })?;
    let mut stream =
        client.delta_aggregated_resources(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await?.into_inner();
    while let Some(resp) = stream.message().await? {
        if resp.type_url == EDS {
            for r in &resp.resources {
                if r.name != "c0" {
                    continue;
                }
                if let Some(cla) =
                    r.resource.as_ref().and_then(|a| ClusterLoadAssignment::decode(a.value.as_slice()).ok())
                {
                    shared.note(i, &cla);
                }
            }
        }
        tx.send(DeltaDiscoveryRequest { type_url: resp.type_url, response_nonce: resp.nonce, ..Default::default() })?;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: LoadArgs) -> anyhow::Result<()> {
    let round0 = 1;
    apply(&args.fleet.api, &documents(args.clusters, args.endpoints, round0)).context("initial config")?;
    let base = args.fleet.cp_pid.and_then(proc_usage);
    let shared = Arc::new(Shared {
        seen_round: (0..args.fleet.streams).map(|_| AtomicUsize::new(0)).collect(),
        seen_at: (0..args.fleet.streams).map(|_| AtomicU64::new(0)).collect(),
        start: Instant::now(),
    });
    let names: Vec<String> = (0..args.clusters).map(|c| format!("c{c}")).collect();
    let connections = args.fleet.streams.div_ceil(args.per_connection.max(1));
    let errors = Arc::new(AtomicUsize::new(0));
    let t_connect = Instant::now();
    for c in 0..connections {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", args.fleet.xds))?
            .initial_stream_window_size(Some(1 << 20))
            .connect()
            .await
            .with_context(|| format!("connect {}", args.fleet.xds))?;
        for s in 0..args.per_connection {
            let i = c * args.per_connection + s;
            if i >= args.fleet.streams {
                break;
            }
            let sim = SimStream { channel: channel.clone(), i, names: names.clone(), shared: shared.clone() };
            let (errors, delta) = (errors.clone(), args.delta);
            tokio::spawn(async move {
                let r = if delta { delta_stream(sim).await } else { sotw_stream(sim).await };
                if r.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    // Every stream has the initial config.
    let deadline = Instant::now() + Duration::from_secs(300);
    while shared.seen_round.iter().any(|r| r.load(Ordering::Relaxed) != round0) {
        anyhow::ensure!(Instant::now() < deadline, "streams did not all receive the initial config");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let initial = t_connect.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = args.fleet.cp_pid.and_then(proc_usage);
    let mut latencies = Vec::new();
    let mut cpu_per_push = Vec::new();
    for round in round0 + 1..=round0 + args.rounds {
        let before = args.fleet.cp_pid.and_then(proc_usage);
        let t0 = shared.start.elapsed().as_nanos() as u64;
        apply(&args.fleet.api, &assignment(0, args.endpoints, round))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while shared.seen_round.iter().any(|r| r.load(Ordering::Relaxed) != round) {
            anyhow::ensure!(Instant::now() < deadline, "round {round}: not every stream got the change");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let after = args.fleet.cp_pid.and_then(proc_usage);
        for at in &shared.seen_at {
            latencies.push((at.load(Ordering::Relaxed).saturating_sub(t0)) as f64 / 1e6);
        }
        if let (Some(b), Some(a)) = (before, after) {
            cpu_per_push.push((a.1 - b.1) / args.fleet.streams as f64);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    latencies.sort_by(f64::total_cmp);
    let mode = if args.delta { "delta" } else { "sotw" };
    println!(
        "xds-load {mode}: streams={} clusters={} endpoints/cluster={} connections={connections} stream_errors={}",
        args.fleet.streams,
        args.clusters,
        args.endpoints,
        errors.load(Ordering::Relaxed)
    );
    println!("  initial config to all streams: {:.2}s", initial.as_secs_f64());
    println!(
        "  apply -> stream received (ms, {} samples): p50 {:.1}  p99 {:.1}  max {:.1}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    if let (Some(b), Some(l)) = (base, loaded) {
        println!(
            "  control plane RSS: {:.1} MiB before streams, {:.1} MiB with them: {:.1} KiB per stream",
            b.0 as f64 / 1048576.0,
            l.0 as f64 / 1048576.0,
            (l.0.saturating_sub(b.0)) as f64 / 1024.0 / args.fleet.streams as f64
        );
    }
    if !cpu_per_push.is_empty() {
        let avg = cpu_per_push.iter().sum::<f64>() / cpu_per_push.len() as f64;
        println!("  control plane CPU per push per stream: {:.1} us", avg * 1e6);
    }
    Ok(())
}
