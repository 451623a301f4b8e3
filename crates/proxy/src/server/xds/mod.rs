//! The proxy's xDS client: ADS over gRPC, state of the world or delta, one
//! gRPC stream per type, or REST polling per type.
//!
//! It runs on the main thread. What it receives is validated with the same
//! loader rules as a bootstrap, compiled off the request path, and swapped in:
//! clusters into the cluster map, endpoints into host sets, route tables into
//! RDS slots, listeners through the listener manager. What cannot be applied is
//! NACKed with the reason and the last good config keeps serving. The stream
//! reconnects with jittered backoff; traffic keeps flowing meanwhile.

mod apply;
mod delta;
mod per_type;
mod rest;
mod sds_source;
mod sotw;

use delta::delta_session;
pub use sds_source::run as run_sds_sources;
use sotw::sotw_session;

use crate::common::config_source::{api_source, grpc_source, Transport};
use crate::listener::ListenerConfig;
use crate::server::instance::Shared;
use crate::upstream::cluster::Cluster;
use legate_api::pb::envoy::config::bootstrap::v3::bootstrap::DynamicResources;
use legate_api::pb::envoy::config::bootstrap::v3::Bootstrap;
use legate_api::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use legate_api::pb::envoy::config::core::v3::{
    api_config_source::ApiType, config_source::ConfigSourceSpecifier, ApiConfigSource, ConfigSource, Node,
};
use legate_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use legate_api::pb::envoy::config::listener::v3::Listener as PbListener;
use legate_api::pb::envoy::config::route::v3::RouteConfiguration;
use legate_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use legate_api::pb::google::protobuf::Any;
use prost::Message;
pub use rest::RestTimings;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const SDS: &str = crate::tls::sds::SECRET_TYPE;
pub const RTDS: &str = "type.googleapis.com/envoy.service.runtime.v3.Runtime";

/// Where and how to reach the management server.
#[derive(Debug, Clone)]
pub struct AdsConfig {
    pub delta: bool,
    /// One aggregated stream (ADS), or one stream per type on the
    /// per-type services (`api_config_source` in `cds_config`, `lds_config`).
    pub aggregated: bool,
    /// The first management server's cluster.
    pub cluster: String,
    /// Every listed management server's cluster (`grpc_services` in order,
    /// the first is `cluster`): a failed stream moves on to the next, as
    /// Envoy cycles through them.
    pub clusters: Vec<String>,
    pub cds: bool,
    pub lds: bool,
    pub initial_fetch_timeout: Duration,
    /// The runtime has RTDS layers: CDS and LDS are asked for only once
    /// their first resources arrived (or `rtds_timeout` passed), as Envoy's
    /// init manager starts them after RTDS.
    pub rtds: bool,
    /// The first RTDS layer's `initial_fetch_timeout` (15 s by default;
    /// zero waits for ever).
    pub rtds_timeout: Option<Duration>,
    /// The per-type sources are polled over REST (never with ADS).
    pub rest: Option<RestTimings>,
}

/// Reads `dynamic_resources` from the bootstrap. `None` when there is none.
pub fn ads_config(b: &Bootstrap) -> Result<Option<AdsConfig>, String> {
    let rtds = rtds_sources(b);
    let Some(dr) = &b.dynamic_resources else {
        return match rtds.first() {
            Some((path, _)) => Err(format!("{path}: RTDS without dynamic_resources is not implemented by Legate")),
            None => Ok(None),
        };
    };
    let initial_fetch_timeout = dr
        .cds_config
        .as_ref()
        .and_then(|c| c.initial_fetch_timeout.as_ref())
        .map_or(Duration::from_secs(15), legate_api::duration::from_pb);
    let cfg = match &dr.ads_config {
        Some(ads) => {
            let delta = match ApiType::try_from(ads.api_type) {
                Ok(ApiType::Grpc) | Ok(ApiType::AggregatedGrpc) => false,
                Ok(ApiType::DeltaGrpc) | Ok(ApiType::AggregatedDeltaGrpc) => true,
                _ => return Err("dynamic_resources.ads_config.api_type: only GRPC and DELTA_GRPC are supported".into()),
            };
            let (_, clusters) = grpc_source(&ApiConfigSource { api_type: ApiType::Grpc as i32, ..ads.clone() })
                .map_err(|e| format!("dynamic_resources.ads_config.{e}"))?;
            let transport = Transport::Grpc { delta };
            let mut timings = HashMap::new();
            let cds = source(&dr.cds_config, "dynamic_resources.cds_config", &clusters, transport, CDS, &mut timings)?;
            let lds = source(&dr.lds_config, "dynamic_resources.lds_config", &clusters, transport, LDS, &mut timings)?;
            AdsConfig {
                delta,
                aggregated: true,
                cluster: clusters[0].clone(),
                clusters,
                cds,
                lds,
                initial_fetch_timeout,
                rtds: false,
                rtds_timeout: None,
                rest: None,
            }
        }
        None => {
            // One stream per type: the sources must name the same servers.
            let Some((transport, clusters)) = per_type_server(dr)? else {
                return match rtds.first() {
                    Some((path, _)) => {
                        Err(format!("{path}: RTDS without a CDS or LDS config source is not implemented by Legate"))
                    }
                    None => Ok(None),
                };
            };
            let mut timings = HashMap::new();
            let cds = source(&dr.cds_config, "dynamic_resources.cds_config", &clusters, transport, CDS, &mut timings)?;
            let lds = source(&dr.lds_config, "dynamic_resources.lds_config", &clusters, transport, LDS, &mut timings)?;
            let rest = match transport {
                Transport::Rest(default) => Some(RestTimings { default, per_type: timings }),
                Transport::Grpc { .. } => None,
            };
            AdsConfig {
                delta: transport == Transport::Grpc { delta: true },
                aggregated: false,
                cluster: clusters[0].clone(),
                clusters,
                cds,
                lds,
                initial_fetch_timeout,
                rtds: false,
                rtds_timeout: None,
                rest,
            }
        }
    };
    let mut cfg = cfg;
    let transport = match &cfg.rest {
        Some(r) => Transport::Rest(r.default),
        None => Transport::Grpc { delta: cfg.delta },
    };
    let mut timings = HashMap::new();
    for (path, cs) in &rtds {
        source(&Some((*cs).clone()), path, &cfg.clusters, transport, RTDS, &mut timings)?;
    }
    if let Some(rest) = &mut cfg.rest {
        rest.per_type.extend(timings);
    }
    if let Some((_, cs)) = rtds.first() {
        cfg.rtds = true;
        cfg.rtds_timeout = match cs.initial_fetch_timeout.as_ref().map(legate_api::duration::from_pb) {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => Some(Duration::from_secs(15)),
        };
    }
    // Config sources in the static resources follow the same server.
    if let Some(statics) = &b.static_resources {
        for c in &statics.clusters {
            foreign_sources(c, &cfg.clusters).map_err(|e| format!("static_resources.clusters '{}': {e}", c.name))?;
        }
        for l in &statics.listeners {
            foreign_sources(l, &cfg.clusters).map_err(|e| format!("static_resources.listeners '{}': {e}", l.name))?;
        }
    }
    Ok(Some(cfg))
}

/// The RTDS layers' config sources, with their paths.
fn rtds_sources(b: &Bootstrap) -> Vec<(String, &ConfigSource)> {
    use legate_api::pb::envoy::config::bootstrap::v3::runtime_layer::LayerSpecifier;
    let layers = b.layered_runtime.as_ref().map(|r| r.layers.as_slice()).unwrap_or_default();
    layers
        .iter()
        .enumerate()
        .filter_map(|(i, l)| match &l.layer_specifier {
            Some(LayerSpecifier::RtdsLayer(r)) => {
                r.rtds_config.as_ref().map(|c| (format!("layered_runtime.layers[{i}].rtds_layer.rtds_config"), c))
            }
            _ => None,
        })
        .collect()
}

/// The transport and servers of the bootstrap's per-type sources (CDS
/// first, then LDS), when there is one.
fn per_type_server(dr: &DynamicResources) -> Result<Option<(Transport, Vec<String>)>, String> {
    for (cs, what) in [(&dr.cds_config, "cds_config"), (&dr.lds_config, "lds_config")] {
        match cs.as_ref().map(|c| &c.config_source_specifier) {
            Some(Some(ConfigSourceSpecifier::ApiConfigSource(a))) => {
                return api_source(a).map(Some).map_err(|e| format!("dynamic_resources.{what}.api_config_source.{e}"))
            }
            Some(_) => return Err(format!("dynamic_resources.{what}: ads without ads_config")),
            None => {}
        }
    }
    Ok(None)
}

/// Whether the type is followed: a config source must be ADS (with
/// `ads_config`) or an `api_config_source` on the same servers, of the
/// same kind (gRPC delta, gRPC state of the world, or REST). A REST
/// source's timing goes into `timings` under `ty`.
fn source(
    cs: &Option<ConfigSource>,
    path: &str,
    clusters: &[String],
    transport: Transport,
    ty: &'static str,
    timings: &mut HashMap<&'static str, crate::common::config_source::RestTiming>,
) -> Result<bool, String> {
    match cs.as_ref().map(|c| &c.config_source_specifier) {
        None => Ok(false),
        Some(Some(ConfigSourceSpecifier::Ads(_))) if !matches!(transport, Transport::Rest(_)) => Ok(true),
        Some(Some(ConfigSourceSpecifier::ApiConfigSource(a))) => {
            let (t, cs) = api_source(a).map_err(|e| format!("{path}.api_config_source.{e}"))?;
            let same_kind = match (t, transport) {
                (Transport::Rest(timing), Transport::Rest(_)) => {
                    timings.insert(ty, timing);
                    true
                }
                (t, transport) => t == transport,
            };
            if cs != clusters || !same_kind {
                return Err(format!(
                    "{path}: config sources on other management servers (or of another api_type) are not implemented by Legate"
                ));
            }
            Ok(true)
        }
        Some(_) => Err(format!("{path}: only ads or a gRPC or REST api_config_source is supported")),
    }
}

/// Refuses a resource whose `api_config_source`s name a management server
/// other than the one Legate follows.
pub(super) fn foreign_sources<T: Message + prost::Name>(msg: &T, clusters: &[String]) -> Result<(), String> {
    let Some(dynamic) = legate_api::load::to_dynamic(msg) else { return Ok(()) };
    for (path, cluster) in legate_api::walk::api_config_clusters(&dynamic) {
        if !clusters.contains(&cluster) {
            return Err(format!(
                "{path}: a config source on cluster '{cluster}', not the management server's, is not implemented by Legate"
            ));
        }
    }
    Ok(())
}

/// The dynamic config the proxy holds (survives reconnects).
#[derive(Default)]
struct Dynamic {
    clusters: BTreeMap<String, PbCluster>,
    assignments: HashMap<String, ClusterLoadAssignment>,
    listeners: BTreeMap<String, PbListener>,
    routes: BTreeMap<String, RouteConfiguration>,
    /// Listeners compiled but waiting for their route configuration (warming).
    warming: BTreeMap<String, (ListenerConfig, String, Instant)>,
    /// New EDS clusters waiting for their first endpoints (cluster warming):
    /// not used for traffic until then, or until the initial fetch timeout.
    warming_clusters: BTreeMap<String, (Arc<Cluster>, Instant)>,
    /// SotW: last accepted version per type. Delta: name -> version per type.
    versions: HashMap<&'static str, String>,
    delta_versions: HashMap<&'static str, BTreeMap<String, String>>,
    /// Named subscriptions last sent.
    subscribed: HashMap<&'static str, BTreeSet<String>>,
    /// The management servers' clusters: resources may name no other.
    servers: Vec<String>,
    /// REST sources: each poll counted its own attempt.
    rest: bool,
    /// The RTDS layers' first response came (or its wait is over).
    rtds_ready: bool,
}

/// What one stream to a management server runs with, SotW or delta.
struct Session<'a> {
    shared: &'a Arc<Shared>,
    cfg: &'a AdsConfig,
    target: &'a Target,
    /// `control_plane.connected_state`: set once the stream is open.
    connected: &'a crate::stats::Gauge,
}

/// Runs the client forever: connect, stream, and reconnect with backoff.
pub async fn run(shared: Arc<Shared>, cfg: AdsConfig) {
    let connected = shared.store.gauge("control_plane.connected_state");
    let mut dynamic = Dynamic { servers: cfg.clusters.clone(), rest: cfg.rest.is_some(), ..Dynamic::default() };
    let mut backoff = Duration::from_millis(500);
    // Which of the listed management servers to try next.
    let mut next = 0usize;
    loop {
        let cluster = cfg.clusters.get(next % cfg.clusters.len().max(1)).unwrap_or(&cfg.cluster);
        next = (next + 1) % cfg.clusters.len().max(1);
        let target = Target::pick(&shared, cluster);
        let started = Instant::now();
        match target {
            Some(target) => {
                let addr = target.address();
                let session = Session { shared: &shared, cfg: &cfg, target: &target, connected: &connected };
                let result = if cfg.delta {
                    delta_session(session, &mut dynamic).await
                } else {
                    sotw_session(session, &mut dynamic).await
                };
                // A stream that was up and then broke (its server died) fails
                // over to the next server without the grown backoff.
                if connected.value() == 1 && cfg.clusters.len() > 1 {
                    backoff = Duration::from_millis(200);
                }
                connected.set(0);
                if let Err(e) = result {
                    tracing::warn!("xDS stream to {addr} ended: {e}");
                }
            }
            None => tracing::warn!("xDS cluster '{cluster}' has no host"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        // Full jitter: anywhere up to the current backoff.
        let wait = backoff.mul_f64(rand::random_range(0.5..1.0));
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// The node this proxy says it is, to management servers and sinks.
pub(crate) fn node(shared: &Shared) -> Node {
    let mut n = shared.bootstrap.node.clone().unwrap_or_default();
    n.user_agent_name = "legate".into();
    n.user_agent_version_type =
        Some(legate_api::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentVersion(
            env!("CARGO_PKG_VERSION").into(),
        ));
    n
}

/// A management server to stream from: a host of the xDS cluster, and the
/// cluster (its `transport_socket` says whether to speak TLS).
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// A `pipe` host's Unix socket (`addr` is then a stand-in).
    pipe: Option<Arc<crate::io::unix::UnixAddr>>,
    /// The host's name (the SNI with `auto_host_sni`).
    hostname: String,
    cluster: Arc<Cluster>,
}

impl Target {
    /// A host of the cluster named `name`, picked by its load balancer.
    pub(crate) fn pick(shared: &Shared, name: &str) -> Option<Target> {
        let map = shared.clusters.load();
        map.get(name).and_then(|c| {
            c.pick().map(|h| Target {
                addr: h.addr,
                pipe: h.pipe.clone(),
                hostname: h.hostname.clone(),
                cluster: c.clone(),
            })
        })
    }

    /// Where it is, as Envoy prints a host's address.
    pub(crate) fn address(&self) -> String {
        self.pipe.as_ref().map_or_else(|| self.addr.to_string(), |p| p.to_string())
    }
}

/// The connection a session streams on: the ADS client, or the channel
/// the per-type streams share.
enum Conn {
    Ads(AggregatedDiscoveryServiceClient<tonic::transport::Channel>),
    PerType(tonic::transport::Channel),
    /// REST polls: each picks a host of the cluster.
    Rest(RestTimings),
}

impl Conn {
    async fn open(cfg: &AdsConfig, target: &Target) -> Result<Conn, String> {
        if let Some(rest) = &cfg.rest {
            return Ok(Conn::Rest(rest.clone()));
        }
        let ch = channel(target).await?;
        Ok(if cfg.aggregated {
            Conn::Ads(AggregatedDiscoveryServiceClient::new(ch).max_decoding_message_size(64 << 20))
        } else {
            Conn::PerType(ch)
        })
    }
}

/// A session's responses, from one stream or merged from several.
type Incoming<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send>>;

/// A gRPC channel to a host of a gRPC client cluster (a management server,
/// a metrics or load-report sink): plaintext HTTP/2, or over TLS when the
/// cluster has an `UpstreamTlsContext` (its CA, SNI and client certificate,
/// as for any upstream).
pub(crate) async fn channel(target: &Target) -> Result<tonic::transport::Channel, String> {
    let addr = target.addr;
    // `http` even for TLS or a Unix socket: the connectors below open the
    // stream (tonic would insist on its own TLS settings for an `https` URI).
    let authority = if target.pipe.is_some() { target.cluster.name.clone() } else { addr.to_string() };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30));
    let tls = match &target.cluster.tls {
        None => None,
        Some(tls) => {
            let connector = tls.connector().ok_or("the cluster's TLS secrets are not available")?;
            Some((connector, tls.server_name(addr.ip(), &target.hostname)))
        }
    };
    match (target.pipe.clone(), tls) {
        (None, None) => endpoint.connect().await.map_err(|e| format!("connect: {e}")),
        (Some(pipe), None) => {
            let connect = tower::service_fn(move |_uri: http::Uri| {
                let pipe = pipe.clone();
                async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(pipe.connect()?)) }
            });
            endpoint.connect_with_connector(connect).await.map_err(|e| format!("connect: {e:?}"))
        }
        (None, Some((connector, name))) => {
            let tls_connect = tower::service_fn(move |_uri: http::Uri| {
                let (connector, name) = (connector.clone(), name.clone());
                async move {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    let _ = tcp.set_nodelay(true);
                    let stream = connector.connect(name, tcp).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            });
            endpoint.connect_with_connector(tls_connect).await.map_err(|e| format!("connect over TLS: {e:?}"))
        }
        (Some(pipe), Some((connector, name))) => {
            let tls_connect = tower::service_fn(move |_uri: http::Uri| {
                let (connector, name, pipe) = (connector.clone(), name.clone(), pipe.clone());
                async move {
                    let stream = connector.connect(name, pipe.connect()?).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            });
            endpoint.connect_with_connector(tls_connect).await.map_err(|e| format!("connect over TLS: {e:?}"))
        }
    }
}

fn decode_all<T: Message + Default>(resources: &[Any], want: &str) -> Result<Vec<T>, String> {
    resources
        .iter()
        .map(|a| {
            if a.type_url != want {
                return Err(format!("resource type {} does not match {want}", a.type_url));
            }
            T::decode(a.value.as_slice()).map_err(|e| format!("cannot decode {want}: {e}"))
        })
        .collect()
}

/// One validator for bootstrap and xDS: schema rules, then what Legate implements.
fn check<T: Message + prost::Name>(msg: &T, name: &str) -> Result<(), String> {
    let Some(dynamic) = legate_api::load::to_dynamic(msg) else {
        return Err(format!("{name}: cannot read as {}", T::full_name()));
    };
    let mut problems: Vec<String> =
        legate_api::validate::validate(&dynamic, "").iter().map(|e| format!("{name}: {e}")).collect();
    problems.extend(legate_api::support::unsupported(&dynamic).iter().map(|e| format!("{name}: {e}")));
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The type a response is for, when it is one the client handles.
fn known_type(type_url: &str) -> Option<&'static str> {
    [CDS, EDS, LDS, RDS, SDS, RTDS].into_iter().find(|t| *t == type_url)
}

/// The named types' subscriptions as the runtime's RTDS layers, clusters
/// and listeners now ask for them.
fn named_subscriptions(shared: &Shared, d: &Dynamic) -> [(&'static str, BTreeSet<String>); 4] {
    [
        (RTDS, shared.runtime.rtds_names()),
        (SDS, shared.ctx.secrets.ads_names()),
        (EDS, d.eds_names(shared)),
        (RDS, d.rds_names(shared)),
    ]
}

/// After a response of `ty`: RTDS is ready once a layer received its
/// resource or one was refused (Envoy's init target is ready either way).
fn note_rtds(shared: &Shared, d: &mut Dynamic, ty: &str, result: &Result<(), String>) {
    if ty == RTDS && (result.is_err() || shared.runtime.rtds_names().iter().any(|n| shared.runtime.rtds_received(n))) {
        d.rtds_ready = true;
    }
}

/// Whether CDS and LDS may be asked for: no RTDS layer, or their first
/// resources arrived, or `rtds_timeout` passed since `since` (Envoy's init
/// manager starts the secondary clusters and listeners after RTDS).
fn rtds_settled(shared: &Shared, cfg: &AdsConfig, d: &mut Dynamic, since: Instant) -> bool {
    if cfg.rtds && !d.rtds_ready && cfg.rtds_timeout.is_some_and(|t| since.elapsed() >= t) {
        tracing::warn!("RTDS: initial fetch timed out; starting without it");
        shared.store.counter("runtime.init_fetch_timeout").inc();
        d.rtds_ready = true;
    }
    !cfg.rtds || d.rtds_ready
}

/// The next response of a session's stream. Every 500 ms without one, the
/// warming clusters and listeners whose wait is over are activated and
/// `None` comes back.
async fn next_response<T>(
    responses: &mut Incoming<T>,
    tick: &mut tokio::time::Interval,
    shared: &Shared,
    cfg: &AdsConfig,
    d: &mut Dynamic,
) -> Result<Option<T>, String> {
    tokio::select! {
        r = tokio_stream::StreamExt::next(responses) => match r {
            Some(Ok(r)) => Ok(Some(r)),
            None => Err("closed by the server".into()),
            Some(Err(e)) => Err(e.to_string()),
        },
        _ = tick.tick() => {
            d.activate_clusters(shared, Some(cfg.initial_fetch_timeout));
            let _ = d.activate_warm(shared, Some(cfg.initial_fetch_timeout));
            Ok(None)
        }
    }
}
