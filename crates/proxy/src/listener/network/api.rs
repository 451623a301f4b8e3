//! What a network filter in front of the terminal one is: the
//! `ConnectionFilter` trait, with a hook for a new connection and one for
//! its data, and what it learns of the connection (`ConnCtx`).

use std::net::SocketAddr;
use std::sync::Arc;

/// A network filter in front of the chain's terminal filter (`local_ratelimit`,
/// `rbac`). Compiled once per chain; per-connection state lives with the
/// connection (`DataVerdict`).
pub trait ConnectionFilter: Send + Sync {
    /// A new connection, before any byte is read: false closes it unread.
    fn on_new_connection(&self) -> bool {
        true
    }

    /// Whether the filter looks at the connection's data. The chain wraps
    /// the read side once for all the filters that do; without any, the
    /// stream is served as it is.
    fn checks_data(&self) -> bool {
        false
    }

    /// Data, or the end of the stream, arrived; `before` is this filter's
    /// verdict on the connection so far (`Unchecked` the first time).
    /// `Denied` closes the connection, its data not passed on.
    fn on_data(&self, _conn: &ConnCtx, _before: DataVerdict) -> DataVerdict {
        DataVerdict::Allowed
    }

    /// A check that waits (ext_authz), started when the connection's first
    /// data arrives; the data is held until it answers. False closes the
    /// connection, the data not passed on.
    fn check_first_data(&self, _conn: &ConnCtx) -> Option<Check> {
        None
    }
}

/// A check a filter waits for.
pub type Check = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

/// A filter's verdict on a connection's data so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataVerdict {
    #[default]
    Unchecked,
    Allowed,
    Denied,
}

/// What the network filters learn of a connection before it is served.
#[derive(Clone)]
pub struct ConnCtx {
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// Set when TLS was terminated here.
    pub tls: Option<Arc<crate::tls::peer::TlsConn>>,
    /// The SNI the TLS inspector read.
    pub sni: Option<Box<str>>,
}
