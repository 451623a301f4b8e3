//! The `legate` binary: `proxy`, `validate`, `demo` and the sample `echo` upstream.

// The project keeps functions under about 100 lines (threshold in clippy.toml).
#![warn(clippy::too_many_lines)]

mod agent;
mod ctl;
mod demo;
mod echo;
mod metrics_load;
mod xds_load;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use legate_api::error::LoadError;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "legate", version, about = "An Envoy-compatible proxy and xDS control plane")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy on an Envoy v3 bootstrap (the file `envoy -c` takes).
    Proxy(ProxyArgs),
    /// Check a bootstrap without serving: exit 0 valid, 1 invalid, 3 valid but
    /// using something Legate does not implement yet.
    Validate(ConfigArgs),
    /// Start sample upstreams and a proxy in front of them, and print what to try.
    Demo(demo::DemoArgs),
    /// A sample upstream that echoes each request back as JSON.
    Echo(echo::EchoArgs),
    /// Run the control plane: xDS server, REST API, configuration store.
    ControlPlane(Box<ControlPlaneArgs>),
    /// Talk to the control plane: apply, get, delete, proxies, history, bootstrap.
    Ctl(ctl::CtlArgs),
    /// Run and supervise a node's proxy (`legate proxy` or Envoy) for the control plane.
    Agent(agent::AgentArgs),
    /// Simulated proxies for the control plane's scale benchmark (bench/xds-scale.sh).
    #[command(hide = true)]
    XdsLoad(xds_load::LoadArgs),
    /// Simulated proxies streaming metrics, for the monitoring cost benchmark (bench/metrics-scale.sh).
    #[command(hide = true)]
    MetricsLoad(metrics_load::MetricsLoadArgs),
}

#[derive(clap::Args)]
struct ControlPlaneArgs {
    /// gRPC address for xDS (plaintext).
    #[arg(long, default_value = "127.0.0.1:18000")]
    xds_addr: std::net::SocketAddr,
    /// REST API address.
    #[arg(long, default_value = "127.0.0.1:9900")]
    api_addr: std::net::SocketAddr,
    /// Where the SQLite store lives.
    #[arg(long, default_value = "./legate-data")]
    data_dir: std::path::PathBuf,
    /// Keep state in etcd so several replicas share it:
    /// `etcd://host:port[,host:port...]`, `etcds://...` over TLS; or `sqlite:DIR`.
    /// Default: SQLite in --data-dir.
    #[arg(long, value_parser = parse_store)]
    store: Option<legate_control::store::StoreSpec>,
    /// With `etcds://`: CA certificates (PEM) etcd's certificate must chain to
    /// (default: the built-in Mozilla roots).
    #[arg(long)]
    etcd_ca: Option<std::path::PathBuf>,
    /// With `etcds://`: the client certificate (PEM) shown to etcd...
    #[arg(long, requires = "etcd_key")]
    etcd_cert: Option<std::path::PathBuf>,
    /// ...and its private key (PEM).
    #[arg(long, requires = "etcd_cert")]
    etcd_key: Option<std::path::PathBuf>,
    /// Connections one client address may hold open to the xDS address at
    /// once (each carries at most 100 streams); 0: no bound.
    #[arg(long, default_value_t = legate_control::serve::xds::limits::MAX_CONNECTIONS_PER_ADDRESS)]
    xds_max_connections_per_address: usize,
    /// Encrypt secret material (private keys, passwords, generic secrets) in
    /// the store with this 32-byte key (raw, hex or base64), AES-256-GCM.
    #[arg(long)]
    secret_key_file: Option<std::path::PathBuf>,
    /// Apply the resource files in this folder whenever they change (GitOps).
    #[arg(long)]
    watch: Option<std::path::PathBuf>,
    /// Serve xDS and the API over TLS with this certificate chain (PEM)...
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// ...and this private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Require client certificates issued by this CA (PEM) on both listeners.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<std::path::PathBuf>,
    /// How often alert rules are evaluated (`1s`, `500ms`, ...).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    alert_interval: std::time::Duration,
    /// How often connected proxies that name their admin address and do not
    /// stream metrics are scraped at `/stats/prometheus`.
    #[arg(long, default_value = "5s", value_parser = parse_interval)]
    scrape_interval: std::time::Duration,
    /// How long the fleet's series are kept: RES:KEEP for services at a fine
    /// resolution, then RES:KEEP at a coarse one (proxies: the fine one, at most 1h).
    #[arg(long, default_value = "10s:24h,5m:30d")]
    metrics_retention: legate_control::monitor::Retention,
    /// Failed authentications (401) from one client address that lock it
    /// out of the API (429) ...
    #[arg(long, default_value_t = 10)]
    auth_failure_limit: u32,
    /// ...for this long (also the window they are counted in).
    #[arg(long, default_value = "60s", value_parser = parse_interval)]
    auth_lockout: std::time::Duration,
    /// With several replicas on etcd: HOST:PORT the other replicas reach
    /// this one's API at, to merge the fleet's figures (default: --api-addr,
    /// 127.0.0.1 for 0.0.0.0).
    #[arg(long)]
    advertise_api: Option<String>,
    #[command(flatten)]
    fault: FaultArgs,
    /// With several replicas and TLS: CA certificates (PEM) the other
    /// replicas' API certificates must chain to (default: --client-ca).
    #[arg(long, requires = "tls_cert")]
    peer_ca: Option<std::path::PathBuf>,
    /// CA certificates (PEM) that `https://` webhooks — alert receivers,
    /// Alertmanagers, release gates — must chain to (default: the Mozilla
    /// root certificates built into the binary). `--gate-ca` is its old name.
    #[arg(long, alias = "gate-ca")]
    webhook_ca: Option<std::path::PathBuf>,
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    log_level: String,
}

/// The control plane's options from its flags.
fn control_options(args: ControlPlaneArgs) -> legate_control::Options {
    legate_control::Options {
        xds_addr: args.xds_addr,
        api_addr: args.api_addr,
        data_dir: args.data_dir,
        store: args.store,
        store_settings: legate_control::store::StoreSettings {
            etcd_tls: legate_control::store::etcd_tls::EtcdTlsFiles {
                ca: args.etcd_ca,
                cert: args.etcd_cert,
                key: args.etcd_key,
            },
            secret_key_file: args.secret_key_file,
        },
        watch: args.watch,
        tls: args.tls_cert.zip(args.tls_key).map(|(cert, key)| legate_control::serve::tls::TlsFiles {
            cert,
            key,
            client_ca: args.client_ca,
        }),
        alert_period: Some(args.alert_interval),
        scrape_period: Some(args.scrape_interval),
        metrics_retention: args.metrics_retention,
        auth_lockout: legate_control::serve::api::guard::Lockout {
            limit: args.auth_failure_limit.max(1),
            duration: args.auth_lockout,
        },
        fault: args.fault.settings(),
        webhook_ca: args.webhook_ca,
        advertise_api: args.advertise_api,
        xds_max_connections_per_address: args.xds_max_connections_per_address,
        peer_ca: args.peer_ca,
    }
}

/// Abnormal nodes: detection thresholds and repair.
#[derive(clap::Args)]
struct FaultArgs {
    /// How long a node must be down, or lag behind the revision it was sent,
    /// before it is abnormal (a NACK or a crash loop is at once).
    #[arg(long, default_value = "30s", value_parser = parse_interval)]
    abnormal_after: std::time::Duration,
    /// How long a node that reported metrics may stay silent before it is abnormal.
    #[arg(long, default_value = "60s", value_parser = parse_interval)]
    abnormal_silence: std::time::Duration,
    /// Restart a node through its agent once it has been abnormal this long;
    /// `off`: never (abnormal nodes stay isolated until they recover).
    #[arg(long, default_value = "60s", value_parser = parse_optional_interval)]
    repair_after: RepairAfter,
    /// Repairs in progress at most (restarted and not yet verified).
    #[arg(long, default_value_t = 1)]
    repair_max_concurrent: usize,
    /// The least time between two repairs started, fleet-wide.
    #[arg(long, default_value = "30s", value_parser = parse_interval)]
    repair_interval: std::time::Duration,
    /// How long after its restart a node must be normal again; if not, the
    /// repair failed: the node stays isolated and `repair_failed` counts it.
    #[arg(long, default_value = "60s", value_parser = parse_interval)]
    repair_verify: std::time::Duration,
}

impl FaultArgs {
    fn settings(&self) -> legate_control::fault::Settings {
        use legate_control::fault::{detect::Thresholds, repair::RepairSettings, Settings};
        Settings {
            thresholds: Thresholds { after: self.abnormal_after, silence: self.abnormal_silence },
            repair: RepairSettings {
                after: self.repair_after.0,
                max_concurrent: self.repair_max_concurrent.max(1),
                interval: self.repair_interval,
                verify: self.repair_verify,
            },
            ..Settings::default()
        }
    }
}

/// `--repair-after`: a time, or `off`.
#[derive(Clone, Copy)]
struct RepairAfter(Option<std::time::Duration>);

fn parse_optional_interval(s: &str) -> Result<RepairAfter, String> {
    if s == "off" {
        return Ok(RepairAfter(None));
    }
    parse_interval(s).map(|d| RepairAfter(Some(d)))
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_millis(50) {
        return Err("at least 50ms".into());
    }
    Ok(d)
}

#[derive(clap::Args, Clone)]
struct ConfigArgs {
    /// Path to the bootstrap (YAML or JSON).
    #[arg(short = 'c', long = "config-path")]
    config_path: Option<String>,
    /// Bootstrap YAML given inline; merged over --config-path when both are set.
    #[arg(long = "config-yaml")]
    config_yaml: Option<String>,
}

#[derive(clap::Args)]
struct ProxyArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Worker threads (Envoy's default: the number of hardware threads).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Names the hot restart sockets: processes that hand over to each other
    /// share it; unrelated proxies on one host need different ones.
    #[arg(long = "base-id", default_value_t = 0)]
    base_id: u64,
    /// Hot restart: 0 for the first process; one more than the running
    /// process's epoch (same --base-id) to take over its sockets.
    #[arg(long = "restart-epoch", default_value_t = 0)]
    restart_epoch: u32,
    /// As Envoy's flag: no hot restart socket is claimed and none is taken over.
    #[arg(long = "disable-hot-restart", conflicts_with = "restart_epoch")]
    disable_hot_restart: bool,
    /// Seconds to drain connections on SIGTERM, and in a hot restart parent.
    #[arg(long = "drain-time-s", default_value_t = 600)]
    drain_time_s: u64,
    /// Hot restart: seconds after the child starts before it asks its parent to exit.
    #[arg(long = "parent-shutdown-time-s", default_value_t = 900)]
    parent_shutdown_time_s: u64,
    /// How draining connections are asked to close: `gradual` or `immediate`.
    #[arg(long = "drain-strategy", default_value = "gradual", value_parser = ["gradual", "immediate"])]
    drain_strategy: String,
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    log_level: String,
    #[arg(long = "service-node")]
    service_node: Option<String>,
    #[arg(long = "service-cluster")]
    service_cluster: Option<String>,
    /// `serve` (default) or `validate`.
    #[arg(long, default_value = "serve")]
    mode: String,
}

fn parse_store(s: &str) -> Result<legate_control::store::StoreSpec, String> {
    legate_control::store::StoreSpec::parse(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => validate(&args),
        Command::Proxy(args) => {
            if args.mode == "validate" {
                return validate(&args.config);
            }
            if args.mode != "serve" {
                eprintln!("error: --mode must be serve or validate");
                return ExitCode::from(1);
            }
            init_logging(&args.log_level);
            match run_proxy(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Demo(args) => {
            init_logging("info");
            match demo::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::ControlPlane(args) => {
            init_logging(&args.log_level);
            let opts = control_options(*args);
            let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(legate_control::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Ctl(args) => match ctl::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Agent(args) => {
            init_logging("info");
            match agent::run(args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::XdsLoad(args) => match xds_load::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::MetricsLoad(args) => match metrics_load::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Echo(args) => match echo::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

pub fn init_logging(level: &str) {
    let level = match level {
        "trace" | "debug" | "info" | "warn" | "error" => level,
        "warning" => "warn",
        "critical" | "off" => "error",
        _ => "info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// The bootstrap text: the file, the inline YAML, or the inline YAML merged
/// over the file (as Envoy's `--config-yaml` does).
fn config_text(args: &ConfigArgs) -> anyhow::Result<String> {
    let file = match &args.config_path {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("cannot read {p}"))?),
        None => None,
    };
    match (file, &args.config_yaml) {
        (Some(f), None) => Ok(f),
        (None, Some(y)) => Ok(y.clone()),
        (Some(f), Some(y)) => {
            let mut base = legate_api::load::parse_text(&f)?;
            let over = legate_api::load::parse_text(y)?;
            merge(&mut base, over);
            Ok(serde_json::to_string(&base)?)
        }
        (None, None) => anyhow::bail!("one of -c/--config-path or --config-yaml is required"),
    }
}

/// Protobuf MergeFrom semantics on JSON: objects merge, lists append, scalars replace.
fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    use serde_json::Value;
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) => b.extend(o),
        (b, o) => *b = o,
    }
}

fn validate(args: &ConfigArgs) -> ExitCode {
    let text = match config_text(args) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    let name = args.config_path.clone().unwrap_or_else(|| "--config-yaml".into());
    let report = legate_api::load::check_bootstrap(&text);
    if !report.errors.is_empty() {
        eprintln!("configuration '{name}' is invalid:");
        for e in &report.errors {
            eprintln!("  {e}");
        }
        return ExitCode::from(1);
    }
    if !report.unsupported.is_empty() {
        eprintln!("configuration '{name}' is valid for Envoy, but Legate does not implement:");
        for e in &report.unsupported {
            eprintln!("  {e}");
        }
        return ExitCode::from(3);
    }
    println!("configuration '{name}' OK");
    ExitCode::SUCCESS
}

fn run_proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let text = config_text(&args.config)?;
    let loaded = match legate_api::load::load_bootstrap(&text) {
        Ok(l) => l,
        Err(LoadError::Invalid(errors)) => {
            let list: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
            anyhow::bail!("invalid configuration:\n{}", list.join("\n"));
        }
        Err(e) => return Err(e.into()),
    };
    let unsupported = legate_api::support::unsupported(&loaded.dynamic);
    if !unsupported.is_empty() {
        let list: Vec<String> = unsupported.iter().map(|e| format!("  {e}")).collect();
        anyhow::bail!("the configuration uses what Legate does not implement yet:\n{}", list.join("\n"));
    }
    let mut loaded = loaded;
    // --service-node / --service-cluster fill the node identity as in Envoy.
    if args.service_node.is_some() || args.service_cluster.is_some() {
        let node = loaded.bootstrap.node.get_or_insert_with(Default::default);
        if let Some(n) = &args.service_node {
            node.id.clone_from(n);
        }
        if let Some(c) = &args.service_cluster {
            node.cluster.clone_from(c);
        }
    }
    let concurrency =
        args.concurrency.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let options = legate_proxy::server::Options {
        concurrency,
        drain_time: Duration::from_secs(args.drain_time_s),
        base_id: args.base_id,
        log_level: args.log_level.clone(),
        service_node: args.service_node.clone(),
        service_cluster: args.service_cluster.clone(),
        config_path: args.config.config_path.clone(),
        restart_epoch: args.restart_epoch,
        hot_restart_disabled: args.disable_hot_restart,
        parent_shutdown_time: Duration::from_secs(args.parent_shutdown_time_s),
        drain_strategy_gradual: args.drain_strategy == "gradual",
    };
    legate_proxy::server::run(loaded, options)?;
    Ok(())
}
