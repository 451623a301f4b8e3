//! The agent's command line and what it derives from it.

use anyhow::{bail, Context as _};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The control plane's API.
    #[arg(long, default_value = "http://127.0.0.1:9900")]
    pub server: String,
    /// The node this agent runs (the proxy's node id).
    #[arg(long)]
    pub node_id: String,
    /// The node's cluster.
    #[arg(long, default_value = "legate")]
    pub cluster: String,
    /// Which proxy to run: `legate` (this executable's `proxy`) or `envoy`.
    #[arg(long, default_value = "legate", value_parser = ["legate", "envoy"])]
    pub proxy: String,
    /// Envoy's executable, with `--proxy envoy`.
    #[arg(long, default_value = "envoy")]
    pub envoy_bin: PathBuf,
    /// The proxy's admin port (in the bootstrap; the agent probes `/ready` there).
    #[arg(long, default_value_t = 9901)]
    pub admin_port: u16,
    /// API token (`lgt_...`, editor role); also read from LEGATE_TOKEN.
    #[arg(long, env = "LEGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Reach an https:// control plane: trust this CA (PEM). Its proxy's
    /// xDS cluster then speaks TLS too, trusting the same CA.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Present this client certificate (PEM) to it (mutual TLS: `control-plane
    /// --client-ca`), on the API and on the proxy's xDS connection...
    #[arg(long, requires = "key_file", requires = "ca_file")]
    pub cert_file: Option<PathBuf>,
    /// ...with this private key (PEM).
    #[arg(long, requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// The name the control plane's certificate carries (the proxy's SNI
    /// on the xDS connection).
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Where the node runs, `REGION[/ZONE[/SUB_ZONE]]`: its bootstrap's
    /// `node.locality` (HDS gives its proxy the endpoints nearest to it).
    #[arg(long)]
    pub locality: Option<String>,
    /// The proxy's hot restart family; default: derived from the node id.
    #[arg(long)]
    pub base_id: Option<u64>,
    /// Where the bootstrap is written.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// The proxy's worker threads.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Passed to the proxy: drain time on SIGTERM and in a hot restart parent.
    #[arg(long = "drain-time-s", default_value_t = 10)]
    pub drain_time_s: u64,
    /// Passed to the proxy: when a hot restart parent is asked to exit.
    #[arg(long = "parent-shutdown-time-s", default_value_t = 15)]
    pub parent_shutdown_time_s: u64,
    /// How often the agent reports to the control plane.
    #[arg(long, default_value_t = 2000)]
    pub report_interval_ms: u64,
    /// Consecutive failed `/ready` probes (one a second) before a restart.
    #[arg(long, default_value_t = 3)]
    pub ready_failures: u32,
    /// Crash loop: this many restarts within --crash-window-s...
    #[arg(long, default_value_t = 5)]
    pub crash_restarts: usize,
    #[arg(long, default_value_t = 60)]
    pub crash_window_s: u64,
    /// ...stop restarting for this long.
    #[arg(long, default_value_t = 60)]
    pub crash_pause_s: u64,
    /// The proxy's log level.
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    pub log_level: String,
}

/// Which proxy the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    Legate,
    Envoy,
}

impl ProxyKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Legate => "legate",
            Self::Envoy => "envoy",
        }
    }
}

/// The agent's settings, checked.
pub struct Settings {
    pub server: String,
    pub node: String,
    pub cluster: String,
    pub kind: ProxyKind,
    /// The executable the proxy runs as.
    pub bin: PathBuf,
    pub admin_port: u16,
    pub token: Option<String>,
    /// TLS to an https:// control plane (API and the proxy's xDS).
    pub tls: crate::ctl::client::Tls,
    pub server_name: String,
    pub locality: Option<String>,
    pub base_id: u64,
    pub bootstrap: PathBuf,
    pub concurrency: Option<usize>,
    pub drain_time_s: u64,
    pub parent_shutdown_time_s: u64,
    pub report_interval: Duration,
    pub ready_failures: u32,
    pub crash_restarts: usize,
    pub crash_window: Duration,
    pub crash_pause: Duration,
    pub log_level: String,
}

impl Settings {
    pub fn from_args(a: AgentArgs) -> anyhow::Result<Self> {
        if a.node_id.is_empty() {
            bail!("--node-id must not be empty");
        }
        let kind = if a.proxy == "envoy" { ProxyKind::Envoy } else { ProxyKind::Legate };
        let bin = match kind {
            ProxyKind::Legate => std::env::current_exe().context("cannot find this executable")?,
            ProxyKind::Envoy => a.envoy_bin.clone(),
        };
        let work = a.work_dir.clone().unwrap_or_else(|| PathBuf::from(format!("legate-agent-{}", a.node_id)));
        std::fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;
        Ok(Self {
            server: a.server.trim_end_matches('/').to_string(),
            base_id: a.base_id.unwrap_or_else(|| derived_base_id(&a.node_id)),
            node: a.node_id,
            cluster: a.cluster,
            kind,
            bin,
            admin_port: a.admin_port,
            token: a.token,
            tls: crate::ctl::client::Tls { cacert: a.ca_file, cert: a.cert_file.zip(a.key_file) },
            server_name: a.server_name,
            locality: a.locality,
            bootstrap: work.join("bootstrap.yaml"),
            concurrency: a.concurrency,
            drain_time_s: a.drain_time_s,
            parent_shutdown_time_s: a.parent_shutdown_time_s,
            report_interval: Duration::from_millis(a.report_interval_ms.max(100)),
            ready_failures: a.ready_failures.max(1),
            crash_restarts: a.crash_restarts.max(1),
            crash_window: Duration::from_secs(a.crash_window_s),
            crash_pause: Duration::from_secs(a.crash_pause_s),
            log_level: a.log_level,
        })
    }
}

/// A base-id from the node id (FNV-1a), between 1000 and 60999: two agents
/// for different nodes on one host rarely share one; give `--base-id` to be sure.
fn derived_base_id(node: &str) -> u64 {
    let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    1000 + hash % 60_000
}
