//! `legate ctl`: the control plane's REST API from the command line.

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

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
    /// Every connected proxy and its config state.
    Proxies,
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

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    Create {
        /// viewer (read), editor (apply/delete), admin (tokens, rollback, audit).
        #[arg(long)]
        role: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    List,
    Revoke {
        id: String,
    },
}

fn read_input(path: &str) -> anyhow::Result<String> {
    if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        return Ok(s);
    }
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {path}"))?;
    if meta.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
            .collect();
        files.sort();
        let mut all = String::new();
        for f in files {
            all.push_str(&std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?);
            all.push_str("\n---\n");
        }
        return Ok(all);
    }
    Ok(std::fs::read_to_string(path)?)
}

/// TLS settings for an https:// control plane.
#[derive(Default, Clone)]
struct Tls {
    cacert: Option<std::path::PathBuf>,
    cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

fn agent(tls: &Tls) -> anyhow::Result<ureq::Agent> {
    use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};
    let mut cfg = TlsConfig::builder();
    if let Some(ca) = &tls.cacert {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        let roots: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        cfg = cfg.root_certs(RootCerts::Specific(std::sync::Arc::new(roots)));
    }
    if let Some((cert, key)) = &tls.cert {
        let chain =
            Certificate::from_pem(&std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?)?;
        let key = PrivateKey::from_pem(&std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?)?;
        cfg = cfg.client_cert(Some(ClientCert::new_with_certs(&[chain], key)));
    }
    Ok(ureq::Agent::config_builder().http_status_as_error(false).tls_config(cfg.build()).build().into())
}

fn call(tls: &Tls, token: Option<&str>, method: &str, url: &str, body: Option<Value>) -> anyhow::Result<Value> {
    let agent = agent(tls)?;
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut resp = match (method, body) {
        ("POST", Some(b)) => {
            let mut r = agent.post(url);
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            r.send_json(b)
        }
        ("DELETE", _) => {
            let mut r = agent.delete(url);
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            r.call()
        }
        _ => {
            let mut r = agent.get(url);
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            r.call()
        }
    }
    .with_context(|| format!("cannot reach the control plane at {url}"))?;
    let status = resp.status();
    let v: Value = resp.body_mut().read_json().unwrap_or(Value::Null);
    if !status.is_success() {
        let mut msg = format!("{} ({})", v["message"].as_str().unwrap_or("request failed"), status.as_u16());
        if let Some(errs) = v["errors"].as_array() {
            for e in errs {
                msg.push_str(&format!(
                    "\n  {}: {}: {}",
                    e["resource"].as_str().unwrap_or(""),
                    e["path"].as_str().unwrap_or(""),
                    e["reason"].as_str().unwrap_or("")
                ));
            }
        }
        bail!(msg);
    }
    Ok(v)
}

fn print(output: &str, v: &Value, table: impl FnOnce(&Value) -> String) -> anyhow::Result<()> {
    match output {
        "json" => println!("{}", serde_json::to_string_pretty(v)?),
        "yaml" => print!("{}", serde_yaml_ng::to_string(v)?),
        _ => print!("{}", table(v)),
    }
    Ok(())
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
            + "\n"
    };
    let mut s = line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        s.push_str(&line(r));
    }
    s
}

pub fn run(args: CtlArgs) -> anyhow::Result<()> {
    let base = args.server.trim_end_matches('/');
    let token = args.token.clone();
    let tls = Tls { cacert: args.cacert.clone(), cert: args.cert.clone().zip(args.key.clone()) };
    let call = |method: &str, url: &str, body: Option<Value>| call(&tls, token.as_deref(), method, url, body);
    match args.command {
        CtlCommand::Apply { file, message, dry_run } => {
            let text = read_input(&file)?;
            let v = call(
                "POST",
                &format!("{base}/v1/apply"),
                Some(json!({"text": text, "message": message, "dry_run": dry_run})),
            )?;
            print(&args.output, &v, |v| {
                let mut s = String::new();
                for (what, key) in [("created", "created"), ("updated", "updated"), ("unchanged", "unchanged")] {
                    for r in v[key].as_array().into_iter().flatten() {
                        s.push_str(&format!(
                            "{} {what}{}\n",
                            r.as_str().unwrap_or(""),
                            if dry_run { " (dry run)" } else { "" }
                        ));
                    }
                }
                if dry_run {
                    s.push_str(&diff_text(&v["diff"]));
                    let proxies: Vec<&str> =
                        v["proxies"].as_array().into_iter().flatten().filter_map(|p| p.as_str()).collect();
                    s.push_str(&format!(
                        "proxies that would receive it: {}\n",
                        if proxies.is_empty() { "none connected".to_string() } else { proxies.join(", ") }
                    ));
                }
                if let Some(rev) = v["revision"].as_u64() {
                    s.push_str(&format!("revision {rev}\n"));
                }
                s
            })
        }
        CtlCommand::Get { kind, name, resource, node, cluster } if kind == "envoy" => {
            let Some(envoy_kind) = name else { anyhow::bail!("usage: legate ctl get envoy KIND [NAME] --node ID") };
            let mut url = format!("{base}/v1/envoy/{envoy_kind}?");
            for (k, v) in [("node", node), ("cluster", cluster), ("name", resource)] {
                if let Some(v) = v {
                    url.push_str(&format!("{k}={}&", urlencode(&v)));
                }
            }
            let v = call("GET", &url, None)?;
            match args.output.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&v)?),
                // Envoy resources read best as YAML.
                _ => print!("{}", serde_yaml_ng::to_string(&v["items"])?),
            }
            Ok(())
        }
        CtlCommand::Get { kind, name, .. } => {
            let url = match &name {
                Some(n) => format!("{base}/v1/resources/{kind}/{n}"),
                None => format!("{base}/v1/resources/{kind}"),
            };
            let v = call("GET", &url, None)?;
            print(&args.output, &v, |v| {
                let items: Vec<Value> = match v["items"].as_array() {
                    Some(a) => a.clone(),
                    None => vec![v.clone()],
                };
                // Secrets get a column with their certificates' earliest expiry.
                let expiry = items.iter().any(|i| i["kind"] == "Secret");
                let rows = items
                    .iter()
                    .map(|i| {
                        let mut row = vec![
                            i["kind"].as_str().unwrap_or("").to_string(),
                            i["metadata"]["name"].as_str().unwrap_or("").to_string(),
                            i["version"].as_str().unwrap_or("").to_string(),
                            if i["metadata"]["nodes"].is_null() {
                                "all".into()
                            } else {
                                i["metadata"]["nodes"].to_string()
                            },
                        ];
                        if expiry {
                            row.push(i["status"]["expiration_time"].as_str().unwrap_or("-").to_string());
                        }
                        row
                    })
                    .collect();
                if expiry {
                    table(&["KIND", "NAME", "VERSION", "NODES", "EXPIRES"], rows)
                } else {
                    table(&["KIND", "NAME", "VERSION", "NODES"], rows)
                }
            })
        }
        CtlCommand::Delete { kind, name, message } => {
            let v =
                call("DELETE", &format!("{base}/v1/resources/{kind}/{name}?message={}", urlencode(&message)), None)?;
            print(&args.output, &v, |v| format!("{kind}/{name} deleted, revision {}\n", v["revision"]))
        }
        CtlCommand::Proxies => {
            let v = call("GET", &format!("{base}/v1/proxies"), None)?;
            print(&args.output, &v, |v| {
                let mut rows = Vec::new();
                for p in v["proxies"].as_array().into_iter().flatten() {
                    let types = p["types"].as_object().cloned().unwrap_or_default();
                    let acked: Vec<String> = types
                        .iter()
                        .map(|(k, t)| format!("{k}={}", short(t["acked_version"].as_str().unwrap_or("-"))))
                        .collect();
                    let nack: Vec<String> = types
                        .iter()
                        .filter_map(|(k, t)| t["last_nack"]["error"].as_str().map(|e| format!("{k}: {e}")))
                        .collect();
                    rows.push(vec![
                        p["node"]["id"].as_str().unwrap_or("").to_string(),
                        p["node"]["cluster"].as_str().unwrap_or("").to_string(),
                        p["node"]["user_agent"].as_str().unwrap_or("").to_string(),
                        p["mode"].as_str().unwrap_or("").to_string(),
                        p["connected_since"].as_str().unwrap_or("").to_string(),
                        acked.join(" "),
                        if nack.is_empty() { "-".into() } else { nack.join("; ") },
                    ]);
                }
                table(&["NODE", "CLUSTER", "BUILD", "MODE", "CONNECTED SINCE", "ACKED", "LAST NACK"], rows)
            })
        }
        CtlCommand::History => {
            let v = call("GET", &format!("{base}/v1/revisions"), None)?;
            print(&args.output, &v, |v| {
                let rows = v["revisions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        vec![
                            r["revision"].to_string(),
                            r["created_at"].as_str().unwrap_or("").to_string(),
                            r["author"].as_str().unwrap_or("").to_string(),
                            r["message"].as_str().unwrap_or("").to_string(),
                            r["changes"]
                                .as_array()
                                .map(|c| c.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "))
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(&["REVISION", "TIME", "AUTHOR", "MESSAGE", "CHANGES"], rows)
            })
        }
        CtlCommand::Diff { rev, rev2 } => {
            let url = match rev2 {
                Some(r2) => format!("{base}/v1/diff?from={rev}&to={r2}"),
                None => format!("{base}/v1/diff?from={rev}"),
            };
            let v = call("GET", &url, None)?;
            print(&args.output, &v, |v| diff_text(&v["changes"]))
        }
        CtlCommand::Rollback { rev, message } => {
            let v = call("POST", &format!("{base}/v1/rollback"), Some(json!({"revision": rev, "message": message})))?;
            print(&args.output, &v, |v| {
                let mut s = diff_text(&v["diff"]);
                match v["revision"].as_u64() {
                    Some(r) => s.push_str(&format!("revision {r} restores revision {rev}\n")),
                    None => s.push_str(&format!("already at revision {rev}'s state; nothing to do\n")),
                }
                s
            })
        }
        CtlCommand::Token { command } => match command {
            TokenCommand::Create { role, name } => {
                let v = call("POST", &format!("{base}/v1/tokens"), Some(json!({"role": role, "name": name})))?;
                print(&args.output, &v, |v| {
                    format!(
                        "token {} ({}, role {}):\n{}\nIt is shown only now; keep it (LEGATE_TOKEN or --token).\n",
                        v["id"].as_str().unwrap_or(""),
                        v["name"].as_str().unwrap_or(""),
                        v["role"].as_str().unwrap_or(""),
                        v["token"].as_str().unwrap_or("")
                    )
                })
            }
            TokenCommand::List => {
                let v = call("GET", &format!("{base}/v1/tokens"), None)?;
                print(&args.output, &v, |v| {
                    let rows = v["tokens"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|t| {
                            ["id", "name", "role", "created_at"]
                                .iter()
                                .map(|k| t[*k].as_str().unwrap_or("").to_string())
                                .collect()
                        })
                        .collect();
                    table(&["ID", "NAME", "ROLE", "CREATED"], rows)
                })
            }
            TokenCommand::Revoke { id } => {
                let v = call("DELETE", &format!("{base}/v1/tokens/{id}"), None)?;
                print(&args.output, &v, |_| format!("token {id} revoked\n"))
            }
        },
        CtlCommand::Instances => {
            let v = call("GET", &format!("{base}/v1/instances"), None)?;
            print(&args.output, &v, |v| {
                let rows = v["instances"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| {
                        vec![
                            i["service"].as_str().unwrap_or("").to_string(),
                            i["id"].as_str().unwrap_or("").to_string(),
                            format!("{}:{}", i["address"].as_str().unwrap_or(""), i["port"]),
                            i["labels"]
                                .as_object()
                                .map(|l| {
                                    l.iter()
                                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                                        .collect::<Vec<_>>()
                                        .join(",")
                                })
                                .unwrap_or_default(),
                            format!("{:.0}s", i["expires_in"].as_f64().unwrap_or(0.0)),
                        ]
                    })
                    .collect();
                table(&["SERVICE", "ID", "ADDRESS", "LABELS", "EXPIRES IN"], rows)
            })
        }
        CtlCommand::Audit => {
            let v = call("GET", &format!("{base}/v1/audit"), None)?;
            print(&args.output, &v, |v| {
                let rows = v["entries"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        vec![
                            e["at"].as_str().unwrap_or("").to_string(),
                            e["actor"].as_str().unwrap_or("").to_string(),
                            e["action"].as_str().unwrap_or("").to_string(),
                            e["target"].as_str().unwrap_or("").to_string(),
                            if e["allowed"].as_bool() == Some(true) { "allowed".into() } else { "DENIED".into() },
                            e["detail"].as_str().unwrap_or("").to_string(),
                        ]
                    })
                    .collect();
                table(&["TIME", "ACTOR", "ACTION", "TARGET", "RESULT", "DETAIL"], rows)
            })
        }
        CtlCommand::Completions { shell } => {
            let mut cmd = <crate::Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "legate", &mut std::io::stdout());
            Ok(())
        }
        CtlCommand::Bootstrap { node_id, node_cluster, xds, delta, admin_port, xds_ca, xds_cert, xds_key, xds_sni } => {
            let (host, port) = xds.rsplit_once(':').context("--xds must be HOST:PORT")?;
            let mut yaml = bootstrap_yaml(&node_id, &node_cluster, host, port, delta, admin_port);
            if let Some(ca) = xds_ca {
                yaml = with_xds_tls(&yaml, &ca, xds_cert.zip(xds_key), &xds_sni);
            }
            print!("{yaml}");
            Ok(())
        }
    }
}

/// A readable field-level diff.
fn diff_text(changes: &Value) -> String {
    let mut s = String::new();
    for c in changes.as_array().into_iter().flatten() {
        let mark = match c["change"].as_str() {
            Some("added") => "+",
            Some("removed") => "-",
            _ => "~",
        };
        s.push_str(&format!("{mark} {}\n", c["resource"].as_str().unwrap_or("")));
        for f in c["fields"].as_array().into_iter().flatten() {
            let show = |v: &Value| if v.is_null() { "(none)".to_string() } else { v.to_string() };
            s.push_str(&format!(
                "    {}: {} -> {}\n",
                f["path"].as_str().unwrap_or(""),
                show(&f["from"]),
                show(&f["to"])
            ));
        }
    }
    if s.is_empty() {
        s.push_str("no changes\n");
    }
    s
}

fn short(v: &str) -> &str {
    &v[..v.len().min(12)]
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The bootstrap's xDS cluster, speaking TLS (and presenting a client
/// certificate when given).
fn with_xds_tls(yaml: &str, ca: &str, client: Option<(String, String)>, sni: &str) -> String {
    let certs = match client {
        Some((cert, key)) => format!(
            "\n          tls_certificates: [{{ certificate_chain: {{ filename: {cert} }}, private_key: {{ filename: {key} }} }}]"
        ),
        None => String::new(),
    };
    let socket = format!(
        r#"    connect_timeout: 1s
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {sni}
        common_tls_context:
          alpn_protocols: [h2]
          validation_context: {{ trusted_ca: {{ filename: {ca} }} }}{certs}"#
    );
    yaml.replacen("    connect_timeout: 1s", &socket, 1)
}

/// A bootstrap for Envoy or `legate proxy` that takes everything over ADS.
pub fn bootstrap_yaml(
    node_id: &str,
    node_cluster: &str,
    host: &str,
    port: &str,
    delta: bool,
    admin_port: u16,
) -> String {
    let api_type = if delta { "DELTA_GRPC" } else { "GRPC" };
    format!(
        r#"node:
  id: {node_id}
  cluster: {node_cluster}
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {{ cluster_name: xds_cluster }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds_cluster
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: xds_cluster
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {host}, port_value: {port} }} }} }}
"#
    )
}
