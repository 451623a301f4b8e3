//! The proxy's version as Envoy shapes its own (`/server_info`, `/`,
//! tracers that report the proxy's version).

/// `legate/<version>/Clean/RELEASE/rustls`, in the place of Envoy's
/// `<commit>/<version>/Clean/RELEASE/BoringSSL`.
pub fn version() -> String {
    format!("legate/{}/Clean/RELEASE/rustls", env!("CARGO_PKG_VERSION"))
}
