//! What a request (or, for the network filter, a connection) offers to the
//! RBAC engine's policies and to the match tree of `matcher`: a leaf both
//! read.

use crate::common::matcher::Pseudo;
use std::net::{IpAddr, SocketAddr};

/// What a request (or, for the network filter, a connection) offers to the matchers.
pub struct Subject<'a> {
    pub headers: &'a http::HeaderMap,
    pub pseudo: &'a Pseudo<'a>,
    /// There is an HTTP request (false in the network filter: `url_path`
    /// never matches there, as Envoy's path matcher needs a `:path`).
    pub http: bool,
    /// The TLS connection's facts (`authenticated`), None for plain TCP.
    pub tls: Option<&'a crate::tls::peer::TlsConn>,
    /// The SNI the client asked for (`requested_server_name`), "" without one.
    pub sni: &'a str,
    /// The connection's peer (`direct_remote_ip`, `source_ip`).
    pub direct_remote: IpAddr,
    /// The client as x-forwarded-for tells it (`remote_ip`).
    pub remote: IpAddr,
    /// The connection's peer's port (the matcher's source port input).
    pub peer_port: u16,
    /// The address the connection came in on (`destination_port`, `destination_ip`).
    pub local: SocketAddr,
}

impl Subject<'_> {
    /// The path without query or fragment, which `url_path` matches.
    pub(super) fn path(&self) -> &str {
        let p = self.pseudo.path;
        p.split(['?', '#']).next().unwrap_or(p)
    }
}
