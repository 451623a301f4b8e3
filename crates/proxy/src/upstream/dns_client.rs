//! A small DNS client over UDP: A and AAAA queries to chosen name servers,
//! answering the addresses and their TTL. Used where the system resolver
//! (getaddrinfo) will not do: a cluster's own resolvers
//! (`typed_dns_resolver_config` with c-ares `resolvers`) and
//! `respect_dns_ttl`, which needs the TTL the system resolver hides.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

const A: u16 = 1;
const AAAA: u16 = 28;

/// How long one server gets to answer one query (c-ares' default).
const TRY_TIMEOUT: Duration = Duration::from_secs(5);

/// The addresses of one record type and the smallest TTL among them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Answer {
    pub addrs: Vec<IpAddr>,
    pub ttl: Option<Duration>,
}

/// The name servers of `/etc/resolv.conf`, as c-ares reads them.
pub fn system_servers() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next().and_then(|a| a.parse::<IpAddr>().ok()))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Asks the servers in turn for `name`'s records of the type (A or AAAA)
/// until one answers.
pub async fn query(servers: &[SocketAddr], name: &str, ipv6: bool) -> Result<Answer, String> {
    let qtype = if ipv6 { AAAA } else { A };
    let mut last = String::from("no DNS server");
    for server in servers {
        match tokio::time::timeout(TRY_TIMEOUT, ask(*server, name, qtype)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => last = format!("{server}: {e}"),
            Err(_) => last = format!("{server}: no answer within {TRY_TIMEOUT:?}"),
        }
    }
    Err(last)
}

async fn ask(server: SocketAddr, name: &str, qtype: u16) -> Result<Answer, String> {
    let bind: SocketAddr =
        if server.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { (Ipv6Addr::UNSPECIFIED, 0).into() };
    let socket = tokio::net::UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    socket.connect(server).await.map_err(|e| e.to_string())?;
    let id: u16 = rand::random();
    socket.send(&encode_query(id, name, qtype)?).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
        // Another query's late answer: keep waiting for ours.
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            return parse_answer(&buf[..n], qtype);
        }
    }
}

/// A recursive query for one name and type.
fn encode_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(name.len() + 18);
    q.extend_from_slice(&id.to_be_bytes());
    // Flags: recursion desired; one question.
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("'{name}' is not a DNS name"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    if q.len() > 12 + 255 {
        return Err(format!("'{name}' is too long for DNS"));
    }
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    Ok(q)
}

/// The records of `qtype` in an answer (of any owner: a CNAME's target's
/// records come under the target's name), with their smallest TTL.
fn parse_answer(msg: &[u8], qtype: u16) -> Result<Answer, String> {
    let short = || "truncated DNS answer".to_string();
    if msg.len() < 12 {
        return Err(short());
    }
    match msg[3] & 0x0f {
        0 => {}
        3 => return Ok(Answer::default()),
        rcode => return Err(format!("DNS error code {rcode}")),
    }
    let count = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]) as usize;
    let (questions, answers) = (count(4), count(6));
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at).ok_or_else(short)? + 4;
    }
    let mut out = Answer::default();
    for _ in 0..answers {
        at = skip_name(msg, at).ok_or_else(short)?;
        let fixed = msg.get(at..at + 10).ok_or_else(short)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let len = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        let data = msg.get(at + 10..at + 10 + len).ok_or_else(short)?;
        at += 10 + len;
        let addr = match (rtype, data.len()) {
            (A, 4) if qtype == A => IpAddr::from(<[u8; 4]>::try_from(data).map_err(|_| short())?),
            (AAAA, 16) if qtype == AAAA => IpAddr::from(<[u8; 16]>::try_from(data).map_err(|_| short())?),
            _ => continue,
        };
        out.addrs.push(addr);
        let ttl = Duration::from_secs(ttl.into());
        out.ttl = Some(out.ttl.map_or(ttl, |t| t.min(ttl)));
    }
    Ok(out)
}

/// The offset just past the (possibly compressed) name at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return msg.get(at + 1).map(|_| at + 2),
            l => at += 1 + l as usize,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `query` with one CNAME and two A records (TTL 30 and 7).
    fn answer(query: &[u8]) -> Vec<u8> {
        let mut m = query.to_vec();
        m[2] = 0x81;
        m[3] = 0x80;
        m[7] = 3;
        // CNAME from the question's name (offset 12) to "b" + the root.
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 3, 1, b'b', 0]);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 0, 0, 1]);
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 7, 0, 4, 10, 0, 0, 2]);
        m
    }

    #[test]
    fn the_smallest_ttl_of_the_addresses_comes_back() {
        let q = encode_query(7, "svc.example.", A).expect("query");
        assert_eq!(&q[12..], b"\x03svc\x07example\x00\x00\x01\x00\x01");
        let a = parse_answer(&answer(&q), A).expect("answer");
        assert_eq!(a.addrs, vec![IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2])]);
        assert_eq!(a.ttl, Some(Duration::from_secs(7)));
        assert_eq!(parse_answer(&answer(&q), AAAA).expect("answer"), Answer::default());
        let mut cut = answer(&q);
        cut.truncate(cut.len() - 3);
        assert!(parse_answer(&cut, A).is_err());
        assert!(encode_query(1, "a..b", A).is_err());
    }
}
