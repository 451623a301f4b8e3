//! What both sides share: reading a transport socket's TLS context, the
//! protocol versions and ALPN it allows, the SDS secrets it depends on, and
//! `Dynamic`, a context rebuilt whenever one of those secrets changes.

use super::certs::{certs_info, err, CertsInfo, TlsError};
use crate::tls::sds::{SecretManager, SecretSlot};
use arc_swap::{ArcSwap, ArcSwapOption};
use legate_api::pb::envoy::config::core::v3::{data_source, DataSource};
use legate_api::pb::envoy::config::core::v3::{transport_socket, TransportSocket};
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, secret, tls_parameters::TlsProtocol, CertificateValidationContext,
    CommonTlsContext, TlsParameters,
};
use std::sync::Arc;

pub(super) fn unpack_socket<T: prost::Message + prost::Name + Default>(
    ts: &TransportSocket,
    want: &str,
) -> Result<T, TlsError> {
    // Envoy picks the socket by the typed_config's type; the name is informative.
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err(err("transport_socket.typed_config", "is required"));
    };
    let ty = legate_api::any::type_name(any);
    if ty != want {
        return Err(err("transport_socket.typed_config", format!("transport socket {ty} is not supported")));
    }
    legate_api::any::unpack(any).map_err(|e| err("transport_socket.typed_config", e))
}

/// TLS versions from `tls_params`, limited to what rustls speaks (1.2, 1.3).
/// `default_max` is Envoy's maximum when none is set: TLS 1.3 for servers,
/// TLS 1.2 for clients.
pub(super) fn versions(
    p: Option<&TlsParameters>,
    path: &str,
    default_max: u8,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, TlsError> {
    let get = |v: i32, field: &str| -> Result<Option<u8>, TlsError> {
        match TlsProtocol::try_from(v) {
            Ok(TlsProtocol::TlsAuto) => Ok(None),
            Ok(TlsProtocol::TlSv12) => Ok(Some(2)),
            Ok(TlsProtocol::TlSv13) => Ok(Some(3)),
            Ok(other) => Err(err(
                &format!("{path}.tls_params.{field}"),
                format!("{} is not supported by Legate (rustls speaks TLSv1_2 and TLSv1_3 only)", other.as_str_name()),
            )),
            Err(_) => Err(err(&format!("{path}.tls_params.{field}"), format!("unknown TLS version {v}"))),
        }
    };
    // Envoy's defaults: at least TLS 1.2; at most TLS 1.3 (servers) or 1.2 (clients).
    let min = p.map(|p| get(p.tls_minimum_protocol_version, "tls_minimum_protocol_version")).transpose()?.flatten();
    let max = p.map(|p| get(p.tls_maximum_protocol_version, "tls_maximum_protocol_version")).transpose()?.flatten();
    let (min, max) = (min.unwrap_or(2), max.unwrap_or(default_max));
    if min > max {
        return Err(err(&format!("{path}.tls_params"), "minimum TLS version is above the maximum"));
    }
    let mut out = Vec::new();
    if min <= 2 {
        out.push(&rustls::version::TLS12);
    }
    if max >= 3 {
        out.push(&rustls::version::TLS13);
    }
    Ok(out)
}

pub(super) fn validation_context<'a>(
    c: &'a CommonTlsContext,
    path: &str,
) -> Result<Option<&'a CertificateValidationContext>, TlsError> {
    match &c.validation_context_type {
        None => Ok(None),
        Some(ValidationContextType::ValidationContext(v)) => Ok(Some(v)),
        Some(_) => Err(err(&format!("{path}.validation_context_type"), "only validation_context is supported")),
    }
}

/// The secrets a context takes from SDS or `static_resources.secrets`.
#[derive(Default)]
pub(super) struct Deps {
    certs: Vec<Arc<SecretSlot>>,
    validation: Option<Arc<SecretSlot>>,
}

impl Deps {
    fn find(c: &CommonTlsContext, secrets: &Arc<SecretManager>, path: &str) -> Result<Self, TlsError> {
        let mut certs = Vec::new();
        for (i, cfg) in c.tls_certificate_sds_secret_configs.iter().enumerate() {
            let p = format!("{path}.tls_certificate_sds_secret_configs[{i}]");
            certs.push(secrets.slot(cfg).map_err(|e| err(&p, e.to_string()))?);
        }
        let validation = match &c.validation_context_type {
            Some(ValidationContextType::ValidationContextSdsSecretConfig(cfg)) => Some(
                secrets
                    .slot(cfg)
                    .map_err(|e| err(&format!("{path}.validation_context_sds_secret_config"), e.to_string()))?,
            ),
            Some(ValidationContextType::CombinedValidationContext(cv)) => {
                let p = format!("{path}.combined_validation_context.validation_context_sds_secret_config");
                let Some(cfg) = &cv.validation_context_sds_secret_config else { return Err(err(&p, "is required")) };
                Some(secrets.slot(cfg).map_err(|e| err(&p, e.to_string()))?)
            }
            _ => None,
        };
        Ok(Self { certs, validation })
    }

    fn all(&self) -> impl Iterator<Item = &Arc<SecretSlot>> {
        self.certs.iter().chain(self.validation.iter())
    }
}

/// `c` with its secrets put in place: `tls_certificates` gains the SDS
/// certificates, the validation context becomes a plain one (a combined
/// context is the default one with the SDS one merged over it, as Envoy
/// merges them). `None` while a secret has not arrived.
pub(super) fn flatten(c: &CommonTlsContext, deps: &Deps, path: &str) -> Result<Option<CommonTlsContext>, TlsError> {
    let mut out = c.clone();
    out.tls_certificate_sds_secret_configs.clear();
    for (i, slot) in deps.certs.iter().enumerate() {
        let Some(s) = slot.get() else { return Ok(None) };
        match &s.r#type {
            Some(secret::Type::TlsCertificate(t)) => {
                let mut t = t.clone();
                if slot.source != crate::tls::sds::Source::Static {
                    inline(&mut t.certificate_chain, path)?;
                    inline(&mut t.private_key, path)?;
                }
                out.tls_certificates.push(t)
            }
            _ => {
                return Err(err(
                    &format!("{path}.tls_certificate_sds_secret_configs[{i}]"),
                    format!("secret '{}' is not a tls_certificate", slot.name),
                ))
            }
        }
    }
    if let Some(slot) = &deps.validation {
        let Some(s) = slot.get() else { return Ok(None) };
        let Some(secret::Type::ValidationContext(v)) = &s.r#type else {
            return Err(err(
                &format!("{path}.validation_context_type"),
                format!("secret '{}' is not a validation_context", slot.name),
            ));
        };
        let mut v = v.clone();
        if slot.source != crate::tls::sds::Source::Static {
            inline(&mut v.trusted_ca, path)?;
        }
        let merged = match &c.validation_context_type {
            Some(ValidationContextType::CombinedValidationContext(cv)) => {
                let mut m = cv.default_validation_context.clone().unwrap_or_default();
                if v.trusted_ca.is_some() {
                    m.trusted_ca = v.trusted_ca.clone();
                }
                m.match_typed_subject_alt_names.extend(v.match_typed_subject_alt_names.iter().cloned());
                #[allow(deprecated)]
                m.match_subject_alt_names.extend(v.match_subject_alt_names.iter().cloned());
                m
            }
            _ => v,
        };
        out.validation_context_type = Some(ValidationContextType::ValidationContext(merged));
    }
    Ok(Some(out))
}

/// Reads a file a secret from SDS names into the secret, as Envoy does when
/// it takes an SDS secret (so `/certs` shows such a certificate as inline).
pub(super) fn inline(ds: &mut Option<DataSource>, path: &str) -> Result<(), TlsError> {
    if let Some(d) = ds {
        if let Some(data_source::Specifier::Filename(f)) = &d.specifier {
            let bytes = std::fs::read(f).map_err(|e| err(path, format!("Invalid path: {f}: {e}")))?;
            d.specifier = Some(data_source::Specifier::InlineBytes(bytes));
        }
    }
    Ok(())
}

pub(super) type Builder<C> = Box<dyn Fn(&CommonTlsContext) -> Result<C, TlsError> + Send + Sync>;

/// A TLS context whose rustls config follows its secrets: built when every
/// secret it names is there, rebuilt (and swapped in) when one changes.
/// Connections load the current config when they start; one already open
/// keeps the config it started with.
pub struct Dynamic<C> {
    common: CommonTlsContext,
    deps: Deps,
    build: Builder<C>,
    current: ArcSwapOption<C>,
    info: ArcSwap<CertsInfo>,
    path: String,
    /// Held while rebuilding (never by a handshake).
    rebuilding: std::sync::Mutex<()>,
}

impl<C: Send + Sync + 'static> Dynamic<C> {
    pub(super) fn new(
        common: CommonTlsContext,
        secrets: &Arc<SecretManager>,
        path: &str,
        build: Builder<C>,
    ) -> Result<Arc<Self>, TlsError> {
        let deps = Deps::find(&common, secrets, path)?;
        let me = Arc::new(Self {
            common,
            deps,
            build,
            current: ArcSwapOption::empty(),
            info: ArcSwap::from_pointee(CertsInfo::default()),
            path: path.to_string(),
            rebuilding: std::sync::Mutex::new(()),
        });
        // Subscribed before the first build, so no update falls in between.
        for slot in me.deps.all() {
            let weak: std::sync::Weak<Self> = Arc::downgrade(&me);
            slot.subscribe(weak);
        }
        // A config error with every secret present is the config's error.
        me.rebuild()?;
        let weak: std::sync::Weak<Self> = Arc::downgrade(&me);
        secrets.register(weak);
        Ok(me)
    }

    fn rebuild(&self) -> Result<(), TlsError> {
        // Secrets change on the main thread (ADS) and the file watcher: one
        // rebuild at a time, so an older build never replaces a newer one.
        let _one = self.rebuilding.lock().unwrap_or_else(|e| e.into_inner());
        let Some(flat) = flatten(&self.common, &self.deps, &self.path)? else { return Ok(()) };
        let cfg = (self.build)(&flat)?;
        self.info.store(Arc::new(certs_info(&flat)));
        self.current.store(Some(Arc::new(cfg)));
        Ok(())
    }

    /// The config for a new connection; `None` while a secret is awaited.
    pub fn current(&self) -> Option<Arc<C>> {
        self.current.load_full()
    }

    /// Every secret is there (the context can serve).
    pub fn ready(&self) -> bool {
        self.current.load().is_some()
    }

    /// Nothing more to wait for: every secret arrived or its initial fetch
    /// timed out (a listener or cluster then warms up, as in Envoy, and a
    /// context still without its secrets refuses connections).
    pub fn settled(&self) -> bool {
        self.ready() || self.deps.all().all(|s| s.settled())
    }
}

impl<C: Send + Sync + 'static> crate::tls::sds::Subscriber for Dynamic<C> {
    fn secret_changed(&self) {
        if let Err(e) = self.rebuild() {
            tracing::warn!("TLS context not updated from its secrets (the previous one stays): {e}");
        }
    }
}

impl<C: Send + Sync + 'static> crate::tls::sds::CertSource for Dynamic<C> {
    fn certs(&self) -> CertsInfo {
        (**self.info.load()).clone()
    }
}

pub(super) fn alpn(c: &CommonTlsContext) -> Vec<Vec<u8>> {
    c.alpn_protocols.iter().map(|p| p.as_bytes().to_vec()).collect()
}
