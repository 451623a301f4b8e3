//! This machine's own address as Envoy's "local address": the first
//! non-loopback interface address of a family, read once. The connection
//! manager appends it to `x-forwarded-for` for a loopback peer; Zipkin
//! spans name it as their endpoint.

use std::net::IpAddr;
use std::sync::OnceLock;

/// The first non-loopback address of the same family as `like` (`like`
/// itself when there is none).
pub fn local_address(like: IpAddr) -> IpAddr {
    static V4: OnceLock<IpAddr> = OnceLock::new();
    static V6: OnceLock<IpAddr> = OnceLock::new();
    let (cell, v4) = if like.is_ipv4() { (&V4, true) } else { (&V6, false) };
    *cell.get_or_init(|| {
        if_addrs::get_if_addrs()
            .ok()
            .and_then(|ifs| ifs.into_iter().map(|i| i.ip()).find(|ip| !ip.is_loopback() && ip.is_ipv4() == v4))
            .unwrap_or(like)
    })
}
