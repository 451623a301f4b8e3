//! rustls configs built from Envoy's `DownstreamTlsContext` and
//! `UpstreamTlsContext` (transport socket `envoy.transport_sockets.tls`).
//!
//! Everything is built once per config change, or when a secret the context
//! takes from SDS changes; a handshake only loads the current
//! `Arc<ServerConfig>` / `Arc<ClientConfig>` from an `ArcSwapOption` (one
//! atomic load and a reference count, no lock).

mod certs;
mod client;
mod context;
mod kx;
pub mod peer;
pub mod sds;
mod server;
mod stats;
mod verify;

pub use certs::{CertDetail, CertsInfo, TlsError};
pub use client::{upstream, UpstreamTls};
pub use context::Dynamic;
pub use server::{downstream, DownstreamTls, ServerTls};
pub use stats::{with_sigalg, SslStats};
pub use verify::check_secret_material;

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
