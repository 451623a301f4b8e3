//! rustls configs built from Envoy's `DownstreamTlsContext` and
//! `UpstreamTlsContext` (transport socket `envoy.transport_sockets.tls`).
//!
//! Everything is built once per config change, or when a secret the context
//! takes from SDS changes; a handshake only loads the current
//! `Arc<ServerConfig>` / `Arc<ClientConfig>` from an `ArcSwapOption` (one
//! atomic load and a reference count, no lock).

pub mod peer;
pub mod sds;

use crate::tls::sds::{SecretManager, SecretSlot};
use arc_swap::{ArcSwap, ArcSwapOption};
use legate_api::pb::envoy::config::core::v3::{data_source, DataSource};
use legate_api::pb::envoy::config::core::v3::{transport_socket, TransportSocket};
use legate_api::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context::ValidationContextType, secret, tls_parameters::TlsProtocol, CertificateValidationContext,
    CommonTlsContext, DownstreamTlsContext, Secret, TlsCertificate, TlsParameters, UpstreamTlsContext,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

const DOWNSTREAM: &str = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const UPSTREAM: &str = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// One of `match_typed_subject_alt_names`.
#[derive(Debug)]
struct SanMatcher {
    kind: SanKind,
    matcher: crate::common::matcher::StringMatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SanKind {
    Email,
    Dns,
    Uri,
    Ip,
}

fn compile_sans(v: &CertificateValidationContext, path: &str) -> Result<Vec<SanMatcher>, TlsError> {
    v.match_typed_subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let p = format!("{path}.validation_context.match_typed_subject_alt_names[{i}]");
            let kind = match m.san_type {
                1 => SanKind::Email,
                2 => SanKind::Dns,
                3 => SanKind::Uri,
                4 => SanKind::Ip,
                other => return Err(err(&p, format!("san_type {other} is not supported"))),
            };
            let Some(sm) = &m.matcher else { return Err(err(&format!("{p}.matcher"), "is required")) };
            let matcher = crate::common::matcher::StringMatch::new(sm).map_err(|e| err(&format!("{p}.matcher"), e))?;
            Ok(SanMatcher { kind, matcher })
        })
        .collect()
}

/// Whether a DNS SAN (possibly `*.example.com`) covers `name`, as Envoy's
/// exact DNS matcher lets a wildcard certificate match a host under it.
fn dns_wildcard_covers(san: &str, name: &str) -> bool {
    match (san.strip_prefix("*."), name.split_once('.')) {
        (Some(suffix), Some((label, rest))) => !label.is_empty() && rest.eq_ignore_ascii_case(suffix),
        _ => false,
    }
}

/// Whether the certificate has a SAN accepted by `matchers` (any one of
/// them, on a SAN of its type). Parses the certificate: once per handshake,
/// only when matchers are configured.
fn sans_match(matchers: &[SanMatcher], der: &CertificateDer<'_>) -> bool {
    if matchers.is_empty() {
        return true;
    }
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else { return false };
    let Ok(Some(ext)) = cert.subject_alternative_name() else { return false };
    use x509_parser::extensions::GeneralName;
    ext.value.general_names.iter().any(|g| {
        let (kind, value) = match g {
            GeneralName::DNSName(s) => (SanKind::Dns, s.to_string()),
            GeneralName::RFC822Name(s) => (SanKind::Email, s.to_string()),
            GeneralName::URI(s) => (SanKind::Uri, s.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => (SanKind::Ip, std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()),
                16 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(b);
                    (SanKind::Ip, std::net::Ipv6Addr::from(a).to_string())
                }
                _ => return false,
            },
            _ => return false,
        };
        matchers.iter().any(|m| {
            m.kind == kind
                && (m.matcher.matches(&value)
                    || (kind == SanKind::Dns && m.matcher.exact().is_some_and(|e| dns_wildcard_covers(&value, e))))
        })
    })
}

/// A SAN mismatch, told apart from other certificate errors for the stats.
fn san_mismatch() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
}

tokio::task_local! {
    /// The signature scheme the peer signed the handshake with, noted by
    /// the verifiers while a handshake runs inside `with_sigalg`.
    static PEER_SIGALG: std::cell::Cell<Option<SignatureScheme>>;
}

fn note_sigalg(s: SignatureScheme) {
    let _ = PEER_SIGALG.try_with(|c| c.set(Some(s)));
}

/// Runs a handshake and tells which signature scheme the peer used (None
/// when it signed nothing: a client without a certificate). Costs one
/// task-local scope per handshake: rustls does not report the scheme, but
/// its verifiers see it, in the task that drives the handshake.
pub async fn with_sigalg<F: std::future::Future>(f: F) -> (F::Output, Option<SignatureScheme>) {
    PEER_SIGALG
        .scope(std::cell::Cell::new(None), async move {
            let out = f.await;
            (out, PEER_SIGALG.with(|c| c.get()))
        })
        .await
}

/// BoringSSL's `SSL_get_signature_algorithm_name` (with the curve) for the
/// schemes rustls verifies, as `sigalgs.<name>`.
fn sigalg_stat(s: SignatureScheme) -> Option<&'static str> {
    use SignatureScheme as S;
    Some(match s {
        S::ECDSA_NISTP256_SHA256 => "sigalgs.ecdsa_secp256r1_sha256",
        S::ECDSA_NISTP384_SHA384 => "sigalgs.ecdsa_secp384r1_sha384",
        S::ECDSA_NISTP521_SHA512 => "sigalgs.ecdsa_secp521r1_sha512",
        S::RSA_PSS_SHA256 => "sigalgs.rsa_pss_rsae_sha256",
        S::RSA_PSS_SHA384 => "sigalgs.rsa_pss_rsae_sha384",
        S::RSA_PSS_SHA512 => "sigalgs.rsa_pss_rsae_sha512",
        S::RSA_PKCS1_SHA256 => "sigalgs.rsa_pkcs1_sha256",
        S::RSA_PKCS1_SHA384 => "sigalgs.rsa_pkcs1_sha384",
        S::RSA_PKCS1_SHA512 => "sigalgs.rsa_pkcs1_sha512",
        S::ED25519 => "sigalgs.ed25519",
        _ => return None,
    })
}

/// A client-certificate verifier that also applies `match_typed_subject_alt_names`.
#[derive(Debug)]
struct SanClientVerifier {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    sans: Vec<SanMatcher>,
}

impl rustls::server::danger::ClientCertVerifier for SanClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let ok = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        if sans_match(&self.sans, end_entity) {
            Ok(ok)
        } else {
            Err(san_mismatch())
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        note_sigalg(dss.scheme);
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        note_sigalg(dss.scheme);
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A byte stream a connection can run on: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed stream; costs one indirect call per read or write.
pub type BoxIo = Box<dyn Io>;

/// Envoy's `ssl.*` stats of a listener or cluster with TLS.
pub struct SslStats {
    pub handshake: Arc<crate::stats::Counter>,
    pub connection_error: Arc<crate::stats::Counter>,
    pub fail_verify_error: Arc<crate::stats::Counter>,
    pub fail_verify_no_cert: Arc<crate::stats::Counter>,
    pub fail_verify_san: Arc<crate::stats::Counter>,
    pub no_certificate: Arc<crate::stats::Counter>,
    pub session_reused: Arc<crate::stats::Counter>,
    /// `ssl.versions.*`, `ssl.ciphers.*`, `ssl.curves.*`: created on first
    /// use as Envoy creates them, then one lookup in a short list per
    /// handshake (a lock taken only while a name is new).
    negotiated: std::sync::Mutex<Vec<(&'static str, Arc<crate::stats::Counter>)>>,
    prefix: String,
    store: Arc<crate::stats::Store>,
}

impl SslStats {
    /// Under `prefix` (`listener.<addr>.` or `cluster.<name>.`).
    pub fn new(store: &Arc<crate::stats::Store>, prefix: &str) -> Self {
        let c = |n: &str| store.counter(&format!("{prefix}ssl.{n}"));
        Self {
            handshake: c("handshake"),
            connection_error: c("connection_error"),
            fail_verify_error: c("fail_verify_error"),
            fail_verify_no_cert: c("fail_verify_no_cert"),
            fail_verify_san: c("fail_verify_san"),
            no_certificate: c("no_certificate"),
            session_reused: c("session_reused"),
            negotiated: Default::default(),
            prefix: format!("{prefix}ssl."),
            store: store.clone(),
        }
    }

    fn bump(&self, name: &'static str) {
        let mut list = self.negotiated.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = list.iter().find(|(n, _)| *n == name) {
            c.inc();
            return;
        }
        let c = self.store.counter(&format!("{}{name}", self.prefix));
        c.inc();
        list.push((name, c));
    }

    /// Counts a completed handshake as Envoy's `logHandshake` does: the
    /// handshake, a resumed session, the version, cipher, key-exchange group
    /// and the peer's signature scheme (see `with_sigalg`), and
    /// `no_certificate` when the peer sent none.
    pub fn handshake_done(&self, conn: &rustls::CommonState, sigalg: Option<SignatureScheme>) {
        self.handshake.inc();
        if let Some(n) = sigalg.and_then(sigalg_stat) {
            self.bump(n);
        }
        if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.session_reused.inc();
        }
        if let Some(s) = conn.negotiated_cipher_suite() {
            if let Some(n) = cipher_stat(s.suite()) {
                self.bump(n);
            }
        }
        if let Some(v) = conn.protocol_version() {
            self.bump(match v {
                rustls::ProtocolVersion::TLSv1_3 => "versions.TLSv1.3",
                _ => "versions.TLSv1.2",
            });
        }
        if let Some(g) = conn.negotiated_key_exchange_group() {
            if let Some(n) = curve_stat(g.name()) {
                self.bump(n);
            }
        }
        if conn.peer_certificates().is_none_or(|c| c.is_empty()) {
            self.no_certificate.inc();
        }
    }

    /// Counts a failed handshake as Envoy does: a certificate that does not
    /// verify is `fail_verify_error` (`fail_verify_san` when its names do not
    /// match), a missing required one `fail_verify_no_cert`, anything else
    /// `connection_error`.
    pub fn failed(&self, e: &std::io::Error) {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)) => {
                self.fail_verify_san.inc()
            }
            Some(rustls::Error::InvalidCertificate(_)) => self.fail_verify_error.inc(),
            Some(rustls::Error::NoCertificatesPresented) => self.fail_verify_no_cert.inc(),
            _ => self.connection_error.inc(),
        }
    }
}

/// `ciphers.<BoringSSL's name>` for the suites rustls speaks.
fn cipher_stat(c: rustls::CipherSuite) -> Option<&'static str> {
    use rustls::CipherSuite as C;
    Some(match c {
        C::TLS13_AES_128_GCM_SHA256 => "ciphers.TLS_AES_128_GCM_SHA256",
        C::TLS13_AES_256_GCM_SHA384 => "ciphers.TLS_AES_256_GCM_SHA384",
        C::TLS13_CHACHA20_POLY1305_SHA256 => "ciphers.TLS_CHACHA20_POLY1305_SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ciphers.ECDHE-ECDSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ciphers.ECDHE-ECDSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ciphers.ECDHE-ECDSA-CHACHA20-POLY1305",
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ciphers.ECDHE-RSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ciphers.ECDHE-RSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ciphers.ECDHE-RSA-CHACHA20-POLY1305",
        _ => return None,
    })
}

/// `curves.<BoringSSL's name>` for the key-exchange groups rustls speaks.
fn curve_stat(g: rustls::NamedGroup) -> Option<&'static str> {
    use rustls::NamedGroup as G;
    Some(match g {
        G::X25519 => "curves.X25519",
        G::secp256r1 => "curves.P-256",
        G::secp384r1 => "curves.P-384",
        G::secp521r1 => "curves.P-521",
        G::X25519MLKEM768 => "curves.X25519MLKEM768",
        _ => return None,
    })
}

/// Whether an error from a TLS connection came from TLS itself (an alert
/// from the peer, a certificate problem) rather than from the transport.
pub fn is_tls_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|i| i.downcast_ref::<rustls::Error>().is_some()) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    Config { path: String, reason: String },
}

fn err(path: &str, reason: impl Into<String>) -> TlsError {
    TlsError::Config { path: path.to_string(), reason: reason.into() }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn unpack_socket<T: prost::Message + prost::Name + Default>(ts: &TransportSocket, want: &str) -> Result<T, TlsError> {
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

fn read_ds(ds: &Option<legate_api::pb::envoy::config::core::v3::DataSource>, path: &str) -> Result<Vec<u8>, TlsError> {
    let Some(ds) = ds else { return Err(err(path, "is required")) };
    crate::common::datasource::read(ds).map(|b| b.to_vec()).map_err(|e| err(path, e))
}

fn certs_from_pem(pem: &[u8], path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| err(path, format!("cannot read PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(err(path, "no certificate found in PEM data"));
    }
    Ok(certs)
}

fn certified_key(c: &TlsCertificate, path: &str) -> Result<CertifiedKey, TlsError> {
    let chain = certs_from_pem(&read_ds(&c.certificate_chain, &format!("{path}.certificate_chain"))?, path)?;
    let key_pem = read_ds(&c.private_key, &format!("{path}.private_key"))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| err(&format!("{path}.private_key"), format!("cannot read PEM private key: {e}")))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| err(&format!("{path}.private_key"), format!("unsupported private key: {e}")))?;
    let ck = CertifiedKey::new(chain, signer);
    // A key that is not the certificate's is refused, as Envoy refuses it
    // (a rotation that moved only one of the two files in place waits).
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) = ck.keys_match() {
        return Err(err(&format!("{path}.private_key"), "the private key does not match the certificate"));
    }
    Ok(ck)
}

/// TLS versions from `tls_params`, limited to what rustls speaks (1.2, 1.3).
/// `default_max` is Envoy's maximum when none is set: TLS 1.3 for servers,
/// TLS 1.2 for clients.
fn versions(
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

fn validation_context<'a>(
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
struct Deps {
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
fn flatten(c: &CommonTlsContext, deps: &Deps, path: &str) -> Result<Option<CommonTlsContext>, TlsError> {
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
fn inline(ds: &mut Option<DataSource>, path: &str) -> Result<(), TlsError> {
    if let Some(d) = ds {
        if let Some(data_source::Specifier::Filename(f)) = &d.specifier {
            let bytes = std::fs::read(f).map_err(|e| err(path, format!("Invalid path: {f}: {e}")))?;
            d.specifier = Some(data_source::Specifier::InlineBytes(bytes));
        }
    }
    Ok(())
}

/// Whether a secret's certificate, key or CA can be used: a secret from xDS
/// or a file is refused (NACKed, or the file update rejected) if not.
pub fn check_secret_material(s: &Secret) -> Result<(), TlsError> {
    match &s.r#type {
        Some(secret::Type::TlsCertificate(c)) => certified_key(c, "tls_certificate").map(|_| ()),
        Some(secret::Type::ValidationContext(v)) => {
            roots(v, "validation_context")?;
            compile_sans(v, "validation_context").map(|_| ())
        }
        _ => Err(err("type", "only tls_certificate and validation_context secrets are supported")),
    }
}

/// One certificate as `/certs` shows it.
#[derive(Debug, Clone, Default)]
pub struct CertDetail {
    /// The file it came from, or `<inline>`.
    pub path: String,
    /// Lowercase hex, as Envoy prints it.
    pub serial_number: String,
    /// ("dns" | "uri" | "ip_address", value).
    pub subject_alt_names: Vec<(&'static str, String)>,
    /// Seconds since the epoch.
    pub valid_from: i64,
    pub expiration_time: i64,
}

/// The certificates of one TLS context: its CA and its own chains' leaves.
#[derive(Debug, Clone, Default)]
pub struct CertsInfo {
    pub ca_cert: Vec<CertDetail>,
    pub cert_chain: Vec<CertDetail>,
}

fn ds_path(ds: &Option<DataSource>) -> String {
    match ds.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::Filename(f)) => f.clone(),
        _ => "<inline>".into(),
    }
}

fn detail(der: &CertificateDer<'_>, path: String) -> Option<CertDetail> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for g in &ext.value.general_names {
            use x509_parser::extensions::GeneralName;
            match g {
                GeneralName::DNSName(s) => sans.push(("dns", s.to_string())),
                GeneralName::URI(s) => sans.push(("uri", s.to_string())),
                GeneralName::IPAddress(b) if b.len() == 4 => {
                    sans.push(("ip_address", std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()))
                }
                GeneralName::IPAddress(b) if b.len() == 16 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(b);
                    sans.push(("ip_address", std::net::Ipv6Addr::from(a).to_string()))
                }
                _ => {}
            }
        }
    }
    // Envoy prints the serial as BoringSSL's BN_bn2hex does (whole bytes,
    // leading zero bytes dropped), lowercased.
    let raw = cert.raw_serial();
    let first = raw.iter().position(|b| *b != 0).unwrap_or(raw.len().saturating_sub(1));
    let serial_number = raw[first..].iter().map(|b| format!("{b:02x}")).collect();
    Some(CertDetail {
        path,
        serial_number,
        subject_alt_names: sans,
        valid_from: cert.validity().not_before.timestamp(),
        expiration_time: cert.validity().not_after.timestamp(),
    })
}

/// What `/certs` shows of a (flattened) context: the first CA of
/// `trusted_ca`, and the leaf of each certificate chain.
fn certs_info(c: &CommonTlsContext) -> CertsInfo {
    let mut info = CertsInfo::default();
    if let Some(ValidationContextType::ValidationContext(v)) = &c.validation_context_type {
        if let Some(ds) = &v.trusted_ca {
            if let Ok(pem) = crate::common::datasource::read(ds) {
                if let Some(Ok(der)) = CertificateDer::pem_slice_iter(&pem).next() {
                    info.ca_cert.extend(detail(&der, ds_path(&v.trusted_ca)));
                }
            }
        }
    }
    for t in &c.tls_certificates {
        if let Some(ds) = &t.certificate_chain {
            if let Ok(pem) = crate::common::datasource::read(ds) {
                if let Some(Ok(der)) = CertificateDer::pem_slice_iter(&pem).next() {
                    info.cert_chain.extend(detail(&der, ds_path(&t.certificate_chain)));
                }
            }
        }
    }
    info
}

type Builder<C> = Box<dyn Fn(&CommonTlsContext) -> Result<C, TlsError> + Send + Sync>;

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
    fn new(
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

/// A listener filter chain's TLS.
pub type ServerTls = Dynamic<DownstreamTls>;

fn roots(v: &CertificateValidationContext, path: &str) -> Result<Option<Arc<RootCertStore>>, TlsError> {
    if v.trusted_ca.is_none() {
        return Ok(None);
    }
    let p = format!("{path}.validation_context.trusted_ca");
    let mut store = RootCertStore::empty();
    for c in certs_from_pem(&read_ds(&v.trusted_ca, &p)?, &p)? {
        store.add(c).map_err(|e| err(&p, format!("bad CA certificate: {e}")))?;
    }
    Ok(Some(Arc::new(store)))
}

fn alpn(c: &CommonTlsContext) -> Vec<Vec<u8>> {
    c.alpn_protocols.iter().map(|p| p.as_bytes().to_vec()).collect()
}

/// The DNS names a certificate serves: its DNS SANs, or its common name when
/// it has none (as Envoy reads them), lowercased.
fn cert_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else { return Vec::new() };
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                x509_parser::extensions::GeneralName::DNSName(s) => Some(s.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase));
    }
    names
}

/// Picks the certificate for a handshake as Envoy does: one with the SNI as
/// an exact name, else one whose `*.` name covers it, else the first (the
/// default). Names are read once at config time; a handshake compares
/// strings over the (few) certificates.
#[derive(Debug)]
struct CertSet(Vec<ServerCert>);

#[derive(Debug)]
struct ServerCert {
    key: Arc<CertifiedKey>,
    /// DNS names it serves, for the choice by SNI.
    names: Vec<String>,
    /// Its URI SANs (XFCC `By=`).
    uri_sans: Arc<[String]>,
}

impl CertSet {
    fn pick(&self, sni: Option<&str>) -> Option<&ServerCert> {
        if let (true, Some(sni)) = (self.0.len() > 1, sni) {
            let sni = sni.to_ascii_lowercase();
            let exact = self.0.iter().find(|c| c.names.contains(&sni));
            let wildcard = || self.0.iter().find(|c| c.names.iter().any(|n| dns_wildcard_covers(n, &sni)));
            if let Some(c) = exact.or_else(wildcard) {
                return Some(c);
            }
        }
        self.0.first()
    }
}

impl ResolvesServerCert for CertSet {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name()).map(|c| c.key.clone())
    }
}

/// A filter chain's TLS termination. Three configs, built once, so the
/// suite is chosen as Envoy (BoringSSL) chooses it: by the client's order
/// for TLS 1.3, by Envoy's server order for TLS 1.2 (whose equal-preference
/// groups follow the client's order between AES-128-GCM and ChaCha20).
pub struct DownstreamTls {
    client_order: Arc<rustls::ServerConfig>,
    /// TLS 1.3 is allowed (`tls_params`).
    tls13: bool,
    /// The TLS 1.2 configs (AES-128 first, ChaCha20 first), when 1.2 is allowed.
    tls12: Option<[Arc<rustls::ServerConfig>; 2]>,
    certs: Arc<CertSet>,
}

impl DownstreamTls {
    /// Reads the ClientHello, picks the config, and completes the handshake.
    /// Cost over a plain accept: a scan of the client's suite list.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
    ) -> (std::io::Result<tokio_rustls::server::TlsStream<S>>, Option<SignatureScheme>) {
        let start = match tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await {
            Ok(s) => s,
            Err(e) => return (Err(e), None),
        };
        let cfg = {
            let hello = start.client_hello();
            let suites = hello.cipher_suites();
            let offers_tls13 = suites.iter().any(|s| {
                matches!(
                    s,
                    rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                        | rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
                        | rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
                )
            });
            if let (false, Some([aes_first, chacha_first])) = (offers_tls13 && self.tls13, &self.tls12) {
                // The pair that counts is the one of the certificate's key type.
                use rustls::CipherSuite as C;
                let rsa = self
                    .certs
                    .pick(hello.server_name())
                    .is_some_and(|c| c.key.key.algorithm() == rustls::SignatureAlgorithm::RSA);
                let (chacha_suite, aes_suite) = if rsa {
                    (C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)
                } else {
                    (C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
                };
                let chacha = suites.iter().position(|s| *s == chacha_suite);
                let aes = suites.iter().position(|s| *s == aes_suite);
                match (chacha, aes) {
                    (Some(c), Some(a)) if c < a => chacha_first,
                    (Some(_), None) => chacha_first,
                    _ => aes_first,
                }
            } else {
                &self.client_order
            }
        };
        with_sigalg(start.into_stream(cfg.clone())).await
    }

    /// What a finished handshake tells the filters: the peer's chain and
    /// the URI SANs of the certificate served (picked again by the SNI, as
    /// the resolver picked it).
    pub fn conn_facts(&self, conn: &rustls::ServerConnection) -> crate::tls::peer::TlsConn {
        let local = self.certs.pick(conn.server_name()).map(|c| c.uri_sans.clone()).unwrap_or_else(|| Arc::from([]));
        crate::tls::peer::TlsConn::new(conn.peer_certificates(), local)
    }
}

/// A listener filter chain's TLS: the acceptor for its connections, which
/// follows the secrets it names.
pub fn downstream(ts: &TransportSocket, secrets: &Arc<SecretManager>) -> Result<Arc<ServerTls>, TlsError> {
    let ctx: DownstreamTlsContext = unpack_socket(ts, DOWNSTREAM)?;
    let path = "transport_socket.typed_config.common_tls_context";
    let Some(common) = ctx.common_tls_context.clone() else {
        return Err(err(path, "a server TLS context needs tls_certificates"));
    };
    if common.tls_certificates.is_empty() && common.tls_certificate_sds_secret_configs.is_empty() {
        return Err(err(&format!("{path}.tls_certificates"), "a server TLS context needs at least one certificate"));
    }
    Dynamic::new(common, secrets, path, Box::new(move |c| server_config(&ctx, c)))
}

/// The server configs of a context whose secrets are in place.
fn server_config(ctx: &DownstreamTlsContext, common: &CommonTlsContext) -> Result<DownstreamTls, TlsError> {
    let path = "transport_socket.typed_config.common_tls_context";
    if common.tls_certificates.is_empty() {
        return Err(err(&format!("{path}.tls_certificates"), "a server TLS context needs at least one certificate"));
    }
    let keys = common
        .tls_certificates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ck = certified_key(c, &format!("{path}.tls_certificates[{i}]"))?;
            let names = ck.end_entity_cert().map(cert_names).unwrap_or_default();
            let uri_sans = ck.end_entity_cert().map(crate::tls::peer::uri_sans).unwrap_or_default().into();
            Ok(ServerCert { key: Arc::new(ck), names, uri_sans })
        })
        .collect::<Result<Vec<_>, TlsError>>()?;
    let versions = versions(common.tls_params.as_ref(), path, 3)?;
    let require = ctx.require_client_certificate.is_some_and(|b| b.value);
    let validation = validation_context(common, path)?;
    let client_roots = validation.map(|v| roots(v, path)).transpose()?.flatten();
    let sans = validation.map(|v| compile_sans(v, path)).transpose()?.unwrap_or_default();
    if !sans.is_empty() && client_roots.is_none() {
        return Err(err(
            &format!("{path}.validation_context.match_typed_subject_alt_names"),
            "Legate checks client certificate names only together with trusted_ca",
        ));
    }
    let verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>> = match client_roots {
        Some(roots) => {
            let mut v = WebPkiClientVerifier::builder_with_provider(roots, provider());
            // Without require_client_certificate Envoy asks for a certificate
            // and verifies one that is sent, but lets clients without one in.
            if !require {
                v = v.allow_unauthenticated();
            }
            let v = v.build().map_err(|e| err(&format!("{path}.validation_context"), e.to_string()))?;
            // Wrapped even without SAN matchers: the wrapper notes the
            // client's signature scheme for `ssl.sigalgs.*`.
            Some(Arc::new(SanClientVerifier { inner: v, sans }))
        }
        None if require => {
            return Err(err(
                "transport_socket.typed_config.require_client_certificate",
                "needs common_tls_context.validation_context.trusted_ca",
            ))
        }
        None => None,
    };
    let certs = Arc::new(CertSet(keys));
    let build = |provider: Arc<CryptoProvider>, server_order: bool| -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|e| err(path, e.to_string()))?;
        let builder = match &verifier {
            Some(v) => builder.with_client_cert_verifier(v.clone()),
            None => builder.with_no_client_auth(),
        };
        let mut cfg = builder.with_cert_resolver(certs.clone());
        cfg.alpn_protocols = alpn(common);
        cfg.ignore_client_order = server_order;
        Ok(Arc::new(cfg))
    };
    let tls12 = if versions.iter().any(|v| v.version == rustls::ProtocolVersion::TLSv1_2) {
        Some([build(tls12_server_provider(false), true)?, build(tls12_server_provider(true), true)?])
    } else {
        None
    };
    let tls13 = versions.iter().any(|v| v.version == rustls::ProtocolVersion::TLSv1_3);
    Ok(DownstreamTls { client_order: build(provider(), false)?, tls13, tls12, certs })
}

/// A provider whose TLS 1.2 suites are in Envoy's default server order:
/// `[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]`,
/// `[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]`,
/// `ECDHE-ECDSA-AES256-GCM-SHA384`, `ECDHE-RSA-AES256-GCM-SHA384`. Inside a
/// bracketed group BoringSSL follows the client's order; `chacha_first`
/// says which member that puts first.
fn tls12_server_provider(chacha_first: bool) -> Arc<CryptoProvider> {
    use rustls::CipherSuite as C;
    let (g1, g2) = if chacha_first {
        (
            [C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256],
            [C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256],
        )
    } else {
        (
            [C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256],
            [C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256],
        )
    };
    let order: Vec<C> = g1
        .into_iter()
        .chain(g2)
        .chain([C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384])
        .collect();
    let mut p = rustls::crypto::ring::default_provider();
    let all = std::mem::take(&mut p.cipher_suites);
    // TLS 1.2 only: these configs serve clients that offer no TLS 1.3 suite.
    p.cipher_suites = order.iter().filter_map(|c| all.iter().find(|s| s.suite() == *c).copied()).collect();
    Arc::new(p)
}

/// A cluster's TLS: how its upstream connections are wrapped.
pub struct UpstreamTls {
    config: Arc<Dynamic<rustls::ClientConfig>>,
    /// `sni`, when set; otherwise no SNI is sent (as Envoy without auto_sni).
    pub sni: Option<ServerName<'static>>,
}

impl UpstreamTls {
    /// The name handed to rustls for a connection to `ip`: the SNI, or the
    /// address (rustls sends no SNI for an address).
    pub fn server_name(&self, ip: std::net::IpAddr) -> ServerName<'static> {
        self.sni.clone().unwrap_or(ServerName::IpAddress(ip.into()))
    }

    /// The connector for a new connection; `None` while a secret is awaited.
    pub fn connector(&self) -> Option<tokio_rustls::TlsConnector> {
        self.config.current().map(tokio_rustls::TlsConnector::from)
    }

    /// Every secret it names is there.
    pub fn ready(&self) -> bool {
        self.config.ready()
    }

    /// Every secret it names arrived or timed out.
    pub fn settled(&self) -> bool {
        self.config.settled()
    }
}

/// Envoy's default certificate validation checks the chain against
/// `trusted_ca`, not the host name; names are checked only by
/// `match_typed_subject_alt_names`. With neither, nothing is verified.
#[derive(Debug)]
struct EnvoyServerVerifier {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    sans: Vec<SanMatcher>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for EnvoyServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(v) = &self.chain {
            match v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
                )) => {}
                Err(e) => return Err(e),
                Ok(_) => {}
            }
        }
        if sans_match(&self.sans, end_entity) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(san_mismatch())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        note_sigalg(dss.scheme);
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        note_sigalg(dss.scheme);
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A cluster's `transport_socket`. `http2` picks the ALPN offered when the
/// context names none (Envoy offers the cluster's protocol).
pub fn upstream(ts: &TransportSocket, http2: bool, secrets: &Arc<SecretManager>) -> Result<UpstreamTls, TlsError> {
    let ctx: UpstreamTlsContext = unpack_socket(ts, UPSTREAM)?;
    let path = "transport_socket.typed_config.common_tls_context";
    let common = ctx.common_tls_context.clone().unwrap_or_default();
    let sni = if ctx.sni.is_empty() {
        None
    } else {
        Some(
            ServerName::try_from(ctx.sni.clone())
                .map_err(|_| err("transport_socket.typed_config.sni", "not a valid name"))?,
        )
    };
    let no_sni = sni.is_none();
    let config = Dynamic::new(common, secrets, path, Box::new(move |c| client_config(c, http2, no_sni)))?;
    Ok(UpstreamTls { config, sni })
}

/// A client config from a context whose secrets are in place.
fn client_config(common: &CommonTlsContext, http2: bool, no_sni: bool) -> Result<rustls::ClientConfig, TlsError> {
    let path = "transport_socket.typed_config.common_tls_context";
    let versions = versions(common.tls_params.as_ref(), path, 2)?;
    // A client limited to TLS 1.2 offers no TLS 1.3 suite (as BoringSSL).
    let client_provider = if versions.iter().any(|v| v.version == rustls::ProtocolVersion::TLSv1_3) {
        provider()
    } else {
        let mut p = rustls::crypto::ring::default_provider();
        p.cipher_suites.retain(|s| s.version().version == rustls::ProtocolVersion::TLSv1_2);
        Arc::new(p)
    };
    let validation = validation_context(common, path)?;
    let sans = validation.map(|v| compile_sans(v, path)).transpose()?.unwrap_or_default();
    let chain = match validation.map(|v| roots(v, path)).transpose()?.flatten() {
        Some(roots) => Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| err(&format!("{path}.validation_context"), e.to_string()))?,
        ),
        None => None,
    };
    let builder = rustls::ClientConfig::builder_with_provider(client_provider)
        .with_protocol_versions(&versions)
        .map_err(|e| err(path, e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(EnvoyServerVerifier { chain, sans, provider: provider() }));
    let mut cfg = match common.tls_certificates.as_slice() {
        [] => builder.with_no_client_auth(),
        [c] => {
            let p = format!("{path}.tls_certificates[0]");
            let chain = certs_from_pem(&read_ds(&c.certificate_chain, &format!("{p}.certificate_chain"))?, &p)?;
            let key = PrivateKeyDer::from_pem_slice(&read_ds(&c.private_key, &format!("{p}.private_key"))?)
                .map_err(|e| err(&format!("{p}.private_key"), format!("cannot read PEM private key: {e}")))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| err(&p, e.to_string()))?
        }
        _ => return Err(err(&format!("{path}.tls_certificates"), "a client context takes one certificate")),
    };
    cfg.alpn_protocols = if common.alpn_protocols.is_empty() {
        vec![if http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }]
    } else {
        alpn(common)
    };
    if no_sni {
        cfg.enable_sni = false;
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_dns_san_covers_one_label() {
        assert!(dns_wildcard_covers("*.example.com", "a.example.com"));
        assert!(!dns_wildcard_covers("*.example.com", "a.b.example.com"));
        assert!(!dns_wildcard_covers("*.example.com", "example.com"));
        assert!(!dns_wildcard_covers("a.example.com", "a.example.com"));
    }
}
