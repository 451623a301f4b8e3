//! `ssl.*` stats: handshakes, ciphers, curves, versions and signature
//! algorithms, as Envoy names them.

use rustls::SignatureScheme;
use std::sync::Arc;

pub(super) fn note_sigalg(s: SignatureScheme) {
    let _ = PEER_SIGALG.try_with(|c| c.set(Some(s)));
}

tokio::task_local! {
    /// The signature scheme the peer signed the handshake with, noted by
    /// the verifiers while a handshake runs inside `with_sigalg`.
    static PEER_SIGALG: std::cell::Cell<Option<SignatureScheme>>;
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
pub(super) fn sigalg_stat(s: SignatureScheme) -> Option<&'static str> {
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
pub(super) fn cipher_stat(c: rustls::CipherSuite) -> Option<&'static str> {
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
pub(super) fn curve_stat(g: rustls::NamedGroup) -> Option<&'static str> {
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
