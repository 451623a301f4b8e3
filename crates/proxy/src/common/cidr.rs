//! IP ranges (`CidrRange`) as filter-chain matching and the connection
//! manager's `internal_address_config` read them: a malformed address or a
//! prefix longer than the address is a config error. (RBAC reads its ranges
//! its own way, clamping a long prefix as Envoy's RBAC does: see
//! `http::filters::rbac::engine`.)

use legate_api::pb::envoy::config::core::v3::CidrRange;
use std::net::IpAddr;

/// An IP network: `address_prefix/prefix_len`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn parse(c: &CidrRange) -> Result<Self, String> {
        let net: IpAddr =
            c.address_prefix.parse().map_err(|_| format!("malformed IP address: {}", c.address_prefix))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = c.prefix_len.map_or(0, |v| v.value);
        if len > max {
            return Err(format!("prefix_len {len} is too long for {net}"));
        }
        Ok(Self { net, len: len as u8 })
    }

    fn bits(ip: IpAddr) -> (u128, u32) {
        match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }

    /// The prefix length: how specific the range is.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4-mapped IPv6 peer matches IPv4 ranges.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.net.is_ipv4() != ip.is_ipv4() {
            return false;
        }
        let ((a, _), (b, _)) = (Self::bits(self.net), Self::bits(ip));
        let mask = if self.len == 0 { 0 } else { u128::MAX << (128 - u32::from(self.len)) };
        a & mask == b & mask
    }
}
