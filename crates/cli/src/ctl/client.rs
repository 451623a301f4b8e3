//! Talking to the control plane's REST API: TLS and token settings, one call
//! with the API's error bodies turned into messages, and reading `-f` input.

use anyhow::{bail, Context as _};
use serde_json::Value;

/// TLS settings for an https:// control plane.
#[derive(Default, Clone)]
pub struct Tls {
    pub cacert: Option<std::path::PathBuf>,
    pub cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

fn agent(tls: &Tls, timeout: Option<std::time::Duration>) -> anyhow::Result<ureq::Agent> {
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
    let config = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(timeout);
    Ok(config.tls_config(cfg.build()).build().into())
}

/// The control plane's API: where it is, how to reach it, who calls.
pub struct Api {
    pub tls: Tls,
    pub token: Option<String>,
    pub base: String,
    /// A limit on each call (none for `ctl`; the node agent's calls have one).
    pub timeout: Option<std::time::Duration>,
}

impl Api {
    /// One request; a non-2xx answer becomes an error with the API's message
    /// and, for refused resources, each `resource: path: reason`.
    pub fn call(&self, method: &str, url: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let agent = agent(&self.tls, self.timeout)?;
        call(&agent, self.token.as_deref(), method, url, body)
    }

    /// `GET url` answered with text (a bootstrap), not JSON.
    pub fn text(&self, url: &str) -> anyhow::Result<String> {
        let agent = agent(&self.tls, self.timeout)?;
        let auth = self.token.as_deref().map(|t| format!("Bearer {t}"));
        let mut resp = authorized(agent.get(url), &auth)
            .call()
            .with_context(|| format!("cannot reach the control plane at {url}"))?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string()?;
        if !status.is_success() {
            bail!("{url} answered {}: {text}", status.as_u16());
        }
        Ok(text)
    }
}

fn call(
    agent: &ureq::Agent,
    token: Option<&str>,
    method: &str,
    url: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut resp = match (method, body) {
        ("POST", Some(b)) => authorized(agent.post(url), &auth).send_json(b),
        ("PUT", Some(b)) => authorized(agent.put(url), &auth).send_json(b),
        ("DELETE", _) => authorized(agent.delete(url), &auth).call(),
        _ => authorized(agent.get(url), &auth).call(),
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

/// The request with the API token, when there is one.
fn authorized<B>(r: ureq::RequestBuilder<B>, auth: &Option<String>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => r.header("authorization", a),
        None => r,
    }
}

/// The contents of `-f`: a file, every YAML/JSON file of a folder (as one
/// multi-document text), or standard input for `-`.
pub fn read_input(path: &str) -> anyhow::Result<String> {
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

pub fn urlencode(s: &str) -> String {
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
