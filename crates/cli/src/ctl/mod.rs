//! `legate ctl`: the control plane's REST API from the command line.

pub(crate) mod client;
mod release;
mod render;
mod rollout;

use client::{read_input, urlencode, Api, Tls};
pub use legate_control::discovery::bootstrap::{bootstrap_yaml, with_xds_tls};
use render::{diff_text, print};

use anyhow::{bail, Context as _};
use serde_json::json;

#[derive(clap::Args)]
pub struct CtlArgs {
    /// The control plane's API.
    #[arg(long, global = true, default_value = "http://127.0.0.1:9900")]
    pub server: String,
    /// API token (`lgt_...`); also read from LEGATE_TOKEN.
    #[arg(long, global = true, env = "LEGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust this CA (PEM) for an https:// --server.
    #[arg(long, global = true)]
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for a control plane that requires one...
    #[arg(long, global = true, requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// ...and its private key (PEM).
    #[arg(long, global = true, requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// Output: table (for people), json or yaml (for scripts).
    #[arg(short = 'o', long, global = true, default_value = "table")]
    pub output: String,
    #[command(subcommand)]
    pub command: CtlCommand,
}

#[derive(clap::Subcommand)]
pub enum CtlCommand {
    /// Create or update resources from a file, a directory of files, or `-` (stdin).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: String,
        #[arg(short = 'm', long, default_value = "")]
        message: String,
        /// Validate and show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Apply even when a reference is unresolved (a route to a cluster,
        /// an RDS, EDS or SDS name no resource defines for the proxies
        /// receiving it): for resources the proxies' bootstraps hold.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        stage: rollout::StageArgs,
    },
    /// Show resources: `get clusters`, `get cluster NAME`, `get services`; and what a
    /// proxy receives, compiled resources included: `get envoy clusters [NAME] --node ID`.
    Get {
        kind: String,
        name: Option<String>,
        /// With `get envoy KIND`: one resource's name.
        resource: Option<String>,
        /// With `get envoy`: the node id whose view to show.
        #[arg(long)]
        node: Option<String>,
        /// With `get envoy`: the node's cluster.
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Delete one resource.
    Delete {
        kind: String,
        name: String,
        #[arg(short = 'm', long, default_value = "")]
        message: String,
    },
    /// Every connected proxy and its config state; with a node agent, its process.
    Proxies,
    /// Alert rules (AlertRule resources) with their state, and what fired and resolved lately.
    Alerts,
    /// Abnormal nodes: each cause with its evidence, the endpoints isolated
    /// from EDS (or held back by the service's cap), and the node's repair.
    Abnormal,
    /// Releases (canary): start, list, status, pause, resume, promote, abort.
    Release {
        #[command(subcommand)]
        command: release::ReleaseCommand,
    },
    /// Hot restart a node's proxy through its agent (`legate agent`): epoch N+1
    /// takes the sockets over from epoch N.
    Restart { node: String },
    /// Drain a node's proxy through its agent: it fails its health checks
    /// (`/healthcheck/fail`), so load balancers move traffic away.
    Drain { node: String },
    /// The revision history.
    History,
    /// What changed between revision REV and REV2 (default: now), field by field.
    Diff { rev: u64, rev2: Option<u64> },
    /// Restore revision REV's state, as a new revision.
    Rollback {
        rev: u64,
        #[arg(short = 'm', long, default_value = "")]
        message: String,
    },
    /// API tokens: create (shown once), list, revoke. The first token closes the API.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The audit log: every change and every denied request, with its author.
    Audit,
    /// Service instances in the registry (registered over the API, kept alive by heartbeats).
    Instances,
    /// The fleet's traffic over a window: `top services` (per upstream
    /// cluster, summed over proxies) or `top proxies`.
    Top {
        #[arg(value_enum)]
        what: TopWhat,
        /// How far back: 30s, 5m, 1h, 7d...
        #[arg(long, default_value = "5m")]
        window: String,
    },
    /// Print shell completions (bash, zsh, fish, ...).
    Completions { shell: clap_complete::Shell },
    /// Print a bootstrap that points a proxy (Envoy or Legate) at this control plane over ADS.
    Bootstrap {
        #[arg(long)]
        node_id: String,
        #[arg(long, default_value = "legate")]
        node_cluster: String,
        /// The xDS address proxies dial.
        #[arg(long, default_value = "127.0.0.1:18000")]
        xds: String,
        /// Use incremental (delta) xDS.
        #[arg(long)]
        delta: bool,
        /// Offer to check endpoints for the control plane (`hds_config`:
        /// Health Discovery Service over the xDS cluster).
        #[arg(long)]
        hds: bool,
        /// Where the node runs, `REGION[/ZONE[/SUB_ZONE]]` (`node.locality`;
        /// HDS gives a checker the endpoints nearest to it).
        #[arg(long)]
        locality: Option<String>,
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// Reach a TLS control plane: trust this CA (PEM file path, as the proxy sees it).
        #[arg(long)]
        xds_ca: Option<String>,
        /// Present this client certificate (PEM path) to it...
        #[arg(long, requires = "xds_key")]
        xds_cert: Option<String>,
        /// ...with this key (PEM path).
        #[arg(long, requires = "xds_cert")]
        xds_key: Option<String>,
        /// The name the control plane's certificate carries.
        #[arg(long, default_value = "localhost")]
        xds_sni: String,
    },
}

#[derive(clap::ValueEnum, Clone, Copy)]
pub enum TopWhat {
    Services,
    Proxies,
    /// Virtual clusters of virtual hosts (`virtual_clusters` in a route configuration).
    Routes,
}

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    Create {
        /// viewer (read), editor (apply/delete), admin (tokens, rollback, audit),
        /// or instance (register and heartbeat instances of `--service` only).
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "")]
        name: String,
        /// The service an instance token may register.
        #[arg(long, default_value = "")]
        service: String,
    },
    List,
    Revoke {
        id: String,
    },
}

/// Runs one `legate ctl` command against the control plane's API.
pub fn run(args: CtlArgs) -> anyhow::Result<()> {
    let base = args.server.trim_end_matches('/').to_string();
    let tls = Tls { cacert: args.cacert.clone(), cert: args.cert.clone().zip(args.key.clone()) };
    let api = Api { tls, token: args.token.clone(), base, timeout: None };
    let out = args.output.as_str();
    let base = &api.base;
    match args.command {
        CtlCommand::Apply { file, message, dry_run, force, stage } => {
            apply(&api, out, &file, message, (dry_run, force), stage)
        }
        CtlCommand::Get { kind, name, resource, node, cluster } if kind == "envoy" => {
            let Some(envoy_kind) = name else { bail!("usage: legate ctl get envoy KIND [NAME] --node ID") };
            let mut url = format!("{base}/v1/envoy/{envoy_kind}?");
            for (k, v) in [("node", node), ("cluster", cluster), ("name", resource)] {
                if let Some(v) = v {
                    url.push_str(&format!("{k}={}&", urlencode(&v)));
                }
            }
            let v = api.call("GET", &url, None)?;
            match out {
                "json" => println!("{}", serde_json::to_string_pretty(&v)?),
                // Envoy resources read best as YAML; what only Legate
                // proxies take is said in comments first.
                _ => print!("{}{}", render::legate_only_notes(&v["items"]), serde_yaml_ng::to_string(&v["items"])?),
            }
            Ok(())
        }
        CtlCommand::Get { kind, name, .. } => {
            let url = match &name {
                Some(n) => format!("{base}/v1/resources/{kind}/{n}"),
                None => format!("{base}/v1/resources/{kind}"),
            };
            print(out, &api.call("GET", &url, None)?, render::resources)
        }
        CtlCommand::Delete { kind, name, message } => {
            let url = format!("{base}/v1/resources/{kind}/{name}?message={}", urlencode(&message));
            let v = api.call("DELETE", &url, None)?;
            print(out, &v, |v| format!("{kind}/{name} deleted, revision {}\n", v["revision"]))
        }
        CtlCommand::Proxies => print(out, &api.call("GET", &format!("{base}/v1/proxies"), None)?, render::proxies),
        CtlCommand::Alerts => print(out, &api.call("GET", &format!("{base}/v1/alerts"), None)?, render::alerts),
        CtlCommand::Abnormal => print(out, &api.call("GET", &format!("{base}/v1/abnormal"), None)?, render::abnormal),
        CtlCommand::Restart { node } => agent_command(&api, out, &node, "restart"),
        CtlCommand::Drain { node } => agent_command(&api, out, &node, "drain"),
        CtlCommand::History => print(out, &api.call("GET", &format!("{base}/v1/revisions"), None)?, render::history),
        CtlCommand::Diff { rev, rev2 } => {
            let url = match rev2 {
                Some(r2) => format!("{base}/v1/diff?from={rev}&to={r2}"),
                None => format!("{base}/v1/diff?from={rev}"),
            };
            print(out, &api.call("GET", &url, None)?, |v| diff_text(&v["changes"]))
        }
        CtlCommand::Rollback { rev, message } => {
            let body = json!({"revision": rev, "message": message});
            let v = api.call("POST", &format!("{base}/v1/rollback"), Some(body))?;
            print(out, &v, |v| render::rolled_back(v, rev))
        }
        CtlCommand::Token { command } => token(&api, out, command),
        CtlCommand::Release { command } => release::run(&api, out, command),
        CtlCommand::Top { what, window } => top(&api, out, what, &window),
        CtlCommand::Instances => {
            print(out, &api.call("GET", &format!("{base}/v1/instances"), None)?, render::instances)
        }
        CtlCommand::Audit => print(out, &api.call("GET", &format!("{base}/v1/audit"), None)?, render::audit),
        CtlCommand::Completions { shell } => {
            let mut cmd = <crate::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "legate", &mut std::io::stdout());
            Ok(())
        }
        CtlCommand::Bootstrap {
            node_id,
            node_cluster,
            xds,
            delta,
            hds,
            locality,
            admin_port,
            xds_ca,
            xds_cert,
            xds_key,
            xds_sni,
        } => {
            let (host, port) = xds.rsplit_once(':').context("--xds must be HOST:PORT")?;
            let mut yaml = bootstrap_yaml(&node_id, &node_cluster, host, port, delta, admin_port);
            if hds {
                yaml = legate_control::discovery::bootstrap::with_hds(&yaml);
            }
            if let Some(l) = locality {
                yaml = legate_control::discovery::bootstrap::with_locality(&yaml, &l).map_err(anyhow::Error::msg)?;
            }
            if let Some(ca) = xds_ca {
                yaml = with_xds_tls(&yaml, &ca, xds_cert.zip(xds_key), &xds_sni);
            }
            print!("{yaml}");
            Ok(())
        }
    }
}

/// `legate ctl apply`: one revision, or a staged rollout followed to its end.
fn apply(
    api: &Api,
    out: &str,
    file: &str,
    message: String,
    (dry_run, force): (bool, bool),
    stage: rollout::StageArgs,
) -> anyhow::Result<()> {
    let base = &api.base;
    let mut body = json!({"text": read_input(file)?, "message": message, "dry_run": dry_run, "force": force});
    if let Some(r) = stage.body() {
        body["rollout"] = r;
    }
    let v = api.call("POST", &format!("{base}/v1/apply"), Some(body))?;
    if v["rollout"].is_object() {
        if out == "table" {
            print!("{}", render::applied(&v, dry_run));
        }
        // Waits for the outcome; json and yaml print the rollout's record.
        return rollout::follow(api, out, &v, stage.no_wait);
    }
    print(out, &v, |v| render::applied(v, dry_run))
}

/// `legate ctl top services|proxies|routes`: the list as the API gives it (json,
/// yaml) or a table.
fn top(api: &Api, out: &str, what: TopWhat, window: &str) -> anyhow::Result<()> {
    let base = &api.base;
    let (path, table): (&str, fn(&serde_json::Value) -> String) = match what {
        TopWhat::Services => ("services", render::top_services),
        TopWhat::Proxies => ("proxies", render::top_proxies),
        TopWhat::Routes => ("routes", render::top_routes),
    };
    let v = api.call("GET", &format!("{base}/v1/top/{path}?window={}", urlencode(window)), None)?;
    print(out, &v, table)
}

/// Queues `action` for `node`'s agent, which takes it with its next report.
fn agent_command(api: &Api, out: &str, node: &str, action: &str) -> anyhow::Result<()> {
    let url = format!("{}/v1/agents/{}/commands", api.base, urlencode(node));
    let v = api.call("POST", &url, Some(json!({"action": action})))?;
    print(out, &v, |v| {
        format!("{action} of {node} queued (command {}); its agent takes it with its next report\n", v["command"])
    })
}

/// `legate ctl token create|list|revoke`.
fn token(api: &Api, out: &str, command: TokenCommand) -> anyhow::Result<()> {
    let base = &api.base;
    match command {
        TokenCommand::Create { role, name, service } => {
            let body = json!({"role": role, "name": name, "service": service});
            let v = api.call("POST", &format!("{base}/v1/tokens"), Some(body))?;
            print(out, &v, render::token_created)
        }
        TokenCommand::List => print(out, &api.call("GET", &format!("{base}/v1/tokens"), None)?, render::tokens),
        TokenCommand::Revoke { id } => {
            let v = api.call("DELETE", &format!("{base}/v1/tokens/{id}"), None)?;
            print(out, &v, |_| format!("token {id} revoked\n"))
        }
    }
}
